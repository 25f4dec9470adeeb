/*
 * engine.h: one running Herald process: the loop, the Lua host, the bus, the HTTP servers
 * shared by webhook routes, and the lifecycle (start, drain on SIGINT/SIGTERM, stop).
 *
 *   main.c --herald_engine_init--> Lua: herald.run loads + validates specs, compiles sensors,
 *   creates sources/triggers through herald.core, subscribes --> uv_run --> signal -->
 *   herald_engine_shutdown: stop sources, drain bus and triggers (bounded), close, exit 0
 *   (or HERALD_EXIT_LEFTOVER when the drain ran out of time and left events behind: see
 *   engine.c for where they went).
 */
#ifndef HERALD_ENGINE_H
#define HERALD_ENGINE_H

#include "bus.h"
#include "http_server.h"
#include "log.h"
#include "plugin.h"

#include <lua.h>
#include <uv.h>

typedef struct herald_engine_opts {
  const char *secrets_dir; /* default /argo-events/secrets */
  const char *listen_host; /* address webhook-style sources bind; default 127.0.0.1 */
  const char *metrics_addr;/* "host:port" for /metrics, NULL/"" = off; default 127.0.0.1:7777 */
  const char *admin_addr;  /* "host:port" of the admin endpoint (herald emit); default 127.0.0.1:7778 */
  const char *admin_token_file; /* default $XDG_STATE_HOME/herald/admin-token */
  uint32_t bus_capacity;   /* embedded bus: events held at once; default 16384 */
  herald_jetstream_config js; /* js.url set: the JetStream bus; else the embedded bus */
  uint64_t drain_timeout_ms;/* on shutdown; default 10000 */
  const char *bus_dir;     /* embedded bus: keep events on disk there (bus_log.c); NULL = memory */
  const char *spill_file;  /* where a timed-out drain leaves events (spill.h); NULL = default */
  size_t max_message;      /* sources drop larger messages (source_kit.c); 0 = 1 MiB */
} herald_engine_opts;

/* Exit code of a drain that ran out of time and left events behind (dead-lettered, spilled,
 * or kept on a durable bus); 0 is a clean drain. */
#define HERALD_EXIT_LEFTOVER 3

struct herald_engine {
  uv_loop_t *loop;
  lua_State *L;
  herald_bus *bus;
  int bus_error;                /* the durable bus could not open its --bus-dir */
  herald_logger log;
  herald_engine_opts opts;
  herald_http_limits http_limits; /* for the servers webhook-style sources share */
  struct herald_server_entry *servers; /* shared HTTP servers by host:port */
  herald_http_server *metrics_server;
  herald_http_server *admin_server;
  uv_signal_t sigint, sigterm, sighup;
  int reload_ref;               /* Lua function SIGHUP calls (herald/engine.lua), or LUA_NOREF */
  uv_timer_t retire_timer;      /* closes retired triggers once their work is done */
  int retire_timer_ready;
  struct herald_tap *tap;       /* tap.c: GET /tap and its ring */
  int tap_active;               /* a tap reader asked lately: record (tap.h) */
  uv_timer_t every_timer;       /* core.every (herald run --watch) */
  int every_ready, every_ref;
  uv_timer_t drain_timer;
  int draining;
  int started;                  /* every source started (/readyz) */
  int drain_phase;              /* engine.c: waiting, dead-letter grace, closing triggers */
  uint64_t drain_start_ms;
  uint32_t sources_stopping;    /* sources whose stop has not called back yet */
  uint32_t triggers_closing;    /* executors whose close has not called back yet */
  uint64_t drain_dead_lettered; /* actions handed to a dlqTrigger at the deadline */
  uint64_t drain_spilled_actions; /* events of abandoned at-most-once actions spilled */
  int exit_code;
  struct herald_source_node *sources;
  struct herald_trigger_node *triggers;
  struct herald_delivery_ctx *current; /* the bus delivery being processed by Lua */
};

/* Sets up eng (caller-owned, must not move) on loop: Lua state with the stdlib, the embedded
 * bus, signal handlers. Returns 0 or a negative error. */
int herald_engine_init(herald_engine *eng, uv_loop_t *loop, const herald_engine_opts *opts);
/* Starts every source created so far and the metrics server. */
int herald_engine_start(herald_engine *eng);
/* Begins a graceful stop (what SIGINT/SIGTERM do). */
void herald_engine_shutdown(herald_engine *eng);
/* Frees what init allocated; call after uv_run returned. */
void herald_engine_free(herald_engine *eng);

/* Returns the HTTP server listening on the engine's listen_host:port, creating it on first
 * use; NULL with *err (a libuv error) when it cannot listen. */
herald_http_server *herald_engine_http_server(herald_engine *eng, int port, int *err);

/* ---- reload (SIGHUP): parts added and removed while the engine runs ---- */
/* Starts a source created after herald_engine_start (before it: a no-op, start starts it). */
int herald_engine_start_source(herald_engine *eng, herald_source *src);
/* Stops a source and frees it once stopped; a drain waits for it. */
void herald_engine_stop_source(herald_engine *eng, herald_source *src);
/* Takes no new actions for t; the queued, executing and retrying ones finish, then t (and its
 * resources) is closed. */
void herald_engine_retire_trigger(herald_engine *eng, herald_trigger *t);

/* The source instance for event `ev` of EventSource `es`, or NULL. */
herald_source *herald__engine_find_source(herald_engine *eng, const char *es, const char *ev);
/* Starts the admin endpoint (admin.c). Returns 0 or a negative error. */
int herald__admin_start(herald_engine *eng);
/* The admin token file: `configured`, else $XDG_STATE_HOME/herald/admin-token. A new string. */
char *herald_admin_token_path(const char *configured);

/* The bus, created on first use with the configured capacity. */
herald_bus *herald__engine_bus(herald_engine *eng);

/* The engine that owns L (stored in the registry at start-up). */
herald_engine *herald_engine_from_lua(lua_State *L);

/* Registers a source/trigger instance with the engine (start and shutdown). */
void herald__engine_add_source(herald_engine *eng, herald_source *src);
void herald__engine_add_trigger(herald_engine *eng, herald_trigger *t);
/* Reports pending filtered-event completions and closes their handle (source.c). */
void herald__source_defer_close(void);
/* leader.c: core.leader_elect, and its timer closed at shutdown. */
int herald__lua_leader_elect(lua_State *L);
void herald__leader_close(void);

#endif
