/*
 * lib/webhookctx/hooks.c: the hooks a forge or SaaS source registers with its vendor (GitHub,
 * GitLab, Bitbucket, Gerrit, Stripe, StorageGRID), the same way for all of them:
 *
 *   start: for each target (repository, organization, project ...), one call at a time:
 *     [auth: token exchange when the vendor's ops need one] -> list hooks -> find ours (same
 *     URL) -> none: create | differs: update | same: reuse -> next target
 *     a failed call: logged with the vendor's status, counted, retried after a backoff
 *     (herald_backoff: 1 s doubling to 60 s); never fatal, the route serves meanwhile
 *   stop: the call in flight is dropped; with deleteHookOnFinish each hook registered is
 *     deleted (at most 10 s each, as Argo's context), then done
 *
 * The vendor-specific part is herald_hooks_ops (request shapes, how to read answers).
 */
#include "webhookctx/webhookctx.h"

#include "common.h"
#include "engine.h"
#include "metrics.h"

#include <stdlib.h>
#include <string.h>

enum { PH_IDLE, PH_AUTH, PH_LIST, PH_CREATE, PH_UPDATE, PH_READY, PH_DELETE, PH_DONE };
#define DELETE_TIMEOUT_MS 10000

static const char *const verbs[] = {"", "get a token", "list hooks", "create the hook",
                                    "update the hook", "", "delete the hook", ""};

void herald_hook_req_reset(herald_hook_req *r) {
  r->method = "GET";
  herald_buf_reset(&r->url);
  herald_buf_reset(&r->body);
  r->has_body = 0;
  memset(r->headers, 0, sizeof r->headers);
}

static void step(herald_hooks *h);
static void delete_next(herald_hooks *h);
static void on_answer(herald_api_call *c, long status, const char *body, size_t len,
                      const char *err);

static void send_req(herald_hooks *h, int phase) {
  h->phase = phase;
  herald_buf_putc(&h->req.url, '\0');
  int r = herald_api_start(&h->call, h->req.method, h->req.url.data, h->req.headers,
                           h->req.has_body ? (h->req.body.data ? h->req.body.data : "") : NULL,
                           h->req.body.len, h->insecure, on_answer, h);
  if (r != 0) on_answer(&h->call, 0, "", 0, "cannot start the request");
}

static void on_retry(uv_timer_t *t) {
  herald_hooks *h = t->data;
  if (!h->stopping) step(h);
}

static const char *target_name(herald_hooks *h) {
  return h->i < h->n ? h->ops->target(h->ud, h->i) : "";
}

/* A call failed: say why (the vendor's answer trimmed; it never holds our secrets) and retry. */
static void failed(herald_hooks *h, long status, const char *body, size_t len, const char *err) {
  if (!h->m_failed)
    h->m_failed = herald_metric_get("herald_eventsource_hook_errors_total",
                                    "Failed calls to a vendor's API registering webhooks.",
                                    HERALD_COUNTER, "eventsource_name", h->src->es_name,
                                    "event_name", h->src->event_name, NULL);
  herald_metric_inc(h->m_failed);
  uint64_t wait = herald_backoff_next(&h->bo);
  if (status)
    herald_log(&h->src->log, HLOG_WARN, "%s: cannot %s: HTTP %ld %.*s; retrying in %llu ms",
               target_name(h), verbs[h->phase], status, (int)(len > 200 ? 200 : len), body,
               (unsigned long long)wait);
  else
    herald_log(&h->src->log, HLOG_WARN, "%s: cannot %s: %s; retrying in %llu ms",
               target_name(h), verbs[h->phase], err ? err : "failed", (unsigned long long)wait);
  h->phase = PH_IDLE;
  uv_timer_start(&h->timer, on_retry, wait, 0);
}

static void set_id(herald_hooks *h, char *id) {
  free(h->ids[h->i]);
  h->ids[h->i] = id;
}

static void on_answer(herald_api_call *c, long status, const char *body, size_t len,
                      const char *err) {
  herald_hooks *h = c->data;
  if (h->phase == PH_DELETE) {
    uv_timer_stop(&h->timer);
    if ((status >= 200 && status < 300) || status == 404)
      herald_log(&h->src->log, HLOG_INFO, "%s: hook %s deleted", target_name(h), h->ids[h->i]);
    else if (status)
      herald_log(&h->src->log, HLOG_WARN, "%s: cannot delete hook %s: HTTP %ld %.*s",
                 target_name(h), h->ids[h->i], status, (int)(len > 200 ? 200 : len), body);
    else
      herald_log(&h->src->log, HLOG_WARN, "%s: cannot delete hook %s: %s", target_name(h),
                 h->ids[h->i], err ? err : "failed");
    h->i++;
    delete_next(h);
    return;
  }
  if (h->stopping) return;
  if (status < 200 || status >= 300) {
    failed(h, status, body, len, err);
    return;
  }
  lua_State *L = h->src->engine->L;
  int top = lua_gettop(L);
  /* Gerrit prefixes every JSON answer with ")]}'" and a newline against XSSI: skipped */
  if (len >= 4 && memcmp(body, ")]}'", 4) == 0) {
    body += 4, len -= 4;
    while (len && (*body == '\n' || *body == '\r')) body++, len--;
  }
  int have = len && herald_json_push(L, body, len) == 0;
  int idx = lua_gettop(L);
  switch (h->phase) {
  case PH_AUTH:
    if (!have || h->ops->auth_done(h->ud, status, L, idx) != 0) {
      lua_settop(L, top);
      failed(h, 0, "", 0, "no token in the answer");
      return;
    }
    break;
  case PH_LIST: {
    char *id = NULL;
    int f = have ? h->ops->find(h->ud, h->i, L, idx, &id) : -2;
    lua_settop(L, top);
    if (f == -2) {
      failed(h, 0, "", 0, "the answer is not JSON");
      return;
    }
    herald_hook_req_reset(&h->req);
    if (f < 0) {
      h->ops->create(h->ud, h->i, &h->req);
      send_req(h, PH_CREATE);
      return;
    }
    set_id(h, id);
    if (f == 1 && h->ops->update) {
      h->ops->update(h->ud, h->i, id, &h->req);
      send_req(h, PH_UPDATE);
      return;
    }
    herald_log(&h->src->log, HLOG_INFO, "%s: hook %s already registered", target_name(h), id);
    h->i++;
    break;
  }
  case PH_CREATE: {
    char *id = have ? h->ops->id_of(h->ud, h->i, L, idx) : NULL;
    if (!id) id = herald_xstrdup("?");
    set_id(h, id);
    herald_log(&h->src->log, HLOG_INFO, "%s: hook %s created", target_name(h), id);
    h->i++;
    break;
  }
  case PH_UPDATE:
    herald_log(&h->src->log, HLOG_INFO, "%s: hook %s updated", target_name(h), h->ids[h->i]);
    h->i++;
    break;
  }
  lua_settop(L, top);
  herald_backoff_reset(&h->bo);
  step(h);
}

static void step(herald_hooks *h) {
  if (h->stopping) return;
  if (h->i >= h->n) {
    h->phase = PH_READY;
    if (!h->ready_said)
      herald_log(&h->src->log, HLOG_INFO, "hooks registered for %zu target%s", h->n,
                 h->n == 1 ? "" : "s");
    h->ready_said = 1;
    return;
  }
  herald_hook_req_reset(&h->req);
  if (h->ops->auth && h->ops->auth(h->ud, &h->req) == 1) {
    send_req(h, PH_AUTH);
    return;
  }
  herald_hook_req_reset(&h->req);
  h->ops->list(h->ud, h->i, &h->req);
  send_req(h, PH_LIST);
}

int herald_hooks_start(herald_hooks *h, herald_source *src, const herald_hooks_ops *ops,
                       void *ud, size_t n, int delete_on_finish, int insecure) {
  h->ops = ops;
  h->ud = ud;
  h->src = src;
  h->n = n;
  h->i = 0;
  h->ids = herald_xmalloc((n ? n : 1) * sizeof *h->ids);
  memset(h->ids, 0, (n ? n : 1) * sizeof *h->ids);
  h->delete_on_finish = delete_on_finish;
  h->insecure = insecure;
  herald_backoff_init(&h->bo, src->engine->L, 0, NULL);
  if (herald_curl_loop_ref(src->engine->loop) != 0) return HERALD_ENOMEM;
  uv_timer_init(src->engine->loop, &h->timer);
  h->timer.data = h;
  h->timer_open = 1;
  step(h);
  return 0;
}

static void closed(uv_handle_t *t) {
  herald_hooks *h = t->data;
  for (size_t i = 0; i < h->n; i++) free(h->ids[i]);
  free(h->ids);
  h->ids = NULL;
  herald_buf_free(&h->req.url);
  herald_buf_free(&h->req.body);
  herald_curl_loop_unref();
  h->phase = PH_DONE;
  if (h->done) h->done(h);
}

static void on_delete_timeout(uv_timer_t *t) {
  herald_hooks *h = t->data;
  herald_api_cancel(&h->call);
  herald_log(&h->src->log, HLOG_WARN, "%s: cannot delete hook %s: no answer in %d s",
             target_name(h), h->ids[h->i], DELETE_TIMEOUT_MS / 1000);
  h->i++;
  delete_next(h);
}

static void delete_next(herald_hooks *h) {
  while (h->i < h->n && (!h->ids[h->i] || strcmp(h->ids[h->i], "?") == 0)) h->i++;
  if (!h->delete_on_finish || h->i >= h->n) {
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->timer, closed);
    return;
  }
  herald_hook_req_reset(&h->req);
  if (h->ops->auth && h->ops->auth(h->ud, &h->req) == 1) {
    /* a token that expired since start: the delete is skipped rather than the stop delayed */
    herald_log(&h->src->log, HLOG_WARN, "%s: hook %s left registered: the API token expired",
               target_name(h), h->ids[h->i]);
    h->i++;
    delete_next(h);
    return;
  }
  herald_hook_req_reset(&h->req);
  h->ops->remove(h->ud, h->i, h->ids[h->i], &h->req);
  uv_timer_start(&h->timer, on_delete_timeout, DELETE_TIMEOUT_MS, 0);
  send_req(h, PH_DELETE);
}

void herald_hooks_stop(herald_hooks *h, herald_hooks_cb done) {
  h->done = done;
  h->stopping = 1;
  if (!h->timer_open) {
    if (done) done(h);
    return;
  }
  herald_api_cancel(&h->call);
  uv_timer_stop(&h->timer);
  h->i = 0;
  delete_next(h);
}
