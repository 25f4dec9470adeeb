/*
 * sources/file/file.c: the `file` event source (Argo's FileEventSource): changes of the files in
 * one directory become events {"name": ..., "op": N, "metadata": ...}, as Argo sends them.
 *
 *   inotify (default): inotify_init1 + one watch on the directory, its fd on a uv_poll_t; each
 *     kernel event is mapped to fsnotify's operation (what Argo relies on), so CREATE, WRITE,
 *     REMOVE, RENAME and CHMOD are told apart (uv_fs_event cannot: it reports only "rename" or
 *     "change"). name is the directory (cleaned) + "/" + the file, as fsnotify names it.
 *   polling: every 100 ms (Argo's interval) the directory is listed and lstat'ed on the thread
 *     pool (uv_queue_work, so a slow file system never holds the loop), and the listing is
 *     compared with the previous one as Argo's polling watcher (radovskyb/watcher) does: new
 *     path CREATE, gone REMOVE, same inode under a new name RENAME, mtime WRITE, mode CHMOD.
 *     name is the file's base name there, as in Argo.
 *
 * Either way, an event fires when its path relative to the directory (Argo: the name with the
 * configured directory string cut off its front) equals `path` or matches `pathRegexp`, and its
 * operation is `eventType`. op is fsnotify's bit (CREATE 1, WRITE 2, REMOVE 4, RENAME 8,
 * CHMOD 16), a number as Argo's JSON has it. Events wait in a queue while the bus is full.
 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "plugin.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <dirent.h>
#include <errno.h>
#include <pcre2.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#define OP_CREATE 1
#define OP_WRITE 2
#define OP_REMOVE 4
#define OP_RENAME 8
#define OP_CHMOD 16
#define POLL_MS 100
#define RETRY_MS 1000
#define MAX_ENTRIES 100000 /* a listing bigger than this is cut (and said once) */
#define QUEUE_MAX 100000   /* events kept while the bus is full; older ones win */

typedef struct pend {
  struct pend *next;
  size_t len;
  char json[];
} pend;

typedef struct entry {
  char *name; /* base name; "" for the directory itself */
  uint64_t dev, ino, size;
  int64_t mtime_ns;
  uint32_t mode;
} entry;

typedef struct listing {
  entry *e;
  size_t n;
  int err; /* errno of opendir, or 0 */
  int cut;
} listing;

typedef struct file_src {
  herald_source *src;
  char *directory; /* as configured (Argo trims this exact string off the event's name) */
  char *clean;     /* filepath.Clean(directory): fsnotify's watch path */
  char *path;      /* watchPathConfig.path, or NULL */
  pcre2_code *re;  /* pathRegexp, or NULL */
  pcre2_match_data *md;
  int want_op;     /* eventType as a bit */
  char *metadata;  /* JSON object text, or NULL (null) */
  int polling;
  /* inotify */
  int ifd, wd;
  uv_poll_t poll;
  int poll_open;
  /* polling */
  uv_work_t work;
  int working, have_base;
  listing base, next;
  /* both */
  uv_timer_t timer; /* polling: the next scan; inotify: the retry of a failed watch */
  int timer_open;
  pend *qhead, *qtail;
  size_t qlen;
  uint32_t inflight;
  int stopping, said_missing;
  int closing; /* handles still closing */
  herald_source_stop_cb done;
} file_src;

/* ---- the event queue ---- */

static void drain(file_src *f);

static void on_room(herald_source *src, void *data) {
  (void)src;
  drain(data);
}

static void maybe_done(file_src *f);

static void on_published(void *data, int status) {
  file_src *f = data;
  f->inflight--;
  if (status < 0)
    herald_log_limited(&f->src->log, HLOG_WARN, "file event not published: %s", herald_strerror(status));
  maybe_done(f);
}

static void drain(file_src *f) {
  while (f->qhead && !f->stopping) {
    pend *p = f->qhead;
    int r = herald_source_emit(f->src, p->json, p->len, on_published, f);
    if (r == HERALD_EBUSFULL) {
      herald_source_when_room(f->src, on_room, f);
      return;
    }
    if (r == 0) f->inflight++;
    else herald_log_limited(&f->src->log, HLOG_ERROR, "file event not published: %s", herald_strerror(r));
    f->qhead = p->next;
    if (!f->qhead) f->qtail = NULL;
    f->qlen--;
    free(p);
  }
}

/* Queues (and tries to publish) the event for name with operation op. */
static void emit(file_src *f, const char *name, int op) {
  if (f->qlen >= QUEUE_MAX) {
    herald_log_limited(&f->src->log, HLOG_WARN, "%zu file events wait for the bus: dropping the one for %s",
                       f->qlen, name);
    return;
  }
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_puts(&b, "{\"name\":");
  herald_buf_json_string(&b, name, strlen(name));
  herald_buf_printf(&b, ",\"op\":%d,\"metadata\":%s}", op, f->metadata ? f->metadata : "null");
  pend *p = herald_xmalloc(sizeof *p + b.len + 1);
  p->next = NULL;
  p->len = b.len;
  memcpy(p->json, b.data, b.len + 1);
  herald_buf_free(&b);
  if (f->qtail) f->qtail->next = p;
  else f->qhead = p;
  f->qtail = p;
  f->qlen++;
  if (f->qlen == 1) drain(f);
}

/* Argo's match: the name less the configured directory (a plain prefix cut) is `path`, or
 * matches `pathRegexp` (unanchored, as Go's MatchString). */
static int matches(file_src *f, const char *name) {
  size_t dl = strlen(f->directory);
  const char *rel = strncmp(name, f->directory, dl) == 0 ? name + dl : name;
  if (f->path) return strcmp(rel, f->path) == 0;
  if (f->re) return pcre2_match(f->re, (PCRE2_SPTR)rel, strlen(rel), 0, 0, f->md, NULL) >= 0;
  return 0;
}

static void consider(file_src *f, const char *name, int op) {
  herald_log(&f->src->log, HLOG_DEBUG, "file event %s op %d", name, op);
  if (op == f->want_op && matches(f, name)) emit(f, name, op);
}

/* ---- inotify ---- */

#define WATCH_MASK (IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_ATTRIB | IN_MODIFY | IN_MOVE_SELF | \
                    IN_DELETE | IN_DELETE_SELF)

/* fsnotify's mapping of an inotify mask to its operations */
static int op_of(uint32_t m) {
  int op = 0;
  if (m & (IN_CREATE | IN_MOVED_TO)) op |= OP_CREATE;
  if (m & (IN_DELETE_SELF | IN_DELETE)) op |= OP_REMOVE;
  if (m & IN_MODIFY) op |= OP_WRITE;
  if (m & (IN_MOVE_SELF | IN_MOVED_FROM)) op |= OP_RENAME;
  if (m & IN_ATTRIB) op |= OP_CHMOD;
  return op;
}

static void on_timer(uv_timer_t *t);

static int add_watch(file_src *f) {
  f->wd = inotify_add_watch(f->ifd, f->clean, WATCH_MASK);
  if (f->wd < 0) {
    if (!f->said_missing)
      herald_log(&f->src->log, HLOG_WARN, "cannot watch directory %s: %s; trying again every %d s",
                 f->clean, strerror(errno), RETRY_MS / 1000);
    f->said_missing = 1;
    uv_timer_start(&f->timer, on_timer, RETRY_MS, 0);
    return -1;
  }
  if (f->said_missing) herald_log(&f->src->log, HLOG_INFO, "watching directory %s", f->clean);
  f->said_missing = 0;
  return 0;
}

static void on_inotify(uv_poll_t *h, int status, int events) {
  file_src *f = h->data;
  (void)events;
  if (status < 0 || f->stopping) return;
  char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
  for (;;) {
    ssize_t n = read(f->ifd, buf, sizeof buf);
    if (n <= 0) break;
    for (char *p = buf; p < buf + n;) {
      struct inotify_event *ev = (struct inotify_event *)p;
      p += sizeof *ev + ev->len;
      if (ev->mask & IN_Q_OVERFLOW) {
        herald_log_limited(&f->src->log, HLOG_WARN, "inotify queue overflowed: some file events were lost");
        continue;
      }
      if (ev->mask & IN_IGNORED) { /* the directory went away: watch it again once it is back */
        if (ev->wd == f->wd) {
          f->wd = -1;
          herald_log(&f->src->log, HLOG_WARN, "directory %s is no longer watched (removed?)", f->clean);
          add_watch(f);
        }
        continue;
      }
      int op = op_of(ev->mask);
      if (!op) continue;
      char *name = ev->len && ev->name[0] ? herald_xasprintf("%s/%s", f->clean, ev->name) : herald_xstrdup(f->clean);
      consider(f, name, op);
      free(name);
    }
  }
}

/* ---- polling ---- */

static void listing_free(listing *l) {
  for (size_t i = 0; i < l->n; i++) free(l->e[i].name);
  free(l->e);
  memset(l, 0, sizeof *l);
}

static void fill(entry *e, const struct stat *st) {
  e->dev = st->st_dev, e->ino = st->st_ino, e->size = (uint64_t)st->st_size;
  e->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
  e->mode = st->st_mode;
}

/* On the thread pool: the directory itself and each entry in it, lstat'ed. */
static void scan_work(uv_work_t *w) {
  file_src *f = w->data;
  listing *l = &f->next;
  memset(l, 0, sizeof *l);
  struct stat st;
  DIR *d = opendir(f->clean);
  if (!d || fstat(dirfd(d), &st) != 0) {
    l->err = errno ? errno : ENOENT;
    if (d) closedir(d);
    return;
  }
  size_t cap = 64;
  l->e = herald_xmalloc(cap * sizeof *l->e);
  l->e[0].name = herald_xstrdup("");
  fill(&l->e[0], &st);
  l->n = 1;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    if (l->n >= MAX_ENTRIES) {
      l->cut = 1;
      break;
    }
    if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (l->n == cap) l->e = realloc(l->e, (cap *= 2) * sizeof *l->e);
    l->e[l->n].name = herald_xstrdup(de->d_name);
    fill(&l->e[l->n], &st);
    l->n++;
  }
  closedir(d);
}

static entry *find_name(listing *l, const char *name) {
  for (size_t i = 0; i < l->n; i++)
    if (!strcmp(l->e[i].name, name)) return &l->e[i];
  return NULL;
}

static const char *base_of(file_src *f, entry *e) {
  if (e->name[0]) return e->name;
  const char *s = strrchr(f->clean, '/');
  return s && s[1] ? s + 1 : f->clean;
}

/* radovskyb/watcher's pollEvents: writes and chmods of paths still there, then renames (a gone
 * path and a new one with the same device and inode), then the remaining creates and removes. */
static void compare(file_src *f, listing *old, listing *cur) {
  char *gone = herald_xcalloc(old->n ? old->n : 1, 1), *born = herald_xcalloc(cur->n ? cur->n : 1, 1);
  for (size_t i = 0; i < old->n; i++) gone[i] = !find_name(cur, old->e[i].name);
  for (size_t j = 0; j < cur->n; j++) {
    entry *c = &cur->e[j], *o = find_name(old, c->name);
    if (!o) {
      born[j] = 1;
      continue;
    }
    if (o->mtime_ns != c->mtime_ns) consider(f, base_of(f, c), OP_WRITE);
    if (o->mode != c->mode) consider(f, base_of(f, c), OP_CHMOD);
  }
  for (size_t i = 0; i < old->n; i++) {
    if (!gone[i]) continue;
    for (size_t j = 0; j < cur->n; j++) {
      if (!born[j] || old->e[i].dev != cur->e[j].dev || old->e[i].ino != cur->e[j].ino) continue;
      consider(f, base_of(f, &old->e[i]), OP_RENAME); /* the event carries the old file info */
      gone[i] = born[j] = 0;
      break;
    }
  }
  for (size_t j = 0; j < cur->n; j++)
    if (born[j]) consider(f, base_of(f, &cur->e[j]), OP_CREATE);
  for (size_t i = 0; i < old->n; i++)
    if (gone[i]) consider(f, base_of(f, &old->e[i]), OP_REMOVE);
  free(gone), free(born);
}

static void scan_done(uv_work_t *w, int status) {
  file_src *f = w->data;
  f->working = 0;
  if (status == 0 && !f->stopping) {
    listing *cur = &f->next;
    if (cur->err) {
      if (!f->said_missing)
        herald_log(&f->src->log, HLOG_WARN, "cannot list directory %s: %s", f->clean, strerror(cur->err));
      f->said_missing = 1;
      listing_free(cur); /* the old listing stays: what changed meanwhile shows once it is back */
    } else {
      if (f->said_missing) herald_log(&f->src->log, HLOG_INFO, "listing directory %s again", f->clean);
      f->said_missing = 0;
      if (cur->cut) herald_log_limited(&f->src->log, HLOG_WARN, "directory %s has over %d entries: only the first are compared",
                                       f->clean, MAX_ENTRIES);
      if (f->have_base) compare(f, &f->base, cur);
      else herald_log(&f->src->log, HLOG_DEBUG, "first listing of %s: %zu entries", f->clean, cur->n);
      listing_free(&f->base);
      f->base = *cur;
      memset(cur, 0, sizeof *cur);
      f->have_base = 1;
    }
  } else {
    listing_free(&f->next);
  }
  if (!f->stopping) uv_timer_start(&f->timer, on_timer, POLL_MS, 0);
  maybe_done(f);
}

static void on_timer(uv_timer_t *t) {
  file_src *f = t->data;
  if (f->stopping) return;
  if (!f->polling) {
    add_watch(f);
    return;
  }
  if (f->working) return;
  f->working = 1;
  f->work.data = f;
  if (uv_queue_work(t->loop, &f->work, scan_work, scan_done) != 0) {
    f->working = 0;
    uv_timer_start(&f->timer, on_timer, POLL_MS, 0);
  }
}

/* ---- the source ---- */

static const char *op_names[] = {"CREATE", "WRITE", "REMOVE", "RENAME", "CHMOD"};

static int file_init(herald_source *src, lua_State *L, int cfg_idx) {
  file_src *f = src->priv;
  f->src = src;
  f->ifd = f->wd = -1;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  const char *et = herald_cfg_string(L, cfg_idx, "eventType", "");
  for (int i = 0; i < 5; i++)
    if (!strcmp(et, op_names[i])) f->want_op = 1 << i;
  f->polling = herald_cfg_bool(L, cfg_idx, "polling", 0);
  lua_getfield(L, cfg_idx, "watchPathConfig");
  int w = lua_gettop(L);
  f->directory = herald_xstrdup(herald_cfg_string(L, w, "directory", "/"));
  const char *p = herald_cfg_string(L, w, "path", NULL);
  if (p && *p) f->path = herald_xstrdup(p);
  const char *rx = herald_cfg_string(L, w, "pathRegexp", NULL);
  if (rx && *rx && !f->path) {
    int ec;
    PCRE2_SIZE off;
    f->re = pcre2_compile((PCRE2_SPTR)rx, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &ec, &off, NULL);
    if (!f->re) {
      lua_pop(L, 1);
      herald_log(&src->log, HLOG_ERROR, "invalid pathRegexp %s", rx);
      return HERALD_EINVAL;
    }
    f->md = pcre2_match_data_create_from_pattern(f->re, NULL);
  }
  lua_pop(L, 1);
  /* filepath.Clean for an absolute path: no doubled or trailing slashes, no "." parts; ".."
   * parts are left to the kernel (they resolve the same) */
  size_t n = strlen(f->directory);
  f->clean = herald_xmalloc(n + 2);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (f->directory[i] == '/' && o && f->clean[o - 1] == '/') continue;
    if (f->directory[i] == '.' && o && f->clean[o - 1] == '/' && (i + 1 == n || f->directory[i + 1] == '/')) continue;
    f->clean[o++] = f->directory[i];
  }
  while (o > 1 && f->clean[o - 1] == '/') o--;
  f->clean[o] = 0;
  f->metadata = herald_cfg_metadata_json(L, cfg_idx);
  return 0;
}

static int file_start(herald_source *src) {
  file_src *f = src->priv;
  uv_loop_t *loop = src->engine->loop;
  uv_timer_init(loop, &f->timer);
  f->timer.data = f;
  f->timer_open = 1;
  if (f->polling) {
    herald_log(&src->log, HLOG_INFO, "polling directory %s every %d ms for %s", f->clean, POLL_MS,
               op_names[__builtin_ctz(f->want_op)]);
    on_timer(&f->timer); /* the first listing is the baseline: no events for what is there */
    return 0;
  }
  f->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (f->ifd < 0) {
    herald_log(&src->log, HLOG_ERROR, "inotify: %s (set polling: true on file systems without it)", strerror(errno));
    return HERALD_EIO;
  }
  uv_poll_init(loop, &f->poll, f->ifd);
  f->poll.data = f;
  f->poll_open = 1;
  uv_poll_start(&f->poll, UV_READABLE, on_inotify);
  if (add_watch(f) == 0)
    herald_log(&src->log, HLOG_INFO, "watching directory %s for %s", f->clean, op_names[__builtin_ctz(f->want_op)]);
  return 0;
}

static void maybe_done(file_src *f) {
  if (!f->stopping || f->closing || f->working || f->inflight || !f->done) return;
  herald_source_stop_cb done = f->done;
  f->done = NULL;
  if (f->ifd >= 0) close(f->ifd);
  f->ifd = -1;
  while (f->qhead) {
    pend *p = f->qhead;
    f->qhead = p->next;
    free(p);
  }
  listing_free(&f->base);
  listing_free(&f->next);
  free(f->directory), free(f->clean), free(f->path), free(f->metadata);
  if (f->md) pcre2_match_data_free(f->md);
  if (f->re) pcre2_code_free(f->re);
  done(f->src);
}

static void on_closed(uv_handle_t *h) {
  file_src *f = h->data;
  f->closing--;
  maybe_done(f);
}

static void file_stop(herald_source *src, herald_source_stop_cb done) {
  file_src *f = src->priv;
  if (f->stopping) return;
  f->stopping = 1;
  f->done = done;
  herald_source_cancel_room(src);
  if (f->qlen) herald_log(&src->log, HLOG_WARN, "stopping with %zu file events not published", f->qlen);
  if (f->poll_open) {
    f->closing++;
    uv_close((uv_handle_t *)&f->poll, on_closed);
  }
  if (f->timer_open) {
    f->closing++;
    uv_close((uv_handle_t *)&f->timer, on_closed);
  }
  maybe_done(f);
}

const herald_source_type herald_source_file = {
    .name = "file",
    .event_type = "file",
    .priv_size = sizeof(file_src),
    .init = file_init,
    .start = file_start,
    .stop = file_stop,
};
