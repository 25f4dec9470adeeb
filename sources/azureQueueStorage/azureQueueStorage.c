/*
 * sources/azureQueueStorage/azureQueueStorage.c: Argo's `azureQueueStorage` event source,
 * on Azure Queue Storage's REST API over the curl loop (lib/cloud): no Azure SDK.
 *
 *   start -> GETS receives in flight: GET {queue}/messages?numofmessages=32&visibilitytimeout=120
 *     (the XML answer read here) -> each message -> event data {body, messageID, insertionTime
 *     [, metadata]} -> herald_source_emit_id -> on the bus: DELETE {queue}/messages/{id}
 *     ?popreceipt=... (one request per message: the API has no batch delete)
 *   an empty answer -> that receive waits waitTimeInSeconds (Argo's default 3) before the next,
 *     as Argo sleeps between empty results.
 *   the bus full: messages wait here in order, receiving stops, herald_source_when_room resumes.
 *   a failed receive -> "not connected", connectionBackoff, then receiving again.
 *   bad messages (decodeMessage on text that is not base64, jsonBody on a body that is not JSON)
 *     are counted and logged, and deleted unless `dlq` (then they come back after the visibility
 *     timeout until Azure's dequeue count moves them to a poison queue you run), as Argo does.
 *   stop: receives abandoned (their messages come back after the visibility timeout), the bus's
 *     answers waited for and their deletes sent (at most STOP_FLUSH_MS), then done.
 *
 * Credentials: the connectionString secret: AccountName + AccountKey (Shared Key: an
 * HMAC-SHA256 over the canonical request, with the key) or SharedAccessSignature (the SAS
 * token appended to every URL), the endpoint from QueueEndpoint, or
 * DefaultEndpointsProtocol/AccountName/EndpointSuffix, or UseDevelopmentStorage=true (azurite).
 * storageAccountName without a connection string is Argo's Azure AD path: a load error here
 * (not run yet), as the lint says.
 */
#define _GNU_SOURCE /* memmem, strncasecmp */
#include "buf.h"
#include "cloud/cloud.h"
#include "common.h"
#include "engine.h"
#include "metrics.h"
#include "plugin.h"
#include "sigv4.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define GETS 2
#define GET_MAX 32            /* the most a Get Messages returns */
#define VISIBILITY_S 120      /* Argo's visibilityTimeout (HERALD_AZQ_VISIBILITY_S: specs) */
#define MAX_OUTSTANDING 512
#define DEL_MAX 16            /* deletes in flight: more would queue the receives behind them
                                 in the origin's curl lane (and a storage account's partition
                                 serves them one by one anyway) */
#define API_TIMEOUT_MS 30000L
#define STOP_FLUSH_MS 2000
#define API_VERSION "2018-03-28"
#define DEV_ACCOUNT "devstoreaccount1"
#define DEV_KEY "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

typedef struct aqs aqs;
typedef struct qmsg qmsg;

/* One received message not yet deleted. */
struct qmsg {
  aqs *q;
  qmsg *prev, *next;  /* the outstanding list, in order received */
  char *msg_id, *pop;
  char *data;         /* the event data while it waits for room on the bus, else NULL */
  size_t len;
  char id[33];        /* the CloudEvent id when ids are stable */
  cloud_req del;      /* its delete */
  int emitted, deleting;
  int bad;            /* not an event (being deleted, or dropped): emit_held passes it by */
  qmsg *dnext;        /* waiting for its delete to start */
};

enum { ST_IDLE, ST_RUNNING, ST_WAIT, ST_STOPPING };

struct aqs {
  herald_source *src;
  /* config */
  char *queue, *metadata_json;
  int json_body, decode, dlq;
  int visibility_s;
  uint64_t wait_ms;
  /* where and how */
  char *base;         /* "https://acct.queue.core.windows.net" or "http://127.0.0.1:10001/devstoreaccount1" */
  char *base_path;    /* the path part of base ("" or "/devstoreaccount1") */
  char *account;
  herald_buf key;     /* the decoded account key (Shared Key), empty with a SAS */
  char *sas;          /* the SAS query, without '?' */
  /* receiving */
  cloud_req get[GETS];
  uv_timer_t get_wait[GETS];
  uv_timer_t retry, flush_timer;
  herald_backoff backoff;
  int state, closing;
  qmsg *head, *tail, *held;
  qmsg *dq_head, *dq_tail; /* on the bus, waiting for a delete slot */
  uint32_t outstanding, inflight_emits, deletes;
  int waiting_room, stable_ids;
  uint64_t stop_deadline_ns;
  herald_source_stop_cb stop_done;
};

/* ---- small helpers ---- */

static void free_str(char **p) {
  if (*p) memset(*p, 0, strlen(*p));
  free(*p);
  *p = NULL;
}

/* RFC 1123 date, as x-ms-date wants it. */
static void http_date(char out[40]) {
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, 40, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* Go's time.Time JSON (RFC 3339, UTC "Z") of an RFC 1123 date ("Fri, 09 Oct 2009 21:04:30 GMT");
 * the text itself when it does not parse. */
static void insertion_time(herald_buf *out, const char *s) {
  static const char *mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                               "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char mon[4] = {0};
  int d, y, hh, mm, ss;
  if (sscanf(s, "%*3s, %d %3s %d %d:%d:%d", &d, mon, &y, &hh, &mm, &ss) == 6) {
    for (int i = 0; i < 12; i++) {
      if (strcmp(mon, mons[i]) == 0) {
        herald_buf_printf(out, "\"%04d-%02d-%02dT%02d:%02d:%02dZ\"", y, i + 1, d, hh, mm, ss);
        return;
      }
    }
  }
  herald_buf_json_string(out, s, strlen(s));
}

/* Unescapes XML text s[0..n) (the five entities and character references) onto out. */
static void xml_text(herald_buf *out, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '&') {
      herald_buf_putc(out, s[i]);
      continue;
    }
    const char *semi = memchr(s + i, ';', n - i);
    if (!semi) {
      herald_buf_append(out, s + i, n - i);
      return;
    }
    size_t elen = (size_t)(semi - (s + i)) + 1;
    const char *e = s + i + 1;
    unsigned long cp = 0;
    if (elen == 4 && memcmp(e, "lt", 2) == 0) herald_buf_putc(out, '<');
    else if (elen == 4 && memcmp(e, "gt", 2) == 0) herald_buf_putc(out, '>');
    else if (elen == 5 && memcmp(e, "amp", 3) == 0) herald_buf_putc(out, '&');
    else if (elen == 6 && memcmp(e, "quot", 4) == 0) herald_buf_putc(out, '"');
    else if (elen == 6 && memcmp(e, "apos", 4) == 0) herald_buf_putc(out, '\'');
    else if (elen > 3 && e[0] == '#' && (cp = strtoul(e[1] == 'x' ? e + 2 : e + 1, NULL, e[1] == 'x' ? 16 : 10)) > 0) {
      char u[4];
      size_t k;
      if (cp < 0x80) u[0] = (char)cp, k = 1;
      else if (cp < 0x800) u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 63)), k = 2;
      else if (cp < 0x10000) u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | (cp >> 6 & 63)), u[2] = (char)(0x80 | (cp & 63)), k = 3;
      else u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | (cp >> 12 & 63)), u[2] = (char)(0x80 | (cp >> 6 & 63)), u[3] = (char)(0x80 | (cp & 63)), k = 4;
      herald_buf_append(out, u, k);
    } else herald_buf_append(out, s + i, elen);
    i += elen - 1;
  }
}

/* The text of the first <tag>...</tag> in s[0..n) (NULL when absent), unescaped into out. */
static const char *xml_child(const char *s, size_t n, const char *tag, herald_buf *out) {
  char open[64], close[64];
  snprintf(open, sizeof open, "<%s>", tag);
  snprintf(close, sizeof close, "</%s>", tag);
  const char *a = memmem(s, n, open, strlen(open));
  if (!a) return NULL;
  a += strlen(open);
  const char *b = memmem(a, n - (size_t)(a - s), close, strlen(close));
  if (!b) return NULL;
  herald_buf_reset(out);
  xml_text(out, a, (size_t)(b - a));
  return herald_buf_cstr(out);
}

/* ---- requests: Shared Key or SAS ---- */

static int qcmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void url_decode(herald_buf *out, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%' && i + 2 < n + 0 && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
      char h[3] = {s[i + 1], s[i + 2], 0};
      herald_buf_putc(out, (char)strtol(h, NULL, 16));
      i += 2;
    } else if (s[i] == '+') herald_buf_putc(out, ' ');
    else herald_buf_putc(out, s[i]);
  }
}

/* Starts method on path (below base, already encoded) with query (encoded, without '?'):
 * signed with Shared Key, or with the SAS appended. */
static int api_call(aqs *q, cloud_req *r, const char *method, const char *path, const char *query,
                    cloud_req_cb cb) {
  herald_buf url = HERALD_BUF_INIT;
  herald_buf_printf(&url, "%s%s?%s", q->base, path, query);
  if (q->sas) herald_buf_printf(&url, "&%s", q->sas);
  char date[40];
  http_date(date);
  herald_buf h = HERALD_BUF_INIT;
  herald_buf_printf(&h, "x-ms-date: %s", date);
  struct curl_slist *hs = curl_slist_append(NULL, herald_buf_cstr(&h));
  hs = curl_slist_append(hs, "x-ms-version: " API_VERSION);
  hs = curl_slist_append(hs, "Expect:");
  if (!q->sas) {
    /* VERB, then 11 standard headers (all empty for a GET or DELETE without a body), then the
     * x-ms-* headers sorted, then /account + path + each query parameter, sorted, decoded */
    herald_buf sts = HERALD_BUF_INIT;
    herald_buf_printf(&sts, "%s\n\n\n\n\n\n\n\n\n\n\n\n", method);
    herald_buf_printf(&sts, "x-ms-date:%s\nx-ms-version:" API_VERSION "\n", date);
    herald_buf_printf(&sts, "/%s%s%s", q->account, q->base_path, path);
    char *params[8];
    size_t np = 0;
    char *qs = herald_xstrdup(query);
    for (char *tok = strtok(qs, "&"); tok && np < 8; tok = strtok(NULL, "&")) params[np++] = tok;
    qsort(params, np, sizeof *params, qcmp);
    for (size_t i = 0; i < np; i++) {
      char *eq = strchr(params[i], '=');
      size_t kl = eq ? (size_t)(eq - params[i]) : strlen(params[i]);
      herald_buf_putc(&sts, '\n');
      for (size_t k = 0; k < kl; k++) herald_buf_putc(&sts, (char)tolower((unsigned char)params[i][k]));
      herald_buf_putc(&sts, ':');
      if (eq) url_decode(&sts, eq + 1, strlen(eq + 1));
    }
    free(qs);
    unsigned char mac[32];
    cloud_hmac_sha256(q->key.data, q->key.len, sts.data, sts.len, mac);
    herald_buf_free(&sts);
    herald_buf_reset(&h);
    herald_buf_printf(&h, "Authorization: SharedKey %s:", q->account);
    herald_buf_base64(&h, mac, sizeof mac);
    hs = curl_slist_append(hs, herald_buf_cstr(&h));
  }
  herald_buf_free(&h);
  int rc = cloud_req_start(r, method, herald_buf_cstr(&url), hs, NULL, 0, API_TIMEOUT_MS, cb);
  herald_buf_free(&url);
  return rc;
}

/* A short reason from an answer: Azure's <Message> or the status. */
static void api_reason(cloud_req *r, long status, CURLcode rc, char *out, size_t n) {
  if (!status) {
    snprintf(out, n, "%s", r->x.errbuf[0] ? r->x.errbuf : curl_easy_strerror(rc));
    return;
  }
  herald_buf t = HERALD_BUF_INIT;
  const char *code = r->resp.data ? xml_child(r->resp.data, r->resp.len, "Code", &t) : NULL;
  if (code) snprintf(out, n, "HTTP %ld: %.200s", status, code);
  else snprintf(out, n, "HTTP %ld", status);
  herald_buf_free(&t);
}

/* ---- configuration ---- */

/* The value of key k in a connection string ("K=V;K=V"), a new string or NULL. */
static char *cs_get(const char *cs, const char *k) {
  size_t kl = strlen(k);
  for (const char *p = cs; *p;) {
    while (*p == ';' || *p == ' ' || *p == '\n' || *p == '\r') p++;
    const char *end = strchr(p, ';');
    if (!end) end = p + strlen(p);
    if ((size_t)(end - p) > kl && strncasecmp(p, k, kl) == 0 && p[kl] == '=') {
      const char *v = p + kl + 1;
      size_t vl = (size_t)(end - v);
      while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\n' || v[vl - 1] == '\r')) vl--;
      char *s = herald_xmalloc(vl + 1);
      memcpy(s, v, vl);
      s[vl] = 0;
      return s;
    }
    p = end;
  }
  return NULL;
}

/* Reads the connection string into q; returns 0 or -1 after logging why (never its secrets). */
static int parse_connection_string(aqs *q, const char *cs) {
  herald_logger *lg = &q->src->log;
  char *dev = cs_get(cs, "UseDevelopmentStorage");
  char *acct = cs_get(cs, "AccountName"), *key = cs_get(cs, "AccountKey");
  char *sas = cs_get(cs, "SharedAccessSignature"), *ep = cs_get(cs, "QueueEndpoint");
  char *proto = cs_get(cs, "DefaultEndpointsProtocol"), *suffix = cs_get(cs, "EndpointSuffix");
  int rc = -1;
  if (dev && strcasecmp(dev, "true") == 0) {
    if (!acct) acct = herald_xstrdup(DEV_ACCOUNT);
    if (!key && !sas) key = herald_xstrdup(DEV_KEY);
    if (!ep) ep = herald_xstrdup("http://127.0.0.1:10001/" DEV_ACCOUNT);
  }
  if (!ep && acct) {
    herald_buf b = HERALD_BUF_INIT;
    herald_buf_printf(&b, "%s://%s.queue.%s", proto ? proto : "https", acct,
                      suffix ? suffix : "core.windows.net");
    ep = herald_xstrdup(herald_buf_cstr(&b));
    herald_buf_free(&b);
  }
  if (!ep) {
    herald_log(lg, HLOG_ERROR, "connectionString: it names no QueueEndpoint and no AccountName");
    goto out;
  }
  if (!sas && (!acct || !key)) {
    herald_log(lg, HLOG_ERROR, "connectionString: it needs AccountName and AccountKey, or SharedAccessSignature");
    goto out;
  }
  if (!sas && cloud_base64_decode(key, strlen(key), 0, &q->key) != 0) {
    herald_log(lg, HLOG_ERROR, "connectionString: its AccountKey is not base64");
    goto out;
  }
  size_t n = strlen(ep);
  while (n && ep[n - 1] == '/') ep[--n] = 0;
  q->base = herald_xstrdup(ep);
  const char *hostp = strstr(q->base, "://");
  const char *slash = hostp ? strchr(hostp + 3, '/') : NULL;
  q->base_path = herald_xstrdup(slash ? slash : "");
  /* an account from the path for an emulator-style endpoint without AccountName */
  q->account = herald_xstrdup(acct ? acct : (slash ? slash + 1 : ""));
  if (sas) q->sas = herald_xstrdup(sas[0] == '?' ? sas + 1 : sas);
  rc = 0;
out:
  free_str(&dev);
  free_str(&acct);
  free_str(&key);
  free_str(&sas);
  free_str(&ep);
  free_str(&proto);
  free_str(&suffix);
  return rc;
}

static int aqs_init(herald_source *src, lua_State *L, int cfg_idx) {
  aqs *q = src->priv;
  q->src = src;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  q->queue = herald_xstrdup(herald_cfg_string(L, cfg_idx, "queueName", ""));
  q->json_body = herald_cfg_bool(L, cfg_idx, "jsonBody", 0);
  q->decode = herald_cfg_bool(L, cfg_idx, "decodeMessage", 0);
  q->dlq = herald_cfg_bool(L, cfg_idx, "dlq", 0);
  q->wait_ms = (uint64_t)(herald_cfg_number(L, cfg_idx, "waitTimeInSeconds", 3) * 1000);
  q->metadata_json = herald_cfg_metadata_json(L, cfg_idx);
  if (q->metadata_json && strcmp(q->metadata_json, "{}") == 0) free_str(&q->metadata_json); /* omitempty */
  herald_backoff_init(&q->backoff, NULL, 0, NULL);
  /* a test-only override: the kill -9 spec would otherwise wait two minutes for the messages
   * received, and not yet deleted, when herald died */
  const char *vis = getenv("HERALD_AZQ_VISIBILITY_S");
  q->visibility_s = vis && atoi(vis) > 0 ? atoi(vis) : VISIBILITY_S;
  int err = 0;
  char *cs = herald_secret_field(src->engine, &src->log, L, cfg_idx, "connectionString",
                                 "connectionString", &err);
  if (err < 0) return HERALD_EINVAL;
  if (!cs) {
    /* the schema refuses this before we get here; kept for a config built by hand */
    herald_log(&src->log, HLOG_ERROR, "storageAccountName without connectionString (Azure AD) is not supported by Herald yet");
    return HERALD_EINVAL;
  }
  int r = parse_connection_string(q, cs);
  free_str(&cs);
  return r == 0 ? 0 : HERALD_EINVAL;
}

/* ---- receiving ---- */

static void fail(aqs *q, const char *why);
static void get_more(aqs *q);
static void emit_held(aqs *q);

static void on_retry(uv_timer_t *t) {
  aqs *q = t->data;
  if (q->state != ST_WAIT) return;
  q->state = ST_RUNNING;
  get_more(q);
}

static void fail(aqs *q, const char *why) {
  if (q->state == ST_STOPPING || q->state == ST_WAIT) return;
  herald_source_set_connected(q->src, 0, why);
  for (int i = 0; i < GETS; i++) {
    cloud_req_cancel(&q->get[i]);
    uv_timer_stop(&q->get_wait[i]);
  }
  q->state = ST_WAIT;
  uv_timer_start(&q->retry, on_retry, herald_backoff_next(&q->backoff), 0);
}

static void unlink_msg(aqs *q, qmsg *m) {
  if (m->prev) m->prev->next = m->next;
  else q->head = m->next;
  if (m->next) m->next->prev = m->prev;
  else q->tail = m->prev;
  if (q->held == m) q->held = m->next;
  q->outstanding--;
}

static void free_msg(qmsg *m) {
  cloud_req_free(&m->del);
  free(m->msg_id);
  free(m->pop);
  free(m->data);
  free(m);
}

static void start_delete(aqs *q, qmsg *m);

static void on_deleted(cloud_req *r, long status, CURLcode rc) {
  qmsg *m = r->data;
  aqs *q = m->q;
  q->deletes--;
  if (status != 204 && status != 200 && status != 404) {
    char why[300];
    api_reason(r, status, rc, why, sizeof why);
    herald_log_limited(&q->src->log, HLOG_WARN,
                       "delete of message %s failed: %s (it will be delivered again)", m->msg_id, why);
  }
  unlink_msg(q, m);
  free_msg(m);
  while (q->deletes < DEL_MAX && q->dq_head) {
    qmsg *n = q->dq_head;
    q->dq_head = n->dnext;
    if (!q->dq_head) q->dq_tail = NULL;
    start_delete(q, n);
  }
  if (q->state == ST_RUNNING) get_more(q);
}

/* Deletes m from the queue (it then leaves the outstanding list), at once or when a slot frees. */
static void delete_msg(aqs *q, qmsg *m) {
  if (q->deletes >= DEL_MAX) {
    m->dnext = NULL;
    if (q->dq_tail) q->dq_tail->dnext = m;
    else q->dq_head = m;
    q->dq_tail = m;
    return;
  }
  start_delete(q, m);
}

static void start_delete(aqs *q, qmsg *m) {
  herald_buf path = HERALD_BUF_INIT, query = HERALD_BUF_INIT;
  herald_buf_printf(&path, "/%s/messages/", q->queue);
  herald_sigv4_uri_encode(&path, m->msg_id, strlen(m->msg_id), 0);
  herald_buf_puts(&query, "popreceipt=");
  herald_sigv4_uri_encode(&query, m->pop, strlen(m->pop), 0);
  m->del.data = m;
  m->deleting = 1;
  int rc = api_call(q, &m->del, "DELETE", herald_buf_cstr(&path), herald_buf_cstr(&query), on_deleted);
  herald_buf_free(&path);
  herald_buf_free(&query);
  if (rc != 0) {
    herald_log_limited(&q->src->log, HLOG_WARN, "cannot start a delete (message %s will come back)", m->msg_id);
    unlink_msg(q, m);
    free_msg(m);
    return;
  }
  q->deletes++;
}

static void on_emitted(void *data, int status) {
  qmsg *m = data;
  aqs *q = m->q;
  q->inflight_emits--;
  m->emitted = 0;
  if (status == 0) {
    delete_msg(q, m);
  } else {
    /* the bus refused it (JetStream down): it reappears after the visibility timeout */
    herald_log_limited(&q->src->log, HLOG_WARN, "message %s not published: %s (left for redelivery)",
                       m->msg_id, herald_strerror(status));
    unlink_msg(q, m);
    free_msg(m);
  }
}

static void on_room(herald_source *src, void *data) {
  (void)src;
  aqs *q = data;
  q->waiting_room = 0;
  emit_held(q);
  get_more(q);
}

/* Hands the held messages to the bus, in order, until it is full. */
static void emit_held(aqs *q) {
  while (q->held && q->state != ST_STOPPING) {
    qmsg *m = q->held;
    if (m->bad) {
      q->held = m->next;
      continue;
    }
    int r = herald_source_emit_id(q->src, q->stable_ids ? m->id : NULL, m->data, m->len, on_emitted, m);
    if (r == HERALD_EBUSFULL) {
      if (!q->waiting_room && herald_source_when_room(q->src, on_room, q) == 0) {
        q->waiting_room = 1;
        herald_log(&q->src->log, HLOG_DEBUG, "the bus is full: receiving stops until it has room");
      }
      return;
    }
    q->held = m->next;
    free(m->data);
    m->data = NULL;
    if (r == 0) {
      m->emitted = 1;
      q->inflight_emits++;
    } else { /* not publishable (out of memory): left to redelivery */
      unlink_msg(q, m);
      free_msg(m);
    }
  }
}

static void bad_message(aqs *q, qmsg *m, const char *why) {
  m->bad = 1;
  herald_metric_inc(q->src->m_processing_failed);
  herald_log_limited(&q->src->log, HLOG_WARN, "message %s %s%s", m->msg_id, why,
                     q->dlq ? " (dlq: left in the queue)" : " (deleted)");
  if (q->dlq) {
    unlink_msg(q, m);
    free_msg(m);
  } else {
    delete_msg(q, m);
  }
}

/* Builds one message's event data into m (0), or handles it as bad (-1). */
static int build_event(aqs *q, qmsg *m, const char *text, size_t tlen, const char *itime,
                       herald_buf *tmp) {
  herald_buf out = HERALD_BUF_INIT;
  const char *body = text;
  size_t blen = tlen;
  if (q->decode) {
    herald_buf_reset(tmp);
    if (cloud_base64_decode(text, tlen, -1, tmp) != 0) {
      bad_message(q, m, "is not base64 (decodeMessage)");
      return -1;
    }
    body = tmp->data ? tmp->data : "";
    blen = tmp->len;
  }
  if (herald_source_too_big(q->src, blen)) {
    m->bad = 1;
    delete_msg(q, m); /* counted and logged; deleted so it does not come back for ever */
    return -1;
  }
  herald_buf_puts(&out, "{\"body\":");
  if (herald_source_put_body(q->src, &out, body, blen, q->json_body) != 0) {
    herald_buf_free(&out);
    bad_message(q, m, "has a body that is not JSON (jsonBody)");
    return -1;
  }
  herald_buf_puts(&out, ",\"messageID\":");
  herald_buf_json_string(&out, m->msg_id, strlen(m->msg_id));
  herald_buf_puts(&out, ",\"insertionTime\":");
  insertion_time(&out, itime ? itime : "0001-01-01T00:00:00Z");
  if (q->metadata_json) {
    herald_buf_puts(&out, ",\"metadata\":");
    herald_buf_puts(&out, q->metadata_json);
  }
  herald_buf_putc(&out, '}');
  m->len = out.len;
  m->data = herald_xstrdup(herald_buf_cstr(&out));
  herald_buf_free(&out);
  return 0;
}

static void on_get_wait(uv_timer_t *t) {
  aqs *q = t->data;
  if (q->state == ST_RUNNING) get_more(q);
}

static void on_got(cloud_req *r, long status, CURLcode rc) {
  aqs *q = r->data;
  if (q->state != ST_RUNNING) return;
  if (status != 200) {
    char why[300], msg[400];
    api_reason(r, status, rc, why, sizeof why);
    snprintf(msg, sizeof msg, "get messages from %s: %s", q->queue, why);
    fail(q, msg);
    return;
  }
  herald_backoff_reset(&q->backoff);
  herald_source_set_connected(q->src, 1, NULL);
  const char *s = r->resp.data ? r->resp.data : "";
  size_t n = r->resp.len;
  herald_buf id = HERALD_BUF_INIT, pop = HERALD_BUF_INIT, it = HERALD_BUF_INIT,
             text = HERALD_BUF_INIT, tmp = HERALD_BUF_INIT;
  int got = 0;
  for (;;) {
    const char *a = memmem(s, n, "<QueueMessage>", 14);
    if (!a) break;
    const char *b = memmem(a, n - (size_t)(a - s), "</QueueMessage>", 15);
    if (!b) break;
    size_t len = (size_t)(b - a);
    const char *mid = xml_child(a, len, "MessageId", &id);
    const char *pr = xml_child(a, len, "PopReceipt", &pop);
    const char *itime = xml_child(a, len, "InsertionTime", &it);
    const char *mt = xml_child(a, len, "MessageText", &text);
    n -= (size_t)(b + 15 - s);
    s = b + 15;
    if (!mid || !pr) continue;
    got++;
    qmsg *m = herald_xcalloc(1, sizeof *m);
    m->q = q;
    m->msg_id = herald_xstrdup(mid);
    m->pop = herald_xstrdup(pr);
    m->prev = q->tail;
    if (q->tail) q->tail->next = m;
    else q->head = m;
    q->tail = m;
    q->outstanding++;
    if (build_event(q, m, mt ? mt : "", mt ? text.len : 0, itime, &tmp) != 0) continue;
    if (q->stable_ids) { /* a redelivery of this message is the same CloudEvent */
      herald_buf src = HERALD_BUF_INIT;
      herald_buf_printf(&src, "%s:%s:%s:%s", q->src->es_name, q->src->event_name, q->queue, mid);
      char hex[65];
      herald_sigv4_sha256_hex(src.data, src.len, hex);
      herald_buf_free(&src);
      memcpy(m->id, hex, 32);
      m->id[32] = 0;
    }
    if (!q->held) q->held = m;
  }
  herald_buf_free(&id);
  herald_buf_free(&pop);
  herald_buf_free(&it);
  herald_buf_free(&text);
  herald_buf_free(&tmp);
  emit_held(q);
  if (!got) { /* Argo: wait waitTimeInSeconds after an empty answer */
    int i = (int)(r - q->get);
    uv_timer_start(&q->get_wait[i], on_get_wait, q->wait_ms, 0);
    return;
  }
  get_more(q);
}

static void get_more(aqs *q) {
  if (q->state != ST_RUNNING || q->held) return;
  for (int i = 0; i < GETS; i++) {
    cloud_req *r = &q->get[i];
    if (r->busy || uv_is_active((uv_handle_t *)&q->get_wait[i])) continue;
    if (q->outstanding + GET_MAX > MAX_OUTSTANDING) return;
    r->data = q;
    herald_buf path = HERALD_BUF_INIT;
    herald_buf_printf(&path, "/%s/messages", q->queue);
    char query[80];
    snprintf(query, sizeof query, "numofmessages=%d&visibilitytimeout=%d", GET_MAX, q->visibility_s);
    int rc = api_call(q, r, "GET", herald_buf_cstr(&path), query, on_got);
    herald_buf_free(&path);
    if (rc != 0) {
      fail(q, "cannot start a get messages request");
      return;
    }
  }
}

/* ---- start and stop ---- */

static int aqs_start(herald_source *src) {
  aqs *q = src->priv;
  if (herald_curl_loop_ref(src->engine->loop) != 0) return HERALD_ENOMEM;
  uv_loop_t *loop = src->engine->loop;
  uv_timer_init(loop, &q->retry);
  uv_timer_init(loop, &q->flush_timer);
  q->retry.data = q->flush_timer.data = q;
  for (int i = 0; i < GETS; i++) {
    uv_timer_init(loop, &q->get_wait[i]);
    q->get_wait[i].data = q;
  }
  herald_bus *bus = src->engine->bus;
  /* stable ids only on JetStream (it drops a redelivered copy); see sources/pubSub */
  q->stable_ids = bus && bus->ops && bus->ops->name && strcmp(bus->ops->name, "jetstream") == 0;
  herald_log(&src->log, HLOG_INFO, "azureQueueStorage source starting (queue %s at %s, %s)", q->queue,
             q->base, q->sas ? "shared access signature" : "shared key");
  q->state = ST_RUNNING;
  get_more(q);
  return 0;
}

static void free_all(aqs *q) {
  for (qmsg *m = q->head, *n; m; m = n) {
    n = m->next;
    free_msg(m);
  }
  q->head = q->tail = q->held = NULL;
  for (int i = 0; i < GETS; i++) cloud_req_free(&q->get[i]);
  if (q->key.data) memset(q->key.data, 0, q->key.len);
  herald_buf_free(&q->key);
  char **strs[] = {&q->queue, &q->metadata_json, &q->base, &q->base_path, &q->account, &q->sas};
  for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) free_str(strs[i]);
}

static void on_closed(uv_handle_t *h) {
  aqs *q = h->data;
  if (--q->closing) return;
  herald_source_stop_cb done = q->stop_done;
  q->stop_done = NULL;
  free_all(q);
  herald_curl_loop_unref();
  if (done) done(q->src);
}

/* Waits for the bus's answers on what it was handed and for their deletes (at most
 * STOP_FLUSH_MS after those answers), then closes. */
static void on_flush_wait(uv_timer_t *t) {
  aqs *q = t->data;
  if (q->inflight_emits) return;
  if ((q->deletes || q->dq_head) && herald_mono_ns() < q->stop_deadline_ns) return;
  uv_timer_stop(t);
  for (qmsg *m = q->head; m; m = m->next) cloud_req_cancel(&m->del);
  q->closing = 2 + GETS;
  uv_close((uv_handle_t *)&q->retry, on_closed);
  uv_close((uv_handle_t *)&q->flush_timer, on_closed);
  for (int i = 0; i < GETS; i++) uv_close((uv_handle_t *)&q->get_wait[i], on_closed);
}

static void aqs_stop(herald_source *src, herald_source_stop_cb done) {
  aqs *q = src->priv;
  if (q->state == ST_STOPPING) return;
  int started = q->retry.loop != NULL;
  int was = q->state;
  q->state = ST_STOPPING;
  q->stop_done = done;
  if (!started || was == ST_IDLE) {
    free_all(q);
    done(src);
    return;
  }
  herald_source_cancel_room(src);
  uv_timer_stop(&q->retry);
  for (int i = 0; i < GETS; i++) {
    cloud_req_cancel(&q->get[i]);
    uv_timer_stop(&q->get_wait[i]);
  }
  /* messages held here were never handed to the bus: they come back after the timeout */
  for (qmsg *m = q->held; m;) {
    qmsg *n = m->next;
    unlink_msg(q, m);
    free_msg(m);
    m = n;
  }
  q->stop_deadline_ns = herald_mono_ns() + (uint64_t)STOP_FLUSH_MS * 1000000u;
  uv_timer_start(&q->flush_timer, on_flush_wait, 0, 20);
}

const herald_source_type herald_source_azureQueueStorage = {
    .name = "azureQueueStorage",
    .event_type = "azureQueueStorage",
    .priv_size = sizeof(aqs),
    .init = aqs_init,
    .start = aqs_start,
    .stop = aqs_stop,
};
