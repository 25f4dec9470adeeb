/*
 * buf.c: growable buffers and JSON escaping.
 */
#include "buf.h"
#include "common.h"

#include <stdio.h>
#include <string.h>

static void reserve(herald_buf *b, size_t extra) {
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need) cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p) {
    fputs("herald: out of memory\n", stderr);
    abort();
  }
  b->data = p;
  b->cap = cap;
}

void herald_buf_append(herald_buf *b, const void *p, size_t n) {
  reserve(b, n);
  if (n) memcpy(b->data + b->len, p, n); /* p may be NULL when n is 0 */
  b->len += n;
  b->data[b->len] = '\0';
}

void herald_buf_puts(herald_buf *b, const char *s) {
  herald_buf_append(b, s, strlen(s));
}

void herald_buf_putc(herald_buf *b, char c) {
  reserve(b, 1);
  b->data[b->len++] = c;
  b->data[b->len] = '\0';
}

void herald_buf_vprintf(herald_buf *b, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n <= 0) return;
  reserve(b, (size_t)n);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  b->len += (size_t)n;
}

void herald_buf_printf(herald_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  herald_buf_vprintf(b, fmt, ap);
  va_end(ap);
}

size_t herald_utf8_seq_len(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t len;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c >= 0xE0 && c <= 0xEF) len = 3;
  else if (c >= 0xF0 && c <= 0xF4) len = 4;
  else return 0;
  if (len > n) return 0;
  for (size_t i = 1; i < len; i++)
    if ((s[i] & 0xC0) != 0x80) return 0;
  if (len == 3 && c == 0xE0 && s[1] < 0xA0) return 0;  /* overlong */
  if (len == 3 && c == 0xED && s[1] >= 0xA0) return 0; /* surrogate */
  if (len == 4 && c == 0xF0 && s[1] < 0x90) return 0;  /* overlong */
  if (len == 4 && c == 0xF4 && s[1] >= 0x90) return 0; /* > U+10FFFF */
  return len;
}

void herald_buf_json_escape(herald_buf *b, const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, run = 0;
  reserve(b, n + 2);
  while (i < n) {
    unsigned char c = p[i];
    if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
      i++;
      run++;
      continue;
    }
    if (run) herald_buf_append(b, p + i - run, run);
    run = 0;
    if (c >= 0x80) {
      size_t l = herald_utf8_seq_len(p + i, n - i);
      if (l) herald_buf_append(b, p + i, l), i += l;
      else herald_buf_puts(b, "\\ufffd"), i++;
      continue;
    }
    switch (c) {
    case '"': herald_buf_puts(b, "\\\""); break;
    case '\\': herald_buf_puts(b, "\\\\"); break;
    case '\n': herald_buf_puts(b, "\\n"); break;
    case '\r': herald_buf_puts(b, "\\r"); break;
    case '\t': herald_buf_puts(b, "\\t"); break;
    default: herald_buf_printf(b, "\\u%04x", c); break;
    }
    i++;
  }
  if (run) herald_buf_append(b, p + i - run, run);
}

void herald_buf_json_string(herald_buf *b, const char *s, size_t n) {
  herald_buf_putc(b, '"');
  herald_buf_json_escape(b, s, n);
  herald_buf_putc(b, '"');
}

const char *herald_buf_cstr(herald_buf *b) {
  reserve(b, 0);
  b->data[b->len] = '\0';
  return b->data;
}

void herald_buf_reset(herald_buf *b) {
  b->len = 0;
  if (b->data) b->data[0] = '\0';
}

void herald_buf_free(herald_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}
