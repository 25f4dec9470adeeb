/*
 * lazy_lib.c: loading a library on the first call of one of its functions (see lazy_lib.h).
 *
 * A generated stub (cmake/lazy_stubs.lua) jumps through its slot in the library's table; while
 * the slot is empty it puts its index in r11 and the library in r10 and jumps to
 * herald__lazy_enter below. That saves every register a call may pass arguments in (the six
 * integer ones, rax for a variadic call's vector count, xmm0-7), calls herald__lazy_resolve,
 * restores them and jumps to the function found, with the caller's return address still on the
 * stack: to the function it is as if the caller had called it directly.
 */
#include "lazy_lib.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static pthread_mutex_t lazy_mu = PTHREAD_MUTEX_INITIALIZER;

/* name: the symbol not found, or NULL when the library itself could not be loaded */
static void lazy_fail(const herald_lazy_lib *lib, const char *name) {
  const char *err = dlerror();
  if (name)
    fprintf(stderr, "herald: %s has no symbol %s (%s): not the version herald was built with?\n",
            lib->soname, name, err ? err : "not found");
  else
    fprintf(stderr, "herald: cannot load %s, which this feature needs: %s\n", lib->soname,
            err ? err : "not found");
  fflush(stderr);
  _exit(70); /* EX_SOFTWARE; no atexit handlers: another thread may be inside them */
}

/* with lazy_mu held */
static void lazy_load(herald_lazy_lib *lib) {
  if (lib->handle) return;
  /* RTLD_LOCAL: the library's symbols stay out of the global scope (the stubs are hidden,
   * so nothing interposes on anything) */
  lib->handle = dlopen(lib->soname, RTLD_NOW | RTLD_LOCAL);
  if (!lib->handle) lazy_fail(lib, NULL);
}

void *herald__lazy_var(herald_lazy_lib *lib, const char *name) {
  pthread_mutex_lock(&lazy_mu);
  lazy_load(lib);
  void *p = dlsym(lib->handle, name);
  if (!p) lazy_fail(lib, name);
  pthread_mutex_unlock(&lazy_mu);
  return p;
}

void *herald__lazy_resolve(herald_lazy_lib *lib, uint32_t idx) {
  pthread_mutex_lock(&lazy_mu);
  void *fn = lib->tab[idx];
  if (!fn) {
    lazy_load(lib);
    fn = dlsym(lib->handle, lib->names + lib->offs[idx]);
    if (!fn) lazy_fail(lib, lib->names + lib->offs[idx]);
    __atomic_store_n(&lib->tab[idx], fn, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&lazy_mu);
  return fn;
}

#if defined(__x86_64__) && defined(__linux__)
/* stack at entry: the caller's return address (rsp = 8 mod 16). Frame: 7 integer registers
 * (56 bytes, padded to 64) and xmm0-7 (128 bytes). */
__asm__(".text\n"
        ".globl herald__lazy_enter\n"
        ".hidden herald__lazy_enter\n"
        ".type herald__lazy_enter,@function\n"
        "herald__lazy_enter:\n"
        "  pushq %rbp\n"
        "  movq %rsp, %rbp\n"
        "  subq $192, %rsp\n"
        "  andq $-16, %rsp\n"
        "  movq %rdi, 0(%rsp)\n"
        "  movq %rsi, 8(%rsp)\n"
        "  movq %rdx, 16(%rsp)\n"
        "  movq %rcx, 24(%rsp)\n"
        "  movq %r8, 32(%rsp)\n"
        "  movq %r9, 40(%rsp)\n"
        "  movq %rax, 48(%rsp)\n"
        "  movdqa %xmm0, 64(%rsp)\n"
        "  movdqa %xmm1, 80(%rsp)\n"
        "  movdqa %xmm2, 96(%rsp)\n"
        "  movdqa %xmm3, 112(%rsp)\n"
        "  movdqa %xmm4, 128(%rsp)\n"
        "  movdqa %xmm5, 144(%rsp)\n"
        "  movdqa %xmm6, 160(%rsp)\n"
        "  movdqa %xmm7, 176(%rsp)\n"
        "  movq %r10, %rdi\n"
        "  movl %r11d, %esi\n"
        "  call herald__lazy_resolve\n"
        "  movq %rax, %r11\n"
        "  movq 0(%rsp), %rdi\n"
        "  movq 8(%rsp), %rsi\n"
        "  movq 16(%rsp), %rdx\n"
        "  movq 24(%rsp), %rcx\n"
        "  movq 32(%rsp), %r8\n"
        "  movq 40(%rsp), %r9\n"
        "  movq 48(%rsp), %rax\n"
        "  movdqa 64(%rsp), %xmm0\n"
        "  movdqa 80(%rsp), %xmm1\n"
        "  movdqa 96(%rsp), %xmm2\n"
        "  movdqa 112(%rsp), %xmm3\n"
        "  movdqa 128(%rsp), %xmm4\n"
        "  movdqa 144(%rsp), %xmm5\n"
        "  movdqa 160(%rsp), %xmm6\n"
        "  movdqa 176(%rsp), %xmm7\n"
        "  movq %rbp, %rsp\n"
        "  popq %rbp\n"
        "  jmpq *%r11\n"
        ".size herald__lazy_enter, .-herald__lazy_enter\n");
#endif
