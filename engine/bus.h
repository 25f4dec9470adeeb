/*
 * bus.h: the event bus contract, shared by the embedded bus and (later) NATS JetStream.
 *
 *   source --publish(ev, cb)--> [bus] --deliver(sub, delivery, ev)--> consumer --ack(delivery)
 *
 * - publish takes a reference to the event; cb(data, 0) runs once the bus holds the event
 *   (for JetStream: after the PubAck). A full bus refuses synchronously with HERALD_EBUSFULL,
 *   and then the callback is never called: the producer answers "try later" (503).
 * - A subscription is (durable name, source, subject): one per (sensor, dependency). Each
 *   subscription sees every matching event, in publish order, at most `max_inflight`
 *   unacknowledged at a time; that bound is the backpressure from consumers to producers.
 * - The consumer calls herald_bus_ack() exactly once per delivery when it is done with it,
 *   or herald_bus_nak() to have it delivered again later.
 * Handles are caller-owned and must not move while open (libuv style).
 */
#ifndef HERALD_BUS_H
#define HERALD_BUS_H

#include "event.h"

#include <stdint.h>
#include <uv.h>

typedef struct herald_bus herald_bus;
typedef struct herald_bus_sub herald_bus_sub;
typedef struct herald_bus_delivery herald_bus_delivery;

/* status: 0 when the event is on the bus, a negative error otherwise. */
typedef void (*herald_bus_publish_cb)(void *data, int status);
/* Called on the loop for each event; ev stays valid until the delivery is acked. */
typedef void (*herald_bus_deliver_cb)(herald_bus_sub *sub, herald_bus_delivery *d,
                                      herald_event *ev);
typedef void (*herald_bus_close_cb)(herald_bus *bus);

struct herald_bus_sub {
  void *data;                    /* for the caller */
  const char *durable;           /* consumer name, e.g. "<sensor>/<dependency>"; not owned */
  const char *source;            /* EventSource name to match; not owned */
  const char *subject;           /* event name to match; not owned */
  uint32_t max_inflight;         /* unacked deliveries allowed at once (0 = bus default) */
  herald_bus_deliver_cb deliver;
  void *priv;                    /* the bus implementation's */
};

typedef struct herald_bus_stats {
  uint64_t published;   /* events accepted */
  uint64_t rejected;    /* publishes refused (full or unavailable) */
  uint64_t delivered;   /* deliveries handed to consumers */
  uint64_t acked;
  uint64_t unrouted;    /* events no subscription wanted */
  uint64_t in_bus;      /* events held now */
  uint64_t capacity;
} herald_bus_stats;

typedef struct herald_bus_ops {
  const char *name;
  int (*publish)(herald_bus *bus, herald_event *ev, herald_bus_publish_cb cb, void *data);
  int (*subscribe)(herald_bus *bus, herald_bus_sub *sub);
  void (*unsubscribe)(herald_bus *bus, herald_bus_sub *sub);
  void (*ack)(herald_bus *bus, herald_bus_delivery *d);
  void (*nak)(herald_bus *bus, herald_bus_delivery *d, uint64_t delay_ms);
  void (*stats)(herald_bus *bus, herald_bus_stats *out);
  void (*close)(herald_bus *bus, herald_bus_close_cb cb);
} herald_bus_ops;

struct herald_bus {
  const herald_bus_ops *ops;
  uv_loop_t *loop;
  void *data; /* for the caller */
};

static inline int herald_bus_publish(herald_bus *bus, herald_event *ev, herald_bus_publish_cb cb,
                                     void *data) {
  return bus->ops->publish(bus, ev, cb, data);
}
static inline int herald_bus_subscribe(herald_bus *bus, herald_bus_sub *sub) {
  return bus->ops->subscribe(bus, sub);
}
static inline void herald_bus_unsubscribe(herald_bus *bus, herald_bus_sub *sub) {
  bus->ops->unsubscribe(bus, sub);
}
static inline void herald_bus_ack(herald_bus *bus, herald_bus_delivery *d) {
  bus->ops->ack(bus, d);
}
static inline void herald_bus_nak(herald_bus *bus, herald_bus_delivery *d, uint64_t delay_ms) {
  bus->ops->nak(bus, d, delay_ms);
}

/* The embedded, in-process bus. `capacity` bounds the events held at once (published and not
 * yet acknowledged by every subscription). Returns a new bus; release it with its close op. */
herald_bus *herald_bus_embedded_new(uv_loop_t *loop, uint32_t capacity);

/* JetStream bus (bus_jetstream.c): NATS server at `url` ("nats://host:port"), stream "default"
 * as Argo's. `window` bounds the publishes waiting for their PubAck (0 = 4096). Connects in the
 * background (never blocks the loop). Returns a new bus (release it with its close op), or NULL
 * with *err = HERALD_EINVAL when nats.c rejects the URL. */
herald_bus *herald_bus_jetstream_new(uv_loop_t *loop, const char *url, uint32_t window, int *err);

#endif
