/*
 * common.c: error strings, allocation helpers, clocks, ids and file reading.
 */
#include "common.h"
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

const char *herald_strerror(int err) {
  switch (err) {
  case HERALD_OK: return "ok";
  case HERALD_ENOMEM: return "out of memory";
  case HERALD_EINVAL: return "invalid argument";
  case HERALD_EBUSFULL: return "event bus is full";
  case HERALD_EIO: return "i/o error";
  case HERALD_ENOTFOUND: return "not found";
  case HERALD_ECLOSED: return "closed";
  case HERALD_ESPEC: return "invalid spec";
  case HERALD_ETIMEDOUT: return "timed out";
  case HERALD_ELUA: return "lua error";
  case HERALD_EHELD: return "held by another process";
  default: return "unknown error";
  }
}

static _Noreturn void oom(void) {
  fputs("herald: out of memory\n", stderr);
  abort();
}

void *herald_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) oom();
  return p;
}

void *herald_xcalloc(size_t n, size_t sz) {
  void *p = calloc(n ? n : 1, sz ? sz : 1);
  if (!p) oom();
  return p;
}

char *herald_xstrdup(const char *s) {
  return herald_xstrndup(s, strlen(s));
}

char *herald_xstrndup(const char *s, size_t n) {
  char *p = herald_xmalloc(n + 1);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

char *herald_xasprintf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = herald_xmalloc((size_t)(n < 0 ? 0 : n) + 1);
  va_start(ap, fmt);
  vsnprintf(p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return p;
}

int64_t herald_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint64_t herald_mono_ns(void) {
  return uv_hrtime();
}

/* Called for every event and log line: the date part is cached per second and the digits are
 * written by hand (snprintf showed up in profiles at 50k events/s). */
size_t herald_format_rfc3339(int64_t t, char *buf, size_t len) {
  static time_t cached_secs = -1;
  static char cached[64]; /* "2026-11-25T21:05:26." */
  time_t secs = (time_t)(t / 1000000000);
  long nanos = (long)(t % 1000000000);
  if (nanos < 0) {
    nanos += 1000000000;
    secs -= 1;
  }
  if (len < 31) {
    if (len) buf[0] = '\0';
    return 0;
  }
  if (secs != cached_secs) {
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    cached_secs = secs;
  }
  memcpy(buf, cached, 20);
  for (int i = 28; i >= 20; i--) {
    buf[i] = (char)('0' + nanos % 10);
    nanos /= 10;
  }
  buf[29] = 'Z';
  buf[30] = '\0';
  return 30;
}

/* A per-process buffer of random bytes refilled from getrandom(): ids are minted at tens of
 * thousands per second, so one syscall per 4 KiB keeps this off the profile. */
void herald_random_hex(char *out, size_t nbytes) {
  static unsigned char pool[4096];
  static size_t avail;
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < nbytes; i++) {
    if (avail == 0) {
      size_t got = 0;
      while (got < sizeof pool) {
        ssize_t r = getrandom(pool + got, sizeof pool - got, 0);
        if (r < 0) {
          if (errno == EINTR) continue;
          herald__assert_fail("getrandom", __FILE__, __LINE__);
        }
        got += (size_t)r;
      }
      avail = sizeof pool;
    }
    unsigned char b = pool[--avail];
    out[2 * i] = hex[b >> 4];
    out[2 * i + 1] = hex[b & 15];
  }
  out[2 * nbytes] = '\0';
}

char *herald_read_file(const char *path, size_t *len, int *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *err = errno == ENOENT ? HERALD_ENOTFOUND : HERALD_EIO;
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    *err = HERALD_EIO;
    return NULL;
  }
  size_t cap = (size_t)st.st_size + 1, n = 0;
  char *buf = malloc(cap);
  if (!buf) {
    close(fd);
    *err = HERALD_ENOMEM;
    return NULL;
  }
  for (;;) {
    if (n + 1 >= cap) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        close(fd);
        *err = HERALD_ENOMEM;
        return NULL;
      }
      buf = nb;
      cap *= 2;
    }
    ssize_t r = read(fd, buf + n, cap - n - 1);
    if (r < 0) {
      if (errno == EINTR) continue;
      free(buf);
      close(fd);
      *err = HERALD_EIO;
      return NULL;
    }
    if (r == 0) break;
    n += (size_t)r;
  }
  close(fd);
  buf[n] = '\0';
  if (len) *len = n;
  *err = HERALD_OK;
  return buf;
}

_Noreturn void herald__assert_fail(const char *expr, const char *file, int line) {
  fprintf(stderr, "herald: assertion failed: %s (%s:%d)\n", expr, file, line);
  abort();
}

void herald__soft_fail(const char *expr, const char *file, int line) {
  herald_log(NULL, HLOG_ERROR, "internal check failed: %s (%s:%d)", expr, file, line);
}

int herald_digits(const char *s, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return 1;
}

void herald_mkdir_parents(const char *path) {
  char *p = herald_xstrdup(path);
  for (char *s = p + 1; *s; s++) {
    if (*s != '/') continue;
    *s = '\0';
    mkdir(p, 0700);
    *s = '/';
  }
  free(p);
}
