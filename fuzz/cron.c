/*
 * cron.c: libFuzzer target for engine/cron.c: calendar schedules (robfig/cron v3 syntax with
 * CRON_TZ= prefixes and descriptors) and Go durations. The first input byte picks the parser
 * flags and the default zone; the rest is the text. A schedule that parses must give
 * activations that move the right way: next(t) > t, prev(t) <= t, and the latest activation
 * at or before next(t) is next(t) itself.
 */
#include "common.h"
#include "cron.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  unsigned sel = data[0];
  char *s = malloc(size); /* the text, NUL-terminated (it stops at an embedded NUL) */
  memcpy(s, data + 1, size - 1);
  s[size - 1] = '\0';

  int64_t ns;
  char err[256];
  if (herald_parse_duration_msg(s, &ns, err, sizeof err) != 0 && !err[0]) {
    fprintf(stderr, "duration refused without a message: %s\n", s);
    abort();
  }

  static const char *const zones[] = {NULL, "UTC", "America/New_York", "Australia/Lord_Howe"};
  const char *tz = zones[(sel >> 1) & 3];
  herald_cron *c = NULL;
  err[0] = '\0';
  if (herald_cron_parse(s, tz, (sel & 1) ? HERALD_CRON_DESCRIPTORS : 0, &c, err, sizeof err) != 0) {
    if (!err[0]) {
      fprintf(stderr, "cron refused without a message: %s\n", s);
      abort();
    }
    free(s);
    return 0;
  }
  /* A few instants, some near DST changes in the zones above. */
  static const int64_t at_s[] = {0, 1710054000, 1730613600, 1743901200, 4102444800LL};
  for (size_t i = 0; i < sizeof at_s / sizeof at_s[0]; i++) {
    int64_t t = at_s[i] * 1000000000LL + 123;
    int64_t n = herald_cron_next(c, t);
    if (n != 0 && n <= t) {
      fprintf(stderr, "next(%lld) = %lld is not later: %s\n", (long long)t, (long long)n, s);
      abort();
    }
    int64_t p = herald_cron_prev(c, t);
    if (p > t) {
      fprintf(stderr, "prev(%lld) = %lld is later: %s\n", (long long)t, (long long)p, s);
      abort();
    }
    if (n != 0 && !herald_cron_is_every(c, NULL)) {
      int64_t pn = herald_cron_prev(c, n);
      if (pn != n) {
        fprintf(stderr, "prev(next(%lld) = %lld) = %lld: %s\n", (long long)t, (long long)n,
                (long long)pn, s);
        abort();
      }
    }
    char buf[64];
    if (n) herald_time_format_go(n, herald_cron_zone(c), buf, sizeof buf);
  }
  herald_cron_free(c);
  free(s);
  return 0;
}
