/*
 * admin.c: the admin endpoint of a running engine, for `herald emit`.
 *
 *   POST /emit?source=<EventSource>&event=<event name>   body: the event data (JSON)
 *   Authorization: Bearer <token>                         401 without it
 *     -> the event goes through that source exactly as if the source had produced it
 *        (its filter.expression, metrics, the bus): 200 "success", 404 when no such source
 *        runs here, 400 for a body that is not JSON, 503 + Retry-After when the bus is full.
 *
 * Bound to 127.0.0.1 by default (--admin-addr; "off" disables). The token lives in a file
 * (--admin-token-file, default $XDG_STATE_HOME/herald/admin-token) created with mode 0600 and a
 * random value when missing; `herald emit` reads the same file.
 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "lua_host.h"

#include <curl/curl.h>
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void emitted(void *data, int status) {
  herald_http_req *req = data;
  if (status == 0) herald_http_respond(req, 200, "text/plain; charset=utf-8", NULL, "success\n", 8);
  else herald_http_respond(req, 500, "text/plain; charset=utf-8", NULL, "failed to record event\n", 23);
}

static void on_emit(herald_http_req *req) {
  herald_engine *eng = req->route_data;
  char es[256], ev[256];
  if (!herald_http_query_param(req->query, "source", es, sizeof es) || !herald_http_query_param(req->query, "event", ev, sizeof ev)) {
    const char *msg = "expected /emit?source=<EventSource>&event=<event name>\n";
    herald_http_respond(req, 400, "text/plain; charset=utf-8", NULL, msg, strlen(msg));
    return;
  }
  herald_source *src = herald__engine_find_source(eng, es, ev);
  if (!src) {
    herald_buf b = HERALD_BUF_INIT;
    herald_buf_printf(&b, "no EventSource %s with event %s runs in this engine\n", es, ev);
    herald_http_respond(req, 404, "text/plain; charset=utf-8", NULL, b.data, b.len);
    herald_buf_free(&b);
    return;
  }
  if (!herald_json_valid(req->body, req->body_len, 64)) {
    const char *msg = "the body must be the event data, as JSON\n";
    herald_http_respond(req, 400, "text/plain; charset=utf-8", NULL, msg, strlen(msg));
    return;
  }
  herald_log(&src->log, HLOG_INFO, "event injected through the admin endpoint");
  int r = herald_source_emit(src, req->body, req->body_len, emitted, req);
  if (r == HERALD_EBUSFULL) {
    const char *msg = "event bus is full, retry later\n";
    herald_http_respond(req, 503, "text/plain; charset=utf-8", "Retry-After: 1\r\n", msg, strlen(msg));
  } else if (r < 0) {
    herald_http_respond(req, 500, "text/plain; charset=utf-8", NULL, "failed to record event\n", 23);
  }
}

char *herald_admin_token_path(const char *configured) {
  if (configured && *configured) return herald_xstrdup(configured);
  const char *state = getenv("XDG_STATE_HOME");
  const char *home = getenv("HOME");
  if (state && *state) return herald_xasprintf("%s/herald/admin-token", state);
  return herald_xasprintf("%s/.local/state/herald/admin-token", home && *home ? home : "/tmp");
}

/* Returns the token from path, creating the file with a fresh random token if missing; a new
 * string the caller frees, or NULL after logging. */
static char *load_or_create_token(herald_engine *eng, const char *path) {
  int err;
  size_t len;
  char *tok = herald_read_file(path, &len, &err);
  if (tok) {
    while (len && (tok[len - 1] == '\n' || tok[len - 1] == '\r')) tok[--len] = '\0';
    if (len >= 16) return tok;
    free(tok);
    herald_log(&eng->log, HLOG_ERROR, "admin token in %s is shorter than 16 characters", path);
    return NULL;
  }
  herald_mkdir_parents(path);
  char fresh[65];
  herald_random_hex(fresh, 32);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 || write(fd, fresh, 64) != 64) {
    herald_log(&eng->log, HLOG_ERROR, "cannot create the admin token file %s: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    return NULL;
  }
  close(fd);
  return herald_xstrdup(fresh);
}

int herald__admin_start(herald_engine *eng) {
  const char *addr = eng->opts.admin_addr;
  if (!addr || !*addr || strcmp(addr, "off") == 0) return 0;
  const char *colon = strrchr(addr, ':');
  if (!colon) {
    herald_log(&eng->log, HLOG_ERROR, "--admin-addr %s: expected HOST:PORT", addr);
    return HERALD_EINVAL;
  }
  char *path = herald_admin_token_path(eng->opts.admin_token_file);
  char *token = load_or_create_token(eng, path);
  free(path);
  if (!token) return HERALD_EIO;
  char host[256];
  snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
  int err = 0;
  eng->admin_server = herald_http_server_listen(eng->loop, host, atoi(colon + 1), NULL, "admin", &err);
  if (!eng->admin_server) { /* e.g. another herald on this machine has it: run without one */
    herald_log(&eng->log, HLOG_WARN, "admin endpoint %s: cannot listen (%s); herald emit will not reach this engine",
               addr, uv_strerror(err));
    herald_http_listen_error_clear(); /* not fatal: the start must not report it */
    free(token);
    return 0;
  }
  herald_http_route r = {.path = "/emit", .method = "POST", .bearer_token = token,
                         .handler = on_emit, .data = eng};
  herald_http_server_add_route(eng->admin_server, &r);
  herald__tap_start(eng, eng->admin_server, token); /* GET /tap: herald tap */
  free(token); /* the route keeps its own copy */
  herald_log(&eng->log, HLOG_INFO, "admin endpoint on %s", addr);
  return 0;
}

/* ---- the client side, for `herald emit` ---- */

static size_t collect(char *p, size_t size, size_t n, void *ud) {
  herald_buf_append(ud, p, size * n);
  return size * n;
}

/* core.http_post(url, body, bearer_token, timeout_s) -> status, body | nil, err (blocking) */
static int l_http_post(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  size_t blen;
  const char *body = luaL_checklstring(L, 2, &blen);
  const char *token = luaL_optstring(L, 3, NULL);
  double timeout = luaL_optnumber(L, 4, 10);
  CURL *e = curl_easy_init();
  if (!e) return luaL_error(L, "curl_easy_init failed");
  herald_buf out = HERALD_BUF_INIT;
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
  char *auth = token ? herald_xasprintf("Authorization: Bearer %s", token) : NULL;
  if (auth) h = curl_slist_append(h, auth);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &out);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  CURLcode rc = curl_easy_perform(e);
  long status = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(h);
  free(auth);
  curl_easy_cleanup(e);
  if (rc != CURLE_OK) {
    herald_buf_free(&out);
    lua_pushnil(L);
    lua_pushstring(L, curl_easy_strerror(rc));
    return 2;
  }
  lua_pushinteger(L, status);
  lua_pushlstring(L, out.data ? out.data : "", out.len);
  herald_buf_free(&out);
  return 2;
}

/* core.http_get(url, bearer_token, timeout_s) -> status, body | nil, err (blocking; herald tap) */
static int l_http_get(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  const char *token = luaL_optstring(L, 2, NULL);
  double timeout = luaL_optnumber(L, 3, 10);
  CURL *e = curl_easy_init();
  if (!e) return luaL_error(L, "curl_easy_init failed");
  herald_buf out = HERALD_BUF_INIT;
  char *auth = token ? herald_xasprintf("Authorization: Bearer %s", token) : NULL;
  struct curl_slist *h = auth ? curl_slist_append(NULL, auth) : NULL;
  curl_easy_setopt(e, CURLOPT_URL, url);
  if (h) curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &out);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  CURLcode rc = curl_easy_perform(e);
  long status = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(h);
  free(auth);
  curl_easy_cleanup(e);
  if (rc != CURLE_OK) {
    herald_buf_free(&out);
    lua_pushnil(L);
    lua_pushstring(L, curl_easy_strerror(rc));
    return 2;
  }
  lua_pushinteger(L, status);
  lua_pushlstring(L, out.data ? out.data : "", out.len);
  herald_buf_free(&out);
  return 2;
}

/* core.tap_flag() -> lightuserdata: the engine's tap_active int, read through FFI by the
 * sensor runtime (a C call per event would break its traces). */
static int l_tap_flag(lua_State *L) {
  lua_pushlightuserdata(L, &herald_engine_from_lua(L)->tap_active);
  return 1;
}

/* core.tap_wants(event_id) -> bool: record what concerns this event (tap.h) */
static int l_tap_wants(lua_State *L) {
  lua_pushboolean(L, herald_tap_wants(herald_engine_from_lua(L), luaL_checkstring(L, 1), 0));
  return 1;
}

/* core.tap_record(kind, source, sensor, trigger, event_id, fields_json) */
static int l_tap_record(lua_State *L) {
  herald_tap_record(herald_engine_from_lua(L), luaL_checkstring(L, 1), luaL_optstring(L, 2, NULL),
                    luaL_optstring(L, 3, NULL), luaL_optstring(L, 4, NULL), luaL_optstring(L, 5, NULL),
                    luaL_optstring(L, 6, NULL));
  return 0;
}

/* core.admin_token_path(configured) -> path */
static int l_admin_token_path(lua_State *L) {
  char *p = herald_admin_token_path(luaL_optstring(L, 1, NULL));
  lua_pushstring(L, p);
  free(p);
  return 1;
}

void herald__lua_open_admin(lua_State *L) {
  /* stack: core -> core */
  lua_pushcfunction(L, l_http_post);
  lua_setfield(L, -2, "http_post");
  lua_pushcfunction(L, l_admin_token_path);
  lua_setfield(L, -2, "admin_token_path");
  lua_pushcfunction(L, l_http_get);
  lua_setfield(L, -2, "http_get");
  lua_pushcfunction(L, l_tap_flag);
  lua_setfield(L, -2, "tap_flag");
  lua_pushcfunction(L, l_tap_record);
  lua_setfield(L, -2, "tap_record");
  lua_pushcfunction(L, l_tap_wants);
  lua_setfield(L, -2, "tap_wants");
}
