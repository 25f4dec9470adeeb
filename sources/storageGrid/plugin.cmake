list(APPEND PLUGIN_USES webhookctx)
