/*
 * triggers/http: the HTTP trigger, on libcurl's multi interface driven by the libuv loop.
 *
 *   execute(action) -> easy handle (pooled) -> curl multi -> uv_poll per socket + one uv_timer
 *   (engine/curl_loop.c, shared with the other curl-based triggers)
 *   -> completion: a status in policy.status.allow (default: any 2xx) = done (Argo counts
 *      every status as success without a policy: see docs/compat.md); 429 and 5xx = retry;
 *      other statuses = failed for good; transport errors (refused, timeout) = retry.
 *
 * One multi handle per process, so keep-alive connections are reused across firings and
 * triggers (libcurl's connection cache). Requests in flight are bounded by the bus (each
 * unfinished action holds its delivery) and connections per host by CURLMOPT_MAX_HOST_CONNECTIONS
 * (curl_loop.c).
 */
#include "buf.h"
#include "common.h"
#include "curl_loop.h"
#include "engine.h"
#include "plugin.h"

#include <curl/curl.h>
#include <lauxlib.h>
#include <string.h>


/* Per-trigger settings read once at init: TLS material, basic auth and secure headers come
 * from secrets (files), the virtual host from the spec. */
typedef struct http_trigger {
  char *ca, *cert, *key; /* PEM, handed to libcurl as blobs */
  size_t ca_len, cert_len, key_len;
  int insecure;
  char *user, *password;
  char **secure_headers; /* "Name: value" lines */
  int nsecure;
  char *host_header;     /* "Host: ..." */
} http_trigger;

#define MAX_ALLOW 16

typedef struct http_req {
  herald_curl_xfer x; /* x.data = this */
  herald_trigger_req *req;
  int allow[MAX_ALLOW]; /* policy.status.allow; nallow == 0: any 2xx */
  int nallow;
  struct curl_slist *headers;
  char *body;
  herald_buf response;
  struct http_req *next; /* in the in-flight list */
  struct http_req *prev;
} http_req;

static http_req *inflight;

static void req_release(http_req *hr) {
  if (hr->prev) hr->prev->next = hr->next;
  else inflight = hr->next;
  if (hr->next) hr->next->prev = hr->prev;
  herald_curl_xfer_release(&hr->x);
  curl_slist_free_all(hr->headers);
  free(hr->body);
  herald_buf_free(&hr->response);
}

static int status_allowed(const http_req *hr, long status) {
  if (hr->nallow == 0) return status >= 200 && status < 300;
  for (int i = 0; i < hr->nallow; i++)
    if (hr->allow[i] == status) return 1;
  return 0;
}

static void on_done(herald_curl_xfer *x, CURLcode rc) {
  http_req *hr = x->data;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  herald_trigger_req *req = hr->req;
  herald_trigger_result res;
  char reason[256 + CURL_ERROR_SIZE];
  if (rc != CURLE_OK) {
    res = HERALD_TRIGGER_RETRY;
    snprintf(reason, sizeof reason, "request failed: %s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
  } else if (status_allowed(hr, status)) {
    res = HERALD_TRIGGER_DONE;
    reason[0] = '\0';
  } else {
    /* 429 and 5xx are worth another attempt; other statuses will not change */
    res = (status == 429 || status >= 500) ? HERALD_TRIGGER_RETRY : HERALD_TRIGGER_FAILED;
    snprintf(reason, sizeof reason, "response status %ld: %.*s", status,
             (int)(hr->response.len < 200 ? hr->response.len : 200),
             hr->response.data ? hr->response.data : "");
  }
  req_release(hr);
  req->done(req, res, res == HERALD_TRIGGER_DONE ? NULL : reason);
}

/* Reads the secret named by the SecretKeySelector at field `name` of the table at idx (or
 * a ConfigMapKeySelector when `configmap`, from $HERALD_CONFIG_DIR or /argo-events/config).
 * Returns a new string (caller frees) or NULL: *failed is set when it was given but unreadable. */
static char *read_selector(herald_trigger *t, lua_State *L, int idx, const char *name, int configmap,
                           size_t *len, int *failed) {
  char *v = NULL;
  lua_getfield(L, idx, name);
  if (lua_istable(L, -1)) {
    const char *n = herald_cfg_string(L, -1, "name", NULL), *k = herald_cfg_string(L, -1, "key", NULL);
    int err = 0;
    if (configmap) {
      const char *dir = getenv("HERALD_CONFIG_DIR");
      char *path = herald_xasprintf("%s/%s/%s", dir ? dir : "/argo-events/config", n ? n : "", k ? k : "");
      v = herald_read_file(path, len, &err);
      free(path);
    } else {
      v = herald_secret_read(t->engine, n, k, &err);
      if (v && len) *len = strlen(v);
    }
    if (!v) {
      herald_log(&t->log, HLOG_ERROR, "%s %s/%s cannot be read: %s", configmap ? "ConfigMap key" : "secret",
                 n ? n : "?", k ? k : "?", herald_strerror(err));
      *failed = 1;
    }
  }
  lua_pop(L, 1);
  return v;
}

static int http_init(herald_trigger *t, lua_State *L, int idx) {
  http_trigger *ht = t->priv;
  const char *url = herald_cfg_string(L, idx, "url", NULL);
  if (!url || !*url) {
    herald_log(&t->log, HLOG_ERROR, "http trigger needs a url");
    return HERALD_EINVAL;
  }
  int failed = 0;
  lua_getfield(L, idx, "tls");
  if (lua_istable(L, -1)) {
    int tls = lua_gettop(L);
    ht->ca = read_selector(t, L, tls, "caCertSecret", 0, &ht->ca_len, &failed);
    ht->cert = read_selector(t, L, tls, "clientCertSecret", 0, &ht->cert_len, &failed);
    ht->key = read_selector(t, L, tls, "clientKeySecret", 0, &ht->key_len, &failed);
    ht->insecure = herald_cfg_bool(L, tls, "insecureSkipVerify", 0);
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "basicAuth");
  if (lua_istable(L, -1)) {
    int ba = lua_gettop(L);
    ht->user = read_selector(t, L, ba, "username", 0, NULL, &failed);
    ht->password = read_selector(t, L, ba, "password", 0, NULL, &failed);
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "secureHeaders");
  if (lua_istable(L, -1)) {
    int sh = lua_gettop(L), n = (int)lua_objlen(L, sh);
    ht->secure_headers = herald_xcalloc((size_t)n + 1, sizeof(char *));
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, sh, i);
      int h = lua_gettop(L);
      const char *name = herald_cfg_string(L, h, "name", NULL);
      lua_getfield(L, h, "valueFrom");
      char *v = NULL;
      if (lua_istable(L, -1)) {
        int vf = lua_gettop(L);
        v = read_selector(t, L, vf, "secretKeyRef", 0, NULL, &failed);
        if (!v) v = read_selector(t, L, vf, "configMapKeyRef", 1, NULL, &failed);
      }
      lua_pop(L, 1);
      if (name && v && !strpbrk(name, "\r\n:") && !strpbrk(v, "\r\n"))
        ht->secure_headers[ht->nsecure++] = herald_xasprintf("%s: %s", name, v);
      free(v);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  const char *host = herald_cfg_string(L, idx, "host", NULL);
  if (host && *host && !strpbrk(host, "\r\n")) ht->host_header = herald_xasprintf("Host: %s", host);
  if (failed) return HERALD_EINVAL;
  return herald_curl_loop_ref(t->engine->loop);
}

/* action: {url=, method=, headers={}, body=, timeout=} */
static int http_execute(herald_trigger *t, herald_trigger_req *req, lua_State *L, int idx) {
  http_req *hr = req->priv;
  memset(hr, 0, sizeof *hr);
  hr->req = req;
  const char *url = herald_cfg_string(L, idx, "url", NULL);
  if (!url) return HERALD_EINVAL;
  const char *method = herald_cfg_string(L, idx, "method", "POST");
  lua_getfield(L, idx, "allow");
  if (lua_istable(L, -1)) {
    for (int i = 1; i <= (int)lua_objlen(L, -1) && hr->nallow < MAX_ALLOW; i++) {
      lua_rawgeti(L, -1, i);
      if (lua_isnumber(L, -1)) hr->allow[hr->nallow++] = (int)lua_tointeger(L, -1);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  double timeout = herald_cfg_number(L, idx, "timeout", 60);
  if (herald_curl_xfer_init(&hr->x) != 0) return HERALD_ENOMEM;
  hr->x.data = hr;
  CURL *e = hr->x.easy;
  herald_curl_xfer_url(&hr->x, url);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, herald_curl_keep_head);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &hr->response);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout > 0 ? timeout * 1000 : 60000));
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  lua_getfield(L, idx, "body");
  size_t blen = 0;
  const char *body = lua_tolstring(L, -1, &blen);
  if (body) {
    hr->body = herald_xstrndup(body, blen);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, hr->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
  } else if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
  }
  lua_pop(L, 1);
  if (strcmp(method, "GET") == 0) curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  else if (strcmp(method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  /* Headers: the spec's, plus a JSON content type when the spec sets none. */
  int has_ct = 0;
  lua_getfield(L, idx, "headers");
  if (lua_istable(L, -1)) {
    int h = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, h)) {
      if (lua_type(L, -2) == LUA_TSTRING) {
        const char *k = lua_tostring(L, -2);
        const char *v = lua_tostring(L, -1);
        if (v && !strpbrk(k, "\r\n:") && !strpbrk(v, "\r\n")) {
          herald_buf line = HERALD_BUF_INIT;
          herald_buf_printf(&line, "%s: %s", k, v);
          hr->headers = curl_slist_append(hr->headers, line.data);
          herald_buf_free(&line);
          if (strcasecmp(k, "Content-Type") == 0) has_ct = 1;
        }
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (!has_ct && body) hr->headers = curl_slist_append(hr->headers, "Content-Type: application/json");
  http_trigger *ht = t->priv;
  for (int i = 0; i < ht->nsecure; i++) hr->headers = curl_slist_append(hr->headers, ht->secure_headers[i]);
  if (ht->host_header) hr->headers = curl_slist_append(hr->headers, ht->host_header);
  if (ht->ca) {
    struct curl_blob b = {ht->ca, ht->ca_len, CURL_BLOB_NOCOPY};
    curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &b);
  }
  if (ht->cert && ht->key) {
    struct curl_blob c = {ht->cert, ht->cert_len, CURL_BLOB_NOCOPY};
    struct curl_blob k = {ht->key, ht->key_len, CURL_BLOB_NOCOPY};
    curl_easy_setopt(e, CURLOPT_SSLCERT_BLOB, &c);
    curl_easy_setopt(e, CURLOPT_SSLKEY_BLOB, &k);
  }
  if (ht->insecure) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (ht->user) {
    curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(e, CURLOPT_USERNAME, ht->user);
    curl_easy_setopt(e, CURLOPT_PASSWORD, ht->password ? ht->password : "");
  }
  hr->headers = curl_slist_append(hr->headers, "Expect:"); /* no 100-continue round trip */
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, hr->headers);
  hr->next = inflight;
  if (inflight) inflight->prev = hr;
  inflight = hr;
  if (herald_curl_xfer_start(&hr->x, on_done) != 0) {
    req_release(hr);
    return HERALD_EIO;
  }
  return 0;
}

static void http_close(herald_trigger *t, herald_trigger_close_cb done) {
  /* Abandon this trigger's requests still in flight (the drain already waited for them). */
  for (http_req *hr = inflight, *next; hr; hr = next) {
    next = hr->next;
    if (hr->req->trigger != t) continue;
    herald_trigger_req *req = hr->req;
    req_release(hr);
    req->done(req, HERALD_TRIGGER_FAILED, "engine stopped");
  }
  http_trigger *ht = t->priv;
  free(ht->ca), free(ht->cert), free(ht->key), free(ht->user), free(ht->password), free(ht->host_header);
  for (int i = 0; i < ht->nsecure; i++) free(ht->secure_headers[i]);
  free(ht->secure_headers);
  herald_curl_loop_unref();
  done(t);
}

const herald_trigger_type herald_trigger_http = {
    .name = "http",
    .priv_size = sizeof(http_trigger),
    .req_size = sizeof(http_req),
    .init = http_init,
    .execute = http_execute,
    .close = http_close,
};
