/*
 * buf.h: a growable byte buffer, and JSON string escaping into one.
 */
#ifndef HERALD_BUF_H
#define HERALD_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct herald_buf {
  char *data; /* NUL-terminated when len > 0 or after herald_buf_cstr() */
  size_t len;
  size_t cap;
} herald_buf;

#define HERALD_BUF_INIT {NULL, 0, 0}

/* All appenders abort on out-of-memory (buffers are small and bounded by their callers). */
void herald_buf_append(herald_buf *b, const void *p, size_t n);
void herald_buf_puts(herald_buf *b, const char *s);
void herald_buf_putc(herald_buf *b, char c);
void herald_buf_printf(herald_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void herald_buf_vprintf(herald_buf *b, const char *fmt, va_list ap);
/* Appends s as the inside of a JSON string (no quotes): escapes ", \ and control bytes;
 * invalid UTF-8 bytes become U+FFFD so the output is always valid JSON. */
void herald_buf_json_escape(herald_buf *b, const char *s, size_t n);
/* Appends "s" (quoted, escaped). */
void herald_buf_json_string(herald_buf *b, const char *s, size_t n);
const char *herald_buf_cstr(herald_buf *b);
/* Length (1..4) of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs, surrogates or
 * code points above U+10FFFF), or 0 if the bytes there are not one. */
size_t herald_utf8_seq_len(const unsigned char *s, size_t n);
void herald_buf_reset(herald_buf *b);
/* Releases the storage. */
void herald_buf_free(herald_buf *b);

#endif
