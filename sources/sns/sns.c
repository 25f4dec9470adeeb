/*
 * sources/sns/sns.c: the `sns` event source (Argo's SNSEventSource): an HTTP(S) subscription
 * of an AWS SNS topic, served as a route on the shared webhook server (lib/webhookctx).
 *
 *   start: route up -> SNS Subscribe(TopicArn, Protocol http|https, Endpoint = webhook.url +
 *          endpoint), signed through lib/aws (credentials as for sqs), retried with backoff
 *   POST from SNS -> the envelope (JSON) -> validateSignature: SigningCertURL must be https on
 *          the topic region's SNS host (sns.<region>.amazonaws.com[.cn]); the certificate is
 *          fetched once and cached; SignatureVersion 1 = SHA1withRSA, 2 = SHA256withRSA over
 *          AWS's "Key\nvalue\n" string of the message's fields
 *     SubscriptionConfirmation -> GET its SubscribeURL (the confirmation AWS documents),
 *          remembering the SubscriptionArn for the Unsubscribe at stop
 *     Notification -> data {header, body: the envelope as sent[, metadata]} as Argo
 *     anything else (UnsubscribeConfirmation) -> 200, no event
 *   stop: the route answers 503; Unsubscribe when a subscription is known (bounded: 5 s)
 *
 * Without validateSignature, a SubscribeURL is fetched only from the region's SNS host or the
 * configured SNS endpoint (an unsigned envelope must not make Herald call arbitrary URLs).
 * Test-only: HERALD_SNS_TEST_CERT_HOST (one more host:port allowed for certificates and
 * SubscribeURLs) and HERALD_SNS_TEST_CAFILE (the CA that signs that host's certificate) let the
 * spec serve its own signing certificate over HTTPS; nothing else reads them.
 */
#include "aws/aws.h"
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "event.h"
#include "plugin.h"
#include "webhookctx/webhookctx.h"

#include <lauxlib.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_CERTS 8
#define STOP_TIMEOUT_MS 5000L

typedef struct sns sns;
typedef struct sns_pending sns_pending;

/* A request waiting for its signing certificate. */
struct sns_pending {
  sns *s;
  herald_http_req *req;
  sns_pending *next;
};

typedef struct cert {
  sns *s;
  char *url;
  EVP_PKEY *key; /* NULL while fetching */
  herald_curl_xfer x;
  herald_buf resp;
  int fetching;
  sns_pending *waiting;
} cert;

/* One SNS API call or URL fetch. */
typedef struct sns_call {
  herald_curl_xfer x;
  sns *s;
  int kind; /* 0 Subscribe, 1 Unsubscribe, 2 confirm (GET SubscribeURL) */
  struct curl_slist *hdrs;
  herald_buf body, resp;
  herald_aws_waiter w;
  struct sns_call *next, *prev;
} sns_call;

struct sns {
  herald_source *src;
  herald_whctx ctx;
  char *topic_arn, *region, *hook_url;
  int validate;
  herald_aws_endpoint ep;
  herald_aws_creds *creds;
  herald_backoff backoff;
  uv_timer_t retry;
  int retry_open, subscribed, ctx_stopped, stopping;
  char *sub_arn; /* confirmed (or returned by Subscribe) */
  cert certs[MAX_CERTS];
  size_t ncerts;
  sns_call *calls;
  herald_source_stop_cb stop_done;
};

static void maybe_done(sns *s);

/* ---- the envelope ---- */

enum { F_TYPE, F_MESSAGE_ID, F_TOKEN, F_TOPIC, F_SUBJECT, F_MESSAGE, F_SUBSCRIBE_URL, F_TIMESTAMP,
       F_SIGVER, F_SIGNATURE, F_CERT_URL, F_N };
static const char *const FIELD[F_N] = {"Type", "MessageId", "Token", "TopicArn", "Subject",
                                       "Message", "SubscribeURL", "Timestamp", "SignatureVersion",
                                       "Signature", "SigningCertURL"};

typedef struct envelope {
  herald_buf f[F_N];
  int has[F_N];
} envelope;

static int envelope_read(envelope *e, const char *body, size_t len) {
  memset(e, 0, sizeof *e);
  if (!len || !herald_json_valid(body, len, 64)) return -1;
  herald_aws_json v = {body, body + len}, f;
  if (*body != '{') {
    const char *p = body;
    while (p < body + len && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    if (p >= body + len || *p != '{') return -1;
  }
  for (int i = 0; i < F_N; i++) {
    if (herald_aws_json_get(v, FIELD[i], &f) == 0 && herald_aws_json_str(f, &e->f[i]) == 0) {
      e->has[i] = 1;
      herald_buf_cstr(&e->f[i]);
    }
  }
  return e->has[F_TYPE] ? 0 : -1;
}

static void envelope_free(envelope *e) {
  for (int i = 0; i < F_N; i++) herald_buf_free(&e->f[i]);
}

static const char *ev(envelope *e, int i) { return e->has[i] ? herald_buf_cstr(&e->f[i]) : ""; }

/* AWS's string to sign: "Key\nvalue\n" for the type's fields in this order, a field left out
 * when absent (Subject of a notification). */
static void string_to_sign(envelope *e, herald_buf *out) {
  static const int NOTE[] = {F_MESSAGE, F_MESSAGE_ID, F_SUBJECT, F_TIMESTAMP, F_TOPIC, F_TYPE, -1};
  static const int SUB[] = {F_MESSAGE, F_MESSAGE_ID, F_SUBSCRIBE_URL, F_TIMESTAMP, F_TOKEN,
                            F_TOPIC, F_TYPE, -1};
  const int *k = strcmp(ev(e, F_TYPE), "Notification") == 0 ? NOTE : SUB;
  for (; *k >= 0; k++) {
    if (!e->has[*k]) continue;
    herald_buf_printf(out, "%s\n", FIELD[*k]);
    herald_buf_append(out, e->f[*k].data, e->f[*k].len);
    herald_buf_putc(out, '\n');
  }
}

/* ---- hosts ---- */

/* 1 when url is https on the region's SNS host (or the test host). */
static int trusted_url(sns *s, const char *url, int for_cert) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL;
  int ok = 0;
  if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
    curl_url_get(u, CURLUPART_PORT, &port, 0);
    char want[200], want_cn[200], hp[300];
    snprintf(want, sizeof want, "sns.%s.amazonaws.com", s->region);
    snprintf(want_cn, sizeof want_cn, "sns.%s.amazonaws.com.cn", s->region);
    snprintf(hp, sizeof hp, "%s%s%s", host, port ? ":" : "", port ? port : "");
    const char *test = getenv("HERALD_SNS_TEST_CERT_HOST");
    int https = strcasecmp(scheme, "https") == 0;
    if (https && !port && (strcasecmp(host, want) == 0 || strcasecmp(host, want_cn) == 0)) ok = 1;
    if (https && test && *test && strcmp(hp, test) == 0) ok = 1;
    /* a SubscribeURL may also point at the configured SNS endpoint (an emulator, a VPC
     * endpoint) */
    if (!for_cert && s->ep.host && strcasecmp(hp, s->ep.host) == 0) ok = 1;
  }
  curl_free(scheme), curl_free(host), curl_free(port);
  curl_url_cleanup(u);
  return ok;
}

static void set_tls(CURL *e) {
  const char *ca = getenv("HERALD_SNS_TEST_CAFILE");
  if (ca && *ca) curl_easy_setopt(e, CURLOPT_CAINFO, ca);
}

/* ---- SNS API calls ---- */

static void call_free(sns_call *c) {
  sns *s = c->s;
  if (c->w.queued) herald_aws_creds_cancel(s->creds, &c->w);
  herald_curl_xfer_release(&c->x);
  curl_slist_free_all(c->hdrs);
  herald_buf_free(&c->body), herald_buf_free(&c->resp);
  if (c->prev) c->prev->next = c->next;
  else s->calls = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
}

static void subscribe(sns *s);

static void on_retry(uv_timer_t *t) { subscribe(t->data); }

static void call_done(sns_call *c, long status, const char *err) {
  sns *s = c->s;
  const char *body = herald_buf_cstr(&c->resp);
  int kind = c->kind;
  if (kind == 0) {
    if (status == 200) {
      char *arn = herald_aws_xml_text(body, "SubscriptionArn");
      herald_log(&s->src->log, HLOG_INFO, "subscribed %s to %s (%s)", s->hook_url, s->topic_arn,
                 arn ? arn : "?");
      /* an http(s) subscription is "pending confirmation" until SNS has our confirmation */
      if (arn && strncmp(arn, "arn:", 4) == 0 && !s->sub_arn) s->sub_arn = arn;
      else free(arn);
      s->subscribed = 1;
      herald_backoff_reset(&s->backoff);
      herald_source_set_connected(s->src, 1, NULL);
    } else {
      char why[600];
      char *code = herald_aws_xml_text(body, "Code"), *msg = herald_aws_xml_text(body, "Message");
      snprintf(why, sizeof why, "SNS Subscribe %s: %s%ld %s%s%s", s->topic_arn,
               err ? err : "status ", err ? 0L : status, code ? code : "", msg ? ": " : "", msg ? msg : "");
      free(code), free(msg);
      herald_source_set_connected(s->src, 0, why);
      if (!s->stopping) uv_timer_start(&s->retry, on_retry, herald_backoff_next(&s->backoff), 0);
    }
  } else if (kind == 1) {
    if (status == 200) herald_log(&s->src->log, HLOG_INFO, "unsubscribed %s", s->sub_arn);
    else herald_log(&s->src->log, HLOG_WARN, "SNS Unsubscribe %s failed: %s%s", s->sub_arn,
                    err ? err : "status ", err ? "" : body);
  } else {
    if (status == 200) {
      char *arn = herald_aws_xml_text(body, "SubscriptionArn");
      /* Subscribe (ReturnSubscriptionArn) already named it; this one only when it did not */
      if (arn && !s->sub_arn) s->sub_arn = arn;
      else free(arn);
      herald_log(&s->src->log, HLOG_INFO, "subscription confirmed: %s", s->sub_arn ? s->sub_arn : "?");
    } else {
      herald_log_limited(&s->src->log, HLOG_WARN, "confirming the subscription failed: %s%ld",
                         err ? err : "status ", err ? 0L : status);
    }
  }
  call_free(c);
  maybe_done(s);
}

static void on_call(herald_curl_xfer *x, CURLcode rc) {
  sns_call *c = x->data;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  char err[CURL_ERROR_SIZE + 1];
  if (rc != CURLE_OK) snprintf(err, sizeof err, "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
  call_done(c, status, rc != CURLE_OK ? err : NULL);
}

static void send_call(sns_call *c, const char *url, int sign) {
  sns *s = c->s;
  herald_buf u = HERALD_BUF_INIT;
  if (sign) {
    herald_sigv4_creds cr = herald_aws_creds_current(s->creds);
    const char *extra[] = {"Content-Type: application/x-www-form-urlencoded; charset=utf-8"};
    c->hdrs = herald_aws_sign(NULL, &s->ep, "POST", "/", NULL, extra, 1, c->body.data, c->body.len,
                              s->region, "sns", &cr, &u);
    url = herald_buf_cstr(&u);
  }
  if (herald_curl_xfer_init(&c->x) != 0) {
    herald_buf_free(&u);
    call_done(c, 0, "out of memory");
    return;
  }
  c->x.data = c;
  CURL *e = c->x.easy;
  herald_curl_xfer_url(&c->x, url);
  herald_buf_free(&u);
  if (sign) {
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->hdrs);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body.data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body.len);
  } else {
    set_tls(e);
  }
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, herald_curl_keep_head);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &c->resp);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->kind == 1 ? STOP_TIMEOUT_MS : 30000L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  if (herald_curl_xfer_start(&c->x, on_call) != 0) call_done(c, 0, "cannot start the request");
}

static void on_creds(herald_aws_waiter *w, int status, const char *why) {
  sns_call *c = w->data;
  if (status != 0) {
    call_done(c, 0, why ? why : "no AWS credentials");
    return;
  }
  send_call(c, NULL, 1);
}

static sns_call *call_new(sns *s, int kind) {
  sns_call *c = herald_xcalloc(1, sizeof *c);
  c->s = s;
  c->kind = kind;
  c->w.cb = on_creds;
  c->w.data = c;
  c->next = s->calls;
  if (s->calls) s->calls->prev = c;
  s->calls = c;
  return c;
}

static void form_put(herald_buf *b, const char *k, const char *v) {
  if (b->len) herald_buf_putc(b, '&');
  herald_buf_printf(b, "%s=", k);
  herald_sigv4_uri_encode(b, v, strlen(v), 0);
}

static void api_call(sns *s, int kind, herald_buf *form) {
  sns_call *c = call_new(s, kind);
  herald_buf_append(&c->body, form->data, form->len);
  herald_buf_free(form);
  int r = herald_aws_creds_get(s->creds, &c->w);
  if (r == 1) send_call(c, NULL, 1);
  else if (r < 0) call_done(c, 0, "no AWS credentials (see the warning above)");
}

static void subscribe(sns *s) {
  if (s->stopping) return;
  herald_buf f = HERALD_BUF_INIT;
  form_put(&f, "Action", "Subscribe");
  form_put(&f, "Endpoint", s->hook_url);
  form_put(&f, "Protocol", strncasecmp(s->hook_url, "https://", 8) == 0 ? "https" : "http");
  form_put(&f, "ReturnSubscriptionArn", "true");
  form_put(&f, "TopicArn", s->topic_arn);
  form_put(&f, "Version", "2010-03-31");
  api_call(s, 0, &f);
}

/* ---- requests ---- */

static void handle(sns *s, herald_http_req *req, envelope *e, EVP_PKEY *key);

/* Parses the request again (it waited for the certificate) and handles it. */
static void resume(sns *s, herald_http_req *req, EVP_PKEY *key) {
  envelope e;
  if (envelope_read(&e, req->body, req->body_len) != 0) {
    envelope_free(&e);
    herald_whctx_reject(&s->ctx, req, 400, HERALD_WHCTX_BAD_REQUEST, "not an SNS message");
    return;
  }
  handle(s, req, &e, key);
  envelope_free(&e);
}

static void on_cert(herald_curl_xfer *x, CURLcode rc) {
  cert *ct = x->data;
  sns *s = ct->s;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  ct->fetching = 0;
  if (rc == CURLE_OK && status == 200 && ct->resp.len) {
    BIO *bio = BIO_new_mem_buf(ct->resp.data, (int)ct->resp.len);
    X509 *x509 = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (x509) ct->key = X509_get_pubkey(x509);
    X509_free(x509);
    BIO_free(bio);
  }
  if (!ct->key)
    herald_log_limited(&s->src->log, HLOG_WARN, "signing certificate %s: %s", ct->url,
                       rc != CURLE_OK ? (x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc))
                                      : "not a PEM certificate");
  herald_curl_xfer_release(&ct->x);
  herald_buf_free(&ct->resp);
  sns_pending *p = ct->waiting;
  ct->waiting = NULL;
  EVP_PKEY *key = ct->key;
  if (!key) { /* forget it: the next message fetches again */
    free(ct->url);
    ct->url = NULL;
  }
  while (p) {
    sns_pending *next = p->next;
    if (key) resume(s, p->req, key);
    else herald_whctx_reject(&s->ctx, p->req, 400, HERALD_WHCTX_BAD_SIGNATURE, "the signing certificate could not be fetched");
    free(p);
    p = next;
  }
}

/* The key of url: cached, or NULL after queueing req until it is fetched (*queued = 1). */
static EVP_PKEY *cert_key(sns *s, const char *url, herald_http_req *req, int *queued) {
  *queued = 0;
  cert *ct = NULL, *freeslot = NULL;
  for (size_t i = 0; i < MAX_CERTS; i++) {
    if (s->certs[i].url && strcmp(s->certs[i].url, url) == 0) ct = &s->certs[i];
    else if (!s->certs[i].url && !freeslot) freeslot = &s->certs[i];
  }
  if (ct && ct->key) return ct->key;
  if (!ct) {
    if (!freeslot) { /* full: drop a cached one that is not being fetched */
      for (size_t i = 0; i < MAX_CERTS && !freeslot; i++)
        if (!s->certs[i].fetching) freeslot = &s->certs[i];
      if (!freeslot) return NULL;
      EVP_PKEY_free(freeslot->key);
      free(freeslot->url);
      memset(freeslot, 0, sizeof *freeslot);
    }
    ct = freeslot;
    ct->s = s;
    ct->url = herald_xstrdup(url);
  }
  sns_pending *p = herald_xcalloc(1, sizeof *p);
  p->s = s;
  p->req = req;
  p->next = ct->waiting;
  ct->waiting = p;
  *queued = 1;
  if (ct->fetching) return NULL;
  if (herald_curl_xfer_init(&ct->x) != 0) return NULL;
  ct->x.data = ct;
  ct->fetching = 1;
  CURL *e = ct->x.easy;
  herald_curl_xfer_url(&ct->x, url);
  set_tls(e);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, herald_curl_keep_head);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &ct->resp);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
  if (herald_curl_xfer_start(&ct->x, on_cert) != 0) {
    ct->fetching = 0;
    herald_curl_xfer_release(&ct->x);
  }
  return NULL;
}

static int b64val(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Standard base64 (padding optional) into out; -1 on a bad character. */
static int unbase64(const char *s, size_t n, herald_buf *out) {
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '=') break;
    int v = b64val((unsigned char)s[i]);
    if (v < 0) return -1;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      herald_buf_putc(out, (char)((acc >> bits) & 0xff));
    }
  }
  return 0;
}

/* 1 when e's Signature verifies with key. */
static int signature_ok(envelope *e, EVP_PKEY *key) {
  const char *ver = ev(e, F_SIGVER);
  const EVP_MD *md = strcmp(ver, "1") == 0 ? EVP_sha1() : strcmp(ver, "2") == 0 ? EVP_sha256() : NULL;
  if (!md) return 0;
  herald_buf sig = HERALD_BUF_INIT, text = HERALD_BUF_INIT;
  int ok = 0;
  if (unbase64(e->f[F_SIGNATURE].data ? e->f[F_SIGNATURE].data : "", e->f[F_SIGNATURE].len, &sig) == 0 && sig.len) {
    string_to_sign(e, &text);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    ok = ctx && EVP_DigestVerifyInit(ctx, NULL, md, NULL, key) == 1 &&
         EVP_DigestVerify(ctx, (const unsigned char *)sig.data, sig.len,
                          (const unsigned char *)text.data, text.len) == 1;
    EVP_MD_CTX_free(ctx);
  }
  herald_buf_free(&sig), herald_buf_free(&text);
  return ok;
}

static void confirm(sns *s, const char *url) {
  sns_call *c = call_new(s, 2);
  send_call(c, url, 0);
}

/* The envelope is read (and, with validateSignature, verified with key). */
static void handle(sns *s, herald_http_req *req, envelope *e, EVP_PKEY *key) {
  if (key && !signature_ok(e, key)) {
    herald_whctx_reject(&s->ctx, req, 400, HERALD_WHCTX_BAD_SIGNATURE, "the SNS signature does not verify");
    return;
  }
  if (e->has[F_TOPIC] && strcmp(ev(e, F_TOPIC), s->topic_arn) != 0) {
    herald_whctx_reject(&s->ctx, req, 400, HERALD_WHCTX_BAD_REQUEST, "a message of another topic");
    return;
  }
  const char *type = ev(e, F_TYPE);
  if (strcmp(type, "SubscriptionConfirmation") == 0) {
    const char *url = ev(e, F_SUBSCRIBE_URL);
    if (!key && !trusted_url(s, url, 0)) {
      herald_whctx_reject(&s->ctx, req, 400, HERALD_WHCTX_BAD_REQUEST,
                          "SubscribeURL is not on the region's SNS host (enable validateSignature to accept signed ones)");
      return;
    }
    confirm(s, url);
    herald_http_respond(req, 200, "text/plain; charset=utf-8", NULL, "confirming", 10);
    return;
  }
  if (strcmp(type, "Notification") != 0) {
    herald_whctx_reject(&s->ctx, req, 200, HERALD_WHCTX_IGNORED, "not a notification");
    return;
  }
  herald_buf *d = &s->ctx.buf;
  herald_buf_reset(d);
  herald_buf_puts(d, "{\"header\":");
  herald_whctx_put_headers(&s->ctx, d, req);
  herald_buf_puts(d, ",\"body\":");
  herald_buf_append(d, req->body, req->body_len);
  if (s->ctx.metadata_json) herald_buf_puts(d, s->ctx.metadata_json);
  herald_buf_putc(d, '}');
  herald_whctx_emit(&s->ctx, req, d->data, d->len);
}

static void on_request(herald_whctx *w, herald_http_req *req) {
  sns *s = w->data;
  envelope e;
  if (envelope_read(&e, req->body, req->body_len) != 0) {
    envelope_free(&e);
    herald_whctx_reject(w, req, 400, HERALD_WHCTX_BAD_REQUEST, "not an SNS message");
    return;
  }
  EVP_PKEY *key = NULL;
  if (s->validate) {
    const char *url = ev(&e, F_CERT_URL);
    if (!trusted_url(s, url, 1)) {
      envelope_free(&e);
      herald_whctx_reject(w, req, 400, HERALD_WHCTX_BAD_SIGNATURE,
                          "SigningCertURL is not https on the topic region's SNS host");
      return;
    }
    int queued;
    key = cert_key(s, url, req, &queued);
    if (!key) {
      envelope_free(&e);
      if (!queued) herald_whctx_reject(w, req, 503, HERALD_WHCTX_BAD_SIGNATURE, "cannot fetch the signing certificate now");
      return; /* answered once the certificate is here */
    }
  }
  handle(s, req, &e, key);
  envelope_free(&e);
}

/* ---- lifecycle ---- */

static void sns_release(sns *s) {
  herald_whctx_release(&s->ctx);
  free(s->topic_arn), free(s->region), free(s->hook_url), free(s->sub_arn);
  s->topic_arn = s->region = s->hook_url = s->sub_arn = NULL;
  herald_aws_endpoint_free(&s->ep);
  for (size_t i = 0; i < MAX_CERTS; i++) {
    cert *ct = &s->certs[i];
    herald_curl_xfer_release(&ct->x);
    herald_buf_free(&ct->resp);
    while (ct->waiting) {
      sns_pending *p = ct->waiting;
      ct->waiting = p->next;
      free(p);
    }
    EVP_PKEY_free(ct->key);
    free(ct->url);
    memset(ct, 0, sizeof *ct);
  }
  if (s->creds) herald_aws_creds_free(s->creds);
  s->creds = NULL;
}

static int sns_init(herald_source *src, lua_State *L, int cfg_idx) {
  sns *s = src->priv;
  s->src = src;
  int cfg = cfg_idx < 0 && cfg_idx > LUA_REGISTRYINDEX ? lua_gettop(L) + cfg_idx + 1 : cfg_idx;
  lua_getfield(L, cfg, "webhook");
  int r = herald_whctx_init(&s->ctx, src, L, -1, on_request, s);
  lua_pop(L, 1);
  if (r) return r;
  r = herald_whctx_read_metadata(&s->ctx, L, cfg);
  if (r) {
    herald_whctx_release(&s->ctx);
    return r;
  }
  s->topic_arn = herald_xstrdup(herald_cfg_string(L, cfg, "topicArn", ""));
  s->region = herald_xstrdup(herald_cfg_string(L, cfg, "region", ""));
  s->validate = herald_cfg_bool(L, cfg, "validateSignature", 0);
  s->hook_url = herald_whctx_hook_url(&s->ctx);
  herald_backoff_init(&s->backoff, NULL, 0, NULL);
  const char *endpoint = herald_cfg_string(L, cfg, "endpoint", NULL);
  if (herald_aws_endpoint_init(&s->ep, "sns", s->region, endpoint) != 0) {
    herald_log(&src->log, HLOG_ERROR, "sns.endpoint: %s is not a URL", endpoint ? endpoint : "");
    sns_release(s);
    return HERALD_EINVAL;
  }
  int err = 0;
  char *ak = herald_secret_field(src->engine, &src->log, L, cfg, "accessKey", "sns.accessKey", &err);
  char *sk = err ? NULL : herald_secret_field(src->engine, &src->log, L, cfg, "secretKey", "sns.secretKey", &err);
  const char *why = NULL;
  if (!err) {
    herald_aws_creds_opts o = {.region = s->region, .access_key = ak, .secret_key = sk,
                               .role_arn = herald_cfg_string(L, cfg, "roleARN", NULL),
                               .log = &src->log, .who = "sns"};
    s->creds = herald_aws_creds_new(src->engine->loop, &o, &why);
  }
  if (ak) memset(ak, 0, strlen(ak)), free(ak);
  if (sk) memset(sk, 0, strlen(sk)), free(sk);
  if (!s->creds) {
    if (why) herald_log(&src->log, HLOG_ERROR, "sns: %s", why);
    sns_release(s);
    return HERALD_EINVAL;
  }
  return 0;
}

static int sns_start(herald_source *src) {
  sns *s = src->priv;
  int r = herald_whctx_start(&s->ctx);
  if (r) return r;
  uv_timer_init(src->engine->loop, &s->retry);
  s->retry.data = s;
  s->retry_open = 1;
  if (s->hook_url) subscribe(s);
  else herald_log(&src->log, HLOG_WARN, "webhook.url is not set: not subscribing to %s (subscribe "
                  "this endpoint to the topic yourself)", s->topic_arn);
  return 0;
}

static void on_retry_closed(uv_handle_t *h) {
  sns *s = h->data;
  s->retry_open = 0;
  maybe_done(s);
}

static void maybe_done(sns *s) {
  if (!s->stopping || !s->ctx_stopped || !s->stop_done) return;
  if (s->calls) return; /* the Unsubscribe (bounded by its timeout) */
  if (s->retry_open == 1) {
    s->retry_open = 2;
    uv_close((uv_handle_t *)&s->retry, on_retry_closed);
    return;
  }
  if (s->retry_open) return;
  herald_source_stop_cb done = s->stop_done;
  s->stop_done = NULL;
  sns_release(s);
  done(s->src);
}

static void ctx_stopped(herald_whctx *w) {
  sns *s = w->data;
  s->ctx_stopped = 1;
  maybe_done(s);
}

static void sns_stop(herald_source *src, herald_source_stop_cb done) {
  sns *s = src->priv;
  s->stopping = 1;
  s->stop_done = done;
  if (s->retry_open == 1) uv_timer_stop(&s->retry);
  for (sns_call *c = s->calls, *next; c; c = next) { /* a Subscribe or confirmation in flight */
    next = c->next;
    call_free(c);
  }
  if (s->sub_arn) {
    herald_buf f = HERALD_BUF_INIT;
    form_put(&f, "Action", "Unsubscribe");
    form_put(&f, "SubscriptionArn", s->sub_arn);
    form_put(&f, "Version", "2010-03-31");
    api_call(s, 1, &f);
  }
  herald_whctx_stop(&s->ctx, ctx_stopped);
}

const herald_source_type herald_source_sns = {
    .name = "sns",
    .event_type = "sns",
    .priv_size = sizeof(sns),
    .init = sns_init,
    .start = sns_start,
    .stop = sns_stop,
};
