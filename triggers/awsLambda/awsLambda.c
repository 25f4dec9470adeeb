/*
 * triggers/awsLambda: invokes an AWS Lambda function (Lambda Invoke API) for each firing.
 *
 *   execute(action{spec, body}) -> credentials (static keys, or STS AssumeRole for roleARN,
 *   cached until shortly before they expire) -> POST <endpoint>/2015-03-31/functions/<name>/
 *   invocations, X-Amz-Invocation-Type, SigV4-signed (sigv4.c) -> curl multi (curl_loop.c)
 *   -> result:
 *      policy.status.allow (default 2xx), and no X-Amz-Function-Error   done
 *      X-Amz-Function-Error (the function threw) failed, with the error payload
 *      429, 5xx, transport errors                retry
 *      other statuses (403, 404 ...)             failed, with the AWS error message
 *
 * Endpoints follow the AWS SDK variables: AWS_ENDPOINT_URL_LAMBDA / AWS_ENDPOINT_URL (else
 * https://lambda.<region>.amazonaws.com) and AWS_ENDPOINT_URL_STS (else
 * https://sts.<region>.amazonaws.com). Without accessKey/secretKey in the spec the standard
 * AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN variables are used.
 */
#include "buf.h"
#include "common.h"
#include "curl_loop.h"
#include "engine.h"
#include "event.h"
#include "plugin.h"
#include "sigv4.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define STS_REFRESH_NS (60ULL * 1000000000ULL) /* renew assumed credentials this early */
#define TIMEOUT_MS 60000L

typedef struct lambda_req lambda_req;

typedef struct lambda_trigger {
  herald_trigger *t;
  char *region;
  char *endpoint;     /* Lambda base URL, no trailing slash */
  char *sts_endpoint; /* STS base URL */
  char *access_key, *secret_key, *session_token; /* base credentials */
  char *role_arn;
  /* assumed-role credentials (roleARN) */
  char *a_access_key, *a_secret_key, *a_session_token;
  int64_t a_expires_ns;
  int sts_busy;
  herald_curl_xfer sts;
  herald_buf sts_response;
  struct curl_slist *sts_headers;
  char *sts_body;
  lambda_req *waiting; /* requests waiting for STS */
  lambda_req *inflight;
  int refd;
} lambda_trigger;

struct lambda_req {
  herald_curl_xfer x; /* x.data = this */
  herald_trigger_req *req;
  lambda_trigger *lt;
  char *function, *invocation_type, *payload;
  size_t payload_len;
  struct curl_slist *headers;
  herald_buf response;
  char fn_error[128];
  char error_type[128];
  int allow[16]; /* policy.status.allow; nallow == 0: any 2xx */
  int nallow;
  lambda_req *next, *prev;
  int waiting;
};

static char *env_dup(const char *name) {
  const char *v = getenv(name);
  return v && *v ? herald_xstrdup(v) : NULL;
}

static char *strip_slash(char *s) {
  size_t n = strlen(s);
  while (n > 0 && s[n - 1] == '/') s[--n] = '\0';
  return s;
}

static void creds_free(lambda_trigger *lt) {
  free(lt->a_access_key), free(lt->a_secret_key), free(lt->a_session_token);
  lt->a_access_key = lt->a_secret_key = lt->a_session_token = NULL;
}

static void trigger_free(lambda_trigger *lt) {
  free(lt->region), free(lt->endpoint), free(lt->sts_endpoint);
  free(lt->access_key), free(lt->secret_key), free(lt->session_token), free(lt->role_arn);
  creds_free(lt);
}

static int lambda_init(herald_trigger *t, lua_State *L, int idx) {
  lambda_trigger *lt = t->priv;
  lt->t = t;
  const char *region = herald_cfg_string(L, idx, "region", NULL);
  if (!region || !*region) {
    herald_log(&t->log, HLOG_ERROR, "awsLambda.region is required");
    return HERALD_EINVAL;
  }
  lt->region = herald_xstrdup(region);
  int err;
  lt->access_key = herald_secret_field(t->engine, &t->log, L, idx, "accessKey",
                                       "awsLambda.accessKey", &err);
  if (err) goto fail;
  lt->secret_key = herald_secret_field(t->engine, &t->log, L, idx, "secretKey",
                                       "awsLambda.secretKey", &err);
  if (err) goto fail;
  if (!lt->access_key != !lt->secret_key) {
    herald_log(&t->log, HLOG_ERROR, "awsLambda: accessKey and secretKey go together");
    goto fail;
  }
  if (!lt->access_key) {
    lt->access_key = env_dup("AWS_ACCESS_KEY_ID");
    lt->secret_key = env_dup("AWS_SECRET_ACCESS_KEY");
    lt->session_token = env_dup("AWS_SESSION_TOKEN");
  }
  if (!lt->access_key || !lt->secret_key) {
    herald_log(&t->log, HLOG_ERROR,
               "awsLambda: no AWS credentials: set accessKey and secretKey (Kubernetes secrets) "
               "or the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables");
    goto fail;
  }
  const char *role = herald_cfg_string(L, idx, "roleARN", NULL);
  if (role && *role) lt->role_arn = herald_xstrdup(role);
  char *ep = env_dup("AWS_ENDPOINT_URL_LAMBDA");
  if (!ep) ep = env_dup("AWS_ENDPOINT_URL");
  if (!ep) ep = herald_xasprintf("https://lambda.%s.amazonaws.com", region);
  lt->endpoint = strip_slash(ep);
  ep = env_dup("AWS_ENDPOINT_URL_STS");
  if (!ep) ep = env_dup("AWS_ENDPOINT_URL");
  if (!ep) ep = herald_xasprintf("https://sts.%s.amazonaws.com", region);
  lt->sts_endpoint = strip_slash(ep);
  if (herald_curl_loop_ref(t->engine->loop) != 0) goto fail;
  lt->refd = 1;
  return 0;
fail:
  trigger_free(lt);
  return HERALD_EINVAL;
}

/* ---- requests ---- */

static void list_remove(lambda_req **head, lambda_req *r) {
  if (r->prev) r->prev->next = r->next;
  else *head = r->next;
  if (r->next) r->next->prev = r->prev;
  r->next = r->prev = NULL;
}

static void list_push(lambda_req **head, lambda_req *r) {
  r->prev = NULL;
  r->next = *head;
  if (*head) (*head)->prev = r;
  *head = r;
}

static void req_release(lambda_req *r) {
  list_remove(r->waiting ? &r->lt->waiting : &r->lt->inflight, r);
  herald_curl_xfer_release(&r->x);
  curl_slist_free_all(r->headers);
  free(r->function), free(r->invocation_type), free(r->payload);
  herald_buf_free(&r->response);
}

static void req_finish(lambda_req *r, herald_trigger_result res, const char *reason) {
  herald_trigger_req *req = r->req;
  req_release(r);
  req->done(req, res, res == HERALD_TRIGGER_DONE ? NULL : reason);
}

/* Copies the value of header `name` from the raw header line into out when it matches. */
static void grab_header(const char *line, size_t len, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  if (len <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':') return;
  const char *v = line + nl + 1;
  const char *e = line + len;
  while (v < e && (*v == ' ' || *v == '\t')) v++;
  while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ')) e--;
  size_t n = (size_t)(e - v) < cap - 1 ? (size_t)(e - v) : cap - 1;
  memcpy(out, v, n);
  out[n] = '\0';
}

static size_t on_header(char *ptr, size_t size, size_t n, void *userdata) {
  lambda_req *r = userdata;
  grab_header(ptr, size * n, "X-Amz-Function-Error", r->fn_error, sizeof r->fn_error);
  grab_header(ptr, size * n, "X-Amzn-ErrorType", r->error_type, sizeof r->error_type);
  return size * n;
}

/* Host header value for url ("host" or "host:port" as curl would send it). New string. */
static char *url_host(const char *url) {
  CURLU *u = curl_url();
  char *host = NULL, *port = NULL, *out = NULL;
  if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
    if (curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK && port)
      out = herald_xasprintf("%s:%s", host, port);
    else out = herald_xstrdup(host);
  }
  curl_free(host), curl_free(port);
  curl_url_cleanup(u);
  return out;
}

/* The path part of url (without query), "" for none. New string. */
static char *url_path(const char *url) {
  CURLU *u = curl_url();
  char *path = NULL, *out;
  if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK && path && strcmp(path, "/") != 0)
    out = herald_xstrdup(path);
  else out = herald_xstrdup("");
  curl_free(path);
  curl_url_cleanup(u);
  return out;
}

/* Signs and appends the headers of a request: Host, X-Amz-Date, the token, Authorization, plus
 * `extra` signed headers. Returns the new list. */
static struct curl_slist *sign(struct curl_slist *list, const char *method, const char *url,
                               const char *path, const char *const *extra, size_t nextra,
                               const void *body, size_t blen, const char *region,
                               const char *service, const herald_sigv4_creds *c) {
  char date[17];
  herald_sigv4_amz_date(herald_now_ns(), date);
  char *host = url_host(url);
  const char *h[8];
  size_t n = 0;
  char *host_h = herald_xasprintf("Host: %s", host ? host : "");
  char *date_h = herald_xasprintf("X-Amz-Date: %s", date);
  char *tok_h = c->session_token ? herald_xasprintf("X-Amz-Security-Token: %s", c->session_token) : NULL;
  h[n++] = host_h;
  h[n++] = date_h;
  if (tok_h) h[n++] = tok_h;
  for (size_t i = 0; i < nextra && n < 8; i++) h[n++] = extra[i];
  herald_sigv4_req sr = {.method = method, .path = path, .headers = h, .nheaders = n,
                         .body = body, .body_len = blen, .region = region, .service = service,
                         .amz_date = date};
  herald_buf auth = HERALD_BUF_INIT;
  herald_buf_puts(&auth, "Authorization: ");
  herald_sigv4_authorization(&sr, c, &auth);
  for (size_t i = 0; i < n; i++) list = curl_slist_append(list, h[i]);
  list = curl_slist_append(list, herald_buf_cstr(&auth));
  list = curl_slist_append(list, "Expect:");
  herald_buf_free(&auth);
  free(host), free(host_h), free(date_h), free(tok_h);
  return list;
}

/* Pulls a short error message out of an AWS JSON error body ({"message": ...} or
 * {"Message": ...}), else the body itself, into out. */
static void aws_message(const herald_buf *b, char *out, size_t cap) {
  const char *s = b->data ? b->data : "";
  const char *m = strstr(s, "\"message\"");
  if (!m) m = strstr(s, "\"Message\"");
  if (!m) m = strstr(s, "\"errorMessage\"");
  if (m && (m = strchr(m + 8, ':')) && (m = strchr(m, '"'))) {
    m++;
    const char *e = m;
    while (*e && *e != '"') e += (*e == '\\' && e[1]) ? 2 : 1;
    snprintf(out, cap, "%.*s", (int)(e - m), m);
  } else {
    snprintf(out, cap, "%.*s", (int)(b->len < 300 ? b->len : 300), s);
  }
}

static int status_allowed(const lambda_req *r, long status) {
  if (r->nallow == 0) return status >= 200 && status < 300;
  for (int i = 0; i < r->nallow; i++)
    if (r->allow[i] == status) return 1;
  return 0;
}

static void on_invoke_done(herald_curl_xfer *x, CURLcode rc) {
  lambda_req *r = x->data;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  char msg[400], reason[700];
  if (rc != CURLE_OK) {
    snprintf(reason, sizeof reason, "invoking %s: %s", r->function,
             x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
    req_finish(r, HERALD_TRIGGER_RETRY, reason);
  } else if (r->fn_error[0]) {
    aws_message(&r->response, msg, sizeof msg);
    snprintf(reason, sizeof reason, "function %s failed (X-Amz-Function-Error: %s): %s",
             r->function, r->fn_error, msg);
    req_finish(r, HERALD_TRIGGER_FAILED, reason);
  } else if (status_allowed(r, status)) {
    req_finish(r, HERALD_TRIGGER_DONE, NULL);
  } else {
    aws_message(&r->response, msg, sizeof msg);
    snprintf(reason, sizeof reason, "invoking %s: status %ld%s%s: %s", r->function, status,
             r->error_type[0] ? " " : "", r->error_type, msg);
    req_finish(r, status == 429 || status >= 500 ? HERALD_TRIGGER_RETRY : HERALD_TRIGGER_FAILED,
               reason);
  }
}

/* The credentials to sign with now: the assumed role's, or the base ones. */
static herald_sigv4_creds current_creds(lambda_trigger *lt) {
  if (lt->role_arn)
    return (herald_sigv4_creds){lt->a_access_key, lt->a_secret_key, lt->a_session_token};
  return (herald_sigv4_creds){lt->access_key, lt->secret_key, lt->session_token};
}

/* Sends the invocation. Returns 0, or a negative error (r released, no callback). */
static int invoke(lambda_req *r) {
  lambda_trigger *lt = r->lt;
  list_push(&lt->inflight, r);
  herald_buf url = HERALD_BUF_INIT, path = HERALD_BUF_INIT;
  char *base_path = url_path(lt->endpoint);
  herald_buf_puts(&path, base_path);
  herald_buf_puts(&path, "/2015-03-31/functions/");
  herald_sigv4_uri_encode(&path, r->function, strlen(r->function), 0);
  herald_buf_puts(&path, "/invocations");
  free(base_path);
  /* endpoint's scheme://host[:port] + path */
  CURLU *u = curl_url();
  char *origin = NULL;
  if (curl_url_set(u, CURLUPART_URL, lt->endpoint, 0) != CURLUE_OK ||
      curl_url_set(u, CURLUPART_PATH, NULL, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_URL, &origin, 0) != CURLUE_OK) {
    curl_url_cleanup(u);
    herald_buf_free(&url), herald_buf_free(&path);
    herald_log(&lt->t->log, HLOG_ERROR, "awsLambda: invalid endpoint URL %s", lt->endpoint);
    req_release(r);
    return HERALD_EINVAL;
  }
  herald_buf_puts(&url, strip_slash(origin));
  herald_buf_append(&url, path.data, path.len);
  curl_free(origin);
  curl_url_cleanup(u);

  herald_sigv4_creds c = current_creds(lt);
  char *itype = herald_xasprintf("X-Amz-Invocation-Type: %s", r->invocation_type);
  const char *extra[] = {"Content-Type: application/json", itype};
  r->headers = sign(NULL, "POST", url.data, path.data, extra, 2, r->payload, r->payload_len,
                    lt->region, "lambda", &c);
  free(itype);
  CURL *e = r->x.easy;
  herald_curl_xfer_url(&r->x, url.data);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->payload);
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->payload_len);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, herald_curl_keep_head);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->response);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, TIMEOUT_MS);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  herald_buf_free(&url), herald_buf_free(&path);
  if (herald_curl_xfer_start(&r->x, on_invoke_done) != 0) {
    req_release(r);
    return HERALD_EIO;
  }
  return 0;
}

/* ---- STS AssumeRole (roleARN) ---- */

/* Copies the text of the first <tag>...</tag> in xml. New string or NULL. */
static char *xml_text(const char *xml, const char *tag) {
  char open[64], close[64];
  snprintf(open, sizeof open, "<%s>", tag);
  snprintf(close, sizeof close, "</%s>", tag);
  const char *s = strstr(xml, open);
  if (!s) return NULL;
  s += strlen(open);
  const char *e = strstr(s, close);
  if (!e) return NULL;
  herald_buf b = HERALD_BUF_INIT;
  for (const char *p = s; p < e; p++) { /* the entities AWS uses in tokens */
    if (*p == '&') {
      static const struct { const char *ent; char c; } E[] = {
          {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
      size_t i;
      for (i = 0; i < HERALD_ARRAY_SIZE(E); i++) {
        size_t l = strlen(E[i].ent);
        if (strncmp(p, E[i].ent, l) == 0) {
          herald_buf_putc(&b, E[i].c);
          p += l - 1;
          break;
        }
      }
      if (i < HERALD_ARRAY_SIZE(E)) continue;
    }
    herald_buf_putc(&b, *p);
  }
  char *out = herald_xstrndup(b.data ? b.data : "", b.len);
  herald_buf_free(&b);
  return out;
}

static int64_t parse_iso8601(const char *s) {
  struct tm tm = {0};
  if (!s || sscanf(s, "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                   &tm.tm_min, &tm.tm_sec) != 6)
    return 0;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return (int64_t)timegm(&tm) * 1000000000LL;
}

static void sts_cleanup(lambda_trigger *lt) {
  herald_curl_xfer_release(&lt->sts);
  curl_slist_free_all(lt->sts_headers);
  lt->sts_headers = NULL;
  free(lt->sts_body);
  lt->sts_body = NULL;
  herald_buf_free(&lt->sts_response);
  lt->sts_busy = 0;
}

/* Fails (res) or sends every request waiting for credentials. */
static void flush_waiting(lambda_trigger *lt, herald_trigger_result res, const char *reason) {
  while (lt->waiting) {
    lambda_req *r = lt->waiting;
    list_remove(&lt->waiting, r);
    r->waiting = 0;
    if (res != HERALD_TRIGGER_DONE) {
      list_push(&lt->inflight, r);
      req_finish(r, res, reason);
    } else if (invoke(r) != 0) {
      herald_trigger_req *req = r->req;
      req->done(req, HERALD_TRIGGER_FAILED, "cannot send the invocation");
    }
  }
}

static void on_sts_done(herald_curl_xfer *x, CURLcode rc) {
  lambda_trigger *lt = x->data;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  char reason[600];
  herald_trigger_result res = HERALD_TRIGGER_DONE;
  const char *body = herald_buf_cstr(&lt->sts_response);
  if (rc != CURLE_OK) {
    snprintf(reason, sizeof reason, "sts AssumeRole %s: %s", lt->role_arn,
             x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
    res = HERALD_TRIGGER_RETRY;
  } else if (status != 200) {
    char *msg = xml_text(body, "Message");
    snprintf(reason, sizeof reason, "sts AssumeRole %s: status %ld: %s", lt->role_arn, status,
             msg ? msg : body);
    free(msg);
    res = status == 429 || status >= 500 ? HERALD_TRIGGER_RETRY : HERALD_TRIGGER_FAILED;
  } else {
    char *ak = xml_text(body, "AccessKeyId"), *sk = xml_text(body, "SecretAccessKey");
    char *tok = xml_text(body, "SessionToken"), *exp = xml_text(body, "Expiration");
    if (ak && sk && tok) {
      creds_free(lt);
      lt->a_access_key = ak, lt->a_secret_key = sk, lt->a_session_token = tok;
      lt->a_expires_ns = parse_iso8601(exp);
      if (!lt->a_expires_ns) lt->a_expires_ns = herald_now_ns() + 900LL * 1000000000LL;
      herald_log(&lt->t->log, HLOG_DEBUG, "assumed role %s until %s", lt->role_arn,
                 exp ? exp : "?");
    } else {
      free(ak), free(sk), free(tok);
      snprintf(reason, sizeof reason, "sts AssumeRole %s: no credentials in the response",
               lt->role_arn);
      res = HERALD_TRIGGER_FAILED;
    }
    free(exp);
  }
  sts_cleanup(lt);
  flush_waiting(lt, res, reason);
}

/* Starts AssumeRole with the base credentials. Returns 0 or a negative error. */
static int sts_start(lambda_trigger *lt) {
  if (herald_curl_xfer_init(&lt->sts) != 0) return HERALD_ENOMEM;
  lt->sts.data = lt;
  lt->sts_busy = 1;
  herald_buf body = HERALD_BUF_INIT;
  herald_buf_puts(&body, "Action=AssumeRole&RoleArn=");
  herald_sigv4_uri_encode(&body, lt->role_arn, strlen(lt->role_arn), 0);
  herald_buf_printf(&body, "&RoleSessionName=herald-%lld&Version=2011-06-15",
                    (long long)(herald_now_ns() / 1000000000));
  lt->sts_body = herald_xstrndup(body.data, body.len);
  size_t blen = body.len;
  herald_buf_free(&body);
  char *url = herald_xasprintf("%s/", lt->sts_endpoint);
  char *path = url_path(url);
  const char *extra[] = {"Content-Type: application/x-www-form-urlencoded; charset=utf-8"};
  herald_sigv4_creds c = {lt->access_key, lt->secret_key, lt->session_token};
  lt->sts_headers = sign(NULL, "POST", url, *path ? path : "/", extra, 1, lt->sts_body, blen,
                         lt->region, "sts", &c);
  CURL *e = lt->sts.easy;
  herald_curl_xfer_url(&lt->sts, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, lt->sts_headers);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, lt->sts_body);
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, herald_curl_keep_head);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &lt->sts_response);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, TIMEOUT_MS);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  free(url), free(path);
  if (herald_curl_xfer_start(&lt->sts, on_sts_done) != 0) {
    sts_cleanup(lt);
    return HERALD_EIO;
  }
  return 0;
}

/* action: {spec = <awsLambda spec after parameters>, body = <payload JSON or nil>,
 *          allow = <policy.status.allow or nil>} */
static int lambda_execute(herald_trigger *t, herald_trigger_req *req, lua_State *L, int idx) {
  lambda_trigger *lt = t->priv;
  lambda_req *r = req->priv;
  memset(r, 0, sizeof *r);
  r->req = req;
  r->lt = lt;
  lua_getfield(L, idx, "spec");
  int spec = lua_gettop(L);
  const char *fn = lua_istable(L, spec) ? herald_cfg_string(L, spec, "functionName", NULL) : NULL;
  const char *itype = lua_istable(L, spec) ? herald_cfg_string(L, spec, "invocationType", NULL) : NULL;
  if (!fn || !*fn) {
    lua_pop(L, 1);
    herald_log_limited(&t->log, HLOG_ERROR, "awsLambda.functionName is empty");
    return HERALD_EINVAL;
  }
  if (!itype || !*itype) itype = "RequestResponse";
  if (strcmp(itype, "RequestResponse") != 0 && strcmp(itype, "Event") != 0 &&
      strcmp(itype, "DryRun") != 0) {
    herald_log_limited(&t->log, HLOG_ERROR,
                       "awsLambda.invocationType %s: use RequestResponse, Event or DryRun", itype);
    lua_pop(L, 1);
    return HERALD_EINVAL;
  }
  r->function = herald_xstrdup(fn);
  r->invocation_type = herald_xstrdup(itype);
  lua_pop(L, 1);
  lua_getfield(L, idx, "body");
  size_t blen = 0;
  const char *body = lua_tolstring(L, -1, &blen);
  if (!body) body = "{}", blen = 2;
  r->payload = herald_xstrndup(body, blen);
  r->payload_len = blen;
  lua_pop(L, 1);
  lua_getfield(L, idx, "allow");
  if (lua_istable(L, -1)) {
    for (int i = 1; i <= (int)lua_objlen(L, -1) && r->nallow < (int)HERALD_ARRAY_SIZE(r->allow); i++) {
      lua_rawgeti(L, -1, i);
      if (lua_isnumber(L, -1)) r->allow[r->nallow++] = (int)lua_tointeger(L, -1);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (herald_curl_xfer_init(&r->x) != 0) {
    free(r->function), free(r->invocation_type), free(r->payload);
    return HERALD_ENOMEM;
  }
  r->x.data = r;
  if (lt->role_arn &&
      (!lt->a_access_key || (uint64_t)herald_now_ns() + STS_REFRESH_NS >= (uint64_t)lt->a_expires_ns)) {
    r->waiting = 1;
    list_push(&lt->waiting, r);
    if (!lt->sts_busy && sts_start(lt) != 0) {
      req_release(r);
      return HERALD_EIO;
    }
    return 0;
  }
  return invoke(r);
}

static void lambda_close(herald_trigger *t, herald_trigger_close_cb done) {
  lambda_trigger *lt = t->priv;
  if (lt->sts_busy) sts_cleanup(lt);
  flush_waiting(lt, HERALD_TRIGGER_FAILED, "engine stopped");
  while (lt->inflight) req_finish(lt->inflight, HERALD_TRIGGER_FAILED, "engine stopped");
  if (lt->refd) herald_curl_loop_unref();
  trigger_free(lt);
  done(t);
}

const herald_trigger_type herald_trigger_awsLambda = {
    .name = "awsLambda",
    .priv_size = sizeof(lambda_trigger),
    .req_size = sizeof(lambda_req),
    .init = lambda_init,
    .execute = lambda_execute,
    .close = lambda_close,
};
