# Built on lib/kube (the Kubernetes client and git sources), which needs libgit2.
list(APPEND PLUGIN_USES kube)
pkg_check_modules(GIT2 QUIET IMPORTED_TARGET libgit2)
if(NOT GIT2_FOUND)
  set(PLUGIN_FOUND FALSE)
  set(PLUGIN_MISSING "libgit2 (pkg-config libgit2)")
endif()
