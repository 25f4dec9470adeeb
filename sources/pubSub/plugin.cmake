# pubSub: lib/cloud (JSON reader, RS256 JWTs, requests on the curl loop)
list(APPEND PLUGIN_USES cloud)
