/*
 * lib/webhookctx: what every webhook-style event source shares (webhook, github, gitlab,
 * bitbucket, bitbucketserver, gerrit, slack, stripe, storageGrid, sns ...).
 *
 *   init: Argo's WebhookContext (endpoint, method, port, url, authSecret, maxPayloadSize)
 *   start: a route on the engine's shared HTTP server for that port (engine/http_server.c:
 *          header/body limits and deadlines, bearer authSecret in constant time)
 *   request -> the source's handler: check (signature ...), shape the data, then
 *          herald_whctx_emit (200 "success" once the bus holds the event, 503 + Retry-After
 *          when the bus is full or down, 500 otherwise) or herald_whctx_reject (4xx, counted
 *          in herald_eventsource_rejected_total{reason})
 *   stop: the route answers 503 from then on; done() once every request waiting for the bus
 *          has been answered
 *
 * Also: the data helpers (Go's http.Header and url.Values as JSON, form fields), constant-time
 * HMAC checks (hmac.c) and calls to a vendor's HTTP API on the loop with retries (api.c).
 */
#ifndef HERALD_WEBHOOKCTX_H
#define HERALD_WEBHOOKCTX_H

#include "buf.h"
#include "curl_loop.h"
#include "http_server.h"
#include "plugin.h"

#include <curl/curl.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct herald_whctx herald_whctx;

/* Called once per request that passed the server's checks (path, method, authSecret, size).
 * It must answer it exactly once (herald_whctx_emit, herald_whctx_reject or
 * herald_http_respond), now or later. */
typedef void (*herald_whctx_handler)(herald_whctx *w, herald_http_req *req);
typedef void (*herald_whctx_stop_cb)(herald_whctx *w);

/* One key/value of a multimap (headers, query, form), as offsets into a scratch buffer. */
typedef struct herald_whctx_kv {
  uint32_t koff, klen, voff, vlen;
  uint32_t order; /* arrival order: values of a key keep it (Go appends) */
} herald_whctx_kv;

struct herald_whctx {
  herald_source *src;
  char *endpoint, *method;
  char *url;           /* WebhookContext.url (public base URL for registering hooks), or NULL */
  int port;
  size_t max_payload;
  char *token;         /* authSecret, or NULL */
  char *metadata_json; /* ,"metadata":{...} or NULL (herald_whctx_read_metadata) */
  herald_http_server *srv;
  int stopped;
  uint32_t inflight;   /* requests waiting for the bus */
  herald_whctx_handler handler;
  void *data;          /* the source's */
  herald_whctx_stop_cb stop_done;
  struct herald_metric *m_rejected[4];
  /* scratch reused by every request (the loop is single-threaded) */
  herald_buf buf;      /* the event data being built: free for the handler's use */
  herald_buf strs;
  herald_whctx_kv *kvs;
  size_t nkvs, kvs_cap;
};

/* Reads the WebhookContext fields from the table at ctx_idx of L (stack unchanged), for source
 * src; handler gets each request. Returns 0, or a negative error after logging which field is
 * wrong (then nothing is left to release). */
int herald_whctx_init(herald_whctx *w, herald_source *src, lua_State *L, int ctx_idx,
                      herald_whctx_handler handler, void *data);
/* Reads the `metadata` map of the table at idx into w->metadata_json. Returns 0 or
 * HERALD_EINVAL (logged). */
int herald_whctx_read_metadata(herald_whctx *w, lua_State *L, int idx);
/* Adds the route to the engine's server for w->port (creating it). Returns 0 or an error
 * (logged: the port cannot be bound, or the route is already served). */
int herald_whctx_start(herald_whctx *w);
/* From now on requests get 503 + Retry-After; done(w) runs (perhaps at once) once no request
 * waits for the bus. Then call herald_whctx_release. */
void herald_whctx_stop(herald_whctx *w, herald_whctx_stop_cb done);
/* Frees what init allocated (the secret wiped). Safe twice. */
void herald_whctx_release(herald_whctx *w);

/* Publishes json (the event data) for req and answers it once the bus has spoken. */
void herald_whctx_emit(herald_whctx *w, herald_http_req *req, const char *json, size_t len);

/* Why a request was refused, each a series of herald_eventsource_rejected_total. */
typedef enum {
  HERALD_WHCTX_BAD_SIGNATURE = 0, /* signature or token missing or wrong */
  HERALD_WHCTX_REPLAY = 1,        /* timestamp outside the tolerance */
  HERALD_WHCTX_BAD_REQUEST = 2,   /* not a payload the vendor sends */
  HERALD_WHCTX_IGNORED = 3,       /* valid, but not an event (filtered by type) */
} herald_whctx_reason;
/* Answers req with status and a plain-text msg (never a secret), counts it and logs it
 * (rate-limited, at warn for signatures, debug otherwise). */
void herald_whctx_reject(herald_whctx *w, herald_http_req *req, int status,
                         herald_whctx_reason why, const char *msg);

/* The URL a vendor should call: Argo's FormattedURL(url, endpoint) = url without a trailing
 * '/' + endpoint. A new string, or NULL when no url is configured. */
char *herald_whctx_hook_url(const herald_whctx *w);

/* ---- data helpers (append to out; scratch in w) ---- */

/* req's headers as Go's http.Header renders in JSON ({"Canonical-Key":["v",...]}, keys
 * sorted): Host and Transfer-Encoding left out as Go's server does, and Authorization too
 * when an authSecret is set (it is the secret). */
void herald_whctx_put_headers(herald_whctx *w, herald_buf *out, const herald_http_req *req);
/* A query or form body as Go's url.Values renders in JSON. */
void herald_whctx_put_values(herald_whctx *w, herald_buf *out, const char *s, size_t n);
/* The first value of form field `key` in s (url-decoded) appended to out; 0 or -1 absent. */
int herald_whctx_form_get(const char *s, size_t n, const char *key, herald_buf *out);
/* Content-Type's media type is application/x-www-form-urlencoded (parameters ignored). */
int herald_whctx_is_form(const herald_http_header *ct);
/* The body as Argo keeps an unknown body: raw JSON when it is JSON, else a JSON string,
 * null when empty. */
void herald_whctx_put_body(herald_buf *out, const char *body, size_t len);

/* ---- HMAC and constant-time checks (hmac.c, OpenSSL) ---- */

typedef struct herald_iov {
  const void *p;
  size_t n;
} herald_iov;

/* HMAC with digest "sha1", "sha256" or "sha512" over the concatenated parts into out (at
 * least 64 bytes). Returns the MAC's length, or -1. */
int herald_hmac(const char *digest, const void *key, size_t klen, const herald_iov *parts,
                int nparts, unsigned char *out);
/* 1 when hex (hexlen chars, either case) is the hex HMAC of the parts, compared in constant
 * time (no early exit on the first differing byte); 0 otherwise. */
int herald_hmac_hex_ok(const char *digest, const void *key, size_t klen,
                       const herald_iov *parts, int nparts, const char *hex, size_t hexlen);
/* 1 when the two byte strings are equal, in time that depends on the lengths only. */
int herald_ct_equal(const void *a, size_t alen, const void *b, size_t blen);
/* base64url without padding (JWT segments) appended to out. */
void herald_b64url(herald_buf *out, const void *data, size_t n);
/* A GitHub App JWT (RS256, iat 60 s ago, exp in 9 minutes, iss app_id) signed with the PEM
 * private key, appended to out. Returns 0 or -1 with why (a static string). */
int herald_github_app_jwt(herald_buf *out, const char *app_id, const char *pem,
                          const char **why);

/* ---- vendor API calls on the loop (api.c) ---- */

typedef struct herald_api_call herald_api_call;
/* status: the HTTP status, or 0 with err set on a transport error. body is the response
 * (NUL-terminated, at most 4 MiB kept). */
typedef void (*herald_api_cb)(herald_api_call *c, long status, const char *body, size_t len,
                              const char *err);

struct herald_api_call {
  herald_curl_xfer xfer;
  struct curl_slist *headers;
  herald_buf req_body, resp;
  herald_api_cb cb;
  void *data;
  int busy;
};

/* Starts one request: method, url, extra header lines (NULL-terminated array, may be NULL),
 * body (NULL for none), insecure (skip TLS verification). cb runs later on the loop. Returns 0
 * or an error (cb not called). The caller owns c (must not move while busy). */
int herald_api_start(herald_api_call *c, const char *method, const char *url,
                     const char *const *headers, const char *body, size_t body_len,
                     int insecure, herald_api_cb cb, void *data);
/* Cancels a request still running (no callback) and frees its buffers. */
void herald_api_cancel(herald_api_call *c);

/* Decodes JSON text and pushes the value on L (cjson; null is lua nil... as cjson.null
 * lightuserdata). Returns 0, or -1 with nothing pushed when it is not JSON. */
int herald_json_push(lua_State *L, const char *text, size_t len);
/* The string field of the table at idx (numbers converted) copied into a new string, or NULL. */
char *herald_lua_strfield(lua_State *L, int idx, const char *field);
/* A printable JSON string of s (quotes, escapes) appended to out. */
#define herald_json_str(out, s) herald_buf_json_string((out), (s), strlen(s))

/* ---- hooks registered with the vendor at start, removed at stop (hooks.c) ---- */

/* One request a vendor's ops fill in: method, url, up to 6 header lines they own, a body. */
typedef struct herald_hook_req {
  const char *method;
  herald_buf url;
  herald_buf body;
  int has_body;
  const char *headers[7]; /* NULL-terminated */
} herald_hook_req;

/* What differs between vendors. The hooks are per target (a repository, an organization, a
 * project ...); `find` and `id_of` read the decoded JSON answer at idx of L. */
typedef struct herald_hooks_ops {
  /* Optional: fill r with a token request and return 1 when one is needed before the next
   * call (a GitHub App's installation token), else 0. auth_done reads the answer: 0 or -1. */
  int (*auth)(void *ud, herald_hook_req *r);
  int (*auth_done)(void *ud, long status, lua_State *L, int idx);
  const char *(*target)(void *ud, size_t i); /* how logs name target i */
  void (*list)(void *ud, size_t i, herald_hook_req *r);
  /* -1 no such hook, 0 found as wanted, 1 found but to be updated; *id = a new string */
  int (*find)(void *ud, size_t i, lua_State *L, int idx, char **id);
  void (*create)(void *ud, size_t i, herald_hook_req *r);
  void (*update)(void *ud, size_t i, const char *id, herald_hook_req *r); /* may be NULL */
  char *(*id_of)(void *ud, size_t i, lua_State *L, int idx); /* from create's answer */
  void (*remove)(void *ud, size_t i, const char *id, herald_hook_req *r);
} herald_hooks_ops;

typedef struct herald_hooks herald_hooks;
typedef void (*herald_hooks_cb)(herald_hooks *h);

struct herald_hooks {
  const herald_hooks_ops *ops;
  void *ud;
  herald_source *src;
  size_t n, i;        /* targets; the one being worked on */
  char **ids;         /* hook id per target once registered */
  int phase, stopping, delete_on_finish, insecure, timer_open;
  int ready_said;
  herald_api_call call;
  herald_hook_req req;
  uv_timer_t timer;
  herald_backoff bo;
  herald_hooks_cb done;
  uint64_t stop_deadline;
  struct herald_metric *m_failed;
};

/* Registers the hooks of n targets, one call at a time, each failure retried after a backoff
 * (logged, counted in herald_eventsource_hook_errors_total; never fatal). Returns 0. */
int herald_hooks_start(herald_hooks *h, herald_source *src, const herald_hooks_ops *ops,
                       void *ud, size_t n, int delete_on_finish, int insecure);
/* Stops registering; with delete_on_finish removes the hooks it registered (each at most
 * 10 s, as Argo), then done(h). */
void herald_hooks_stop(herald_hooks *h, herald_hooks_cb done);
/* Resets r for the next request (ops call it implicitly: the manager does before each op). */
void herald_hook_req_reset(herald_hook_req *r);

#endif
