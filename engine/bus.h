/*
 * bus.h: the event bus contract, shared by the embedded bus and (later) NATS JetStream.
 *
 *   source --publish(ev, cb)--> [bus] --deliver(sub, delivery, ev)--> consumer --ack(delivery)
 *
 * - publish takes a reference to the event; cb(data, 0) runs once the bus holds the event
 *   (for JetStream: after the PubAck). A full bus refuses synchronously with HERALD_EBUSFULL,
 *   and then the callback is never called: the producer answers "try later" (503).
 * - A subscription is (durable name, source, subject): on JetStream one per (sensor,
 *   dependency), as Argo's consumers; on the embedded bus the engine shares one per (source,
 *   subject) among the dependencies that want it (herald/engine.lua's subscriber). Each
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
  const char *durable;           /* consumer name, e.g. "<sensor>/<trigger>/<dependency>"; not owned */
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
  int connected;        /* the bus can take events now (the embedded bus always) */
  uint64_t disconnects, reconnects; /* connection to the server lost / restored */
  uint64_t duplicates;  /* redeliveries dropped because their event id was already handled */
} herald_bus_stats;

/* ---- optional dependency state (JetStream: a key-value bucket per sensor) ----
 * Keys are (sensor, trigger, dependency); a value is the event as its CloudEvent JSON. Every
 * op is asynchronous and completes on the loop; ops of one bus run in call order. */
typedef struct herald_bus_state_sub {
  const char *name, *source, *subject; /* a subscription of the sensor (its durable's name after
                                          "<sensor>/"); not owned */
} herald_bus_state_sub;
typedef struct herald_bus_state_key {
  const char *trigger, *dep; /* a (trigger, dependency) pair of the spec; not owned */
  const char *sub;           /* the subscription that feeds it; not owned */
} herald_bus_state_key;
typedef struct herald_bus_state_spec {
  const herald_bus_state_sub *subs;
  size_t nsubs;
  const herald_bus_state_key *keys;
  size_t nkeys;
} herald_bus_state_spec;
/* One stored (trigger, dependency) event; the list and its events belong to the bus and are
 * released after the callback returns (take a reference to keep an event). */
typedef struct herald_bus_state_entry {
  const char *trigger, *dep;
  herald_event *ev;
  struct herald_bus_state_entry *next;
} herald_bus_state_entry;
typedef void (*herald_bus_state_load_cb)(void *data, int status, const herald_bus_state_entry *entries);
typedef void (*herald_bus_state_cb)(void *data, int status);
/* status 0 and the lease's new revision, HERALD_EHELD (holder: who has it) or HERALD_EIO */
typedef void (*herald_bus_lease_cb)(void *data, int status, uint64_t revision, const char *holder);

typedef struct herald_bus_ops {
  const char *name;
  int (*publish)(herald_bus *bus, herald_event *ev, herald_bus_publish_cb cb, void *data);
  int (*subscribe)(herald_bus *bus, herald_bus_sub *sub);
  void (*unsubscribe)(herald_bus *bus, herald_bus_sub *sub);
  void (*ack)(herald_bus *bus, herald_bus_delivery *d);
  void (*nak)(herald_bus *bus, herald_bus_delivery *d, uint64_t delay_ms);
  void (*stats)(herald_bus *bus, herald_bus_stats *out);
  void (*close)(herald_bus *bus, herald_bus_close_cb cb);
  /* Optional (NULL: state stays in the sensor's memory, as on the embedded bus). */
  /* Opens the sensor's state: removes the keys of (trigger, dependency) pairs and the
   * consumers of subscriptions that are no longer in `spec` (or whose source/subject changed),
   * then calls cb with what is stored. No subscription of this bus delivers anything until cb
   * has returned. spec is copied. */
  int (*state_open)(herald_bus *bus, const char *sensor, const herald_bus_state_spec *spec,
                    herald_bus_state_load_cb cb, void *data);
  /* Stores ev (a reference is taken) under (sensor, trigger, dep), or deletes the key when ev
   * is NULL; cb(data, status) runs once the server has it. The sensor must be open. */
  int (*state_set)(herald_bus *bus, const char *sensor, const char *trigger, const char *dep,
                   herald_event *ev, herald_bus_state_cb cb, void *data);
  /* Deletes the sensor's state bucket and the consumers of `subs` (and of the subscriptions
   * the bucket remembers). */
  int (*cleanup)(herald_bus *bus, const char *sensor, const char *const *subs, size_t nsubs,
                 herald_bus_state_cb cb, void *data);
  /* Optional (NULL: one process owns the bus, nothing to elect). A lease for leader election:
   * takes `name` for `holder` when revision is 0 and nobody holds it, or renews the one taken
   * at `revision`; an unrenewed lease lapses after ttl_ms (the same for every caller). */
  int (*lease)(herald_bus *bus, const char *name, const char *holder, uint64_t revision,
               uint64_t ttl_ms, herald_bus_lease_cb cb, void *data);
  /* ---- the drain's deadline (engine.c) ----
   * Optional (NULL: nothing to stop). Hands out no more deliveries; acks and naks still work,
   * and a nak'd delivery waits in its subscription for the next process. */
  void (*pause)(herald_bus *bus);
  /* Optional (NULL: the server keeps what was not acked, as JetStream does). Called once no
   * delivery is outstanding, just before unsubscribing and closing: calls lose(data, ev) for
   * each event the bus holds and would lose when closed (the in-memory bus: each one not acked
   * by every subscription; a durable bus: none, it keeps them), and returns how many events it
   * holds in all, lost or kept. */
  uint64_t (*leftover)(herald_bus *bus, void (*lose)(void *data, herald_event *ev), void *data);
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
/* The same, durable: events are kept in a log in dir (bus_log.h) before their publish
 * completes, and those not acked by every subscription are delivered again after a restart.
 * Returns a new bus, or NULL with *err set (reason logged: dir unusable or in use). */
herald_bus *herald_bus_embedded_open(uv_loop_t *loop, uint32_t capacity, const char *dir, int *err);

/* How to reach JetStream and the stream to use: `--bus URL`, or an EventBus jetstreamExotic
 * (url, accessSecret, tls, streamConfig). Strings are not owned. */
typedef struct herald_jetstream_config {
  const char *url;                /* "nats://host:port[,...]"; NULL = the embedded bus */
  uint32_t window;                /* publishes waiting for their PubAck; 0 = 4096 */
  const char *user, *password;    /* basic auth (also accepted in the URL) */
  const char *token;              /* token auth */
  const char *creds_file;         /* JWT auth: a NATS credentials file (user JWT and seed) */
  int tls;                        /* TLS on (the server may also demand it) */
  const char *ca_pem;             /* trusted CAs (PEM text); NULL = the system's */
  const char *cert_pem, *key_pem; /* client certificate and key (PEM text) */
  int tls_insecure;               /* skip server verification */
  /* streamConfig: when set, the stream is created or updated with these settings (Herald's
   * defaults for those not given); when not, an existing stream is used as it is. */
  int stream_set;
  int64_t max_msgs, max_bytes, max_age_ns, duplicates_ns;
  int replicas, retention, discard;
} herald_jetstream_config;

/* JetStream bus (bus_jetstream.c): stream "default" as Argo's. Connects in the background (never
 * blocks the loop). Returns a new bus (release it with its close op), or NULL with
 * *err = HERALD_EINVAL when nats.c rejects the configuration (reason logged). */
herald_bus *herald_bus_jetstream_new(uv_loop_t *loop, const herald_jetstream_config *cfg, int *err);

#endif
