# lib/redis: the Redis connection of the redis and redisStream sources: hiredis 0.14 parses
# replies and formats commands (OpenSSL, for TLS, is linked by the engine already).
pkg_check_modules(HIREDIS QUIET IMPORTED_TARGET hiredis)
if(HIREDIS_FOUND)
  list(APPEND PLUGIN_LIBS PkgConfig::HIREDIS)
else()
  set(PLUGIN_FOUND FALSE)
  set(PLUGIN_MISSING "hiredis (pkg-config hiredis; Debian libhiredis-dev)")
endif()
