/*
 * lib/redis/redis_conn.h: one Redis connection on the loop, for the redis and redisStream
 * event sources.
 *
 * hiredis parses the replies (redisReader) and formats the commands (redisFormatCommandArgv);
 * the transport is ours: uv_getaddrinfo, uv_tcp and, with `tls`, OpenSSL over memory BIOs. Why
 * not hiredis's async context and its libuv adapter? Debian 12 ships hiredis 0.14.1, which has
 * no TLS (hiredis_ssl came with 1.0) and resolves host names with a blocking getaddrinfo.
 *
 *   start --> resolve --> connect --> [TLS handshake] --> [AUTH] --> [SELECT db] --> on_ready
 *        any failure, or the connection dropped later:
 *          pending commands' callbacks get NULL, on_down(reason), herald_source_set_connected(0),
 *          and a new attempt after the source's connectionBackoff (for ever)
 *
 * Replies go, in order, to the callbacks of the commands sent (herald_redis_command); a reply
 * no command waits for (a pub/sub message) goes to on_push. Everything runs on the loop.
 */
#ifndef HERALD_REDIS_CONN_H
#define HERALD_REDIS_CONN_H

#include "plugin.h"

#include <hiredis.h>
#include <openssl/ssl.h>
#include <uv.h>

typedef struct herald_redis herald_redis;
struct redis_link;

/* The reply to one command; takes ownership of reply (free it with freeReplyObject). reply is
 * NULL when the connection dropped before the answer came. */
typedef void (*herald_redis_reply_cb)(herald_redis *r, redisReply *reply, void *data);

struct herald_redis {
  /* set by the owner before herald_redis_start */
  herald_source *src;                        /* logs, connection gauge, engine */
  void *data;
  void (*on_ready)(herald_redis *r);         /* connected, authenticated, db selected */
  void (*on_down)(herald_redis *r, const char *reason); /* the connection is gone */
  void (*on_push)(herald_redis *r, redisReply *reply);  /* takes ownership of reply */

  /* the library's */
  char *host, *port, *username, *password;
  int db;
  SSL_CTX *ssl_ctx; /* NULL: plain TCP */
  int tls_verify;   /* check the server's certificate and name */
  herald_backoff backoff;
  uv_timer_t retry;
  struct redis_link *link;
  int ready, paused, closing, timer_closed, started, links_alive;
  void (*close_cb)(herald_redis *r);
};

/* Reads hostAddress, username, password (secret), db, tls of the config at cfg_idx into r
 * (stack unchanged). Returns 0, or a negative error after logging what is wrong. */
int herald_redis_init(herald_redis *r, herald_source *src, lua_State *L, int cfg_idx);
/* Starts connecting (and reconnecting for ever). */
int herald_redis_start(herald_redis *r);
/* Sends a command (argv strings of argvlen bytes); cb (may be NULL) gets its reply. Returns 0,
 * or HERALD_ECLOSED when not connected (cb is not called). */
int herald_redis_command(herald_redis *r, int argc, const char **argv, const size_t *argvlen,
                         herald_redis_reply_cb cb, void *data);
/* Sends a command whose replies nobody waits for: they go to on_push (SUBSCRIBE's
 * confirmations and then the messages). Returns 0 or HERALD_ECLOSED. */
int herald_redis_subscribe(herald_redis *r, int argc, const char **argv, const size_t *argvlen);
/* Drops the connection with reason (logged) and reconnects after the backoff. */
void herald_redis_fail(herald_redis *r, const char *reason);
/* Stops reading from the server and handing out replies (the bus is full); resume goes on
 * with the replies already read, then reads again. */
void herald_redis_pause(herald_redis *r);
void herald_redis_resume(herald_redis *r);
/* Closes everything; cb(r) once every handle is closed. Callbacks of pending commands get NULL;
 * on_down is not called. */
void herald_redis_close(herald_redis *r, void (*cb)(herald_redis *r));

/* The `metadata` map of the config at cfg_idx as Go's encoding/json writes a map[string]string
 * (keys sorted), as a new string; NULL when absent or empty (omitempty). */
char *herald_redis_metadata_json(lua_State *L, int cfg_idx);

#endif
