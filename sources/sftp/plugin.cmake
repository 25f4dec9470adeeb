# The sftp source speaks SSH and SFTP with libssh (blocking, on its own thread).
pkg_check_modules(LIBSSH QUIET IMPORTED_TARGET libssh)
if(LIBSSH_FOUND)
  list(APPEND PLUGIN_LIBS PkgConfig::LIBSSH)
else()
  set(PLUGIN_FOUND FALSE)
  set(PLUGIN_MISSING "libssh (pkg-config libssh)")
endif()
