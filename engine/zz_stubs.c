/* TEMPORARY weak stubs so the tree links while parts are being written; removed before release. */
#include "http_server.h"
#include <lua.h>
#include <stddef.h>
__attribute__((weak)) int herald__lua_yaml_load(lua_State *L) { lua_pushnil(L); lua_pushstring(L, "yaml not built"); return 2; }
__attribute__((weak)) herald_http_server *herald_http_server_listen(uv_loop_t *loop, const char *host, int port, const herald_http_limits *limits, const char *name, int *err) { *err = UV_ENOSYS; return NULL; }
__attribute__((weak)) int herald_http_server_add_route(herald_http_server *srv, const herald_http_route *route) { return -2; }
__attribute__((weak)) void herald_http_respond(herald_http_req *req, int status, const char *ct, const char *h, const char *b, size_t n) {}
__attribute__((weak)) void herald_http_server_close(herald_http_server *srv, void (*cb)(void *), void *data) {}
