# The resource source lists and watches through lib/kube (the Kubernetes client of the k8s
# trigger), which needs libgit2 for the triggers' git sources.
list(APPEND PLUGIN_USES kube)
pkg_check_modules(GIT2 QUIET IMPORTED_TARGET libgit2)
if(NOT GIT2_FOUND)
  set(PLUGIN_FOUND FALSE)
  set(PLUGIN_MISSING "libgit2 (pkg-config libgit2)")
endif()
