/*
 * sources/sftp/sftp.c: the `sftp` event source (Argo's SFTPEventSource): a directory on an SFTP
 * server listed every pollIntervalDuration, and each difference an event {name, op, metadata}.
 *
 *   worker thread (libssh is blocking)        loop
 *   connect, check the host key, log in  -->  state message  --> herald_source_set_connected
 *   list the directory (files, not dirs)
 *   compare with the last listing        -->  event messages --> queue --> herald_source_emit
 *   wait pollIntervalDuration (cond)          (uv_async_t wakes the loop; when the bus is full
 *   lost: reconnect after the backoff          the queue waits, herald_source_when_room)
 *   stop: quit flag + cond; the thread's last message says it ended; the loop joins it then
 *
 * As Argo: the first listing is the baseline (no events); then a file gone is REMOVE, a file new
 * or with another size or modification time is CREATE; name is the file's base name; it fires
 * when that name is `path` or matches `pathRegexp` and the operation is `eventType`. Unlike
 * Argo, the last listing survives a reconnect, so what changed while the server was away fires
 * once it is back; and the host key is checked (knownHostsSecret, or the public key in
 * sshKeySecret as Argo's FixedHostKey) unless insecureIgnoreHostKey says otherwise.
 */
#include "buf.h"
#include "common.h"
#include "cron.h"
#include "engine.h"
#include "plugin.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <libssh/libssh.h>
#include <libssh/sftp.h>
#include <pcre2.h>
#include <string.h>
#include <sys/stat.h>

#define OP_CREATE 1
#define OP_REMOVE 4
#define MAX_FILES 100000

typedef struct msg {
  struct msg *next;
  int kind; /* 0 event (text = JSON), 1 connected, 2 not connected (text = why), 3 thread ended */
  size_t len;
  char text[];
} msg;

typedef struct file_info {
  char *name;
  uint64_t size;
  uint64_t mtime;
  uint32_t mtime_ns;
} file_info;

typedef struct sftp_src {
  herald_source *src;
  /* configuration (read by the thread; never changed after start) */
  char *host, *user, *password, *key, *known_hosts, *dir, *path, *metadata;
  int port, insecure, want_op;
  pcre2_code *re;
  uint64_t poll_ms;
  herald_backoff backoff;
  /* thread <-> loop */
  uv_thread_t th;
  uv_async_t async;
  uv_mutex_t mu;
  uv_cond_t cv;
  int quit, th_started, async_open, th_ended;
  msg *mhead, *mtail;
  /* loop side */
  msg *qhead, *qtail; /* events waiting for the bus */
  size_t qlen;
  uint32_t inflight;
  int stopping;
  herald_source_stop_cb done;
} sftp_src;

/* ---- the worker thread ---- */

static void post(sftp_src *s, int kind, const char *text, size_t len) {
  msg *m = herald_xmalloc(sizeof *m + len + 1);
  m->next = NULL;
  m->kind = kind;
  m->len = len;
  if (len) memcpy(m->text, text, len);
  m->text[len] = 0;
  uv_mutex_lock(&s->mu);
  if (s->mtail) s->mtail->next = m;
  else s->mhead = m;
  s->mtail = m;
  uv_mutex_unlock(&s->mu);
  uv_async_send(&s->async);
}

static void post_state(sftp_src *s, int up, const char *why) {
  post(s, up ? 1 : 2, why ? why : "", why ? strlen(why) : 0);
}

/* Waits ms or until quit; returns 1 when quitting. */
static int nap(sftp_src *s, uint64_t ms) {
  uv_mutex_lock(&s->mu);
  if (!s->quit) uv_cond_timedwait(&s->cv, &s->mu, ms * 1000000ull);
  int q = s->quit;
  uv_mutex_unlock(&s->mu);
  return q;
}

static int quitting(sftp_src *s) {
  uv_mutex_lock(&s->mu);
  int q = s->quit;
  uv_mutex_unlock(&s->mu);
  return q;
}

/* Argo's FixedHostKey: a public key line (authorized_keys form) inside the key secret. */
static int matches_secret_pubkey(sftp_src *s, ssh_key srv) {
  if (!s->key) return 0;
  int ok = 0;
  char *copy = herald_xstrdup(s->key), *save = NULL;
  for (char *line = strtok_r(copy, "\r\n", &save); line && !ok; line = strtok_r(NULL, "\r\n", &save)) {
    char type[64], b64[8192];
    if (sscanf(line, "%63s %8191s", type, b64) != 2) continue;
    enum ssh_keytypes_e kt = ssh_key_type_from_name(type);
    if (kt == SSH_KEYTYPE_UNKNOWN) continue;
    ssh_key k = NULL;
    if (ssh_pki_import_pubkey_base64(b64, kt, &k) == SSH_OK) {
      ok = ssh_key_cmp(k, srv, SSH_KEY_CMP_PUBLIC) == 0;
      ssh_key_free(k);
    }
  }
  free(copy);
  return ok;
}

/* Refuses an unknown host key unless told otherwise. Returns 0, or -1 with why set. */
static int check_host_key(sftp_src *s, ssh_session ss, char *why, size_t n) {
  if (s->insecure) return 0;
  ssh_key srv = NULL;
  if (ssh_get_server_publickey(ss, &srv) != SSH_OK) {
    snprintf(why, n, "no host key from %s:%d", s->host, s->port);
    return -1;
  }
  int ok = matches_secret_pubkey(s, srv);
  enum ssh_known_hosts_e st = SSH_KNOWN_HOSTS_UNKNOWN;
  if (!ok && s->known_hosts) {
    st = ssh_session_is_known_server(ss);
    ok = st == SSH_KNOWN_HOSTS_OK;
  }
  if (!ok) {
    unsigned char *hash = NULL;
    size_t hl = 0;
    char *fp = NULL;
    if (ssh_get_publickey_hash(srv, SSH_PUBLICKEY_HASH_SHA256, &hash, &hl) == SSH_OK) {
      fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hl);
      ssh_clean_pubkey_hash(&hash);
    }
    snprintf(why, n, "host key %s of %s:%d %s: refused (add it to knownHostsSecret, or set insecureIgnoreHostKey)",
             fp ? fp : "?", s->host, s->port,
             st == SSH_KNOWN_HOSTS_CHANGED || st == SSH_KNOWN_HOSTS_OTHER ? "differs from the known one"
             : s->known_hosts ? "is not in knownHostsSecret" : "is unknown (no knownHostsSecret)");
    ssh_string_free_char(fp);
  }
  ssh_key_free(srv);
  return ok ? 0 : -1;
}

static ssh_session open_session(sftp_src *s, char *why, size_t n) {
  ssh_session ss = ssh_new();
  if (!ss) {
    snprintf(why, n, "out of memory");
    return NULL;
  }
  long timeout = 10;
  int no = 0;
  ssh_options_set(ss, SSH_OPTIONS_HOST, s->host);
  ssh_options_set(ss, SSH_OPTIONS_PORT, &s->port);
  ssh_options_set(ss, SSH_OPTIONS_USER, s->user);
  ssh_options_set(ss, SSH_OPTIONS_TIMEOUT, &timeout);
  ssh_options_set(ss, SSH_OPTIONS_PROCESS_CONFIG, &no); /* ~/.ssh/config is not ours to read */
  ssh_options_set(ss, SSH_OPTIONS_KNOWNHOSTS, s->known_hosts ? s->known_hosts : "/dev/null");
  ssh_options_set(ss, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null");
  if (ssh_connect(ss) != SSH_OK) {
    snprintf(why, n, "connect to %s:%d: %s", s->host, s->port, ssh_get_error(ss));
    ssh_free(ss);
    return NULL;
  }
  if (check_host_key(s, ss, why, n) != 0) goto fail;
  int rc;
  if (s->key) {
    ssh_key k = NULL;
    if (ssh_pki_import_privkey_base64(s->key, NULL, NULL, NULL, &k) != SSH_OK) {
      snprintf(why, n, "sshKeySecret: not a private key libssh can read");
      goto fail;
    }
    rc = ssh_userauth_publickey(ss, NULL, k);
    ssh_key_free(k);
  } else {
    rc = ssh_userauth_password(ss, NULL, s->password ? s->password : "");
  }
  if (rc != SSH_AUTH_SUCCESS) {
    snprintf(why, n, "login as %s refused (%s)", s->user, s->key ? "key" : "password");
    goto fail;
  }
  return ss;
fail:
  ssh_disconnect(ss);
  ssh_free(ss);
  return NULL;
}

static void files_free(file_info *f, size_t n) {
  for (size_t i = 0; i < n; i++) free(f[i].name);
  free(f);
}

/* The directory's non-directory entries. Returns 0, or -1 with why set. */
static int list(sftp_src *s, sftp_session sf, file_info **out, size_t *nout, char *why, size_t n) {
  sftp_dir d = sftp_opendir(sf, s->dir);
  if (!d) {
    snprintf(why, n, "cannot list %s: SFTP error %d", s->dir, sftp_get_error(sf));
    return -1;
  }
  size_t cap = 16, cnt = 0;
  file_info *f = herald_xmalloc(cap * sizeof *f);
  sftp_attributes a;
  while ((a = sftp_readdir(sf, d))) {
    int is_dir = a->type == SSH_FILEXFER_TYPE_DIRECTORY ||
                 ((a->flags & SSH_FILEXFER_ATTR_PERMISSIONS) && S_ISDIR(a->permissions));
    if (!is_dir && a->name && cnt < MAX_FILES) {
      if (cnt == cap) f = realloc(f, (cap *= 2) * sizeof *f);
      f[cnt].name = herald_xstrdup(a->name);
      f[cnt].size = a->size;
      f[cnt].mtime = a->mtime64 ? a->mtime64 : a->mtime;
      f[cnt].mtime_ns = a->mtime_nseconds;
      cnt++;
    }
    sftp_attributes_free(a);
  }
  int eof = sftp_dir_eof(d);
  sftp_closedir(d);
  if (!eof) {
    files_free(f, cnt);
    snprintf(why, n, "listing %s ended early: SFTP error %d", s->dir, sftp_get_error(sf));
    return -1;
  }
  *out = f;
  *nout = cnt;
  return 0;
}

static void consider(sftp_src *s, const char *name, int op) {
  if (op != s->want_op) return;
  /* Argo: the base name less the configured directory (a plain prefix cut) */
  size_t dl = strlen(s->dir);
  const char *rel = strncmp(name, s->dir, dl) == 0 ? name + dl : name;
  int ok;
  if (s->path) {
    ok = strcmp(rel, s->path) == 0;
  } else {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(s->re, NULL);
    ok = pcre2_match(s->re, (PCRE2_SPTR)rel, strlen(rel), 0, 0, md, NULL) >= 0;
    pcre2_match_data_free(md);
  }
  if (!ok) return;
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_puts(&b, "{\"name\":");
  herald_buf_json_string(&b, name, strlen(name));
  herald_buf_printf(&b, ",\"op\":%d,\"metadata\":%s}", op, s->metadata ? s->metadata : "null");
  post(s, 0, b.data, b.len);
  herald_buf_free(&b);
}

static file_info *find(file_info *f, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(f[i].name, name)) return &f[i];
  return NULL;
}

/* Argo's diffFiles: gone files REMOVE, then changed and new files CREATE. */
static void compare(sftp_src *s, file_info *old, size_t on, file_info *cur, size_t cn) {
  for (size_t i = 0; i < on; i++)
    if (!find(cur, cn, old[i].name)) consider(s, old[i].name, OP_REMOVE);
  for (size_t j = 0; j < cn; j++) {
    file_info *o = find(old, on, cur[j].name);
    if (!o || o->size != cur[j].size || o->mtime != cur[j].mtime || o->mtime_ns != cur[j].mtime_ns)
      consider(s, cur[j].name, OP_CREATE);
  }
}

static void worker(void *arg) {
  sftp_src *s = arg;
  file_info *base = NULL;
  size_t bn = 0;
  int have_base = 0;
  char why[512];
  while (!quitting(s)) {
    ssh_session ss = open_session(s, why, sizeof why);
    sftp_session sf = NULL;
    if (ss) {
      sf = sftp_new(ss);
      if (!sf || sftp_init(sf) != SSH_OK) {
        snprintf(why, sizeof why, "SFTP subsystem refused: %s", ssh_get_error(ss));
        if (sf) sftp_free(sf);
        sf = NULL;
      }
    }
    if (sf) {
      int said = 0;
      for (;;) {
        file_info *cur = NULL;
        size_t cn = 0;
        if (list(s, sf, &cur, &cn, why, sizeof why) != 0) break;
        if (!said) post_state(s, 1, NULL), said = 1;
        herald_backoff_reset(&s->backoff);
        if (have_base) compare(s, base, bn, cur, cn);
        files_free(base, bn);
        base = cur, bn = cn, have_base = 1;
        if (nap(s, s->poll_ms)) break;
      }
      sftp_free(sf);
    }
    if (ss) {
      ssh_disconnect(ss);
      ssh_free(ss);
    }
    if (quitting(s)) break;
    post_state(s, 0, why);
    if (nap(s, herald_backoff_next(&s->backoff))) break;
  }
  files_free(base, bn);
  post(s, 3, NULL, 0);
}

/* ---- the loop side ---- */

static void maybe_done(sftp_src *s);
static void drain(sftp_src *s);

static void on_room(herald_source *src, void *data) {
  (void)src;
  drain(data);
}

static void on_published(void *data, int status) {
  sftp_src *s = data;
  s->inflight--;
  if (status < 0)
    herald_log_limited(&s->src->log, HLOG_WARN, "sftp event not published: %s", herald_strerror(status));
  maybe_done(s);
}

static void drain(sftp_src *s) {
  while (s->qhead && !s->stopping) {
    msg *m = s->qhead;
    int r = herald_source_emit(s->src, m->text, m->len, on_published, s);
    if (r == HERALD_EBUSFULL) {
      herald_source_when_room(s->src, on_room, s);
      return;
    }
    if (r == 0) s->inflight++;
    else herald_log_limited(&s->src->log, HLOG_ERROR, "sftp event not published: %s", herald_strerror(r));
    s->qhead = m->next;
    if (!s->qhead) s->qtail = NULL;
    s->qlen--;
    free(m);
  }
}

static void on_async(uv_async_t *a) {
  sftp_src *s = a->data;
  uv_mutex_lock(&s->mu);
  msg *m = s->mhead;
  s->mhead = s->mtail = NULL;
  uv_mutex_unlock(&s->mu);
  while (m) {
    msg *next = m->next;
    m->next = NULL;
    if (m->kind == 0 && !s->stopping) {
      herald_log(&s->src->log, HLOG_DEBUG, "sftp event %s", m->text);
      if (s->qtail) s->qtail->next = m;
      else s->qhead = m;
      s->qtail = m;
      s->qlen++;
    } else {
      if (m->kind == 1) herald_source_set_connected(s->src, 1, NULL);
      else if (m->kind == 2) herald_source_set_connected(s->src, 0, m->text);
      else if (m->kind == 3) s->th_ended = 1;
      free(m);
    }
    m = next;
  }
  drain(s);
  maybe_done(s);
}

static char *secret_opt(herald_source *src, lua_State *L, int idx, const char *field, int *bad) {
  int err = 0;
  char *v = herald_secret_field(src->engine, &src->log, L, idx, field, field, &err);
  if (err < 0) *bad = 1;
  return v;
}

static int sftp_init_src(herald_source *src, lua_State *L, int cfg_idx) {
  sftp_src *s = src->priv;
  s->src = src;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  int bad = 0;
  char *address = secret_opt(src, L, cfg_idx, "address", &bad);
  s->user = secret_opt(src, L, cfg_idx, "username", &bad);
  s->password = secret_opt(src, L, cfg_idx, "password", &bad);
  s->key = secret_opt(src, L, cfg_idx, "sshKeySecret", &bad);
  lua_getfield(L, cfg_idx, "knownHostsSecret");
  if (lua_istable(L, -1)) {
    int err = 0;
    s->known_hosts = herald_secret_path(src->engine, herald_cfg_string(L, -1, "name", ""),
                                        herald_cfg_string(L, -1, "key", ""), &err);
    if (!s->known_hosts) bad = 1;
  }
  lua_pop(L, 1);
  s->insecure = herald_cfg_bool(L, cfg_idx, "insecureIgnoreHostKey", 0);
  if (bad) {
    free(address);
    return HERALD_EINVAL;
  }
  /* host:port, [v6]:port, or a host alone (port 22) */
  const char *a = address ? address : "";
  const char *colon = a[0] == '[' ? strstr(a, "]:") : strrchr(a, ':');
  if (a[0] == '[') {
    const char *end = strchr(a, ']');
    s->host = herald_xstrndup(a + 1, end ? (size_t)(end - a - 1) : strlen(a + 1));
    s->port = colon ? atoi(colon + 2) : 22;
  } else if (colon) {
    s->host = herald_xstrndup(a, (size_t)(colon - a));
    s->port = atoi(colon + 1);
  } else {
    s->host = herald_xstrdup(a);
    s->port = 22;
  }
  free(address);
  if (!*s->host || s->port <= 0 || s->port > 65535) {
    herald_log(&src->log, HLOG_ERROR, "address: not host:port");
    return HERALD_EINVAL;
  }
  const char *et = herald_cfg_string(L, cfg_idx, "eventType", "");
  s->want_op = !strcmp(et, "CREATE") ? 1 : !strcmp(et, "WRITE") ? 2 : !strcmp(et, "REMOVE") ? 4
             : !strcmp(et, "RENAME") ? 8 : !strcmp(et, "CHMOD") ? 16 : 0;
  int64_t ns = 10000000000LL;
  herald_parse_duration(herald_cfg_string(L, cfg_idx, "pollIntervalDuration", "10s"), &ns);
  s->poll_ms = ns > 0 ? (uint64_t)(ns / 1000000) : 10000;
  lua_getfield(L, cfg_idx, "watchPathConfig");
  int w = lua_gettop(L);
  s->dir = herald_xstrdup(herald_cfg_string(L, w, "directory", "/"));
  const char *p = herald_cfg_string(L, w, "path", NULL);
  if (p && *p) s->path = herald_xstrdup(p);
  const char *rx = herald_cfg_string(L, w, "pathRegexp", NULL);
  if (!s->path) {
    int ec;
    PCRE2_SIZE off;
    s->re = pcre2_compile((PCRE2_SPTR)(rx ? rx : ""), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &ec, &off, NULL);
  }
  lua_pop(L, 1);
  if (!s->path && !s->re) {
    herald_log(&src->log, HLOG_ERROR, "invalid pathRegexp");
    return HERALD_EINVAL;
  }
  s->metadata = herald_cfg_metadata_json(L, cfg_idx);
  herald_backoff_init(&s->backoff, NULL, 0, NULL);
  return 0;
}

static int sftp_start(herald_source *src) {
  sftp_src *s = src->priv;
  uv_mutex_init(&s->mu);
  uv_cond_init(&s->cv);
  uv_async_init(src->engine->loop, &s->async, on_async);
  s->async.data = s;
  s->async_open = 1;
  if (uv_thread_create(&s->th, worker, s) != 0) {
    herald_log(&src->log, HLOG_ERROR, "cannot start the SFTP thread");
    return HERALD_EIO;
  }
  s->th_started = 1;
  herald_log(&src->log, HLOG_INFO, "polling sftp://%s@%s:%d%s every %llu ms", s->user, s->host, s->port, s->dir,
             (unsigned long long)s->poll_ms);
  return 0;
}

static void free_all(sftp_src *s) {
  while (s->qhead) {
    msg *m = s->qhead;
    s->qhead = m->next;
    free(m);
  }
  while (s->mhead) {
    msg *m = s->mhead;
    s->mhead = m->next;
    free(m);
  }
  free(s->host), free(s->user), free(s->password), free(s->key), free(s->known_hosts);
  free(s->dir), free(s->path), free(s->metadata);
  if (s->re) pcre2_code_free(s->re);
}

static void on_async_closed(uv_handle_t *h) {
  sftp_src *s = h->data;
  s->async_open = 0;
  uv_mutex_destroy(&s->mu);
  uv_cond_destroy(&s->cv);
  maybe_done(s);
}

static void maybe_done(sftp_src *s) {
  if (!s->stopping || !s->done || s->inflight) return;
  if (s->th_started && !s->th_ended) return;
  if (s->th_started) {
    uv_thread_join(&s->th); /* it has posted its last message: returns at once */
    s->th_started = 0;
  }
  if (s->async_open) {
    if (!uv_is_closing((uv_handle_t *)&s->async)) uv_close((uv_handle_t *)&s->async, on_async_closed);
    return;
  }
  herald_source_stop_cb done = s->done;
  s->done = NULL;
  free_all(s);
  done(s->src);
}

static void sftp_stop(herald_source *src, herald_source_stop_cb done) {
  sftp_src *s = src->priv;
  if (s->stopping) return;
  s->stopping = 1;
  s->done = done;
  herald_source_cancel_room(src);
  if (s->qlen) herald_log(&src->log, HLOG_WARN, "stopping with %zu sftp events not published", s->qlen);
  if (s->th_started) {
    uv_mutex_lock(&s->mu);
    s->quit = 1;
    uv_cond_signal(&s->cv);
    uv_mutex_unlock(&s->mu);
  }
  maybe_done(s);
}

const herald_source_type herald_source_sftp = {
    .name = "sftp",
    .event_type = "sftp",
    .priv_size = sizeof(sftp_src),
    .init = sftp_init_src,
    .start = sftp_start,
    .stop = sftp_stop,
};
