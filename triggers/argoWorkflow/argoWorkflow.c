/*
 * triggers/argoWorkflow: the Argo Workflows trigger. Argo Events shells out to the `argo` CLI;
 * Herald makes the same changes through the Kubernetes API (no CLI needed):
 *
 *   submit       create the Workflow (with the events.argoproj.io labels)
 *   submit-from  create a Workflow from a WorkflowTemplate / ClusterWorkflowTemplate
 *                (spec.workflowTemplateRef) or a CronWorkflow (its spec.workflowSpec)
 *   suspend      spec.suspend = true
 *   resume       spec.suspend cleared, running suspend nodes marked Succeeded
 *   terminate    spec.shutdown = "Terminate"        stop   spec.shutdown = "Stop"
 *   retry        a Failed/Error workflow back to Running without its failed nodes
 *   resubmit     a new Workflow with the old one's spec
 *
 * The flow is Lua (scripts/stdlib/herald/kube.lua); the client is shared with the k8s trigger.
 */
#include "kube/kube.h"

/* `args` (extra argo CLI arguments) mean nothing without the CLI: the schema rejects them. */
static int argo_init(herald_trigger *t, lua_State *L, int idx) {
  return herald__kube_init(t->priv, t, L, idx, "argoWorkflow", "submit");
}

static int argo_execute(herald_trigger *t, herald_trigger_req *req, lua_State *L, int idx) {
  return herald__kube_execute(t->priv, req, L, idx);
}

static void argo_close(herald_trigger *t, herald_trigger_close_cb done) {
  herald__kube_close(t->priv);
  done(t);
}

const herald_trigger_type herald_trigger_argoWorkflow = {
    .name = "argoWorkflow",
    .priv_size = sizeof(herald_kube_client),
    .req_size = sizeof(herald_kube_req),
    .init = argo_init,
    .execute = argo_execute,
    .close = argo_close,
};
