# lib/kube: the Kubernetes client (kube.c) and git sources (git.c) need libgit2.
pkg_check_modules(GIT2 QUIET IMPORTED_TARGET libgit2)
if(GIT2_FOUND)
  list(APPEND PLUGIN_LIBS PkgConfig::GIT2)
else()
  set(PLUGIN_FOUND FALSE)
  set(PLUGIN_MISSING "libgit2 (pkg-config libgit2)")
endif()
