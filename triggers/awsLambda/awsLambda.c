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
 * Endpoints, signing and credentials are lib/aws's, shared with the sqs and sns sources:
 * AWS_ENDPOINT_URL_LAMBDA / AWS_ENDPOINT_URL (else https://lambda.<region>.amazonaws.com), and
 * without accessKey/secretKey in the spec the AWS SDKs' chain (AWS_ACCESS_KEY_ID /
 * AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, a web identity token file, instance metadata);
 * roleARN is assumed with those through STS (AWS_ENDPOINT_URL_STS) and renewed before expiry.
 */
#include "aws/aws.h"
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

#define TIMEOUT_MS 60000L

typedef struct lambda_req lambda_req;

typedef struct lambda_trigger {
  herald_trigger *t;
  char *region;
  herald_aws_endpoint ep; /* Lambda */
  herald_aws_creds *creds;
  lambda_req *waiting; /* requests waiting for credentials */
  lambda_req *inflight;
} lambda_trigger;

struct lambda_req {
  herald_curl_xfer x; /* x.data = this */
  herald_trigger_req *req;
  lambda_trigger *lt;
  herald_aws_waiter w;
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

static void trigger_free(lambda_trigger *lt) {
  free(lt->region);
  lt->region = NULL;
  herald_aws_endpoint_free(&lt->ep);
  if (lt->creds) herald_aws_creds_free(lt->creds);
  lt->creds = NULL;
}

static void wipe(char *s) {
  if (s) memset(s, 0, strlen(s)), free(s);
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
  char *ak = herald_secret_field(t->engine, &t->log, L, idx, "accessKey", "awsLambda.accessKey", &err);
  char *sk = err ? NULL : herald_secret_field(t->engine, &t->log, L, idx, "secretKey", "awsLambda.secretKey", &err);
  const char *why = NULL;
  if (!err) {
    herald_aws_creds_opts o = {.region = region, .access_key = ak, .secret_key = sk,
                               .role_arn = herald_cfg_string(L, idx, "roleARN", NULL),
                               .log = &t->log, .who = "awsLambda"};
    lt->creds = herald_aws_creds_new(t->engine->loop, &o, &why);
    if (!lt->creds) herald_log(&t->log, HLOG_ERROR, "awsLambda: %s", why);
  }
  wipe(ak), wipe(sk);
  if (!lt->creds) goto fail;
  if (herald_aws_endpoint_init(&lt->ep, "lambda", region, NULL) != 0) {
    herald_log(&t->log, HLOG_ERROR, "awsLambda: invalid Lambda endpoint URL");
    goto fail;
  }
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
  if (r->w.queued) herald_aws_creds_cancel(r->lt->creds, &r->w);
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
    if (strcmp(r->error_type, "ExpiredTokenException") == 0 ||
        strcmp(r->error_type, "UnrecognizedClientException") == 0)
      herald_aws_creds_expire(r->lt->creds); /* fetched again for the retry */
    req_finish(r, status == 429 || status >= 500 ? HERALD_TRIGGER_RETRY : HERALD_TRIGGER_FAILED,
               reason);
  }
}

/* Sends the invocation. Returns 0, or a negative error (r released, no callback). */
static int invoke(lambda_req *r) {
  lambda_trigger *lt = r->lt;
  list_push(&lt->inflight, r);
  herald_buf path = HERALD_BUF_INIT, url = HERALD_BUF_INIT;
  herald_buf_puts(&path, "/2015-03-31/functions/");
  herald_sigv4_uri_encode(&path, r->function, strlen(r->function), 0);
  herald_buf_puts(&path, "/invocations");
  herald_sigv4_creds c = herald_aws_creds_current(lt->creds);
  char *itype = herald_xasprintf("X-Amz-Invocation-Type: %s", r->invocation_type);
  const char *extra[] = {"Content-Type: application/json", itype};
  r->headers = herald_aws_sign(NULL, &lt->ep, "POST", path.data, NULL, extra, 2, r->payload,
                               r->payload_len, lt->region, "lambda", &c, &url);
  free(itype);
  CURL *e = r->x.easy;
  herald_curl_xfer_url(&r->x, herald_buf_cstr(&url));
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

/* Credentials arrived (or could not be had) for a waiting request. */
static void on_creds(herald_aws_waiter *w, int status, const char *why) {
  lambda_req *r = w->data;
  lambda_trigger *lt = r->lt;
  list_remove(&lt->waiting, r);
  r->waiting = 0;
  if (status != 0) {
    char reason[600];
    snprintf(reason, sizeof reason, "AWS credentials: %s", why ? why : "unavailable");
    list_push(&lt->inflight, r);
    req_finish(r, status == HERALD_ECLOSED ? HERALD_TRIGGER_FAILED : HERALD_TRIGGER_RETRY, reason);
    return;
  }
  if (invoke(r) != 0) {
    herald_trigger_req *req = r->req;
    req->done(req, HERALD_TRIGGER_FAILED, "cannot send the invocation");
  }
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
  r->w.cb = on_creds;
  r->w.data = r;
  r->waiting = 1;
  list_push(&lt->waiting, r);
  int got = herald_aws_creds_get(lt->creds, &r->w);
  if (got == 0) return 0; /* on_creds sends it */
  list_remove(&lt->waiting, r);
  r->waiting = 0;
  if (got < 0) {
    list_push(&lt->inflight, r);
    req_release(r);
    return HERALD_EIO;
  }
  return invoke(r);
}

static void lambda_close(herald_trigger *t, herald_trigger_close_cb done) {
  lambda_trigger *lt = t->priv;
  while (lt->waiting) {
    lambda_req *r = lt->waiting;
    req_finish(r, HERALD_TRIGGER_FAILED, "engine stopped");
  }
  while (lt->inflight) req_finish(lt->inflight, HERALD_TRIGGER_FAILED, "engine stopped");
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
