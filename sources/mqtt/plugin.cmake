# The MQTT client is libmosquitto (Debian libmosquitto-dev).
pkg_check_modules(MOSQUITTO QUIET IMPORTED_TARGET libmosquitto)
if(MOSQUITTO_FOUND)
  list(APPEND PLUGIN_LIBS PkgConfig::MOSQUITTO)
else()
  set(PLUGIN_FOUND FALSE)
  set(PLUGIN_MISSING "libmosquitto (pkg-config libmosquitto)")
endif()
