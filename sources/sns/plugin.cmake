# Built on lib/aws (signing, credentials) and lib/webhookctx (the route on the webhook server).
list(APPEND PLUGIN_USES aws webhookctx)
