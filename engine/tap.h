/*
 * tap.h: a live view into a running engine, for `herald tap`.
 *
 *   source emit --event-->  +-------------------------+  <--GET /tap?after=N&...-- herald tap
 *   sensor      --verdict-> |  ring of the last 8192  |  --records after N, or waits up
 *               --firing--> |  records (JSON lines)   |    to 1 s for the next one-->
 *   delivery    --outcome-> +-------------------------+
 *
 * Records are made only while a tap client has asked within the last 10 s (herald_tap_on is
 * one load), so an engine nobody watches pays nothing; a reader that falls behind loses the
 * oldest records (the response says how many) and never slows the engine: recording is a
 * copy into the ring, never a write to a socket.
 */
#ifndef HERALD_TAP_H
#define HERALD_TAP_H

#include "engine.h"

/* Whether a tap client is attached (cheap: test before building a record). */
static inline int herald_tap_on(herald_engine *eng) {
  return eng->tap_active;
}

/* Whether to record what concerns event_id (NULL: an outcome): a tap is attached, and the
 * engine's own sampling keeps this event (above TAP_EVENT_BUDGET events a second it keeps
 * one in k, by id). is_new_event: the source's record of a new event (counts the rate). */
int herald_tap_wants(herald_engine *eng, const char *event_id, int is_new_event);

/* Records one line. kind: "event", "verdict", "firing", "outcome"; source/sensor/trigger and
 * event_id are what readers filter and sample on (NULL when not applicable); fields is a JSON
 * object fragment without braces ("\"k\":v,..."), copied. */
void herald_tap_record(herald_engine *eng, const char *kind, const char *source,
                       const char *sensor, const char *trigger, const char *event_id,
                       const char *fields);

/* Adds GET /tap to the admin server (with its bearer token). */
void herald__tap_start(herald_engine *eng, herald_http_server *admin, const char *token);
/* Answers the waiting readers and frees the ring (engine close). */
void herald__tap_close(herald_engine *eng);

#endif
