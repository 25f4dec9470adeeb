/*
 * lib/aws/aws.c: endpoints, request signing and answer reading for the AWS types (aws.h).
 * Signing itself is engine/sigv4.c; this only assembles the headers a request carries.
 */
#include "aws.h"

#include "common.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- endpoints ---- */

static char *env_dup(const char *name) {
  const char *v = getenv(name);
  return v && *v ? herald_xstrdup(v) : NULL;
}

static void strip_slash(char *s) {
  size_t n = strlen(s);
  while (n > 0 && s[n - 1] == '/') s[--n] = '\0';
}

int herald_aws_endpoint_init(herald_aws_endpoint *ep, const char *service, const char *region,
                             const char *given) {
  memset(ep, 0, sizeof *ep);
  char *base = given && *given ? herald_xstrdup(given) : NULL;
  if (!base) {
    char var[64];
    size_t i = 0;
    i = (size_t)snprintf(var, sizeof var, "AWS_ENDPOINT_URL_");
    for (const char *s = service; *s && i + 1 < sizeof var; s++)
      var[i++] = (char)toupper((unsigned char)*s);
    var[i] = '\0';
    base = env_dup(var);
  }
  if (!base) base = env_dup("AWS_ENDPOINT_URL");
  if (!base) base = herald_xasprintf("https://%s.%s.amazonaws.com", service, region);
  strip_slash(base);
  CURLU *u = curl_url();
  char *host = NULL, *port = NULL, *path = NULL, *origin = NULL;
  int ok = curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK;
  if (ok) {
    curl_url_get(u, CURLUPART_PORT, &port, 0);
    ep->host = port ? herald_xasprintf("%s:%s", host, port) : herald_xstrdup(host);
    ep->path = herald_xstrdup(path && strcmp(path, "/") != 0 ? path : "");
    strip_slash(ep->path);
    curl_url_set(u, CURLUPART_PATH, NULL, 0);
    curl_url_set(u, CURLUPART_QUERY, NULL, 0);
    if (curl_url_get(u, CURLUPART_URL, &origin, 0) == CURLUE_OK) {
      ep->origin = herald_xstrdup(origin);
      strip_slash(ep->origin);
    } else {
      ok = 0;
    }
  }
  curl_free(host), curl_free(port), curl_free(path), curl_free(origin);
  curl_url_cleanup(u);
  if (!ok) {
    free(base);
    herald_aws_endpoint_free(ep);
    return HERALD_EINVAL;
  }
  ep->base = base;
  return 0;
}

void herald_aws_endpoint_free(herald_aws_endpoint *ep) {
  free(ep->base), free(ep->origin), free(ep->host), free(ep->path);
  memset(ep, 0, sizeof *ep);
}

/* ---- signing ---- */

struct curl_slist *herald_aws_sign(struct curl_slist *list, const herald_aws_endpoint *ep,
                                   const char *method, const char *path, const char *query,
                                   const char *const *extra, size_t nextra, const void *body,
                                   size_t blen, const char *region, const char *service,
                                   const herald_sigv4_creds *c, herald_buf *url) {
  char date[17];
  herald_sigv4_amz_date(herald_now_ns(), date);
  herald_buf full = HERALD_BUF_INIT;
  herald_buf_puts(&full, ep->path);
  herald_buf_puts(&full, path && *path ? path : "/");
  const char *h[12];
  size_t n = 0;
  char host_h[300], date_h[40];
  snprintf(host_h, sizeof host_h, "Host: %s", ep->host);
  snprintf(date_h, sizeof date_h, "X-Amz-Date: %s", date);
  char *tok_h = c->session_token && *c->session_token
                    ? herald_xasprintf("X-Amz-Security-Token: %s", c->session_token)
                    : NULL;
  h[n++] = host_h;
  h[n++] = date_h;
  if (tok_h) h[n++] = tok_h;
  for (size_t i = 0; i < nextra && n < HERALD_ARRAY_SIZE(h); i++) h[n++] = extra[i];
  herald_sigv4_req sr = {.method = method, .path = full.data, .query = query, .headers = h,
                         .nheaders = n, .body = body, .body_len = blen, .region = region,
                         .service = service, .amz_date = date};
  herald_buf auth = HERALD_BUF_INIT;
  herald_buf_puts(&auth, "Authorization: ");
  herald_sigv4_authorization(&sr, c, &auth);
  for (size_t i = 0; i < n; i++) list = curl_slist_append(list, h[i]);
  list = curl_slist_append(list, herald_buf_cstr(&auth));
  list = curl_slist_append(list, "Expect:");
  if (url) {
    herald_buf_reset(url);
    herald_buf_puts(url, ep->origin);
    herald_buf_append(url, full.data, full.len);
    if (query && *query) {
      herald_buf_putc(url, '?');
      herald_buf_puts(url, query);
    }
  }
  memset(auth.data, 0, auth.len);
  herald_buf_free(&auth), herald_buf_free(&full);
  free(tok_h);
  return list;
}

/* ---- JSON ---- */

static const char *ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* The end of the value at p (text already validated). */
static const char *skip(const char *p, const char *end) {
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

int herald_aws_json_next(herald_aws_json v, herald_aws_json_iter *it, herald_aws_json *key,
                         herald_aws_json *val) {
  const char *end = v.end;
  const char *p;
  if (!it->started) {
    p = ws(v.p, end);
    if (p >= end || (*p != '{' && *p != '[')) return 0;
    it->started = *p;
    p++;
  } else {
    p = it->p;
  }
  p = ws(p, end);
  if (p < end && *p == ',') p = ws(p + 1, end);
  if (p >= end || *p == '}' || *p == ']') return 0;
  if (it->started == '{') {
    const char *ke = skip(p, end);
    if (key) *key = (herald_aws_json){p, ke};
    p = ws(ke, end);
    if (p >= end || *p != ':') return 0;
    p = ws(p + 1, end);
  } else if (key) {
    *key = (herald_aws_json){NULL, NULL};
  }
  const char *ve = skip(p, end);
  *val = (herald_aws_json){p, ve};
  it->p = ve;
  return 1;
}

int herald_aws_json_is(herald_aws_json v, const char *s) {
  size_t n = strlen(s);
  /* the keys and values compared are plain ASCII; an escaped spelling does not occur */
  return v.p && (size_t)(v.end - v.p) == n + 2 && v.p[0] == '"' && memcmp(v.p + 1, s, n) == 0;
}

int herald_aws_json_get(herald_aws_json v, const char *key, herald_aws_json *out) {
  herald_aws_json_iter it = {0};
  herald_aws_json k, val;
  while (herald_aws_json_next(v, &it, &k, &val)) {
    if (it.started != '{') return -1;
    if (herald_aws_json_is(k, key)) {
      *out = val;
      return 0;
    }
  }
  return -1;
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

int herald_aws_json_str(herald_aws_json v, herald_buf *out) {
  const char *p = v.p, *end = v.end;
  if (!p || p >= end || *p != '"') return -1;
  end--; /* the closing quote */
  for (p++; p < end; p++) {
    const char *q = p;
    while (q < end && *q != '\\') q++;
    if (q > p) herald_buf_append(out, p, (size_t)(q - p));
    p = q;
    if (p >= end) break;
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
      if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;
      put_utf8(out, cp);
      break;
    }
    default: herald_buf_putc(out, *p); break;
    }
  }
  return 0;
}

/* ---- XML and times ---- */

char *herald_aws_xml_text(const char *xml, const char *tag) {
  char open[80], close[80];
  snprintf(open, sizeof open, "<%s>", tag);
  snprintf(close, sizeof close, "</%s>", tag);
  const char *s = xml ? strstr(xml, open) : NULL;
  if (!s) return NULL;
  s += strlen(open);
  const char *e = strstr(s, close);
  if (!e) return NULL;
  herald_buf b = HERALD_BUF_INIT;
  static const struct {
    const char *ent;
    char c;
  } E[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
  for (const char *p = s; p < e; p++) {
    if (*p == '&') {
      size_t i;
      for (i = 0; i < HERALD_ARRAY_SIZE(E); i++) {
        size_t l = strlen(E[i].ent);
        if (strncmp(p, E[i].ent, l) == 0) {
          herald_buf_putc(&b, E[i].c);
          p += l - 1;
          break;
        }
      }
      if (i < HERALD_ARRAY_SIZE(E)) continue;
    }
    herald_buf_putc(&b, *p);
  }
  char *out = herald_xstrndup(b.data ? b.data : "", b.len);
  herald_buf_free(&b);
  return out;
}

int64_t herald_aws_parse_time(const char *s) {
  struct tm tm = {0};
  if (!s || sscanf(s, "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                   &tm.tm_min, &tm.tm_sec) != 6)
    return 0;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return (int64_t)timegm(&tm) * 1000000000LL;
}
