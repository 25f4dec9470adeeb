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
