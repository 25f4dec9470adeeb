# minio: lib/cloud (the streaming request on the curl loop, the JSON reader); SigV4 is the
# engine's own (engine/sigv4.c)
list(APPEND PLUGIN_USES cloud)
