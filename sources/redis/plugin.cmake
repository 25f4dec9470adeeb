# Runs on lib/redis (hiredis's reply parser and command formatter, our libuv + OpenSSL transport).
pkg_check_modules(HIREDIS QUIET IMPORTED_TARGET hiredis)
if(HIREDIS_FOUND)
  list(APPEND PLUGIN_USES redis)
else()
  set(PLUGIN_FOUND FALSE)
  set(PLUGIN_MISSING "hiredis (pkg-config hiredis; Debian libhiredis-dev)")
endif()
