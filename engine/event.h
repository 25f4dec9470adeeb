/*
 * event.h: the CloudEvent as it travels through Herald.
 *
 *   source --herald_event_new()--> bus --(one ref per delivery)--> sensor --> trigger
 *
 * One allocation holds the struct and its strings. `data` is JSON text (always valid JSON:
 * sources validate or wrap what they receive). Events are reference counted because one event
 * is delivered to many subscriptions; the last unref frees it. The sensor runtime caches the
 * decoded Lua value in `lua_ref` so an event is decoded once however many sensors see it.
 */
#ifndef HERALD_EVENT_H
#define HERALD_EVENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct herald_event {
  uint32_t refs;
  int lua_ref;                 /* decoded event in the engine's Lua state, or LUA_NOREF */
  char id[33];                 /* 32 lowercase hex characters */
  char time[40];               /* RFC 3339 with nanoseconds, UTC */
  int64_t time_ns;             /* the same, ns since the epoch */
  uint64_t received_mono_ns;   /* when the source got it (latency measurement) */
  const char *specversion;     /* "1.0" */
  const char *source;          /* EventSource name */
  const char *subject;         /* event name (the key in the EventSource spec) */
  const char *type;            /* source type, e.g. "webhook" */
  const char *datacontenttype; /* "application/json" */
  const char *data;            /* JSON text, NUL-terminated */
  size_t data_len;
} herald_event;

/* Returns a new event with one reference, a fresh random id and the current time; the caller
 * releases it with herald_event_unref(). Returns NULL when out of memory. */
herald_event *herald_event_new(const char *source, const char *subject, const char *type,
                               const char *data, size_t data_len);
/* Returns a new event with the given id and time (for events read back from a bus). */
herald_event *herald_event_new_full(const char *id, const char *time, const char *source,
                                    const char *subject, const char *type,
                                    const char *datacontenttype, const char *data,
                                    size_t data_len);
void herald_event_ref(herald_event *ev);
void herald_event_unref(herald_event *ev);

/* Called with each event just before it is freed (the sensor runtime drops its Lua cache). */
void herald_event_set_release_hook(void (*hook)(herald_event *ev));

/* Appends the structured-mode CloudEvent JSON ({"specversion":...,"data":...}) to b. */
struct herald_buf;
void herald_event_to_json(const herald_event *ev, struct herald_buf *b);

/* Validates that text[0..len) is exactly one JSON value (RFC 8259, UTF-8 included), nested at
 * most max_depth deep. Returns 1 if valid, 0 if not. No allocation. */
int herald_json_valid(const char *text, size_t len, int max_depth);

/* Returns a new event from a structured-mode CloudEvent (what herald_event_to_json writes, or
 * another producer's: any attribute order, no "data" meaning no data at all), or NULL with
 * *why set to what is wrong. The caller drops it with herald_event_unref. */
herald_event *herald_event_from_json(const char *text, size_t len, const char **why);

#endif
