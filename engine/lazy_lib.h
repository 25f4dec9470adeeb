/*
 * lazy_lib.h: libraries loaded on first call instead of at exec.
 *
 * Why: herald links libcurl, libnats, librdkafka, libgit2, libjq and OpenSSL, and libcurl alone
 * pulls ~30 more shared objects (gnutls, krb5, ldap ...). Mapping, relocating and running the
 * constructors of those 50-odd objects was ~75% of `herald version` (bench/RESULTS.md,
 * "Start-up and idle cost"), paid by every command, although most runs never call them. With
 * HERALD_LAZY_LIBS (cmake/lazy_libs.cmake, the default on x86-64 Linux) such a library is not
 * linked: a generated stub stands for each function it exports (cmake/lazy_stubs.lua). The
 * first call of any stub of a library dlopen()s it; each stub then looks up its own function
 * once and jumps to it from then on (one indirect jump, the cost of a PLT call). Callers are
 * unchanged: they include the library's header and call its functions as before.
 */
#ifndef HERALD_LAZY_LIB_H
#define HERALD_LAZY_LIB_H

#include <stdint.h>

/* One lazily loaded library, as the generated file describes it. */
typedef struct herald_lazy_lib {
  const char *soname;   /* "libcurl.so.4": what dlopen() is given */
  const char *names;    /* the exported function names, NUL-separated */
  const uint32_t *offs; /* offs[i]: where name i starts in names */
  void **tab;           /* tab[i]: the function, once resolved (stubs jump through it) */
  uint32_t n;
  void *handle;         /* the dlopen() handle, once loaded */
} herald_lazy_lib;

/* Called by the stubs (through herald__lazy_enter, which saves the argument registers): loads
 * lib when needed, resolves function idx, stores it in lib->tab[idx] and returns it. A library
 * or function that cannot be found ends the process with a message naming it (the installation
 * is broken: the build found the library). Thread-safe. */
void *herald__lazy_resolve(herald_lazy_lib *lib, uint32_t idx);

/* The address of variable name in lib, loading lib when needed (a stub can stand only for a
 * function). lazy_libs.cmake defines HERALD_LAZY_<ID> (e.g. HERALD_LAZY_EDIT) for each lazy
 * library, and the descriptor is herald__lazy_lib_<id>; a caller that uses a library's
 * variables reaches them through this under that define (engine/repl.c does for libedit).
 * Ends the process like herald__lazy_resolve when the library or variable is missing. */
void *herald__lazy_var(herald_lazy_lib *lib, const char *name);

#endif
