# The AMQP client is librabbitmq (rabbitmq-c, Debian librabbitmq-dev).
pkg_check_modules(RABBITMQ QUIET IMPORTED_TARGET librabbitmq)
if(RABBITMQ_FOUND)
  list(APPEND PLUGIN_LIBS PkgConfig::RABBITMQ)
else()
  set(PLUGIN_FOUND FALSE)
  set(PLUGIN_MISSING "librabbitmq (pkg-config librabbitmq)")
endif()
