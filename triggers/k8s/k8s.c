/*
 * triggers/k8s: the Kubernetes trigger (Argo's standard-k8s): create, update, patch or delete
 * the object the sensor built (action.object, from spec.source with the trigger's parameters
 * applied) through the API server's REST API.
 *
 *   create: POST, with the labels events.argoproj.io/{sensor,trigger,action-timestamp}
 *   update: GET, merge the object over the live one (mergo WithOverride), PUT; create if missing
 *   patch:  PATCH with spec.patchStrategy (merge-patch by default); create if missing
 *   delete: DELETE; a missing object is fine
 *
 * The resource (plural, namespaced or not) comes from the server's discovery, cached per
 * trigger. The flow is Lua (kube.lua); the HTTP and credentials are kube.c.
 */
#include "kube/kube.h"

static int k8s_init(herald_trigger *t, lua_State *L, int idx) {
  return herald__kube_init(t->priv, t, L, idx, "k8s", "create");
}

static int k8s_execute(herald_trigger *t, herald_trigger_req *req, lua_State *L, int idx) {
  return herald__kube_execute(t->priv, req, L, idx);
}

static void k8s_close(herald_trigger *t, herald_trigger_close_cb done) {
  herald__kube_close(t->priv);
  done(t);
}

const herald_trigger_type herald_trigger_k8s = {
    .name = "k8s",
    .priv_size = sizeof(herald_kube_client),
    .req_size = sizeof(herald_kube_req),
    .init = k8s_init,
    .execute = k8s_execute,
    .close = k8s_close,
};
