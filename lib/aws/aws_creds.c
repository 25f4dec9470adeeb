/*
 * lib/aws/aws_creds.c: AWS credentials on the loop (aws.h), the chain an AWS SDK walks:
 *
 *   base:  static keys from the spec | AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY[/AWS_SESSION_TOKEN]
 *          | web identity (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN: STS
 *            AssumeRoleWithWebIdentity, unsigned; EKS IRSA)
 *          | instance metadata, IMDSv2: PUT /latest/api/token, GET
 *            /latest/meta-data/iam/security-credentials/ (the role), GET .../<role> (the keys);
 *            AWS_EC2_METADATA_SERVICE_ENDPOINT moves it, AWS_EC2_METADATA_DISABLED=true skips it
 *   then:  roleARN given -> STS AssumeRole signed with the base credentials
 *
 * One fetch at a time; callers queue as waiters. Temporary credentials are renewed 5 minutes
 * before they expire, in the background while the old ones still sign (so a poll loop never
 * stalls on a refresh). A failed fetch fails the waiters; the caller retries with its backoff.
 */
#include "aws.h"

#include "common.h"
#include "event.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define REFRESH_NS (300LL * 1000000000LL) /* renew this long before expiry */
#define USABLE_NS (10LL * 1000000000LL)   /* still sign with credentials this far from expiry */
#define STS_TIMEOUT_MS 30000L
#define IMDS_TIMEOUT_MS 2000L

enum { ST_IDLE, ST_WEBID, ST_IMDS_TOKEN, ST_IMDS_ROLE, ST_IMDS_CREDS, ST_ASSUME };

struct herald_aws_creds {
  uv_loop_t *loop;
  char *region, *who;
  herald_logger log;
  char *s_ak, *s_sk, *s_tok; /* static */
  char *role_arn;
  herald_aws_endpoint sts;
  /* base credentials from the chain (static or env: no expiry) */
  char *b_ak, *b_sk, *b_tok;
  int64_t b_exp;
  /* what signs: the base ones, or the assumed role's */
  char *ak, *sk, *tok;
  int64_t exp; /* 0: does not expire */
  int have;
  /* the fetch in progress */
  int step;
  herald_curl_xfer x;
  struct curl_slist *hdrs;
  herald_buf resp;
  char *body;
  char *imds_base, *imds_token, *imds_role;
  herald_aws_waiter *waiters;
  int last_status; /* of the last fetch that failed at once */
};

static void wipe(char **s) {
  if (*s) {
    memset(*s, 0, strlen(*s));
    free(*s);
    *s = NULL;
  }
}

static char *dup_or_null(const char *s) { return s && *s ? herald_xstrdup(s) : NULL; }

herald_aws_creds *herald_aws_creds_new(uv_loop_t *loop, const herald_aws_creds_opts *o,
                                       const char **why) {
  if (!o->access_key != !o->secret_key) {
    *why = "accessKey and secretKey go together";
    return NULL;
  }
  herald_aws_creds *c = herald_xcalloc(1, sizeof *c);
  if (herald_aws_endpoint_init(&c->sts, "sts", o->region, o->sts_endpoint) != 0) {
    free(c);
    *why = "invalid STS endpoint URL";
    return NULL;
  }
  if (herald_curl_loop_ref(loop) != 0) {
    herald_aws_endpoint_free(&c->sts);
    free(c);
    *why = "out of memory";
    return NULL;
  }
  c->loop = loop;
  c->region = herald_xstrdup(o->region);
  c->who = herald_xstrdup(o->who ? o->who : "aws");
  if (o->log) c->log = *o->log;
  c->s_ak = dup_or_null(o->access_key);
  c->s_sk = dup_or_null(o->secret_key);
  c->s_tok = dup_or_null(o->session_token);
  c->role_arn = dup_or_null(o->role_arn);
  const char *imds = getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT");
  c->imds_base = herald_xstrdup(imds && *imds ? imds : "http://169.254.169.254");
  size_t n = strlen(c->imds_base);
  while (n > 0 && c->imds_base[n - 1] == '/') c->imds_base[--n] = '\0';
  return c;
}

static void drop_current(herald_aws_creds *c) {
  wipe(&c->ak), wipe(&c->sk), wipe(&c->tok);
  c->exp = 0;
  c->have = 0;
}

static void drop_base(herald_aws_creds *c) {
  wipe(&c->b_ak), wipe(&c->b_sk), wipe(&c->b_tok);
  c->b_exp = 0;
}

void herald_aws_creds_set_static(herald_aws_creds *c, const char *access_key,
                                 const char *secret_key, const char *session_token) {
  wipe(&c->s_ak), wipe(&c->s_sk), wipe(&c->s_tok);
  c->s_ak = dup_or_null(access_key);
  c->s_sk = dup_or_null(secret_key);
  c->s_tok = dup_or_null(session_token);
  herald_aws_creds_expire(c);
}

void herald_aws_creds_expire(herald_aws_creds *c) {
  if (c->step != ST_IDLE) return; /* a fetch is already renewing them */
  drop_current(c);
  drop_base(c);
}

herald_sigv4_creds herald_aws_creds_current(const herald_aws_creds *c) {
  return (herald_sigv4_creds){c->ak, c->sk, c->tok};
}

/* ---- the fetch ---- */

static void fetch_cleanup(herald_aws_creds *c) {
  herald_curl_xfer_release(&c->x);
  curl_slist_free_all(c->hdrs);
  c->hdrs = NULL;
  wipe(&c->body);
  herald_buf_free(&c->resp);
}

static void finish(herald_aws_creds *c, int status, const char *why) {
  fetch_cleanup(c);
  c->step = ST_IDLE;
  wipe(&c->imds_token);
  free(c->imds_role);
  c->imds_role = NULL;
  if (status != 0) c->last_status = status;
  if (status != 0)
    herald_log_limited(&c->log, HLOG_WARN, "%s: cannot get AWS credentials: %s", c->who, why);
  /* callbacks may queue again (a retry): take the list first */
  herald_aws_waiter *w = c->waiters;
  c->waiters = NULL;
  while (w) {
    herald_aws_waiter *next = w->next;
    w->queued = 0;
    w->next = w->prev = NULL;
    if (status == 0 || !c->have) w->cb(w, status, why);
    else w->cb(w, 0, NULL); /* a background refresh failed; the old ones still sign */
    w = next;
  }
}

static void set_current_from_base(herald_aws_creds *c) {
  drop_current(c);
  c->ak = herald_xstrdup(c->b_ak);
  c->sk = herald_xstrdup(c->b_sk);
  c->tok = dup_or_null(c->b_tok);
  c->exp = c->b_exp;
  c->have = 1;
}

static int request(herald_aws_creds *c, int step, const char *url, const char *method,
                   long timeout_ms, herald_curl_done_cb done);
static void after_base(herald_aws_creds *c);
static void on_done(herald_curl_xfer *x, CURLcode rc);

/* A form body for STS; the values are encoded. */
static char *sts_form(herald_aws_creds *c, const char *action, const char *extra_name,
                      const char *extra_value) {
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_printf(&b, "Action=%s&RoleArn=", action);
  const char *role = c->role_arn;
  if (strcmp(action, "AssumeRoleWithWebIdentity") == 0) role = getenv("AWS_ROLE_ARN");
  herald_sigv4_uri_encode(&b, role, strlen(role), 0);
  const char *sess = getenv("AWS_ROLE_SESSION_NAME");
  herald_buf_printf(&b, "&RoleSessionName=");
  if (sess && *sess) herald_sigv4_uri_encode(&b, sess, strlen(sess), 0);
  else herald_buf_printf(&b, "herald-%lld", (long long)(herald_now_ns() / 1000000000));
  if (extra_name) {
    herald_buf_printf(&b, "&%s=", extra_name);
    herald_sigv4_uri_encode(&b, extra_value, strlen(extra_value), 0);
  }
  herald_buf_puts(&b, "&Version=2011-06-15");
  char *s = herald_xstrndup(b.data, b.len);
  memset(b.data, 0, b.len);
  herald_buf_free(&b);
  return s;
}

static int start_sts(herald_aws_creds *c, int step) {
  int webid = step == ST_WEBID;
  char *tokfile = NULL;
  if (webid) {
    size_t len;
    int err;
    char *tok = herald_read_file(getenv("AWS_WEB_IDENTITY_TOKEN_FILE"), &len, &err);
    if (!tok) {
      finish(c, HERALD_EIO, "cannot read AWS_WEB_IDENTITY_TOKEN_FILE");
      return -1;
    }
    while (len > 0 && (tok[len - 1] == '\n' || tok[len - 1] == '\r')) tok[--len] = '\0';
    tokfile = tok;
  }
  c->body = sts_form(c, webid ? "AssumeRoleWithWebIdentity" : "AssumeRole",
                     webid ? "WebIdentityToken" : NULL, tokfile);
  wipe(&tokfile);
  const char *ct = "Content-Type: application/x-www-form-urlencoded; charset=utf-8";
  herald_buf url = HERALD_BUF_INIT;
  if (webid) { /* AssumeRoleWithWebIdentity is not signed: the token is the proof */
    c->hdrs = curl_slist_append(NULL, ct);
    herald_buf_printf(&url, "%s/", c->sts.base);
  } else {
    herald_sigv4_creds base = {c->b_ak, c->b_sk, c->b_tok};
    const char *extra[] = {ct};
    c->hdrs = herald_aws_sign(NULL, &c->sts, "POST", "/", NULL, extra, 1, c->body,
                              strlen(c->body), c->region, "sts", &base, &url);
  }
  int r = request(c, step, herald_buf_cstr(&url), "POST", STS_TIMEOUT_MS, on_done);
  herald_buf_free(&url);
  return r;
}

/* Sends the request for step; the body (c->body) and headers (c->hdrs) are set. */
static int request(herald_aws_creds *c, int step, const char *url, const char *method,
                   long timeout_ms, herald_curl_done_cb done) {
  c->step = step;
  if (herald_curl_xfer_init(&c->x) != 0) {
    finish(c, HERALD_ENOMEM, "out of memory");
    return -1;
  }
  c->x.data = c;
  CURL *e = c->x.easy;
  herald_curl_xfer_url(&c->x, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->hdrs);
  if (strcmp(method, "POST") == 0) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body ? c->body : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(c->body ? strlen(c->body) : 0));
  } else if (strcmp(method, "PUT") == 0) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
  }
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, herald_curl_keep_head);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &c->resp);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 5000 ? timeout_ms : 5000L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  if (herald_curl_xfer_start(&c->x, done) != 0) {
    finish(c, HERALD_EIO, "cannot start the request");
    return -1;
  }
  return 0;
}

static void imds_get(herald_aws_creds *c, int step) {
  fetch_cleanup(c);
  char *tok = herald_xasprintf("X-aws-ec2-metadata-token: %s", c->imds_token ? c->imds_token : "");
  c->hdrs = curl_slist_append(NULL, tok);
  wipe(&tok);
  char *url = step == ST_IMDS_ROLE
                  ? herald_xasprintf("%s/latest/meta-data/iam/security-credentials/", c->imds_base)
                  : herald_xasprintf("%s/latest/meta-data/iam/security-credentials/%s",
                                     c->imds_base, c->imds_role);
  request(c, step, url, "GET", IMDS_TIMEOUT_MS, on_done);
  free(url);
}

/* Reads {AccessKeyId, SecretAccessKey, Token, Expiration} (IMDS) into the base. */
static int imds_creds(herald_aws_creds *c, const char *body, size_t len) {
  if (!herald_json_valid(body, len, 16)) return -1;
  herald_aws_json v = {body, body + len}, f;
  herald_buf ak = HERALD_BUF_INIT, sk = HERALD_BUF_INIT, tok = HERALD_BUF_INIT,
             exp = HERALD_BUF_INIT;
  int ok = herald_aws_json_get(v, "AccessKeyId", &f) == 0 && herald_aws_json_str(f, &ak) == 0 &&
           herald_aws_json_get(v, "SecretAccessKey", &f) == 0 &&
           herald_aws_json_str(f, &sk) == 0 && ak.len && sk.len;
  if (ok && herald_aws_json_get(v, "Token", &f) == 0) herald_aws_json_str(f, &tok);
  if (ok && herald_aws_json_get(v, "Expiration", &f) == 0) herald_aws_json_str(f, &exp);
  if (ok) {
    drop_base(c);
    c->b_ak = herald_xstrdup(herald_buf_cstr(&ak));
    c->b_sk = herald_xstrdup(herald_buf_cstr(&sk));
    c->b_tok = tok.len ? herald_xstrdup(herald_buf_cstr(&tok)) : NULL;
    c->b_exp = herald_aws_parse_time(herald_buf_cstr(&exp));
    if (!c->b_exp) c->b_exp = herald_now_ns() + 900LL * 1000000000LL;
  }
  if (sk.data) memset(sk.data, 0, sk.len);
  if (tok.data) memset(tok.data, 0, tok.len);
  herald_buf_free(&ak), herald_buf_free(&sk), herald_buf_free(&tok), herald_buf_free(&exp);
  return ok ? 0 : -1;
}

static void on_done(herald_curl_xfer *x, CURLcode rc) {
  herald_aws_creds *c = x->data;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  const char *body = herald_buf_cstr(&c->resp);
  size_t blen = c->resp.len;
  char why[400];
  static const char *const names[] = {"", "STS AssumeRoleWithWebIdentity", "IMDS token",
                                      "IMDS role", "IMDS credentials", "STS AssumeRole"};
  if (rc != CURLE_OK) {
    snprintf(why, sizeof why, "%s: %s", names[c->step],
             x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
    finish(c, HERALD_EIO, why);
    return;
  }
  if (status != 200) {
    char *code = herald_aws_xml_text(body, "Code"), *msg = herald_aws_xml_text(body, "Message");
    snprintf(why, sizeof why, "%s: status %ld%s%s%s%s", names[c->step], status,
             code ? " " : "", code ? code : "", msg ? ": " : "", msg ? msg : "");
    free(code), free(msg);
    finish(c, status == 403 || status == 400 ? HERALD_EIO : HERALD_EIO, why);
    return;
  }
  switch (c->step) {
  case ST_WEBID:
  case ST_ASSUME: {
    char *ak = herald_aws_xml_text(body, "AccessKeyId"), *sk = herald_aws_xml_text(body, "SecretAccessKey");
    char *tok = herald_aws_xml_text(body, "SessionToken"), *exp = herald_aws_xml_text(body, "Expiration");
    if (!ak || !sk || !tok) {
      wipe(&ak), wipe(&sk), wipe(&tok), free(exp);
      snprintf(why, sizeof why, "%s: no credentials in the answer", names[c->step]);
      finish(c, HERALD_EIO, why);
      return;
    }
    int64_t e = herald_aws_parse_time(exp);
    if (!e) e = herald_now_ns() + 900LL * 1000000000LL;
    free(exp);
    if (c->step == ST_WEBID) {
      drop_base(c);
      c->b_ak = ak, c->b_sk = sk, c->b_tok = tok, c->b_exp = e;
      fetch_cleanup(c);
      after_base(c);
    } else {
      drop_current(c);
      c->ak = ak, c->sk = sk, c->tok = tok, c->exp = e;
      c->have = 1;
      herald_log(&c->log, HLOG_DEBUG, "%s: assumed role %s", c->who, c->role_arn);
      finish(c, 0, NULL);
    }
    return;
  }
  case ST_IMDS_TOKEN:
    wipe(&c->imds_token);
    c->imds_token = herald_xstrndup(body, blen);
    imds_get(c, ST_IMDS_ROLE);
    return;
  case ST_IMDS_ROLE: {
    size_t n = 0;
    while (n < blen && body[n] != '\n' && body[n] != '\r') n++;
    if (n == 0) {
      finish(c, HERALD_EIO, "IMDS: the instance has no IAM role");
      return;
    }
    free(c->imds_role);
    c->imds_role = herald_xstrndup(body, n);
    imds_get(c, ST_IMDS_CREDS);
    return;
  }
  case ST_IMDS_CREDS:
    if (imds_creds(c, body, blen) != 0) {
      finish(c, HERALD_EIO, "IMDS credentials: not the expected JSON");
      return;
    }
    fetch_cleanup(c);
    after_base(c);
    return;
  }
}

/* The base credentials are known: assume the role, or use them. */
static void after_base(herald_aws_creds *c) {
  if (c->role_arn) {
    start_sts(c, ST_ASSUME);
    return;
  }
  set_current_from_base(c);
  finish(c, 0, NULL);
}

static int env_true(const char *name) {
  const char *v = getenv(name);
  return v && strcasecmp(v, "true") == 0;
}

static void start_fetch(herald_aws_creds *c) {
  int64_t now = herald_now_ns();
  if (c->b_ak && (!c->b_exp || c->b_exp - REFRESH_NS > now)) {
    after_base(c); /* base still good (static, env, or fresh temporary) */
    return;
  }
  drop_base(c);
  if (c->s_ak) {
    c->b_ak = herald_xstrdup(c->s_ak);
    c->b_sk = herald_xstrdup(c->s_sk);
    c->b_tok = dup_or_null(c->s_tok);
    after_base(c);
    return;
  }
  const char *eak = getenv("AWS_ACCESS_KEY_ID"), *esk = getenv("AWS_SECRET_ACCESS_KEY");
  if (eak && *eak && esk && *esk) {
    c->b_ak = herald_xstrdup(eak);
    c->b_sk = herald_xstrdup(esk);
    c->b_tok = dup_or_null(getenv("AWS_SESSION_TOKEN"));
    after_base(c);
    return;
  }
  const char *wf = getenv("AWS_WEB_IDENTITY_TOKEN_FILE"), *wr = getenv("AWS_ROLE_ARN");
  if (wf && *wf && wr && *wr) {
    start_sts(c, ST_WEBID);
    return;
  }
  if (env_true("AWS_EC2_METADATA_DISABLED")) {
    finish(c, HERALD_EIO,
           "no credentials: set accessKey and secretKey, AWS_ACCESS_KEY_ID and "
           "AWS_SECRET_ACCESS_KEY, or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN "
           "(instance metadata is disabled)");
    return;
  }
  c->hdrs = curl_slist_append(NULL, "X-aws-ec2-metadata-token-ttl-seconds: 21600");
  char *url = herald_xasprintf("%s/latest/api/token", c->imds_base);
  request(c, ST_IMDS_TOKEN, url, "PUT", IMDS_TIMEOUT_MS, on_done);
  free(url);
}

int herald_aws_creds_get(herald_aws_creds *c, herald_aws_waiter *w) {
  int64_t now = herald_now_ns();
  if (c->have && (!c->exp || c->exp - REFRESH_NS > now)) return 1;
  if (c->have && c->exp - USABLE_NS > now) {
    if (c->step == ST_IDLE) start_fetch(c); /* renew in the background; the old ones sign */
    if (c->have) return 1;
  }
  if (c->step == ST_IDLE) {
    drop_current(c);
    c->last_status = 0;
    start_fetch(c);
    if (c->have) return 1; /* static or environment keys: at once */
    if (c->step == ST_IDLE) return c->last_status ? c->last_status : HERALD_EIO;
  }
  if (!w->queued) {
    w->queued = 1;
    w->prev = NULL;
    w->next = c->waiters;
    if (c->waiters) c->waiters->prev = w;
    c->waiters = w;
  }
  return 0;
}

void herald_aws_creds_cancel(herald_aws_creds *c, herald_aws_waiter *w) {
  if (!w->queued) return;
  if (w->prev) w->prev->next = w->next;
  else c->waiters = w->next;
  if (w->next) w->next->prev = w->prev;
  w->next = w->prev = NULL;
  w->queued = 0;
}

void herald_aws_creds_free(herald_aws_creds *c) {
  if (!c) return;
  if (c->step != ST_IDLE) finish(c, HERALD_ECLOSED, "stopped");
  else {
    herald_aws_waiter *w = c->waiters;
    c->waiters = NULL;
    while (w) {
      herald_aws_waiter *next = w->next;
      w->queued = 0;
      w->cb(w, HERALD_ECLOSED, "stopped");
      w = next;
    }
  }
  fetch_cleanup(c);
  drop_current(c), drop_base(c);
  wipe(&c->s_ak), wipe(&c->s_sk), wipe(&c->s_tok);
  wipe(&c->imds_token);
  free(c->imds_role), free(c->imds_base), free(c->role_arn), free(c->region), free(c->who);
  herald_aws_endpoint_free(&c->sts);
  herald_curl_loop_unref();
  free(c);
}
