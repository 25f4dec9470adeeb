/*
 * nats_client.h: one NATS connection for every part of Herald that speaks NATS (the JetStream
 * bus, the NATS trigger, the NATS source), with the thread model they all share.
 *
 *   loop: herald_nats_start(cfg, work, wake) --> worker thread: work(c)
 *           work: herald_nats_connect(c), then the owner's queue loop on c->mu / c->cond,
 *                 calling nats.c (publish, flush, fetch, JetStream API) as it likes
 *   nats.c's threads: connected / disconnected / reconnected --> c->events, c->cond broadcast
 *   worker or nats.c thread: owner lists under c->mu, herald_nats_note(line) --> herald_nats_wake
 *   --uv_async_send--> loop: connection changes and notes logged, then wake(c, events)
 *   loop: herald_nats_stop(c, closed) --> work returns --> connection closed (bounded wait for
 *         nats.c's last callback) and destroyed --> loop joins the thread --> closed(c)
 *
 * Why nats.c's own threads and not its libuv adapter on our loop: with the adapter,
 * natsConnection_Connect still connects and handshakes synchronously on the calling thread,
 * every JetStream API call and pull fetch is a synchronous request/reply, and a flush waits for
 * a PONG the loop thread itself would have to read (docs/architecture.md, "Threads"). So the
 * loop never calls nats.c: a worker owns the connection, and the loop only sees results.
 *
 * The worker (and nats.c's threads) never log: loggers are the loop's. They queue a line with
 * herald_nats_note (bounded; the excess is counted), which the loop logs, rate-limited.
 *
 * Connection options shared by all: a 2 s connect timeout, reconnects for ever (or up to
 * max_reconnects) with a capped, jittered backoff or a fixed wait, auth by user/password,
 * token, NKey seed file or JWT credentials file, TLS with a CA, a client certificate and
 * insecureSkipVerify. herald_nats_config_from_lua reads Argo's fields for them (url, tls{},
 * auth{}), as the NATS trigger and source have them.
 */
#ifndef HERALD_NATS_CLIENT_H
#define HERALD_NATS_CLIENT_H

#include "log.h"

#include <lua.h>
#include <nats/nats.h>
#include <uv.h>

struct herald_engine;

/* Connection options. Strings are copied by herald_nats_start (nats.c keeps its own). */
typedef struct herald_nats_config {
  const char *url;              /* "nats://host:port[,...]" or "tls://..."; may hold user:pass@ */
  const char *name;             /* the connection name the server shows; NULL = "herald" */
  const char *user, *password;  /* basic auth (either may be NULL) */
  const char *token;            /* token auth */
  const char *nkey_seed_file;   /* NKey auth: a file holding a user seed (SU...); nats.c signs */
  const char *creds_file;       /* JWT auth: a credentials file (user JWT and seed) */
  int tls;                      /* TLS on (a tls:// URL turns it on too) */
  const char *ca_pem;           /* trusted CAs (PEM text); NULL = the system's */
  const char *cert_pem, *key_pem; /* client certificate and key (PEM text), both or neither */
  int tls_insecure;             /* skip server verification (insecureSkipVerify) */
  int reconnect_wait_ms;        /* 0: backoff, 100 ms doubling to 2 s plus up to 25% jitter */
  int max_reconnects;           /* 0: for ever */
  /* A source's connectionBackoff instead of the default backoff (first_ms 0: the default):
   * first_ms, times factor each attempt, capped at cap_ms, plus up to jitter of it. */
  unsigned backoff_first_ms, backoff_cap_ms;
  double backoff_factor, backoff_jitter;
  int owner_logs_state; /* the owner reports connection changes itself (a source's gauge) */
} herald_nats_config;

/* Connection changes, as passed to wake. */
enum { HERALD_NATS_CONNECTED = 1, HERALD_NATS_DISCONNECTED = 2, HERALD_NATS_RECONNECTED = 4 };

#define HERALD_NATS_MAX_NOTES 32

typedef struct herald_nats herald_nats;
/* The owner's worker body (worker thread); returns once c->stop is set. The connection is
 * closed and destroyed after it returns, unless it did so itself. */
typedef void (*herald_nats_work_cb)(herald_nats *c);
/* On the loop after each hand-off: events = HERALD_NATS_* seen since the last one (already
 * logged); the owner takes its lists from under c->mu. */
typedef void (*herald_nats_wake_cb)(herald_nats *c, int events);
/* On the loop, last: the thread is joined and everything of c released; c may be freed. */
typedef void (*herald_nats_closed_cb)(herald_nats *c);

/* Caller-owned (embed it); must not move once started. */
struct herald_nats {
  void *data; /* the owner's; kept by herald_nats_start */
  /* read-only for owners: */
  char *url;           /* without credentials, for logs */
  natsConnection *nc;  /* the worker's; NULL until herald_nats_connect made it */
  herald_logger *log;  /* the owner's (loop only) */
  natsOptions *opts;   /* the worker's once started */
  uv_async_t *async;   /* apart from c: it may outlive a failed start */
  uv_thread_t thread;
  herald_nats_work_cb work;
  herald_nats_wake_cb wake;
  herald_nats_closed_cb closed;
  int close_waited;    /* the worker's: herald_nats_close has run */
  /* mu guards what follows and whatever the owner shares between its threads; the worker
   * waits on cond, which is broadcast on every connection change and on stop. */
  uv_mutex_t mu;
  uv_cond_t cond;
  int connected;      /* as the last nats.c callback said */
  unsigned connects;  /* connections made so far (first connect and each reconnect) */
  int stop;           /* herald_nats_stop was called */
  int exited, closed_seen, events;
  char last_error[160]; /* why the last connect attempt failed or the connection dropped */
  unsigned bo_first_ms, bo_cap_ms; /* herald_nats_config's backoff_*, read by nats.c's thread */
  double bo_factor, bo_jitter;
  int owner_logs_state;
  char *notes[HERALD_NATS_MAX_NOTES];
  int note_levels[HERALD_NATS_MAX_NOTES];
  int nnotes, notes_dropped;
};

/* Builds the connection options from cfg and starts the worker thread running work(c); wake
 * runs on loop after each hand-off. Connects nothing itself (work calls herald_nats_connect).
 * Returns 0, or HERALD_EINVAL when nats.c rejects cfg (why is logged to log) or HERALD_ENOMEM,
 * with nothing left to release. */
int herald_nats_start(uv_loop_t *loop, herald_nats *c, const herald_nats_config *cfg, herald_logger *log,
                      herald_nats_work_cb work, herald_nats_wake_cb wake);
/* (loop) Sets c->stop and wakes the worker; closed(c) follows once it is gone. */
void herald_nats_stop(herald_nats *c, herald_nats_closed_cb closed);

/* (worker) Connects: one attempt on its own, so that why it failed (refused, TLS,
 * authorization) is noted and kept in c->last_error, then nats.c keeps trying in the
 * background. Returns NATS_OK when connected now; c->nc is NULL only when nats.c refused for
 * good (e.g. an unreadable credentials file; noted): call it again later. */
natsStatus herald_nats_connect(herald_nats *c);
/* (worker) Closes the connection and waits (bounded) for nats.c's closed callback, the last
 * it makes. The connection is destroyed after work returns. */
void herald_nats_close(herald_nats *c);
/* (any thread but the loop) Queues a log line for the loop. */
void herald_nats_note(herald_nats *c, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* (any thread) Wakes the loop: wake(c, ...) runs there. */
void herald_nats_wake(herald_nats *c);
/* nats.c's own detail for the last failure when it has one, else the status text. */
const char *herald_nats_status_text(natsStatus s);

/* Reads Argo's NATS connection fields of the table at idx (stack unchanged): url, tls
 * {caCertSecret, clientCertSecret, clientKeySecret, insecureSkipVerify} and auth {basic
 * {username, password}, token, nkey, credential}, resolving the secrets (nkey and credential
 * as file paths: nats.c reads them). Fills cfg with new strings (free them with
 * herald_nats_config_free) and returns 0, or a negative error logged to lg. */
int herald_nats_config_from_lua(herald_nats_config *cfg, struct herald_engine *eng, herald_logger *lg,
                                lua_State *L, int idx);
/* Frees the strings of a cfg filled by herald_nats_config_from_lua. */
void herald_nats_config_free(herald_nats_config *cfg);

#endif
