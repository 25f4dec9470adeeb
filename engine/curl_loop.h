/*
 * curl_loop.h: libcurl's multi interface driven by the libuv loop, shared by every trigger that
 * speaks a curl protocol (http, awsLambda, slack, email).
 *
 *   trigger execute -> herald_curl_xfer_init (easy handle from a pool) -> set options ->
 *   herald_curl_xfer_start -> one CURLM for the process -> uv_poll per socket + one uv_timer ->
 *   transfer finished -> xfer->done(xfer, rc) on the loop -> trigger reads CURLINFO_*, calls
 *   herald_curl_xfer_release (handle back to the pool) and req->done.
 *
 * One multi handle per process, so keep-alive connections are reused across firings and
 * triggers (libcurl's connection cache). Users take a reference in init and drop it in close;
 * the multi is created with the first reference and freed after the last.
 */
#ifndef HERALD_CURL_LOOP_H
#define HERALD_CURL_LOOP_H

#include <curl/curl.h>
#include <uv.h>

typedef struct herald_curl_xfer herald_curl_xfer;

/* Called once when the transfer finished (rc = CURLE_OK or the transport error). The easy
 * handle is already out of the multi; the callee reads what it needs and releases x. */
typedef void (*herald_curl_done_cb)(herald_curl_xfer *x, CURLcode rc);

/* Caller-owned (embed it in the request state); must not move while started. */
struct herald_curl_xfer {
  CURL *easy;               /* valid between init and release */
  herald_curl_done_cb done; /* set by start */
  void *data;               /* the user's */
  char errbuf[CURL_ERROR_SIZE];
  int active;               /* in the multi */
  /* curl_loop's: the origin (scheme://authority of the URL) and its lane while started */
  char origin[128];
  struct herald_curl_lane *lane;
  herald_curl_xfer *qprev, *qnext; /* waiting in the lane for a connection */
};

/* Takes a reference on the process-wide multi, creating it on loop with the first one.
 * Returns 0 or HERALD_ENOMEM. */
int herald_curl_loop_ref(uv_loop_t *loop);
/* Drops a reference; the last one closes the timer and frees the multi and the pool. Transfers
 * must have been released first. */
void herald_curl_loop_unref(void);

/* Gives x a reset easy handle (pooled) with CURLOPT_PRIVATE, CURLOPT_ERRORBUFFER and
 * CURLOPT_NOSIGNAL set. Returns 0 or HERALD_ENOMEM. */
int herald_curl_xfer_init(herald_curl_xfer *x);
/* Sets the transfer's URL (CURLOPT_URL) and notes its origin: use it instead of setting
 * CURLOPT_URL directly. */
void herald_curl_xfer_url(herald_curl_xfer *x, const char *url);
/* Starts x: into the multi when its origin has fewer than HERALD_CURL_PER_ORIGIN transfers
 * there, else it waits its turn in the origin's queue (so libcurl never holds transfers waiting
 * for a connection, which costs it a connection-cache scan each: bench/RESULTS.md). done(x, rc)
 * runs later on the loop. Returns 0, or HERALD_EIO without calling done (x stays initialised:
 * release it). */
#define HERALD_CURL_PER_ORIGIN 64
int herald_curl_xfer_start(herald_curl_xfer *x, herald_curl_done_cb done);
/* Removes x from the multi or its queue if it is still there (no callback) and returns its
 * handle to the pool. Safe to call from done and on an x that was never initialised (easy NULL). */
void herald_curl_xfer_release(herald_curl_xfer *x);

/* A CURLOPT_WRITEFUNCTION keeping the first HERALD_CURL_KEEP bytes of a response in the
 * herald_buf given as CURLOPT_WRITEDATA (enough for a status message or a small JSON answer)
 * and dropping the rest. */
#define HERALD_CURL_KEEP 8192
size_t herald_curl_keep_head(char *ptr, size_t size, size_t n, void *buf);

#endif
