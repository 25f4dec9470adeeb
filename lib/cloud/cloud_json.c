/*
 * lib/cloud/cloud_json.c: a JSON reader for cloud API answers (cloud.h).
 *
 * The text is tokenised once into a flat array: each token records its type, its byte span
 * and the index just past its subtree, so skipping a value is one step and looking a member
 * up walks only the keys of one object. Strings are validated (escapes, control bytes) but
 * left escaped until a caller copies one out; Google's and MinIO's answers are ASCII-escaped
 * rarely, so most copies are a plain memcpy.
 */
#include "cloud.h"

#include "common.h"

#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

typedef struct parser {
  cj_doc *d;
  const char *p, *end;
} parser;

static int push(cj_doc *d, uint8_t type, uint32_t start) {
  if (d->n == d->cap) {
    uint32_t cap = d->cap ? d->cap * 2 : 64;
    cj_tok *t = realloc(d->t, cap * sizeof *t);
    if (!t) return -1;
    d->t = t;
    d->cap = cap;
  }
  cj_tok *k = &d->t[d->n];
  k->type = type;
  k->start = start;
  k->end = start;
  k->next = d->n + 1;
  return (int)d->n++;
}

static void ws(parser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
    ps->p++;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int string(parser *ps) {
  /* at the opening quote */
  const char *s = ++ps->p;
  int i = push(ps->d, CJ_STRING, (uint32_t)(s - ps->d->s));
  if (i < 0) return -1;
  while (ps->p < ps->end) {
    unsigned char c = (unsigned char)*ps->p;
    if (c == '"') {
      ps->d->t[i].end = (uint32_t)(ps->p - ps->d->s);
      ps->p++;
      return 0;
    }
    if (c < 0x20) return -1;
    if (c == '\\') {
      if (ps->p + 1 >= ps->end) return -1;
      char e = ps->p[1];
      if (e == 'u') {
        if (ps->end - ps->p < 6) return -1;
        for (int k = 2; k < 6; k++)
          if (hexval(ps->p[k]) < 0) return -1;
        ps->p += 6;
        continue;
      }
      if (!strchr("\"\\/bfnrt", e)) return -1;
      ps->p += 2;
      continue;
    }
    ps->p++;
  }
  return -1;
}

static int value(parser *ps, int depth);

static int container(parser *ps, int depth, char close, uint8_t type) {
  if (depth > MAX_DEPTH) return -1;
  int i = push(ps->d, type, (uint32_t)(ps->p - ps->d->s));
  if (i < 0) return -1;
  ps->p++;
  ws(ps);
  if (ps->p < ps->end && *ps->p == close) {
    ps->p++;
  } else {
    for (;;) {
      ws(ps);
      if (type == CJ_OBJECT) {
        if (ps->p >= ps->end || *ps->p != '"' || string(ps) != 0) return -1;
        ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') return -1;
        ps->p++;
      }
      if (value(ps, depth + 1) != 0) return -1;
      ws(ps);
      if (ps->p >= ps->end) return -1;
      if (*ps->p == ',') {
        ps->p++;
        continue;
      }
      if (*ps->p != close) return -1;
      ps->p++;
      break;
    }
  }
  ps->d->t[i].end = (uint32_t)(ps->p - ps->d->s);
  ps->d->t[i].next = ps->d->n;
  return 0;
}

static int literal(parser *ps, const char *word, uint8_t type) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return -1;
  int i = push(ps->d, type, (uint32_t)(ps->p - ps->d->s));
  if (i < 0) return -1;
  ps->p += n;
  ps->d->t[i].end = (uint32_t)(ps->p - ps->d->s);
  return 0;
}

static int number(parser *ps) {
  const char *s = ps->p;
  if (ps->p < ps->end && *ps->p == '-') ps->p++;
  if (ps->p >= ps->end) return -1;
  if (*ps->p == '0') ps->p++;
  else if (*ps->p >= '1' && *ps->p <= '9')
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  else return -1;
  if (ps->p < ps->end && *ps->p == '.') {
    ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return -1;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
    ps->p++;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return -1;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  int i = push(ps->d, CJ_NUMBER, (uint32_t)(s - ps->d->s));
  if (i < 0) return -1;
  ps->d->t[i].end = (uint32_t)(ps->p - ps->d->s);
  return 0;
}

static int value(parser *ps, int depth) {
  ws(ps);
  if (ps->p >= ps->end) return -1;
  switch (*ps->p) {
  case '{': return container(ps, depth, '}', CJ_OBJECT);
  case '[': return container(ps, depth, ']', CJ_ARRAY);
  case '"': return string(ps);
  case 't': return literal(ps, "true", CJ_TRUE);
  case 'f': return literal(ps, "false", CJ_FALSE);
  case 'n': return literal(ps, "null", CJ_NULL);
  default: return number(ps);
  }
}

int cj_parse(cj_doc *d, const char *text, size_t len) {
  d->s = text;
  d->n = 0;
  if (len > UINT32_MAX - 1) return -1;
  parser ps = {d, text, text + len};
  if (value(&ps, 0) != 0) return -1;
  ws(&ps);
  return ps.p == ps.end ? 0 : -1;
}

void cj_free(cj_doc *d) {
  free(d->t);
  d->t = NULL;
  d->n = d->cap = 0;
}

int cj_first(const cj_doc *d, int i) {
  if (i < 0 || (uint32_t)i >= d->n) return -1;
  const cj_tok *t = &d->t[i];
  if ((t->type != CJ_OBJECT && t->type != CJ_ARRAY) || t->next == (uint32_t)i + 1) return -1;
  return i + 1;
}

int cj_next(const cj_doc *d, int container, int e) {
  const cj_tok *c = &d->t[container];
  uint32_t n = d->t[e].next;
  if (c->type == CJ_OBJECT) n = d->t[n].next; /* past the value too */
  return n < c->next ? (int)n : -1;
}

static int key_eq(const cj_doc *d, int i, const char *key, size_t kl) {
  const cj_tok *t = &d->t[i];
  if (t->end - t->start == kl && memcmp(d->s + t->start, key, kl) == 0) return 1;
  if (!memchr(d->s + t->start, '\\', t->end - t->start)) return 0;
  herald_buf b = HERALD_BUF_INIT;
  cj_append(d, i, &b);
  int eq = b.len == kl && memcmp(b.data, key, kl) == 0;
  herald_buf_free(&b);
  return eq;
}

int cj_get(const cj_doc *d, int obj, const char *key) {
  if (obj < 0 || (uint32_t)obj >= d->n || d->t[obj].type != CJ_OBJECT) return -1;
  size_t kl = strlen(key);
  for (int k = cj_first(d, obj); k >= 0; k = cj_next(d, obj, k))
    if (key_eq(d, k, key, kl)) return k + 1;
  return -1;
}

static void put_utf8(herald_buf *b, uint32_t cp) {
  char u[4];
  if (cp < 0x80) {
    herald_buf_putc(b, (char)cp);
  } else if (cp < 0x800) {
    u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 63));
    herald_buf_append(b, u, 2);
  } else if (cp < 0x10000) {
    u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 63)), u[2] = (char)(0x80 | (cp & 63));
    herald_buf_append(b, u, 3);
  } else {
    u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 63));
    u[2] = (char)(0x80 | ((cp >> 6) & 63)), u[3] = (char)(0x80 | (cp & 63));
    herald_buf_append(b, u, 4);
  }
}

static uint32_t hex4(const char *p) {
  return (uint32_t)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

int cj_append(const cj_doc *d, int i, herald_buf *b) {
  if (i < 0 || (uint32_t)i >= d->n) return -1;
  const cj_tok *t = &d->t[i];
  const char *p = d->s + t->start, *end = d->s + t->end;
  if (t->type != CJ_STRING) {
    herald_buf_append(b, p, (size_t)(end - p));
    return 0;
  }
  while (p < end) {
    const char *q = memchr(p, '\\', (size_t)(end - p));
    if (!q) q = end;
    herald_buf_append(b, p, (size_t)(q - p));
    if (q == end) break;
    char e = q[1];
    p = q + 2;
    switch (e) {
    case 'b': herald_buf_putc(b, '\b'); break;
    case 'f': herald_buf_putc(b, '\f'); break;
    case 'n': herald_buf_putc(b, '\n'); break;
    case 'r': herald_buf_putc(b, '\r'); break;
    case 't': herald_buf_putc(b, '\t'); break;
    case 'u': {
      uint32_t cp = hex4(p);
      p += 4;
      if (cp >= 0xD800 && cp < 0xDC00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
        uint32_t lo = hex4(p + 2);
        if (lo >= 0xDC00 && lo < 0xE000) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          p += 6;
        }
      }
      if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD; /* a lone surrogate */
      put_utf8(b, cp);
      break;
    }
    default: herald_buf_putc(b, e); break; /* " \ / */
    }
  }
  return 0;
}

char *cj_strdup(const cj_doc *d, int i) {
  if (i < 0 || (uint32_t)i >= d->n || d->t[i].type != CJ_STRING) return NULL;
  herald_buf b = HERALD_BUF_INIT;
  cj_append(d, i, &b);
  char *s = herald_xstrdup(herald_buf_cstr(&b));
  herald_buf_free(&b);
  return s;
}

int cj_streq(const cj_doc *d, int i, const char *s) {
  if (i < 0 || (uint32_t)i >= d->n || d->t[i].type != CJ_STRING) return 0;
  return key_eq(d, i, s, strlen(s));
}

double cj_number(const cj_doc *d, int i, double dflt) {
  if (i < 0 || (uint32_t)i >= d->n) return dflt;
  const cj_tok *t = &d->t[i];
  if (t->type != CJ_NUMBER && t->type != CJ_STRING) return dflt;
  char tmp[64];
  size_t n = t->end - t->start;
  if (n == 0 || n >= sizeof tmp) return dflt;
  memcpy(tmp, d->s + t->start, n);
  tmp[n] = 0;
  char *e;
  double v = strtod(tmp, &e);
  return *e ? dflt : v;
}
