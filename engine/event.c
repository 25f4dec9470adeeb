/*
 * event.c: CloudEvent construction, reference counting, JSON encoding, and the JSON validator
 * sources use to decide whether a body is JSON (kept as is) or not (wrapped as a string).
 */
#include "event.h"
#include "buf.h"
#include "common.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <string.h>

static void (*release_hook)(herald_event *ev);

void herald_event_set_release_hook(void (*hook)(herald_event *ev)) {
  release_hook = hook;
}

herald_event *herald_event_new_full(const char *id, const char *time, const char *source,
                                    const char *subject, const char *type,
                                    const char *datacontenttype, const char *data,
                                    size_t data_len) {
  size_t ls = strlen(source) + 1, lsub = strlen(subject) + 1, lt = strlen(type) + 1;
  size_t lct = strlen(datacontenttype) + 1;
  herald_event *ev = malloc(sizeof *ev + ls + lsub + lt + lct + data_len + 1);
  if (!ev) return NULL;
  char *p = (char *)(ev + 1);
  ev->refs = 1;
  ev->lua_ref = LUA_NOREF;
  ev->received_mono_ns = herald_mono_ns();
  ev->specversion = "1.0";
  memcpy(p, source, ls), ev->source = p, p += ls;
  memcpy(p, subject, lsub), ev->subject = p, p += lsub;
  memcpy(p, type, lt), ev->type = p, p += lt;
  memcpy(p, datacontenttype, lct), ev->datacontenttype = p, p += lct;
  memcpy(p, data, data_len), p[data_len] = '\0', ev->data = p;
  ev->data_len = data_len;
  if (id) {
    snprintf(ev->id, sizeof ev->id, "%s", id);
  } else {
    herald_random_hex(ev->id, 16);
  }
  if (time) {
    snprintf(ev->time, sizeof ev->time, "%s", time);
    ev->time_ns = 0;
  } else {
    ev->time_ns = herald_now_ns();
    herald_format_rfc3339(ev->time_ns, ev->time, sizeof ev->time);
  }
  return ev;
}

herald_event *herald_event_new(const char *source, const char *subject, const char *type,
                               const char *data, size_t data_len) {
  return herald_event_new_full(NULL, NULL, source, subject, type, "application/json", data,
                               data_len);
}

void herald_event_ref(herald_event *ev) {
  ev->refs++;
}

void herald_event_unref(herald_event *ev) {
  HERALD_ASSERT(ev->refs > 0);
  if (--ev->refs) return;
  if (release_hook) release_hook(ev);
  free(ev);
}

void herald_event_to_json(const herald_event *ev, herald_buf *b) {
  herald_buf_puts(b, "{\"specversion\":\"1.0\",\"id\":");
  herald_buf_json_string(b, ev->id, strlen(ev->id));
  herald_buf_puts(b, ",\"source\":");
  herald_buf_json_string(b, ev->source, strlen(ev->source));
  herald_buf_puts(b, ",\"subject\":");
  herald_buf_json_string(b, ev->subject, strlen(ev->subject));
  herald_buf_puts(b, ",\"type\":");
  herald_buf_json_string(b, ev->type, strlen(ev->type));
  herald_buf_puts(b, ",\"time\":");
  herald_buf_json_string(b, ev->time, strlen(ev->time));
  herald_buf_puts(b, ",\"datacontenttype\":");
  herald_buf_json_string(b, ev->datacontenttype, strlen(ev->datacontenttype));
  if (ev->data_len) { /* no data at all (a CloudEvent without "data") stays without it */
    herald_buf_puts(b, ",\"data\":");
    herald_buf_append(b, ev->data, ev->data_len);
  }
  herald_buf_putc(b, '}');
}

/* --- JSON validation (RFC 8259, strict: no trailing commas, no comments, no NaN) --- */

typedef struct {
  const unsigned char *p, *end;
  int depth, max_depth;
} jv;

static void ws(jv *v) {
  while (v->p < v->end && (*v->p == ' ' || *v->p == '\t' || *v->p == '\n' || *v->p == '\r'))
    v->p++;
}

static int lit(jv *v, const char *s, size_t n) {
  if ((size_t)(v->end - v->p) < n || memcmp(v->p, s, n) != 0) return 0;
  v->p += n;
  return 1;
}

static int str(jv *v) {
  v->p++; /* opening quote */
  while (v->p < v->end) {
    unsigned char c = *v->p;
    if (c >= 0x80) { /* RFC 8259 8.1: JSON text is UTF-8 */
      size_t l = herald_utf8_seq_len(v->p, (size_t)(v->end - v->p));
      if (!l) return 0;
      v->p += l;
      continue;
    }
    v->p++;
    if (c == '"') return 1;
    if (c < 0x20) return 0;
    if (c == '\\') {
      if (v->p >= v->end) return 0;
      c = *v->p++;
      if (c == 'u') {
        for (int i = 0; i < 4; i++, v->p++) {
          if (v->p >= v->end) return 0;
          unsigned char h = *v->p;
          if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F')))
            return 0;
        }
      } else if (!strchr("\"\\/bfnrt", c) || c == 0) {
        return 0;
      }
    }
  }
  return 0;
}

static int digits(jv *v) {
  const unsigned char *s = v->p;
  while (v->p < v->end && *v->p >= '0' && *v->p <= '9') v->p++;
  return v->p > s;
}

static int num(jv *v) {
  if (*v->p == '-') v->p++;
  if (v->p >= v->end) return 0;
  if (*v->p == '0') v->p++;
  else if (!digits(v)) return 0;
  if (v->p < v->end && *v->p == '.') {
    v->p++;
    if (!digits(v)) return 0;
  }
  if (v->p < v->end && (*v->p == 'e' || *v->p == 'E')) {
    v->p++;
    if (v->p < v->end && (*v->p == '+' || *v->p == '-')) v->p++;
    if (!digits(v)) return 0;
  }
  return 1;
}

static int value(jv *v);

static int container(jv *v, unsigned char close, int object) {
  if (++v->depth > v->max_depth) return 0;
  v->p++;
  ws(v);
  if (v->p < v->end && *v->p == close) {
    v->p++;
    v->depth--;
    return 1;
  }
  for (;;) {
    ws(v);
    if (object) {
      if (v->p >= v->end || *v->p != '"' || !str(v)) return 0;
      ws(v);
      if (v->p >= v->end || *v->p++ != ':') return 0;
      ws(v);
    }
    if (!value(v)) return 0;
    ws(v);
    if (v->p >= v->end) return 0;
    if (*v->p == ',') {
      v->p++;
      continue;
    }
    if (*v->p == close) {
      v->p++;
      v->depth--;
      return 1;
    }
    return 0;
  }
}

static int value(jv *v) {
  if (v->p >= v->end) return 0;
  switch (*v->p) {
  case '{': return container(v, '}', 1);
  case '[': return container(v, ']', 0);
  case '"': return str(v);
  case 't': return lit(v, "true", 4);
  case 'f': return lit(v, "false", 5);
  case 'n': return lit(v, "null", 4);
  default:
    if (*v->p == '-' || (*v->p >= '0' && *v->p <= '9')) return num(v);
    return 0;
  }
}

int herald_json_valid(const char *text, size_t len, int max_depth) {
  jv v = {(const unsigned char *)text, (const unsigned char *)text + len, 0, max_depth};
  ws(&v);
  if (!value(&v)) return 0;
  ws(&v);
  return v.p == v.end;
}

/* ---- structured-mode CloudEvents back into events (the JetStream bus, the spill file) ---- */

/* Skips one JSON value at p (the whole text was validated first); returns the end. */
static const char *skip_value(const char *p, const char *end) {
  int depth = 0;
  do {
    if (p >= end) return end;
    char c = *p;
    if (c == '"') {
      for (p++; p < end && *p != '"'; p++)
        if (*p == '\\') p++;
      p++;
    } else if (c == '{' || c == '[') {
      depth++, p++;
    } else if (c == '}' || c == ']') {
      depth--, p++;
    } else if (c == ',' || c == ':' || c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      if (depth == 0) return p;
      p++;
    } else {
      while (p < end && !strchr(",}] \t\r\n", *p)) p++;
    }
  } while (depth > 0);
  return p;
}

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

static void put_utf8(herald_buf *b, unsigned cp) {
  char u[4];
  if (cp < 0x80) {
    herald_buf_putc(b, (char)cp);
  } else if (cp < 0x800) {
    u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f));
    herald_buf_append(b, u, 2);
  } else if (cp < 0x10000) {
    u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[2] = (char)(0x80 | (cp & 0x3f));
    herald_buf_append(b, u, 3);
  } else {
    u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[3] = (char)(0x80 | (cp & 0x3f));
    herald_buf_append(b, u, 4);
  }
}

static unsigned hex4(const char *p) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v = v * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
  }
  return v;
}

/* Decodes the (validated) JSON string [p, end) starting at its quote into out (NUL-terminated);
 * returns 0, or -1 when it holds a NUL (not a usable attribute). */
static int json_string(const char *p, const char *end, herald_buf *out) {
  out->len = 0;
  for (p++; p < end && *p != '"'; p++) {
    if (*p != '\\') {
      herald_buf_putc(out, *p);
      continue;
    }
    p++;
    switch (*p) {
    case 'b': herald_buf_putc(out, '\b'); break;
    case 'f': herald_buf_putc(out, '\f'); break;
    case 'n': herald_buf_putc(out, '\n'); break;
    case 'r': herald_buf_putc(out, '\r'); break;
    case 't': herald_buf_putc(out, '\t'); break;
    case 'u': {
      unsigned cp = hex4(p + 1);
      p += 4;
      if (cp >= 0xd800 && cp < 0xdc00 && p + 6 < end && p[1] == '\\' && p[2] == 'u') {
        unsigned lo = hex4(p + 3);
        if (lo >= 0xdc00 && lo < 0xe000) {
          cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          p += 6;
        }
      }
      if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd; /* a lone surrogate, as Go's decoder */
      if (cp == 0) return -1;
      put_utf8(out, cp);
      break;
    }
    default: herald_buf_putc(out, *p); break;
    }
  }
  herald_buf_putc(out, '\0');
  return 0;
}

enum { F_ID, F_TIME, F_SOURCE, F_SUBJECT, F_TYPE, F_CT, F_N };
static const char *const field_names[F_N] = {"id", "time", "source", "subject", "type",
                                             "datacontenttype"};

herald_event *herald_event_from_json(const char *text, size_t len, const char **why) {
  if (!herald_json_valid(text, len, 256)) {
    *why = "not JSON";
    return NULL;
  }
  const char *p = skip_ws(text, text + len), *end = text + len;
  if (p >= end || *p != '{') {
    *why = "not a JSON object";
    return NULL;
  }
  herald_buf f[F_N];
  for (int i = 0; i < F_N; i++) f[i] = (herald_buf)HERALD_BUF_INIT;
  herald_buf key = HERALD_BUF_INIT;
  const char *data = ""; /* no "data": the event has no data at all, which is not JSON null */
  size_t data_len = 0;
  herald_event *ev = NULL;
  *why = "malformed attribute";
  p++;
  for (;;) {
    p = skip_ws(p, end);
    if (p < end && *p == '}') break;
    if (p >= end || *p != '"') goto out;
    const char *kend = skip_value(p, end);
    if (json_string(p, kend, &key) != 0) goto out;
    p = skip_ws(kend, end);
    if (p >= end || *p != ':') goto out;
    p = skip_ws(p + 1, end);
    const char *vend = skip_value(p, end);
    if (strcmp(key.data, "data") == 0) {
      data = p;
      data_len = (size_t)(vend - p);
    } else {
      for (int i = 0; i < F_N; i++) {
        if (strcmp(key.data, field_names[i]) != 0) continue;
        if (*p != '"' || json_string(p, vend, &f[i]) != 0) goto out;
      }
    }
    p = skip_ws(vend, end);
    if (p < end && *p == ',') p++;
  }
  for (int i = F_ID; i <= F_SUBJECT; i++) {
    if (!f[i].len) {
      *why = "missing id, time, source or subject";
      goto out;
    }
  }
  ev = herald_event_new_full(f[F_ID].data, f[F_TIME].data, f[F_SOURCE].data, f[F_SUBJECT].data,
                             f[F_TYPE].len ? f[F_TYPE].data : "",
                             f[F_CT].len ? f[F_CT].data : "application/json", data, data_len);
  if (!ev) *why = "out of memory";
out:
  for (int i = 0; i < F_N; i++) herald_buf_free(&f[i]);
  herald_buf_free(&key);
  return ev;
}
