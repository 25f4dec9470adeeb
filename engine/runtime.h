/*
 * runtime.h: the C side of sensors: bus subscriptions that hand events to the compiled Lua,
 * and trigger firing with the bookkeeping that decides when a bus delivery is acknowledged.
 *
 *   bus --deliver--> on_deliver: push event (decoded once, cached) --> Lua handler
 *        (filters, conditions, parameters) --core.fire(trigger, action)--> executor
 *   A delivery is acked when the handler returned and every firing it caused has finished,
 *   so a slow trigger holds bus slots and the bus pushes back on the sources.
 */
#ifndef HERALD_RUNTIME_H
#define HERALD_RUNTIME_H

#include "engine.h"

/* Subscribes the Lua function at handler_idx (called as handler(event)) to events from
 * es_name/event_name, as consumer "<sensor>/<dependency>". Returns 0 or a negative error. */
int herald_runtime_subscribe(herald_engine *eng, lua_State *L, const char *sensor,
                             const char *dependency, const char *es_name, const char *event_name,
                             int handler_idx);

/* Pushes the Lua table for ev: {context = {id, source, subject, type, time, datacontenttype,
 * specversion}, data = <decoded JSON>, raw = <JSON text>}, decoded once per event.
 * stack: -> event */
void herald_runtime_push_event(lua_State *L, herald_event *ev);

/* Creates a trigger instance of type `type` from the table at tmpl_idx. Returns it, or NULL
 * after logging why. The engine owns it (closed at shutdown). */
herald_trigger *herald_trigger_new(herald_engine *eng, lua_State *L, const char *type,
                                   const char *sensor, const char *name, int tmpl_idx);

/* Executes one action (the table at action_idx) on t, tied to the delivery being processed.
 * Returns 0 when started or done, a negative error when it could not start. */
int herald_trigger_fire(herald_engine *eng, herald_trigger *t, lua_State *L, int action_idx);

/* Stops every subscription (no new deliveries). */
void herald_runtime_unsubscribe_all(herald_engine *eng);
/* Number of trigger actions in flight across the engine. */
uint32_t herald_runtime_inflight(herald_engine *eng);

#endif
