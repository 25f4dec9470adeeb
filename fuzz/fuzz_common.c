/*
 * fuzz_common.c: linked into every fuzz target. The targets are linked with
 * -Wl,--wrap=herald__soft_fail, so a HERALD_FAILS internal check that fails (normally logged,
 * the caller recovers) aborts instead: libFuzzer records the input as a finding.
 */
#include <stdio.h>
#include <stdlib.h>

void __wrap_herald__soft_fail(const char *expr, const char *file, int line);
void __wrap_herald__soft_fail(const char *expr, const char *file, int line) {
  fprintf(stderr, "fuzz: internal check failed: %s (%s:%d)\n", expr, file, line);
  abort();
}
