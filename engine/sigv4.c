/*
 * sigv4.c: AWS Signature Version 4 (see sigv4.h). The steps follow AWS's "Create a signed AWS
 * API request" guide: canonical request, string to sign, signing key, signature.
 *
 * Canonical URI: the wire path with dot segments and empty segments removed, then encoded once
 * more (non-S3 services sign the path "double-encoded": a %3A on the wire is %253A here); S3
 * signs the wire path as it is, and the payload hash it carries in x-amz-content-sha256.
 * Canonical query: each name and value decoded then strictly re-encoded, sorted by name then
 * value. Canonical headers: lowercase names, values trimmed with inner runs of spaces
 * collapsed, sorted by name, repeated names joined with ','.
 */
#include "sigv4.h"

#include "common.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const char HEX[] = "0123456789abcdef";
static const char HEXU[] = "0123456789ABCDEF";

static void hex(const unsigned char *p, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = HEX[p[i] >> 4];
    out[2 * i + 1] = HEX[p[i] & 15];
  }
  out[2 * n] = '\0';
}

/* SHA-256 on an EVP_MD fetched once and a context kept per thread: OpenSSL 3's one-shot
 * EVP_Digest(EVP_sha256()) and HMAC() fetch the algorithm and build a context on every call,
 * which cost ~36,000 and ~42,000 instructions each (callgrind); a signed request made 2 and 5
 * of them, more than the rest of an SQS source's work on 5 messages. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static void sha256_fetch(void) { sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL); }

static EVP_MD_CTX *sha256_ctx(void) {
  static _Thread_local EVP_MD_CTX *ctx;
  pthread_once(&sha256_once, sha256_fetch);
  if (!ctx) ctx = EVP_MD_CTX_new();
  if (!ctx || !sha256_md || !EVP_DigestInit_ex(ctx, sha256_md, NULL)) return NULL;
  return ctx;
}

/* SHA-256 of a then b (b may be NULL). */
static void sha256_2(const void *a, size_t an, const void *b, size_t bn, unsigned char out[32]) {
  EVP_MD_CTX *ctx = sha256_ctx();
  unsigned int len = 32;
  if (!ctx) { /* no context: the slow path, still correct */
    herald_buf t = HERALD_BUF_INIT;
    herald_buf_append(&t, a, an);
    if (b) herald_buf_append(&t, b, bn);
    EVP_Digest(t.data ? t.data : "", t.len, out, &len, EVP_sha256(), NULL);
    herald_buf_free(&t);
    return;
  }
  EVP_DigestUpdate(ctx, a, an);
  if (b && bn) EVP_DigestUpdate(ctx, b, bn);
  EVP_DigestFinal_ex(ctx, out, &len);
}

void herald_sigv4_sha256_hex(const void *p, size_t n, char out[65]) {
  unsigned char md[32];
  sha256_2(p, n, NULL, 0, md);
  hex(md, 32, out);
}

/* HMAC-SHA256 (RFC 2104) over sha256_2. */
static void hmac(const void *key, size_t klen, const void *d, size_t n, unsigned char out[32]) {
  unsigned char k[64] = {0}, pad[64], inner[32];
  if (klen > 64) sha256_2(key, klen, NULL, 0, k);
  else memcpy(k, key, klen);
  for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x36;
  sha256_2(pad, 64, d, n, inner);
  for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x5c;
  sha256_2(pad, 64, inner, 32, out);
  OPENSSL_cleanse(k, sizeof k), OPENSSL_cleanse(pad, sizeof pad);
}

void herald_sigv4_amz_date(int64_t t, char out[17]) {
  time_t s = (time_t)(t / 1000000000);
  struct tm tm;
  gmtime_r(&s, &tm);
  strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

static int unreserved(unsigned char c) {
  return isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~';
}

void herald_sigv4_uri_encode(herald_buf *out, const char *s, size_t n, int keep_slash) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (unreserved(c) || (keep_slash && c == '/')) {
      herald_buf_putc(out, (char)c);
    } else {
      char e[3] = {'%', HEXU[c >> 4], HEXU[c & 15]};
      herald_buf_append(out, e, 3);
    }
  }
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Appends the percent-decoding of s[0..n) to out. */
static void uri_decode(herald_buf *out, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int h, l;
    if (s[i] == '%' && i + 2 < n && (h = hexval((unsigned char)s[i + 1])) >= 0 &&
        (l = hexval((unsigned char)s[i + 2])) >= 0) {
      herald_buf_putc(out, (char)(h * 16 + l));
      i += 2;
    } else {
      herald_buf_putc(out, s[i]);
    }
  }
}

/* The path with "." / ".." / empty segments resolved, then encoded once more. */
static void canonical_uri(herald_buf *out, const char *path) {
  if (!path || !*path) path = "/";
  size_t n = strlen(path);
  /* segment starts and lengths, as a stack */
  size_t cap = n / 2 + 2, depth = 0;
  const char **seg = herald_xmalloc(cap * sizeof *seg);
  size_t *len = herald_xmalloc(cap * sizeof *len);
  const char *p = path;
  while (*p) {
    while (*p == '/') p++;
    const char *e = p;
    while (*e && *e != '/') e++;
    size_t l = (size_t)(e - p);
    if (l == 0 || (l == 1 && p[0] == '.')) {
      /* skip */
    } else if (l == 2 && p[0] == '.' && p[1] == '.') {
      if (depth) depth--;
    } else {
      seg[depth] = p;
      len[depth++] = l;
    }
    p = e;
  }
  int trailing = n > 1 && path[n - 1] == '/';
  for (size_t i = 0; i < depth; i++) {
    herald_buf_putc(out, '/');
    herald_sigv4_uri_encode(out, seg[i], len[i], 0);
  }
  if (depth == 0 || trailing) herald_buf_putc(out, '/');
  free(seg);
  free(len);
}

typedef struct kv {
  char *k, *v;
} kv;

static int kv_cmp(const void *a, const void *b) {
  const kv *x = a, *y = b;
  int c = strcmp(x->k, y->k);
  return c ? c : strcmp(x->v, y->v);
}

static void canonical_query(herald_buf *out, const char *q) {
  if (!q || !*q) return;
  size_t cap = 1;
  for (const char *p = q; *p; p++)
    if (*p == '&') cap++;
  kv *items = herald_xcalloc(cap, sizeof *items);
  size_t n = 0;
  const char *p = q;
  while (1) {
    const char *e = strchr(p, '&');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    if (l > 0) {
      const char *eq = memchr(p, '=', l);
      size_t kl = eq ? (size_t)(eq - p) : l;
      herald_buf raw = HERALD_BUF_INIT, enc = HERALD_BUF_INIT;
      uri_decode(&raw, p, kl);
      herald_sigv4_uri_encode(&enc, raw.data ? raw.data : "", raw.len, 0);
      items[n].k = herald_xstrndup(enc.data ? enc.data : "", enc.len);
      herald_buf_reset(&raw), herald_buf_reset(&enc);
      if (eq) uri_decode(&raw, eq + 1, l - kl - 1);
      herald_sigv4_uri_encode(&enc, raw.data ? raw.data : "", raw.len, 0);
      items[n].v = herald_xstrndup(enc.data ? enc.data : "", enc.len);
      herald_buf_free(&raw), herald_buf_free(&enc);
      n++;
    }
    if (!e) break;
    p = e + 1;
  }
  qsort(items, n, sizeof *items, kv_cmp);
  for (size_t i = 0; i < n; i++) {
    if (i) herald_buf_putc(out, '&');
    herald_buf_puts(out, items[i].k);
    herald_buf_putc(out, '=');
    herald_buf_puts(out, items[i].v);
    free(items[i].k), free(items[i].v);
  }
  free(items);
}

typedef struct hdr {
  char *name;  /* lowercase */
  char *value; /* trimmed, spaces collapsed */
  size_t order;
} hdr;

static int hdr_cmp(const void *a, const void *b) {
  const hdr *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  if (c) return c;
  return x->order < y->order ? -1 : x->order > y->order;
}

static void canonical_headers(const herald_sigv4_req *r, herald_buf *out, herald_buf *signed_h) {
  hdr *h = herald_xcalloc(r->nheaders ? r->nheaders : 1, sizeof *h);
  size_t n = 0;
  for (size_t i = 0; i < r->nheaders; i++) {
    const char *line = r->headers[i];
    const char *colon = strchr(line, ':');
    if (!colon) continue;
    h[n].name = herald_xstrndup(line, (size_t)(colon - line));
    for (char *c = h[n].name; *c; c++) *c = (char)tolower((unsigned char)*c);
    herald_buf v = HERALD_BUF_INIT;
    const char *s = colon + 1;
    while (*s == ' ' || *s == '\t') s++;
    int space = 0;
    for (; *s; s++) {
      if (*s == ' ' || *s == '\t') {
        space = 1;
        continue;
      }
      if (space && v.len) herald_buf_putc(&v, ' ');
      space = 0;
      herald_buf_putc(&v, *s);
    }
    h[n].value = herald_xstrndup(v.data ? v.data : "", v.len);
    herald_buf_free(&v);
    h[n].order = i;
    n++;
  }
  qsort(h, n, sizeof *h, hdr_cmp);
  for (size_t i = 0; i < n; i++) {
    int same = i > 0 && strcmp(h[i].name, h[i - 1].name) == 0;
    if (same) {
      herald_buf_putc(out, ',');
    } else {
      if (i > 0) herald_buf_putc(out, '\n');
      herald_buf_puts(out, h[i].name);
      herald_buf_putc(out, ':');
      if (signed_h) {
        if (signed_h->len) herald_buf_putc(signed_h, ';');
        herald_buf_puts(signed_h, h[i].name);
      }
    }
    herald_buf_puts(out, h[i].value);
  }
  if (n) herald_buf_putc(out, '\n');
  for (size_t i = 0; i < n; i++) free(h[i].name), free(h[i].value);
  free(h);
}

void herald_sigv4_canonical_request(const herald_sigv4_req *r, herald_buf *out,
                                    herald_buf *signed_headers) {
  herald_buf sh = HERALD_BUF_INIT;
  herald_buf_puts(out, r->method);
  herald_buf_putc(out, '\n');
  if (r->s3) herald_buf_puts(out, r->path && *r->path ? r->path : "/");
  else canonical_uri(out, r->path);
  herald_buf_putc(out, '\n');
  canonical_query(out, r->query);
  herald_buf_putc(out, '\n');
  canonical_headers(r, out, &sh);
  herald_buf_putc(out, '\n');
  herald_buf_append(out, sh.data ? sh.data : "", sh.len);
  herald_buf_putc(out, '\n');
  const char *given = NULL;
  for (size_t i = 0; r->s3 && i < r->nheaders; i++)
    if (strncasecmp(r->headers[i], "x-amz-content-sha256:", 21) == 0) given = r->headers[i] + 21;
  if (given) {
    while (*given == ' ') given++;
    herald_buf_puts(out, given);
  } else {
    char body_hash[65];
    herald_sigv4_sha256_hex(r->body ? r->body : "", r->body ? r->body_len : 0, body_hash);
    herald_buf_puts(out, body_hash);
  }
  if (signed_headers) herald_buf_append(signed_headers, sh.data ? sh.data : "", sh.len);
  herald_buf_free(&sh);
}

static void scope(const herald_sigv4_req *r, herald_buf *out) {
  herald_buf_printf(out, "%.8s/%s/%s/aws4_request", r->amz_date, r->region, r->service);
}

void herald_sigv4_string_to_sign(const herald_sigv4_req *r, const char *creq, size_t n,
                                 herald_buf *out) {
  char h[65];
  herald_sigv4_sha256_hex(creq, n, h);
  herald_buf_printf(out, "AWS4-HMAC-SHA256\n%s\n", r->amz_date);
  scope(r, out);
  herald_buf_printf(out, "\n%s", h);
}

void herald_sigv4_signing_key(const char *secret_key, const char *date8, const char *region,
                              const char *service, unsigned char key[32]) {
  herald_buf k = HERALD_BUF_INIT;
  herald_buf_printf(&k, "AWS4%s", secret_key);
  unsigned char a[32], b[32];
  hmac(k.data, k.len, date8, strlen(date8), a);
  hmac(a, 32, region, strlen(region), b);
  hmac(b, 32, service, strlen(service), a);
  hmac(a, 32, "aws4_request", 12, key);
  herald_buf_free(&k);
}

/* The signing key depends only on the secret, the day, the region and the service: derived
 * once a day per (secret, region, service) instead of four HMACs on every request. The cache
 * holds the secret's SHA-256, never the secret; a few entries, the oldest replaced. */
#define KEY_CACHE 8
static struct {
  unsigned char secret_hash[32];
  char date8[9], region[32], service[32];
  unsigned char key[32];
  unsigned used;
} key_cache[KEY_CACHE];
static unsigned key_cache_tick;
static pthread_mutex_t key_cache_mu = PTHREAD_MUTEX_INITIALIZER;

static void cached_signing_key(const char *secret, const char *date8, const char *region,
                               const char *service, unsigned char key[32]) {
  if (strlen(region) >= sizeof key_cache[0].region || strlen(service) >= sizeof key_cache[0].service) {
    herald_sigv4_signing_key(secret, date8, region, service, key);
    return;
  }
  unsigned char h[32];
  sha256_2(secret, strlen(secret), NULL, 0, h);
  pthread_mutex_lock(&key_cache_mu);
  int victim = 0;
  for (int i = 0; i < KEY_CACHE; i++) {
    if (key_cache[i].used && memcmp(key_cache[i].secret_hash, h, 32) == 0 &&
        strcmp(key_cache[i].date8, date8) == 0 && strcmp(key_cache[i].region, region) == 0 &&
        strcmp(key_cache[i].service, service) == 0) {
      memcpy(key, key_cache[i].key, 32);
      key_cache[i].used = ++key_cache_tick;
      pthread_mutex_unlock(&key_cache_mu);
      return;
    }
    if (key_cache[i].used < key_cache[victim].used) victim = i;
  }
  pthread_mutex_unlock(&key_cache_mu);
  herald_sigv4_signing_key(secret, date8, region, service, key);
  pthread_mutex_lock(&key_cache_mu);
  memcpy(key_cache[victim].secret_hash, h, 32);
  snprintf(key_cache[victim].date8, sizeof key_cache[victim].date8, "%s", date8);
  snprintf(key_cache[victim].region, sizeof key_cache[victim].region, "%s", region);
  snprintf(key_cache[victim].service, sizeof key_cache[victim].service, "%s", service);
  memcpy(key_cache[victim].key, key, 32);
  key_cache[victim].used = ++key_cache_tick;
  pthread_mutex_unlock(&key_cache_mu);
}

void herald_sigv4_authorization(const herald_sigv4_req *r, const herald_sigv4_creds *c,
                                herald_buf *out) {
  herald_buf creq = HERALD_BUF_INIT, sh = HERALD_BUF_INIT, sts = HERALD_BUF_INIT;
  herald_sigv4_canonical_request(r, &creq, &sh);
  herald_sigv4_string_to_sign(r, creq.data, creq.len, &sts);
  char date8[9];
  snprintf(date8, sizeof date8, "%.8s", r->amz_date);
  unsigned char key[32], sig[32];
  cached_signing_key(c->secret_key, date8, r->region, r->service, key);
  hmac(key, 32, sts.data, sts.len, sig);
  char sighex[65];
  hex(sig, 32, sighex);
  herald_buf_printf(out, "AWS4-HMAC-SHA256 Credential=%s/", c->access_key);
  scope(r, out);
  herald_buf_printf(out, ", SignedHeaders=%s, Signature=%s", herald_buf_cstr(&sh), sighex);
  herald_buf_free(&creq), herald_buf_free(&sh), herald_buf_free(&sts);
}
