/*
 * lib/kube/kube.c: the Kubernetes API client under the k8s and argoWorkflow triggers.
 *
 *   execute(action) -> Lua coroutine kube.run(ctx) --yield(method, path, body, type)-->
 *   a transfer on engine/curl_loop.h (libcurl multi on the libuv loop, shared with the other
 *   curl triggers) --> completion -> resume(status, body) -> ... -> the coroutine returns
 *   (result, reason) -> req->done.
 * The coroutine may also yield ("SLEEP", ms) (policy.k8s backoff), ("FETCH", url, verify)
 * (the trigger's source.url, fetched without the cluster's credentials) and ("GIT", {...})
 * (its source.git, read on the thread pool: git.c).
 *
 * The shared multi handle keeps the connection to the API server alive across actions. Lua runs only inside lua_resume (protected): a Lua error
 * in the flow ends that one action as FAILED and never crosses the libuv callback.
 */
#include "kube.h"
#include "sigv4.h"

#include "common.h"
#include "engine.h"

#include <lauxlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#define MAX_RESPONSE (64u << 20) /* a listed or fetched object bigger than this is an error */
#define REQUEST_TIMEOUT_MS 30000L

static struct {
  int refs;
  herald_kube_req *inflight;
  int module_ref; /* kube.lua's module table, in the engine's Lua state */
} G = {.module_ref = LUA_NOREF};

static void on_transfer_done(herald_curl_xfer *x, CURLcode rc);

static size_t on_body(char *ptr, size_t size, size_t n, void *userdata) {
  herald_kube_req *kr = userdata;
  size_t len = size * n;
  if (kr->response.len + len > MAX_RESPONSE) return 0; /* aborts: CURLE_WRITE_ERROR */
  herald_buf_append(&kr->response, ptr, len);
  return len;
}

/* Releases the HTTP round trip of kr (not the coroutine). */
static void http_release(herald_kube_req *kr) {
  herald_curl_xfer_release(&kr->x);
  curl_slist_free_all(kr->headers);
  kr->headers = NULL;
  free(kr->body);
  kr->body = NULL;
  herald_buf_free(&kr->response);
}

static void list_remove(herald_kube_req *kr) {
  if (kr->prev) kr->prev->next = kr->next;
  else if (G.inflight == kr) G.inflight = kr->next;
  if (kr->next) kr->next->prev = kr->prev;
  kr->next = kr->prev = NULL;
}

/* Releases everything kr holds: the HTTP round trip, a pending sleep, the coroutine, the list
 * entry. */
static void req_release(herald_kube_req *kr) {
  http_release(kr);
  herald__kube_git_abandon(kr);
  if (kr->sleep) {
    uv_timer_stop(kr->sleep);
    uv_close((uv_handle_t *)kr->sleep, (uv_close_cb)free);
    kr->sleep = NULL;
  }
  list_remove(kr);
  if (kr->co_ref != LUA_NOREF) {
    luaL_unref(kr->kc->trigger->engine->L, LUA_REGISTRYINDEX, kr->co_ref);
    kr->co_ref = LUA_NOREF;
    kr->co = NULL;
  }
}

static void add_header(herald_kube_req *kr, const char *fmt, const char *v) {
  char *line = herald_xasprintf(fmt, v);
  kr->headers = curl_slist_append(kr->headers, line);
  free(line);
}

static void set_blob(CURL *e, CURLoption opt, herald_buf *b) {
  struct curl_blob blob = {b->data, b->len, CURL_BLOB_COPY};
  curl_easy_setopt(e, opt, &blob);
}

static void on_transfer_done(herald_curl_xfer *x, CURLcode rc);

/* A GET of url into kr->response with the options every request shares; returns the handle
 * to finish setting up, or NULL (ENOMEM). */
static CURL *xfer_begin(herald_kube_req *kr, const char *url) {
  if (herald_curl_xfer_init(&kr->x) != 0) return NULL;
  kr->x.data = kr;
  CURL *e = kr->x.easy;
  herald_curl_xfer_url(&kr->x, url);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, kr);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, REQUEST_TIMEOUT_MS);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_USERAGENT, "herald");
  return e;
}

/* The coroutine yielded ("FETCH", url, verify): a trigger's source.url, fetched with a plain GET
 * (redirects followed, as Go's http.Get does) and none of the API server's credentials; TLS is
 * verified only when verify is true (Argo's verifyCert). The stack is cleared. */
static int fetch_start(herald_kube_req *kr) {
  lua_State *co = kr->co;
  const char *url = lua_tostring(co, 2);
  int verify = lua_toboolean(co, 3);
  CURL *e = url ? xfer_begin(kr, url) : NULL;
  lua_settop(co, 0);
  if (!e) return url ? HERALD_ENOMEM : HERALD_EINVAL;
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  if (!verify) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (herald_curl_xfer_start(&kr->x, on_transfer_done) != 0) {
    http_release(kr);
    return HERALD_EIO;
  }
  return 0;
}

/* The coroutine yielded ("S3", {endpoint, bucket, key, region, insecure, access_key,
 * secret_key, ca}): a SigV4-signed GetObject, path-style (https://endpoint/bucket/key, plain
 * HTTP when insecure), as MinIO's client does for Argo's S3Artifact. */
static int s3_start(herald_kube_req *kr) {
  lua_State *co = kr->co;
  if (!lua_istable(co, 2)) {
    lua_settop(co, 0);
    return HERALD_EINVAL;
  }
  const char *endpoint = herald_cfg_string(co, 2, "endpoint", NULL);
  const char *bucket = herald_cfg_string(co, 2, "bucket", NULL);
  const char *key = herald_cfg_string(co, 2, "key", NULL);
  const char *region = herald_cfg_string(co, 2, "region", "us-east-1");
  const char *ak = herald_cfg_string(co, 2, "access_key", NULL);
  const char *sk = herald_cfg_string(co, 2, "secret_key", NULL);
  const char *ca = herald_cfg_string(co, 2, "ca", NULL);
  int insecure = herald_cfg_bool(co, 2, "insecure", 0);
  if (!endpoint || !bucket || !key || !ak || !sk) {
    lua_settop(co, 0);
    return HERALD_EINVAL;
  }
  herald_buf path = HERALD_BUF_INIT;
  herald_buf_putc(&path, '/');
  herald_sigv4_uri_encode(&path, bucket, strlen(bucket), 0);
  herald_buf_putc(&path, '/');
  herald_sigv4_uri_encode(&path, key, strlen(key), 1);
  char *url = herald_xasprintf("%s://%s%s", insecure ? "http" : "https", endpoint, herald_buf_cstr(&path));
  char date[17];
  herald_sigv4_amz_date(herald_now_ns(), date);
  char *host = herald_xasprintf("Host:%s", endpoint);
  char *xdate = herald_xasprintf("x-amz-date:%s", date);
  const char *h[] = {host, "x-amz-content-sha256:" SIGV4_EMPTY_SHA256, xdate};
  herald_sigv4_req sr = {.method = "GET", .path = herald_buf_cstr(&path), .headers = h, .nheaders = 3,
                         .region = region, .service = "s3", .amz_date = date, .s3 = 1};
  herald_sigv4_creds c = {ak, sk, NULL};
  herald_buf auth = HERALD_BUF_INIT;
  herald_buf_puts(&auth, "Authorization: ");
  herald_sigv4_authorization(&sr, &c, &auth);
  CURL *e = xfer_begin(kr, url);
  int r = 0;
  if (!e) {
    r = HERALD_ENOMEM;
  } else {
    kr->headers = curl_slist_append(kr->headers, xdate);
    kr->headers = curl_slist_append(kr->headers, "x-amz-content-sha256: " SIGV4_EMPTY_SHA256);
    kr->headers = curl_slist_append(kr->headers, herald_buf_cstr(&auth));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, kr->headers);
    if (ca) {
      struct curl_blob b = {(void *)ca, strlen(ca), CURL_BLOB_COPY};
      curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &b);
    }
    if (herald_curl_xfer_start(&kr->x, on_transfer_done) != 0) {
      http_release(kr);
      r = HERALD_EIO;
    }
  }
  lua_settop(co, 0); /* the strings above were the table's: used until here */
  free(url), free(host), free(xdate);
  herald_buf_free(&path), herald_buf_free(&auth);
  return r;
}

/* Starts the request the coroutine yielded: (method, path, body|nil, content_type|nil) on
 * kr->co's stack, which is cleared. Returns 0 or a negative error. */
/* A request to the API server at path with the cluster's credentials and TLS, finished by
 * done. Returns 0, or an error after releasing what it set up. */
static int http_begin(herald_kube_req *kr, const char *method, const char *path, const char *body,
                      size_t blen, const char *ctype, herald_curl_done_cb done) {
  herald_kube_client *kc = kr->kc;
  char *url = herald_xasprintf("%s%s", kc->server, path);
  CURL *e = xfer_begin(kr, url);
  free(url);
  if (!e) return HERALD_ENOMEM;
  if (strcmp(method, "GET") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  if (body) {
    kr->body = herald_xstrndup(body, blen);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, kr->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    add_header(kr, "Content-Type: %s", ctype ? ctype : "application/json");
  }
  add_header(kr, "%s", "Accept: application/json");
  add_header(kr, "%s", "Expect:");
  herald__kube_auth(kc, e, &kr->headers);
  if (herald_curl_xfer_start(&kr->x, done) != 0) {
    http_release(kr);
    return HERALD_EIO;
  }
  return 0;
}

void herald__kube_auth(herald_kube_client *kc, CURL *e, struct curl_slist **headers) {
  /* Credentials: a bearer token (re-read from its file each time: projected service-account
   * tokens rotate), or basic auth, and/or a client certificate. */
  char *token = NULL;
  if (kc->token_file) token = herald_read_file(kc->token_file, NULL, &(int){0});
  const char *tok = token ? token : kc->token;
  if (tok && *tok) {
    size_t n = strcspn(tok, "\r\n");
    char *t1 = herald_xstrndup(tok, n);
    char *line = herald_xasprintf("Authorization: Bearer %s", t1);
    *headers = curl_slist_append(*headers, line);
    free(line);
    free(t1);
  } else if (kc->username) {
    curl_easy_setopt(e, CURLOPT_USERNAME, kc->username);
    curl_easy_setopt(e, CURLOPT_PASSWORD, kc->password ? kc->password : "");
  }
  free(token);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, *headers);
  if (kc->insecure) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  } else if (kc->ca_data.len) {
    set_blob(e, CURLOPT_CAINFO_BLOB, &kc->ca_data);
  } else if (kc->ca_file) {
    curl_easy_setopt(e, CURLOPT_CAINFO, kc->ca_file);
  }
  if (kc->cert_data.len) set_blob(e, CURLOPT_SSLCERT_BLOB, &kc->cert_data);
  else if (kc->cert_file) curl_easy_setopt(e, CURLOPT_SSLCERT, kc->cert_file);
  if (kc->key_data.len) set_blob(e, CURLOPT_SSLKEY_BLOB, &kc->key_data);
  else if (kc->key_file) curl_easy_setopt(e, CURLOPT_SSLKEY, kc->key_file);
}

/* The coroutine yielded ("HTTP", method, path, body, content type). The stack is cleared. */
static int http_start(herald_kube_req *kr) {
  lua_State *co = kr->co;
  const char *method = lua_tostring(co, 1);
  const char *path = lua_tostring(co, 2);
  size_t blen = 0;
  const char *body = lua_tolstring(co, 3, &blen);
  const char *ctype = lua_tostring(co, 4);
  int rc = method && path ? http_begin(kr, method, path, body, blen, ctype, on_transfer_done) : HERALD_EINVAL;
  lua_settop(co, 0);
  return rc;
}

/* ---- the start-up probe ----
 * herald run says once, at start, when a trigger's cluster cannot be reached, instead of
 * leaving it to each firing: a GET of /version (what kubectl asks first), whose failure to
 * connect (or a 401/403) is logged with what to do. Any other answer means the server is there. */
static void on_probe_done(herald_curl_xfer *x, CURLcode rc) {
  herald_kube_req *kr = x->data;
  herald_kube_client *kc = kr->kc;
  herald_trigger *t = kc->trigger;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  if (rc != CURLE_OK)
    herald_log(&t->log, HLOG_WARN,
               "Kubernetes API server %s not reachable (%s): this %s trigger will fail until it is; "
               "check the kubeconfig (KUBECONFIG) or use herald run --dry-run to see what it would do",
               kc->server, x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc), kc->kind);
  else if (status == 401 || status == 403)
    herald_log(&t->log, HLOG_WARN,
               "Kubernetes API server %s refused the kubeconfig's credentials (HTTP %ld): this %s "
               "trigger will fail until they are fixed", kc->server, status, kc->kind);
  else
    herald_log(&t->log, HLOG_DEBUG, "Kubernetes API server %s answers (HTTP %ld)", kc->server, status);
  http_release(kr);
  kc->probe = NULL;
  free(kr);
}

static void probe_start(herald_kube_client *kc) {
  if (!kc->server) return;
  herald_kube_req *kr = herald_xcalloc(1, sizeof *kr);
  kr->kc = kc;
  kr->co_ref = LUA_NOREF;
  if (http_begin(kr, "GET", "/version", NULL, 0, NULL, on_probe_done) != 0) {
    free(kr);
    return;
  }
  curl_easy_setopt(kr->x.easy, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(kr->x.easy, CURLOPT_TIMEOUT_MS, 10000L);
  kc->probe = kr;
}

/* Resumes the coroutine with the nargs values on its stack, and starts each request it asks
 * for. Returns 0 while a request is in flight, 1 once the coroutine finished (kr->res and
 * kr->reason set). */
static void finish(herald_kube_req *kr);
static int step(herald_kube_req *kr, int nargs);

static void on_wake(uv_timer_t *t) {
  herald_kube_req *kr = t->data;
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
  kr->sleep = NULL;
  if (step(kr, 0)) finish(kr);
}

/* The coroutine yielded ("SLEEP", ms): resume it from a timer (policy.k8s backoff). */
static int sleep_start(herald_kube_req *kr) {
  lua_State *co = kr->co;
  double ms = lua_tonumber(co, 2);
  lua_settop(co, 0);
  kr->sleep = malloc(sizeof *kr->sleep);
  if (!kr->sleep) return HERALD_ENOMEM;
  uv_timer_init(kr->kc->trigger->engine->loop, kr->sleep);
  kr->sleep->data = kr;
  uv_timer_start(kr->sleep, on_wake, ms > 0 ? (uint64_t)ms : 0, 0);
  return 0;
}

static int step(herald_kube_req *kr, int nargs) {
  for (;;) {
    int rc = lua_resume(kr->co, nargs);
    if (rc == LUA_YIELD && lua_type(kr->co, 1) == LUA_TSTRING && strcmp(lua_tostring(kr->co, 1), "SLEEP") == 0) {
      if (sleep_start(kr) == 0) return 0;
      nargs = 0;
      continue;
    }
    if (rc == LUA_YIELD) {
      const char *op = lua_type(kr->co, 1) == LUA_TSTRING ? lua_tostring(kr->co, 1) : "";
      int err = strcmp(op, "FETCH") == 0 ? fetch_start(kr)
                : strcmp(op, "GIT") == 0 ? herald__kube_git_start(kr)
                : strcmp(op, "S3") == 0  ? s3_start(kr)
                                         : http_start(kr);
      if (err == 0) return 0;
      lua_pushinteger(kr->co, 0);
      lua_pushfstring(kr->co, "cannot start the request: %s", herald_strerror(err));
      nargs = 2;
      continue;
    }
    const char *reason;
    if (rc == 0) {
      const char *res = lua_tostring(kr->co, 1);
      reason = lua_tostring(kr->co, 2);
      kr->res = res && !strcmp(res, "done")    ? HERALD_TRIGGER_DONE
                : res && !strcmp(res, "retry") ? HERALD_TRIGGER_RETRY
                                               : HERALD_TRIGGER_FAILED;
    } else {
      reason = lua_tostring(kr->co, -1);
      kr->res = HERALD_TRIGGER_FAILED;
      if (!reason) reason = "Lua error";
    }
    snprintf(kr->reason, sizeof kr->reason, "%s", reason ? reason : "");
    return 1;
  }
}

static void finish(herald_kube_req *kr) {
  herald_trigger_req *req = kr->req;
  herald_trigger_result res = kr->res;
  char reason[sizeof kr->reason];
  memcpy(reason, kr->reason, sizeof reason);
  req_release(kr);
  req->done(req, res, res == HERALD_TRIGGER_DONE ? NULL : reason);
}

void herald__kube_resume(herald_kube_req *kr, int nargs) {
  if (step(kr, nargs)) finish(kr);
}

static void on_transfer_done(herald_curl_xfer *x, CURLcode rc) {
  herald_kube_req *kr = x->data;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  lua_State *co = kr->co;
  if (rc != CURLE_OK) {
    lua_pushinteger(co, 0);
    lua_pushstring(co, x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
  } else {
    lua_pushinteger(co, status);
    lua_pushlstring(co, kr->response.data ? kr->response.data : "", kr->response.len);
  }
  http_release(kr);
  if (step(kr, 2)) finish(kr);
}

/* ---- configuration ---- */

/* stack: L unchanged. Loads the stdlib module herald.kube (scripts/stdlib/herald/kube.lua, compiled
 * into the binary) once; returns 0 or HERALD_ELUA with msg set. */
static int load_module(lua_State *L, const char **msg) {
  if (G.module_ref != LUA_NOREF) return 0;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "herald.kube");
  if (lua_pcall(L, 1, 1, 0)) {
    *msg = lua_tostring(L, -1);
    lua_pop(L, 1);
    return HERALD_ELUA;
  }
  G.module_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static char *field_str(lua_State *L, int idx, const char *k) {
  lua_getfield(L, idx, k);
  char *v = lua_type(L, -1) == LUA_TSTRING && lua_objlen(L, -1) ? herald_xstrdup(lua_tostring(L, -1)) : NULL;
  lua_pop(L, 1);
  return v;
}

static void field_bytes(lua_State *L, int idx, const char *k, herald_buf *b) {
  lua_getfield(L, idx, k);
  size_t n = 0;
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
  if (s && n) herald_buf_append(b, s, n);
  lua_pop(L, 1);
}

static void client_free(herald_kube_client *kc) {
  free(kc->op), free(kc->server), free(kc->token), free(kc->token_file);
  free(kc->username), free(kc->password), free(kc->ca_file), free(kc->cert_file);
  free(kc->key_file), free(kc->namespace);
  herald_buf_free(&kc->ca_data), herald_buf_free(&kc->cert_data), herald_buf_free(&kc->key_data);
}

/* Reads the cluster configuration (kube.lua's load_config) into kc's connection fields. Returns
 * 0, or a negative error after logging why to lg. */
static int load_cluster(herald_kube_client *kc, lua_State *L, const herald_logger *lg, const char *what) {
  const char *msg = NULL;
  if (load_module(L, &msg) != 0) {
    herald_log(lg, HLOG_ERROR, "cannot load the Kubernetes client: %s", msg ? msg : "?");
    return HERALD_ELUA;
  }
  /* stack: -> module, load_config, result, err */
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, G.module_ref);
  lua_getfield(L, -1, "load_config");
  if (lua_pcall(L, 0, 2, 0) != 0 || !lua_istable(L, -2)) {
    herald_log(lg, HLOG_ERROR, "%s: %s", what,
               lua_tostring(L, -1) ? lua_tostring(L, -1) : "no cluster configuration");
    lua_settop(L, top);
    return HERALD_EINVAL;
  }
  int cfg = top + 2;
  kc->server = field_str(L, cfg, "server");
  kc->token = field_str(L, cfg, "token");
  kc->token_file = field_str(L, cfg, "token_file");
  kc->username = field_str(L, cfg, "username");
  kc->password = field_str(L, cfg, "password");
  kc->ca_file = field_str(L, cfg, "ca_file");
  kc->cert_file = field_str(L, cfg, "cert_file");
  kc->key_file = field_str(L, cfg, "key_file");
  kc->namespace = field_str(L, cfg, "namespace");
  if (!kc->namespace) kc->namespace = herald_xstrdup("default");
  field_bytes(L, cfg, "ca_data", &kc->ca_data);
  field_bytes(L, cfg, "cert_data", &kc->cert_data);
  field_bytes(L, cfg, "key_data", &kc->key_data);
  lua_getfield(L, cfg, "insecure");
  kc->insecure = lua_toboolean(L, -1);
  lua_pop(L, 1);
  char *source = field_str(L, cfg, "source");
  herald_log(lg, HLOG_DEBUG, "%s talks to %s (%s), default namespace %s", what,
             kc->server ? kc->server : "?", source ? source : "?", kc->namespace);
  free(source);
  lua_settop(L, top);
  return 0;
}

int herald__kube_init(herald_kube_client *kc, herald_trigger *t, lua_State *L, int idx,
                      const char *kind, const char *dflt_op) {
  kc->trigger = t;
  kc->kind = kind;
  kc->cache_ref = LUA_NOREF;
  kc->op = herald_xstrdup(herald_cfg_string(L, idx, "operation", dflt_op));
  char what[64];
  snprintf(what, sizeof what, "%s trigger", kind);
  int rc = load_cluster(kc, L, &t->log, what);
  if (rc != 0) {
    client_free(kc);
    return rc;
  }
  lua_newtable(L);
  kc->cache_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  G.refs++;
  rc = herald_curl_loop_ref(t->engine->loop);
  if (rc == 0) probe_start(kc);
  return rc;
}

int herald_kube_conn_init(herald_kube_client *kc, lua_State *L, const herald_logger *lg,
                          const char *what, uv_loop_t *loop) {
  memset(kc, 0, sizeof *kc);
  kc->cache_ref = LUA_NOREF;
  int rc = load_cluster(kc, L, lg, what);
  if (rc != 0) {
    client_free(kc);
    return rc;
  }
  G.refs++;
  rc = herald_curl_loop_ref(loop);
  if (rc != 0) {
    herald_kube_conn_free(kc, L);
    return rc;
  }
  kc->conn_only = 1;
  return 0;
}

void herald_kube_conn_free(herald_kube_client *kc, lua_State *L) {
  if (kc->conn_only) herald_curl_loop_unref();
  kc->conn_only = 0;
  client_free(kc);
  if (--G.refs == 0) {
    if (G.module_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, G.module_ref);
    G.module_ref = LUA_NOREF;
  }
}

int herald__kube_execute(herald_kube_client *kc, herald_trigger_req *req, lua_State *L, int idx) {
  herald_trigger *t = kc->trigger;
  herald_kube_req *kr = req->priv;
  memset(kr, 0, sizeof *kr);
  kr->req = req;
  kr->kc = kc;
  kr->co_ref = LUA_NOREF;
  int top = lua_gettop(L);
  if (idx < 0) idx = top + idx + 1;
  /* stack: -> run, ctx; then both move to the new coroutine */
  lua_rawgeti(L, LUA_REGISTRYINDEX, G.module_ref);
  lua_getfield(L, -1, "run");
  lua_remove(L, -2);
  lua_createtable(L, 0, 10);
  lua_pushstring(L, kc->kind);
  lua_setfield(L, -2, "type");
  lua_getfield(L, idx, "spec");
  if (lua_istable(L, -1)) lua_getfield(L, -1, "operation");
  else lua_pushnil(L);
  if (lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    lua_pushstring(L, kc->op);
  }
  lua_setfield(L, -3, "op");
  lua_setfield(L, -2, "spec");
  lua_getfield(L, idx, "object");
  lua_setfield(L, -2, "object");
  lua_getfield(L, idx, "policy");
  lua_setfield(L, -2, "policy");
  lua_getfield(L, idx, "fetch"); /* source.url: fetched first, then `params` apply */
  lua_setfield(L, -2, "fetch");
  lua_getfield(L, idx, "params");
  lua_setfield(L, -2, "params");
  lua_getfield(L, idx, "events");
  lua_setfield(L, -2, "events");
  lua_pushstring(L, kc->namespace);
  lua_setfield(L, -2, "namespace");
  lua_pushstring(L, t->sensor_name);
  lua_setfield(L, -2, "sensor");
  lua_pushstring(L, t->name);
  lua_setfield(L, -2, "trigger");
  lua_pushnumber(L, (lua_Number)(herald_now_ns() / 1000000));
  lua_setfield(L, -2, "now_ms");
  lua_rawgeti(L, LUA_REGISTRYINDEX, kc->cache_ref);
  lua_setfield(L, -2, "cache");
  kr->co = lua_newthread(L);
  kr->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_xmove(L, kr->co, 2);
  lua_settop(L, top);
  kr->next = G.inflight;
  if (G.inflight) G.inflight->prev = kr;
  G.inflight = kr;
  if (!step(kr, 1)) return 0;
  /* finished without a request: a bad object or operation, decided before any I/O */
  herald_trigger_result res = kr->res;
  if (res != HERALD_TRIGGER_DONE) herald_log(&t->log, HLOG_ERROR, "%s", kr->reason);
  req_release(kr);
  return res == HERALD_TRIGGER_DONE ? 1 : HERALD_EINVAL;
}

void herald__kube_close(herald_kube_client *kc) {
  if (kc->probe) {
    http_release(kc->probe);
    free(kc->probe);
    kc->probe = NULL;
  }
  for (herald_kube_req *kr = G.inflight, *next; kr; kr = next) {
    next = kr->next;
    if (kr->kc != kc) continue;
    kr->res = HERALD_TRIGGER_FAILED;
    snprintf(kr->reason, sizeof kr->reason, "engine stopped");
    finish(kr);
  }
  lua_State *L = kc->trigger->engine->L;
  if (kc->cache_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, kc->cache_ref);
  kc->cache_ref = LUA_NOREF;
  client_free(kc);
  herald_curl_loop_unref();
  if (--G.refs == 0) {
    if (G.module_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, G.module_ref);
    G.module_ref = LUA_NOREF;
  }
}
