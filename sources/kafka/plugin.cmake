# The Kafka consumer is librdkafka (the same library as the kafka trigger).
pkg_check_modules(RDKAFKA QUIET IMPORTED_TARGET rdkafka)
if(RDKAFKA_FOUND)
  list(APPEND PLUGIN_LIBS PkgConfig::RDKAFKA)
else()
  set(PLUGIN_FOUND FALSE)
  set(PLUGIN_MISSING "librdkafka (pkg-config rdkafka)")
endif()
