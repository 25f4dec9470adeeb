/*
 * lib/kube/kube.h: the Kubernetes API client shared by the k8s and argoWorkflow triggers (and
 * any type that talks to a cluster): its one public header.
 *
 * The what (discovery, create/update/patch/delete, the Argo Workflows edits) is Lua, in
 * kube.lua, run as one coroutine per action; the how (HTTP on libcurl's multi interface driven
 * by the libuv loop, TLS and credentials) is kube.c. See kube.lua for the coroutine protocol.
 */
#ifndef HERALD_LIB_KUBE_H
#define HERALD_LIB_KUBE_H

#include "buf.h"
#include "plugin.h"

#include "curl_loop.h"

#include <curl/curl.h>
#include <lua.h>

/* Per trigger instance (lives in t->priv). */
typedef struct herald_kube_client {
  herald_trigger *trigger;
  const char *kind; /* "k8s" or "argoWorkflow": selects the flow in kube.lua */
  char *op;         /* the spec's operation (default per kind) */
  char *server;     /* https://host:port, no trailing slash */
  char *token, *token_file, *username, *password;
  char *ca_file, *cert_file, *key_file;
  herald_buf ca_data, cert_data, key_data; /* PEM bytes (kubeconfig *-data), or empty */
  char *namespace;  /* the default namespace: the context's, else "default" */
  int insecure;
  int cache_ref;    /* Lua table "apiVersion/kind" -> {plural, namespaced} (discovery cache) */
  struct herald_kube_req *probe; /* the start-up GET /version, while in flight */
  int conn_only;    /* made by herald_kube_conn_init (no trigger) */
} herald_kube_client;

/* Per action (lives in req->priv): the coroutine and its HTTP round trip in flight. */
typedef struct herald_kube_req {
  herald_trigger_req *req;
  herald_kube_client *kc;
  lua_State *co;
  int co_ref;
  herald_curl_xfer x;      /* the current request (engine/curl_loop.h); x.data = this */
  struct curl_slist *headers;
  char *body;
  herald_buf response;
  herald_trigger_result res; /* once the coroutine returned */
  char reason[512];
  struct herald_kube_req *next, *prev; /* in the in-flight list */
  uv_timer_t *sleep;  /* while the coroutine waits (yield "SLEEP", ms); freed by its close */
  struct herald_kube_git *git; /* while a source.git read runs on the thread pool (git.c) */
} herald_kube_req;

/* Reads the cluster configuration (kubeconfig or in-cluster) and the trigger spec at idx
 * (`operation`, default dflt_op). Returns 0, or a negative error after logging why. */
int herald__kube_init(herald_kube_client *kc, herald_trigger *t, lua_State *L, int idx,
                      const char *kind, const char *dflt_op);
/* Starts the action at idx ({spec, object, events}); the plugin.h execute contract. */
int herald__kube_execute(herald_kube_client *kc, herald_trigger_req *req, lua_State *L, int idx);
/* Fails this trigger's actions still in flight ("engine stopped"), releases kc. */
void herald__kube_close(herald_kube_client *kc);

/* Resumes the action's coroutine with nargs values pushed on it; finishes the action when the
 * coroutine returns (kube.c). */
void herald__kube_resume(herald_kube_req *kr, int nargs);
/* The coroutine yielded ("GIT", {...}): starts reading source.git on the thread pool; its
 * completion resumes the coroutine with (200, text) or (0, why). Returns 0 or a negative error
 * (git.c). */
int herald__kube_git_start(herald_kube_req *kr);
/* The action is being released: a read still running will not resume it (git.c). */
void herald__kube_git_abandon(herald_kube_req *kr);

/* Sets the cluster's credentials and TLS on e: a bearer token header appended to *headers (and
 * CURLOPT_HTTPHEADER set to it: the caller frees the list after the transfer), or basic auth,
 * client certificates, the CA. */
void herald__kube_auth(herald_kube_client *kc, CURL *e, struct curl_slist **headers);

/* ---- for code that is not a trigger (the resource event source) ---- */

/* Reads the cluster configuration (kubeconfig or in-cluster, as the triggers do) into kc and
 * takes a reference on the curl loop. `what` names the user in log lines. Returns 0, or a
 * negative error after logging why to lg. Release with herald_kube_conn_free. */
int herald_kube_conn_init(herald_kube_client *kc, lua_State *L, const herald_logger *lg,
                          const char *what, uv_loop_t *loop);
void herald_kube_conn_free(herald_kube_client *kc, lua_State *L);

/* ---- list + watch (watch.c): client-go's reflector, on the loop ----
 *
 *   LIST  GET path?query                       -> on_list(body): the owner's cache replaced,
 *                                                 returns the list's resourceVersion
 *   WATCH GET path?watch=true&allowWatchBookmarks=true&resourceVersion=RV&timeoutSeconds=T
 *         each JSON line                       -> on_line(line): ADDED/MODIFIED/DELETED/BOOKMARK
 *                                                 move RV on; an ERROR 410 (Expired) says re-list
 *   the watch ends (timeout, server closed)    -> WATCH again from RV (no re-list)
 *   HTTP 410 Gone                              -> LIST again
 *   transport error, other status             -> wait (connectionBackoff), then WATCH from RV,
 *                                                 or LIST when no list succeeded yet
 * The owner may pause line delivery (its queue waits for the bus) and resume it; the transfer
 * stops reading meanwhile (TCP back-pressure on the API server). */
typedef struct herald_kube_watch herald_kube_watch;
/* The owner's answer to a list body or a watch line. */
enum { HERALD_KUBE_OK = 0, HERALD_KUBE_GONE = 1, HERALD_KUBE_BAD = -1 };
struct herald_kube_watch {
  /* set by the owner before herald_kube_watch_start */
  herald_kube_client *kc;
  uv_loop_t *loop;
  herald_logger *log;
  char *path;  /* collection path, e.g. /apis/apps/v1/namespaces/ns/deployments (owned) */
  char *query; /* extra URL query without '?', e.g. labelSelector=a%3Db, or NULL (owned) */
  int timeout_s; /* a watch's timeoutSeconds (0: 5 to 10 minutes at random, as client-go) */
  /* body: the whole list answer. Sets *rv (a new string) and returns HERALD_KUBE_OK, or BAD. */
  int (*on_list)(herald_kube_watch *w, const char *body, size_t len, char **rv);
  /* one watch line. Sets *rv (a new string) when it moved the resourceVersion on; returns OK,
   * GONE (410: re-list) or BAD (the watch is dropped and started again after a backoff). */
  int (*on_line)(herald_kube_watch *w, const char *line, size_t len, char **rv);
  /* the connection state changed (up: a list or watch answered 200; down: why) */
  void (*on_state)(herald_kube_watch *w, int up, const char *why);
  void *data;
  herald_backoff backoff;
  /* watch.c's */
  char *rv;
  int phase; /* 0 idle, 1 listing, 2 watching, 3 waiting to retry */
  int paused, stopping, listed, timer_open;
  int verdict; /* what a line said when it ended the watch from inside the transfer */
  herald_curl_xfer x;
  int x_live;
  struct curl_slist *headers;
  herald_buf body;    /* the list's body, or the watch's partial line */
  long status;
  uv_timer_t timer;
  void (*stop_done)(herald_kube_watch *w);
  uint64_t lines, relists, rewatches, lines_at_watch;
};
/* Starts listing. Returns 0 or a negative error. */
int herald_kube_watch_start(herald_kube_watch *w);
/* Stops reading watch lines until herald_kube_watch_resume (which may deliver lines at once). */
void herald_kube_watch_pause(herald_kube_watch *w);
void herald_kube_watch_resume(herald_kube_watch *w);
/* Ends the transfer and the timer; done(w) runs once both are gone. path and query are freed. */
void herald_kube_watch_stop(herald_kube_watch *w, void (*done)(herald_kube_watch *w));

#endif
