/*
 * webhook.c: the `webhook` event source (Argo's WebhookContext, argo-events.md sections 2.2
 * and 2.4).
 *
 *   HTTP server (shared per port) --route: endpoint + method, bearer, maxPayloadSize-->
 *   on_request: data = {"header":{Canonical-Key:[v...]},"body":<body>,"metadata":{...}}
 *     --herald_whctx_emit--> bus --> 200 "success" | 503 (bus unreachable, PubAck timeout,
 *     bus full) | 500
 *
 * The route, its limits and the answer once the bus has the event are lib/webhookctx's (every
 * webhook-style source shares them); this file only shapes the data.
 */
#include "webhookctx/webhookctx.h"

#include "buf.h"
#include "common.h"
#include "http_server.h"
#include "plugin.h"

#include <string.h>

typedef struct webhook {
  herald_whctx ctx;
  herald_source_stop_cb stop_done;
} webhook;

/* Builds the event data for req into w->buf: {header, body, metadata} as Argo's webhook. */
static void on_request(herald_whctx *w, herald_http_req *req) {
  herald_buf *d = &w->buf;
  herald_buf_reset(d);
  herald_buf_append(d, "{\"header\":", 10);
  herald_whctx_put_headers(w, d, req);
  herald_buf_append(d, ",\"body\":", 8);
  if (strcmp(req->method, "GET") == 0) {
    herald_whctx_put_values(w, d, req->query, strlen(req->query));
  } else if (herald_whctx_is_form(herald_http_req_header(req, "content-type"))) {
    herald_whctx_put_values(w, d, req->body, req->body_len);
  } else {
    herald_whctx_put_body(d, req->body, req->body_len);
  }
  if (w->metadata_json) herald_buf_puts(d, w->metadata_json);
  herald_buf_putc(d, '}');
  herald_whctx_emit(w, req, d->data, d->len);
}

static int webhook_init(herald_source *src, lua_State *L, int cfg_idx) {
  webhook *w = src->priv;
  int r = herald_whctx_init(&w->ctx, src, L, cfg_idx, on_request, w);
  if (r == 0) {
    r = herald_whctx_read_metadata(&w->ctx, L, cfg_idx);
    if (r < 0) herald_whctx_release(&w->ctx); /* stop is not called for a source that failed init */
  }
  return r;
}

static int webhook_start(herald_source *src) {
  webhook *w = src->priv;
  return herald_whctx_start(&w->ctx);
}

static void stopped(herald_whctx *ctx) {
  webhook *w = ctx->data;
  herald_source_stop_cb done = w->stop_done;
  herald_whctx_release(ctx);
  if (done) done(ctx->src);
}

static void webhook_stop(herald_source *src, herald_source_stop_cb done) {
  webhook *w = src->priv;
  w->stop_done = done;
  herald_whctx_stop(&w->ctx, stopped);
}

const herald_source_type herald_source_webhook = {
    .name = "webhook",
    .event_type = "webhook",
    .priv_size = sizeof(webhook),
    .init = webhook_init,
    .start = webhook_start,
    .stop = webhook_stop,
};
