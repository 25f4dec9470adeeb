/*
 * lib/webhookctx/api.c: one call to a vendor's HTTP API (GitHub, GitLab, Bitbucket, Gerrit,
 * Stripe, StorageGRID: list, create, update, delete hooks) on the engine's libcurl multi
 * (engine/curl_loop.h), so registering hooks never blocks the loop; plus JSON decoding into
 * the engine's Lua state (cjson) to read the answers.
 *
 *   herald_api_start -> curl_loop transfer -> on_done -> cb(c, status, body, len, err)
 *
 * Retrying is the caller's: it knows which step failed (sources use herald_backoff).
 */
#include "webhookctx/webhookctx.h"

#include "common.h"
#include "curl_loop.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#define API_KEEP (4u << 20)
#define API_TIMEOUT_MS 30000L

static size_t collect(char *p, size_t size, size_t n, void *ud) {
  herald_buf *b = ud;
  size_t len = size * n;
  if (b->len < API_KEEP) herald_buf_append(b, p, len < API_KEEP - b->len ? len : API_KEEP - b->len);
  return len;
}

static void api_free(herald_api_call *c) {
  curl_slist_free_all(c->headers);
  c->headers = NULL;
  herald_buf_free(&c->req_body);
  herald_buf_free(&c->resp);
}

static void on_done(herald_curl_xfer *x, CURLcode rc) {
  herald_api_call *c = x->data;
  long status = 0;
  char err[CURL_ERROR_SIZE + 64];
  err[0] = '\0';
  if (rc == CURLE_OK) {
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  } else {
    snprintf(err, sizeof err, "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
  }
  herald_curl_xfer_release(x);
  herald_buf_putc(&c->resp, '\0');
  c->resp.len--;
  c->busy = 0;
  /* the callback may start the next call on c: hand it the body and free it after */
  herald_buf resp = c->resp;
  c->resp = (herald_buf)HERALD_BUF_INIT;
  curl_slist_free_all(c->headers);
  c->headers = NULL;
  herald_buf_free(&c->req_body);
  c->cb(c, status, resp.data ? resp.data : "", resp.len, status ? NULL : err);
  herald_buf_free(&resp);
}

int herald_api_start(herald_api_call *c, const char *method, const char *url,
                     const char *const *headers, const char *body, size_t body_len,
                     int insecure, herald_api_cb cb, void *data) {
  if (c->busy) return HERALD_EINVAL;
  memset(&c->xfer, 0, sizeof c->xfer);
  if (herald_curl_xfer_init(&c->xfer) != 0) return HERALD_ENOMEM;
  c->cb = cb;
  c->data = data;
  c->xfer.data = c;
  CURL *e = c->xfer.easy;
  herald_curl_xfer_url(&c->xfer, url);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &c->resp);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, API_TIMEOUT_MS);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  c->headers = curl_slist_append(NULL, "User-Agent: herald");
  c->headers = curl_slist_append(c->headers, "Expect:");
  for (const char *const *h = headers; h && *h; h++) c->headers = curl_slist_append(c->headers, *h);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
  if (body) {
    herald_buf_append(&c->req_body, body, body_len);
    herald_buf_putc(&c->req_body, '\0');
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->req_body.data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
  }
  if (strcmp(method, "GET") == 0) curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  else if (strcmp(method, "POST") == 0 && body) { /* POSTFIELDS makes it a POST */ }
  else {
    if (!body) {
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    }
    if (strcmp(method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
  if (insecure) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  c->busy = 1;
  if (herald_curl_xfer_start(&c->xfer, on_done) != 0) {
    c->busy = 0;
    herald_curl_xfer_release(&c->xfer);
    api_free(c);
    return HERALD_EIO;
  }
  return 0;
}

void herald_api_cancel(herald_api_call *c) {
  if (c->busy) herald_curl_xfer_release(&c->xfer);
  c->busy = 0;
  api_free(c);
}

/* stack: +1 on success, unchanged on failure */
int herald_json_push(lua_State *L, const char *text, size_t len) {
  int top = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson.safe");
  if (lua_pcall(L, 1, 1, 0) != 0) {
    lua_settop(L, top);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    if (lua_pcall(L, 1, 1, 0) != 0) {
      lua_settop(L, top);
      return -1;
    }
  }
  lua_getfield(L, -1, "decode");
  lua_pushlstring(L, text, len);
  if (lua_pcall(L, 1, 1, 0) != 0 || lua_isnil(L, -1)) {
    lua_settop(L, top);
    return -1;
  }
  lua_remove(L, -2);
  return 0;
}

char *herald_lua_strfield(lua_State *L, int idx, const char *field) {
  lua_getfield(L, idx, field);
  char *v = NULL;
  if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
    if (lua_type(L, -1) == LUA_TNUMBER) {
      /* ids are integers: print them without an exponent */
      char buf[32];
      snprintf(buf, sizeof buf, "%.0f", lua_tonumber(L, -1));
      v = herald_xstrdup(buf);
    } else {
      v = herald_xstrdup(lua_tostring(L, -1));
    }
  }
  lua_pop(L, 1);
  return v;
}
