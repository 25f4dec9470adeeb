/*
 * common.h: error codes, allocation helpers and clocks shared by every part of the engine.
 *
 * Errors are negative integers (libuv style); herald_strerror() names them. Functions that
 * take a callback and return an error never also call the callback.
 */
#ifndef HERALD_COMMON_H
#define HERALD_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

enum {
  HERALD_OK = 0,
  HERALD_ENOMEM = -1,    /* allocation failed */
  HERALD_EINVAL = -2,    /* bad argument or configuration */
  HERALD_EBUSFULL = -3,  /* the bus is at capacity: back off and retry */
  HERALD_EIO = -4,       /* I/O or peer failure */
  HERALD_ENOTFOUND = -5, /* a named thing (file, secret, route) does not exist */
  HERALD_ECLOSED = -6,   /* the handle is closing or closed */
  HERALD_ESPEC = -7,     /* a spec failed validation */
  HERALD_ETIMEDOUT = -8, /* a deadline passed */
  HERALD_ELUA = -9,      /* a Lua call raised an error */
  HERALD_EHELD = -10,    /* held by someone else (a lease) */
};

/* Returns a static string describing err. */
const char *herald_strerror(int err);

/* Allocation that aborts on failure: used only where running out of memory leaves nothing
 * sensible to do (start-up, configuration). Per-event paths use malloc and recover. */
void *herald_xmalloc(size_t n);
void *herald_xcalloc(size_t n, size_t sz);
char *herald_xstrdup(const char *s);
/* mkdir -p for the directory part of path, mode 0700; errors are left to whoever then opens
 * the file. */
void herald_mkdir_parents(const char *path);
char *herald_xstrndup(const char *s, size_t n);
/* Returns a new string formatted like printf; the caller frees it. */
char *herald_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Wall-clock time in nanoseconds since the Unix epoch. */
int64_t herald_now_ns(void);
/* Monotonic time in nanoseconds (uv_hrtime). */
uint64_t herald_mono_ns(void);

/* Formats t (ns since epoch, UTC) as RFC 3339 with nanoseconds ("2026-11-25T21:05:26.123456789Z")
 * into buf (at least 36 bytes). Returns the length written. */
size_t herald_format_rfc3339(int64_t t, char *buf, size_t len);

/* Fills out with n random bytes as 2n lowercase hex characters plus a NUL (a CloudEvent id
 * is herald_random_hex(id, 16): 32 hex characters, like Argo's dash-less UUID). */
void herald_random_hex(char *out, size_t nbytes);

/* Reads a whole file; returns a new NUL-terminated buffer the caller frees, or NULL with
 * *err set (HERALD_ENOTFOUND, HERALD_EIO). */
char *herald_read_file(const char *path, size_t *len, int *err);

/* Parses exactly n decimal digits at s into *out (fixed-width date and time fields).
 * Returns 1, or 0 when one of them is not a digit. */
int herald_digits(const char *s, int n, int *out);

/* Invariants: always fatal. HERALD_FAILS(cond) logs and returns true so the caller can drop
 * the one thing that went wrong and keep serving (Knot's kr_fails_assert). */
#define HERALD_ASSERT(cond)                                                                   \
  do {                                                                                        \
    if (!(cond)) herald__assert_fail(#cond, __FILE__, __LINE__);                              \
  } while (0)
#define HERALD_FAILS(cond) ((cond) ? 0 : (herald__soft_fail(#cond, __FILE__, __LINE__), 1))
_Noreturn void herald__assert_fail(const char *expr, const char *file, int line);
void herald__soft_fail(const char *expr, const char *file, int line);

#define HERALD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
