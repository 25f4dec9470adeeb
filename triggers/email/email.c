/*
 * triggers/email: sends an email over SMTP (libcurl) for each firing.
 *
 *   execute(action{spec}) -> one message per address in `to` (as Argo does: each recipient
 *   gets its own message and its own SMTP transaction), sent in parallel on the curl multi
 *   (curl_loop.c) -> result once all are finished:
 *      every message accepted                          done
 *      a connection failure (refused, timeout, reset)  retry
 *      any rejection by the server (4xx/5xx reply)     failed, with the server's reply code
 *
 * Port 465 speaks SMTPS (TLS from the start); other ports (default 587) use STARTTLS when the
 * server offers it (opportunistic, like Go's net/smtp through gomail). username and
 * smtpPassword (a secret) enable SMTP AUTH. The body is sent as text/plain UTF-8; a non-ASCII
 * subject is RFC 2047-encoded. Addresses are checked before anything is sent. Unlike Argo,
 * the trigger's own `parameters` are applied (the sensor runtime does it before execute).
 */
#include "buf.h"
#include "common.h"
#include "curl_loop.h"
#include "engine.h"
#include "plugin.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TIMEOUT_MS 60000L
#define MAX_RECIPIENTS 100

typedef struct email_req email_req;

typedef struct email_trigger {
  char *password; /* smtpPassword, or NULL */
  email_req *inflight;
  int refd;
} email_trigger;

typedef struct email_xfer {
  herald_curl_xfer x; /* x.data = this */
  email_req *parent;
  char *to;
  char *msg;
  size_t len, off;
  struct curl_slist *rcpt;
  int started;
} email_xfer;

struct email_req {
  herald_trigger_req *req;
  email_trigger *et;
  email_xfer *xfers;
  size_t n, left;
  herald_trigger_result res;
  herald_buf reasons;
  email_req *next, *prev;
};

static int email_init(herald_trigger *t, lua_State *L, int idx) {
  email_trigger *et = t->priv;
  const char *host = herald_cfg_string(L, idx, "host", NULL);
  if (!host || !*host) {
    herald_log(&t->log, HLOG_ERROR, "email.host is required");
    return HERALD_EINVAL;
  }
  int err;
  et->password =
      herald_secret_field(t->engine, &t->log, L, idx, "smtpPassword", "email.smtpPassword", &err);
  if (err) return HERALD_EINVAL;
  if (herald_curl_loop_ref(t->engine->loop) != 0) {
    free(et->password);
    return HERALD_ENOMEM;
  }
  et->refd = 1;
  return 0;
}

/* The address inside "Name <a@b>" or the whole string; checks it looks like local@domain.tld
 * (Argo validates with a regular expression too). Returns a new string or NULL. */
static char *address(const char *s) {
  const char *lt = strchr(s, '<'), *gt = lt ? strchr(lt, '>') : NULL;
  const char *a = lt && gt ? lt + 1 : s;
  size_t n = lt && gt ? (size_t)(gt - lt - 1) : strlen(s);
  while (n && isspace((unsigned char)*a)) a++, n--;
  while (n && isspace((unsigned char)a[n - 1])) n--;
  const char *at = memchr(a, '@', n);
  if (!at || at == a || at == a + n - 1) return NULL;
  int dot = 0;
  for (const char *p = a; p < a + n; p++) {
    unsigned char c = (unsigned char)*p;
    if (p == at) continue;
    if (p > at && c == '.') dot = 1;
    if (p < at ? !(isalnum(c) || strchr("._%+-'!#$&*=?^`{|}~/", c))
               : !(isalnum(c) || c == '.' || c == '-'))
      return NULL;
  }
  if (!dot || memchr(at + 1, '@', (size_t)(a + n - at - 1))) return NULL;
  return herald_xstrndup(a, n);
}

static int has_crlf(const char *s) {
  return strpbrk(s, "\r\n") != NULL;
}

/* Appends the Subject header value, RFC 2047-encoded (base64) when it is not plain ASCII. */
static void put_subject(herald_buf *b, const char *s) {
  int ascii = 1;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p >= 0x80) ascii = 0;
  if (ascii) {
    herald_buf_puts(b, s);
    return;
  }
  static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const unsigned char *p = (const unsigned char *)s;
  size_t n = strlen(s);
  herald_buf_puts(b, "=?UTF-8?B?");
  for (size_t i = 0; i < n; i += 3) {
    unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
                 (i + 2 < n ? p[i + 2] : 0);
    herald_buf_putc(b, B64[v >> 18 & 63]);
    herald_buf_putc(b, B64[v >> 12 & 63]);
    herald_buf_putc(b, i + 1 < n ? B64[v >> 6 & 63] : '=');
    herald_buf_putc(b, i + 2 < n ? B64[v & 63] : '=');
  }
  herald_buf_puts(b, "?=");
}

/* Builds the message for one recipient. New string; *len set. */
static char *build_message(const char *from, const char *to, const char *subject,
                           const char *body, size_t *len) {
  herald_buf b = HERALD_BUF_INIT;
  char date[64];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  char id[33];
  herald_random_hex(id, 16);
  herald_buf_printf(&b, "Date: %s\r\nFrom: %s\r\nTo: %s\r\nSubject: ", date, from, to);
  put_subject(&b, subject);
  herald_buf_printf(&b, "\r\nMessage-ID: <%s@herald>\r\nMIME-Version: 1.0\r\n"
                        "Content-Type: text/plain; charset=UTF-8\r\n"
                        "Content-Transfer-Encoding: 8bit\r\n\r\n", id);
  for (const char *p = body; *p; p++) {
    if (*p == '\n' && (p == body || p[-1] != '\r')) herald_buf_putc(&b, '\r');
    herald_buf_putc(&b, *p);
  }
  if (b.len < 2 || b.data[b.len - 1] != '\n') herald_buf_puts(&b, "\r\n");
  *len = b.len;
  return b.data;
}

static size_t on_read(char *buf, size_t size, size_t n, void *userdata) {
  email_xfer *ex = userdata;
  size_t want = size * n, left = ex->len - ex->off;
  size_t k = want < left ? want : left;
  memcpy(buf, ex->msg + ex->off, k);
  ex->off += k;
  return k;
}

static size_t on_write(char *ptr, size_t size, size_t n, void *userdata) {
  return size * n;
}

static void req_unlink(email_req *r) {
  email_trigger *et = r->et;
  if (r->prev) r->prev->next = r->next;
  else et->inflight = r->next;
  if (r->next) r->next->prev = r->prev;
}

static void req_free(email_req *r) {
  for (size_t i = 0; i < r->n; i++) {
    email_xfer *ex = &r->xfers[i];
    herald_curl_xfer_release(&ex->x);
    curl_slist_free_all(ex->rcpt);
    free(ex->msg), free(ex->to);
  }
  free(r->xfers);
  herald_buf_free(&r->reasons);
}

static void req_finish(email_req *r) {
  herald_trigger_req *req = r->req;
  herald_trigger_result res = r->res;
  char reason[768];
  snprintf(reason, sizeof reason, "%s", herald_buf_cstr(&r->reasons));
  req_unlink(r);
  req_free(r);
  req->done(req, res, res == HERALD_TRIGGER_DONE ? NULL : reason);
}

static void add_failure(email_req *r, herald_trigger_result res, const char *fmt, const char *to,
                        const char *what) {
  if (r->reasons.len) herald_buf_puts(&r->reasons, "; ");
  herald_buf_printf(&r->reasons, fmt, to, what);
  if (res == HERALD_TRIGGER_FAILED || r->res == HERALD_TRIGGER_DONE) r->res = res;
}

static void on_done(herald_curl_xfer *x, CURLcode rc) {
  email_xfer *ex = x->data;
  email_req *r = ex->parent;
  long code = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
  if (rc != CURLE_OK) {
    char what[CURL_ERROR_SIZE + 64];
    snprintf(what, sizeof what, "%s (last reply %ld)", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc), code);
    int transport = rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
                    rc == CURLE_OPERATION_TIMEDOUT || rc == CURLE_GOT_NOTHING ||
                    rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_SEND_ERROR ||
                    rc == CURLE_RECV_ERROR;
    add_failure(r, code < 400 && transport ? HERALD_TRIGGER_RETRY : HERALD_TRIGGER_FAILED,
                "sending to %s: %s", ex->to, what);
  }
  herald_curl_xfer_release(x);
  if (--r->left == 0) req_finish(r);
}

/* Reads the `to` list of the spec at idx into a new array of addresses; NULL on a bad one. */
static char **read_to(herald_trigger *t, lua_State *L, int spec, size_t *n) {
  *n = 0;
  lua_getfield(L, spec, "to");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  size_t cnt = lua_objlen(L, -1);
  if (cnt == 0 || cnt > MAX_RECIPIENTS) {
    lua_pop(L, 1);
    return NULL;
  }
  char **to = herald_xcalloc(cnt, sizeof *to);
  for (size_t i = 0; i < cnt; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    to[i] = s && !has_crlf(s) ? address(s) : NULL;
    lua_pop(L, 1);
    if (!to[i]) {
      herald_log_limited(&t->log, HLOG_ERROR, "email.to[%zu]: %s is not a valid email address",
                         i, s ? s : "(not a string)");
      for (size_t j = 0; j < i; j++) free(to[j]);
      free(to);
      lua_pop(L, 1);
      return NULL;
    }
  }
  lua_pop(L, 1);
  *n = cnt;
  return to;
}

/* action: {spec = <email spec after parameters>} */
static int email_execute(herald_trigger *t, herald_trigger_req *req, lua_State *L, int idx) {
  email_trigger *et = t->priv;
  email_req *r = req->priv;
  memset(r, 0, sizeof *r);
  r->req = req;
  r->et = et;
  lua_getfield(L, idx, "spec");
  int spec = lua_gettop(L);
  if (!lua_istable(L, spec)) {
    lua_pop(L, 1);
    return HERALD_EINVAL;
  }
  const char *host = herald_cfg_string(L, spec, "host", "");
  int port = (int)herald_cfg_number(L, spec, "port", 0);
  if (port <= 0) port = 587;
  const char *user = herald_cfg_string(L, spec, "username", NULL);
  const char *from = herald_cfg_string(L, spec, "from", "");
  const char *subject = herald_cfg_string(L, spec, "subject", "");
  const char *body = herald_cfg_string(L, spec, "body", "");
  char *from_addr = has_crlf(from) ? NULL : address(from);
  if (!from_addr) {
    herald_log_limited(&t->log, HLOG_ERROR, "email.from: %s is not a valid email address", from);
    lua_pop(L, 1);
    return HERALD_EINVAL;
  }
  if (has_crlf(subject) || !*host || strpbrk(host, "/@ \r\n")) {
    herald_log_limited(&t->log, HLOG_ERROR, "email: %s", *host ? "the subject must be one line"
                                                                : "host is empty");
    free(from_addr);
    lua_pop(L, 1);
    return HERALD_EINVAL;
  }
  size_t n;
  char **to = read_to(t, L, spec, &n);
  if (!to) {
    if (n == 0) herald_log_limited(&t->log, HLOG_ERROR, "email.to needs 1 to %d addresses", MAX_RECIPIENTS);
    free(from_addr);
    lua_pop(L, 1);
    return HERALD_EINVAL;
  }
  char *url = herald_xasprintf("%s://%s:%d", port == 465 ? "smtps" : "smtp", host, port);
  char *mail_from = herald_xasprintf("<%s>", from_addr);
  r->xfers = herald_xcalloc(n, sizeof *r->xfers);
  r->n = n;
  r->res = HERALD_TRIGGER_DONE;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    email_xfer *ex = &r->xfers[i];
    ex->parent = r;
    ex->to = to[i];
    to[i] = NULL;
    ex->msg = build_message(from, ex->to, subject, body, &ex->len);
    char *rcpt = herald_xasprintf("<%s>", ex->to);
    ex->rcpt = curl_slist_append(NULL, rcpt);
    free(rcpt);
    if (herald_curl_xfer_init(&ex->x) != 0) {
      rc = HERALD_ENOMEM;
      break;
    }
    ex->x.data = ex;
    CURL *e = ex->x.easy;
    herald_curl_xfer_url(&ex->x, url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(e, CURLOPT_MAIL_FROM, mail_from);
    curl_easy_setopt(e, CURLOPT_MAIL_RCPT, ex->rcpt);
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(e, CURLOPT_READDATA, ex);
    curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)ex->len);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, TIMEOUT_MS);
    if (port != 465) curl_easy_setopt(e, CURLOPT_USE_SSL, (long)CURLUSESSL_TRY);
    if (user && *user) {
      curl_easy_setopt(e, CURLOPT_USERNAME, user);
      if (et->password) curl_easy_setopt(e, CURLOPT_PASSWORD, et->password);
    }
  }
  free(to), free(url), free(mail_from), free(from_addr);
  lua_pop(L, 1);
  if (rc != 0) {
    req_free(r);
    return rc;
  }
  r->next = et->inflight;
  if (et->inflight) et->inflight->prev = r;
  et->inflight = r;
  /* Start them all; if the multi refuses one, the ones already started finish normally and
   * that one counts as failed. */
  r->left = n;
  size_t refused = 0;
  for (size_t i = 0; i < n; i++) {
    if (herald_curl_xfer_start(&r->xfers[i].x, on_done) != 0) {
      add_failure(r, HERALD_TRIGGER_RETRY, "sending to %s: %s", r->xfers[i].to, "cannot start");
      herald_curl_xfer_release(&r->xfers[i].x);
      refused++;
    }
  }
  if (refused == n) {
    req_unlink(r);
    req_free(r);
    return HERALD_EIO;
  }
  r->left = n - refused;
  return 0;
}

static void email_close(herald_trigger *t, herald_trigger_close_cb done) {
  email_trigger *et = t->priv;
  while (et->inflight) {
    email_req *r = et->inflight;
    add_failure(r, HERALD_TRIGGER_FAILED, "%s%s", "", "engine stopped");
    req_finish(r);
  }
  if (et->refd) herald_curl_loop_unref();
  free(et->password);
  done(t);
}

const herald_trigger_type herald_trigger_email = {
    .name = "email",
    .priv_size = sizeof(email_trigger),
    .req_size = sizeof(email_req),
    .init = email_init,
    .execute = email_execute,
    .close = email_close,
};
