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

#endif
