/*
 * plugin.h: what a source or a trigger executor is.
 *
 * Each sources/<type>/ and triggers/<type>/ folder defines one const type struct of callbacks
 * (herald_source_<type>, herald_trigger_<type>); CMake generates the registry from the folder
 * list. The type (shared, const) is kept apart from the instance (one per configured event or
 * trigger). Configuration arrives as the validated spec table in the engine's Lua state: the
 * schema in scripts/stdlib/herald/schema.lua declares every field, its type and default, and
 * rejects unknown ones before any plugin sees it.
 */
#ifndef HERALD_PLUGIN_H
#define HERALD_PLUGIN_H

#include "bus.h"
#include "log.h"

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

typedef struct herald_engine herald_engine;
typedef struct herald_source herald_source;
typedef struct herald_trigger herald_trigger;
typedef struct herald_trigger_req herald_trigger_req;
struct herald_metric;

/* ---- sources ---- */

typedef void (*herald_source_stop_cb)(herald_source *src);

typedef struct herald_source_type {
  const char *name;       /* key under EventSource.spec, e.g. "webhook" */
  const char *event_type; /* CloudEvent `type`, e.g. "webhook" */
  size_t priv_size;       /* bytes of zeroed per-instance state at src->priv */
  /* Reads the event's validated config table at cfg_idx in L (stack unchanged). Returns 0 or a
   * negative error after logging what is wrong with src->log. */
  int (*init)(herald_source *src, lua_State *L, int cfg_idx);
  /* Starts producing events (listen, arm timers...). Returns 0 or a negative error. */
  int (*start)(herald_source *src);
  /* Stops producing; calls done(src) once every handle is closed. */
  void (*stop)(herald_source *src, herald_source_stop_cb done);
} herald_source_type;

struct herald_source {
  const herald_source_type *type;
  herald_engine *engine;
  char *es_name;    /* EventSource metadata.name */
  char *event_name; /* the key of this event in the spec map */
  herald_logger log;
  void *priv;
  void *data; /* the engine's */
  struct herald_metric *m_sent, *m_sent_failed, *m_processing_failed, *m_duration;
  int filter_ref; /* EventSource filter.expression compiled to a Lua function, or LUA_NOREF */
  struct herald_metric *m_filtered;
  /* source_kit.c's */
  int conn_state; /* 0 never said, 1 connected, -1 not */
  struct herald_metric *m_connected, *m_bad_body, *m_too_big;
  void *room_wait;
};

/* Creates a source instance of `type` for event `ev` of EventSource `es` from the config table
 * at cfg_idx, with its metrics, and registers it with the engine (started by
 * herald_engine_start). Returns it, or NULL after logging why. */
herald_source *herald_source_new(herald_engine *eng, lua_State *L, const char *type,
                                 const char *es, const char *ev, int cfg_idx);
/* Sets the EventSource filter: the Lua function at fn_idx, called as fn(data_json) -> pass
 * [, err]. Returns 0. */
int herald_source_set_filter(herald_source *src, lua_State *L, int fn_idx);
/* Frees an instance that is stopped (or was never started). */
void herald_source_free(herald_source *src);

/* Wraps `json` (the event data in Argo's shape for this source; must be valid JSON) in a
 * CloudEvent and publishes it, unless the EventSource's filter.expression rejects the data
 * (then it is dropped and counted, as in Argo, and the producer is told "done"). On 0,
 * cb(cbdata, status) runs later with status 0 once the event is on the bus (or was filtered
 * out), or a negative error. On a negative return (HERALD_EBUSFULL when the bus is full) cb is
 * not called and nothing was published. */
int herald_source_emit(herald_source *src, const char *json, size_t len,
                       herald_bus_publish_cb cb, void *cbdata);

/* Resolves a SecretKeySelector {name, key} to the secret's bytes, read from
 * <secrets-dir>/<name>/<key> as Argo mounts them. Returns a new string the caller frees, with
 * one trailing newline removed, or NULL with *err set. */
char *herald_secret_read(herald_engine *eng, const char *name, const char *key, int *err);
/* Where that secret's file is (a new string), or NULL with *err = HERALD_EINVAL for a name or
 * key that would leave the secrets directory. */
char *herald_secret_path(herald_engine *eng, const char *name, const char *key, int *err);

/* Reads the SecretKeySelector in field `field` of the table at idx (stack unchanged). Returns a
 * new string; NULL when the field is absent (*err = 0) or the secret cannot be read (*err < 0,
 * logged to lg as "<what>: cannot read secret <name>/<key>: <reason>"). */
char *herald_secret_field(herald_engine *eng, const herald_logger *lg, lua_State *L, int idx,
                          const char *field, const char *what, int *err);

/* The same with the CloudEvent id given (NULL: a random one), for sources whose upstream
 * names each message (Kafka's es:event:broker:topic:partition:offset): a redelivered message
 * then carries the same id, and the JetStream bus drops it as a duplicate. */
int herald_source_emit_id(herald_source *src, const char *id, const char *json, size_t len,
                          herald_bus_publish_cb cb, void *cbdata);

/* ---- helpers for sources that talk to a server (source_kit.c) ---- */

/* Argo's connectionBackoff, used to reconnect for ever: the first wait is `duration` (default
 * 1 s), each next one `factor` (default 2) times the last, capped at 60 s, plus up to `jitter`
 * (default 0.1) of it at random. `steps` is not a limit here: a source never gives up. */
typedef struct herald_backoff {
  uint64_t first_ms, cap_ms, delay_ms;
  double factor, jitter;
  uint32_t attempt;
} herald_backoff;
/* Reads the Backoff table in `field` of the config at cfg_idx (absent: the defaults). */
void herald_backoff_init(herald_backoff *b, lua_State *L, int cfg_idx, const char *field);
/* The wait before the next attempt, in ms; herald_backoff_reset after a success. */
uint64_t herald_backoff_next(herald_backoff *b);
void herald_backoff_reset(herald_backoff *b);

/* Reports the connection state: sets the gauge herald_eventsource_connected{eventsource_name,
 * event_name} and logs each change once (info "connected", warn "not connected: <reason>"),
 * repeats of a failure only at debug and rate-limited. */
void herald_source_set_connected(herald_source *src, int up, const char *reason);

/* After herald_source_emit said HERALD_EBUSFULL (or the bus is down), a source stops reading
 * and asks to be called back once the bus takes events again: cb(src, data) runs on the loop.
 * One wait per source at a time (HERALD_EINVAL otherwise); stop() must cancel it. */
int herald_source_when_room(herald_source *src, void (*cb)(herald_source *src, void *data),
                            void *data);
void herald_source_cancel_room(herald_source *src);

/* Appends a message body as Argo puts it in the event data: with jsonBody, the raw JSON (a
 * body that is not JSON is counted in herald_eventsource_bad_body_total, logged, and
 * HERALD_EINVAL returned: drop the message, as Argo's marshalling fails there); without, Go's
 * []byte: a base64 JSON string. */
struct herald_buf;
int herald_source_put_body(herald_source *src, struct herald_buf *b, const void *body,
                           size_t len, int json_body);
void herald_buf_base64(struct herald_buf *b, const void *data, size_t n);
/* 1 (counted in herald_eventsource_oversize_total and logged) when a message of len bytes is
 * over the engine's limit (herald run --max-message-bytes, default 1 MiB): drop it, and ack
 * it upstream so it does not come back for ever. */
#define HERALD_DEFAULT_MAX_MESSAGE (1u << 20)
int herald_source_too_big(herald_source *src, size_t len);
/* The `metadata` map of the config at cfg_idx as a JSON object (a new string), NULL if absent. */
char *herald_cfg_metadata_json(lua_State *L, int cfg_idx);

/* ---- triggers ---- */

typedef enum {
  HERALD_TRIGGER_DONE = 0,   /* the action happened */
  HERALD_TRIGGER_RETRY = 1,  /* failed, worth trying again later */
  HERALD_TRIGGER_FAILED = 2, /* failed for good */
} herald_trigger_result;

/* Completion of one action: res, and a short reason when it did not succeed (may be NULL). */
typedef void (*herald_trigger_done_cb)(herald_trigger_req *req, herald_trigger_result res,
                                       const char *reason);
typedef void (*herald_trigger_close_cb)(herald_trigger *t);

typedef struct herald_trigger_type {
  const char *name;  /* key under Trigger.template, e.g. "http" */
  size_t priv_size;  /* zeroed per-instance state at t->priv */
  size_t req_size;   /* zeroed per-request state at req->priv */
  /* Reads the trigger-type table (e.g. template.http) at tmpl_idx (stack unchanged). */
  int (*init)(herald_trigger *t, lua_State *L, int tmpl_idx);
  /* Starts one action described by the table at action_idx, built by the sensor runtime with
   * every parameter applied (http: {url, method, headers, body, timeout}; log: {line}). Reads it
   * synchronously. Returns 1 when the action already completed successfully (no callback),
   * 0 when it will finish later through req->done, or a negative error (no callback). */
  int (*execute)(herald_trigger *t, herald_trigger_req *req, lua_State *L, int action_idx);
  /* Finishes in-flight work (or abandons it after a bound) and calls done. */
  void (*close)(herald_trigger *t, herald_trigger_close_cb done);
} herald_trigger_type;

struct herald_trigger {
  const herald_trigger_type *type;
  herald_engine *engine;
  char *sensor_name;
  char *name;
  herald_logger log;
  void *priv;
  void *data; /* the sensor runtime's */
  uint32_t inflight;
  struct herald_metric *m_triggered, *m_failed, *m_retries_failed, *m_duration;
};

struct herald_trigger_req {
  herald_trigger *trigger;
  herald_trigger_done_cb done;
  void *data; /* the sensor runtime's */
  uint64_t start_ns;
  void *priv; /* req_size bytes for the executor */
};

extern const herald_source_type *const herald_source_types[];
extern const herald_trigger_type *const herald_trigger_types[];

const herald_source_type *herald_source_type_find(const char *name);
const herald_trigger_type *herald_trigger_type_find(const char *name);

/* Small helpers for init callbacks: read a field of the table at idx. */
const char *herald_cfg_string(lua_State *L, int idx, const char *field, const char *dflt);
double herald_cfg_number(lua_State *L, int idx, const char *field, double dflt);
int herald_cfg_bool(lua_State *L, int idx, const char *field, int dflt);

#endif
