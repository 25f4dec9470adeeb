# The NATS client is libnats (cnats), shared with the engine (JetStream bus) and the nats trigger.
pkg_check_modules(NATS QUIET IMPORTED_TARGET libnats)
if(NATS_FOUND)
  list(APPEND PLUGIN_LIBS PkgConfig::NATS)
else()
  set(PLUGIN_FOUND FALSE)
  set(PLUGIN_MISSING "libnats (pkg-config libnats)")
endif()
