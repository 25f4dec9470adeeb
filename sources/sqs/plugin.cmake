# Built on lib/aws (endpoints, SigV4 signing, the credential chain); libcurl is the engine's.
list(APPEND PLUGIN_USES aws)
