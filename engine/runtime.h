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
 * es_name/event_name, as consumer "<sensor>/<name>" (herald/engine.lua names a JetStream
 * subscription "<trigger>/<dependency>"), with at most `window` deliveries unacknowledged
 * (0 = the bus's default). Returns 0 or a negative error. */
int herald_runtime_subscribe(herald_engine *eng, lua_State *L, const char *sensor,
                             const char *name, const char *es_name, const char *event_name,
                             int handler_idx, uint32_t window);

/* Pushes the Lua table for ev: {context = {id, source, subject, type, time, datacontenttype,
 * specversion}, data = <decoded JSON>, raw = <JSON text>}, decoded once per event.
 * stack: -> event */
void herald_runtime_push_event(lua_State *L, herald_event *ev);

/* Stops the subscription "<sensor>/<name>" (no new deliveries; those in flight are acked as
 * usual). Returns 0 or HERALD_EINVAL when there is none. */
int herald_runtime_unsubscribe(herald_engine *eng, const char *sensor, const char *name);
/* Takes no new actions; the rest finish (delivery.c). herald__trigger_idle: nothing left. */
void herald__trigger_retire(herald_trigger *t);
int herald__trigger_retiring(herald_trigger *t);
int herald__trigger_idle(herald_trigger *t);

/* Stops every subscription (no new deliveries). */
void herald_runtime_unsubscribe_all(herald_engine *eng);

/* The bus delivery being processed by Lua, with one more hold (its ack waits for a matching
 * release), or NULL outside a delivery. */
struct herald_delivery_ctx *herald__delivery_hold(herald_engine *eng);
/* Drops a hold; the last one acks the delivery. NULL is a no-op. */
void herald__delivery_release(struct herald_delivery_ctx *c);
/* Drops a hold of a firing given up at the drain's deadline: the last hold then naks the
 * delivery instead of acking it, so the event stays on the bus. NULL is a no-op. */
void herald__delivery_abandon(struct herald_delivery_ctx *c);

/* ---- triggers and delivery (delivery.c) ---- */

/* How the engine delivers a trigger's actions (the trigger-level fields of an Argo Trigger). */
typedef struct herald_delivery_policy {
  uint32_t steps;       /* attempts in all (retryStrategy.steps); 1 = no retry */
  uint64_t duration_ms; /* first backoff */
  double factor;        /* backoff multiplier */
  double jitter;        /* random extra, as a fraction of the delay */
  double rate;          /* actions per second (rateLimit); 0 = unlimited */
  int at_least_once;    /* ack the bus delivery after the outcome (else at receipt) */
  uint32_t max_inflight;/* actions executing at once for this trigger */
} herald_delivery_policy;

/* Creates a trigger instance of type `type` from the table at tmpl_idx, delivered with pol
 * (NULL: one attempt, no rate limit, ack at receipt). Returns it, or NULL after logging why.
 * The engine owns it (closed at shutdown). */
herald_trigger *herald_trigger_new(herald_engine *eng, lua_State *L, const char *type,
                                   const char *sensor, const char *name, int tmpl_idx,
                                   const herald_delivery_policy *pol);

/* Sets the dead-letter trigger of t: after the retries are exhausted, the Lua function at
 * builder_idx is called with the firing's events and returns the action for dlq. */
void herald_trigger_set_dlq(herald_trigger *t, herald_trigger *dlq, lua_State *L, int builder_idx);

/* Queues one action (the table at action_idx, which carries `events`) on t, tied to the bus
 * delivery being processed. Returns 0, or a negative error when it could not be queued. */
int herald_trigger_fire(herald_engine *eng, herald_trigger *t, lua_State *L, int action_idx);

/* Actions queued, executing or waiting for a retry, across the engine (the drain waits for 0). */
uint32_t herald_runtime_inflight(herald_engine *eng);
/* At shutdown, before the executor's close: t takes no more actions, and each of its actions
 * not finished (queued, waiting for a retry, or executing: the executor's close ends those as
 * failed) is given up: with `to_dlq` and a dlqTrigger, handed to it (counted in
 * eng->drain_dead_lettered); else its bus delivery is nak'd so the event stays on the bus, or,
 * when that delivery was already acked (at most once), its events are spilled (spill.h). */
void herald__trigger_delivery_abandon(herald_trigger *t, int to_dlq);
/* 1 if t is another trigger's dlqTrigger. */
int herald__trigger_is_dlq(herald_trigger *t);
/* Releases the delivery state once the executor has closed. */
void herald__trigger_delivery_free(herald_trigger *t);

#endif
