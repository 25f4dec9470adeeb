/*
 * lib/webhookctx/hmac.c: the signature checks webhook vendors use (GitHub's X-Hub-Signature-256,
 * Slack's v0, Stripe's v1, Bitbucket Server's X-Hub-Signature: all hex HMACs over the raw body,
 * some with a prefix), compared in constant time so that the time of a refusal says nothing
 * about how many bytes of a forged signature were right; and the RS256 JWT a GitHub App
 * exchanges for an installation token.
 */
#include "webhookctx/webhookctx.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const EVP_MD *md_of(const char *digest) {
  if (strcmp(digest, "sha256") == 0) return EVP_sha256();
  if (strcmp(digest, "sha1") == 0) return EVP_sha1();
  if (strcmp(digest, "sha512") == 0) return EVP_sha512();
  return NULL;
}

int herald_hmac(const char *digest, const void *key, size_t klen, const herald_iov *parts,
                int nparts, unsigned char *out) {
  const EVP_MD *md = md_of(digest);
  if (!md) return -1;
  /* HMAC() takes one buffer; join the parts (a prefix and a body) once rather than keep an
   * OpenSSL 3 EVP_MAC context per request */
  size_t total = 0;
  for (int i = 0; i < nparts; i++) total += parts[i].n;
  unsigned char stackbuf[4096];
  unsigned char *msg = total <= sizeof stackbuf ? stackbuf : malloc(total ? total : 1);
  if (!msg) return -1;
  size_t o = 0;
  for (int i = 0; i < nparts; i++) {
    if (parts[i].n) memcpy(msg + o, parts[i].p, parts[i].n);
    o += parts[i].n;
  }
  unsigned int len = 0;
  static const unsigned char nokey = 0;
  unsigned char *r = HMAC(md, klen ? key : &nokey, (int)klen, msg, total, out, &len);
  if (msg != stackbuf) free(msg);
  return r ? (int)len : -1;
}

int herald_ct_equal(const void *a, size_t alen, const void *b, size_t blen) {
  if (alen != blen) return 0;
  return alen == 0 || CRYPTO_memcmp(a, b, alen) == 0;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int herald_hmac_hex_ok(const char *digest, const void *key, size_t klen,
                       const herald_iov *parts, int nparts, const char *hex, size_t hexlen) {
  unsigned char mac[EVP_MAX_MD_SIZE], got[EVP_MAX_MD_SIZE];
  int n = herald_hmac(digest, key, klen, parts, nparts, mac);
  if (n <= 0 || hexlen != (size_t)n * 2) return 0;
  int bad = 0;
  for (int i = 0; i < n; i++) {
    int hi = hexval((unsigned char)hex[2 * i]), lo = hexval((unsigned char)hex[2 * i + 1]);
    bad |= (hi < 0) | (lo < 0);
    got[i] = (unsigned char)((hi & 15) << 4 | (lo & 15));
  }
  return !bad && CRYPTO_memcmp(mac, got, (size_t)n) == 0;
}

void herald_b64url(herald_buf *out, const void *data, size_t n) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const unsigned char *in = data;
  for (size_t i = 0; i < n; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) |
                 (i + 2 < n ? in[i + 2] : 0);
    herald_buf_putc(out, tab[v >> 18 & 63]);
    herald_buf_putc(out, tab[v >> 12 & 63]);
    if (i + 1 < n) herald_buf_putc(out, tab[v >> 6 & 63]);
    if (i + 2 < n) herald_buf_putc(out, tab[v & 63]);
  }
}

int herald_github_app_jwt(herald_buf *out, const char *app_id, const char *pem,
                          const char **why) {
  long long now = (long long)time(NULL);
  char claims[160];
  static const char hdr[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
  /* iat 60 s in the past allows for clock drift, as GitHub recommends; exp at most 10 min */
  snprintf(claims, sizeof claims, "{\"iat\":%lld,\"exp\":%lld,\"iss\":\"%s\"}", now - 60,
           now + 540, app_id);
  size_t start = out->len;
  herald_b64url(out, hdr, sizeof hdr - 1);
  herald_buf_putc(out, '.');
  herald_b64url(out, claims, strlen(claims));
  size_t signed_len = out->len - start;
  BIO *bio = BIO_new_mem_buf(pem, -1);
  EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  if (!pk) {
    *why = "githubApp.privateKey: not a PEM private key";
    out->len = start;
    return -1;
  }
  unsigned char sig[1024];
  size_t siglen = sizeof sig;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA &&
           EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk) == 1 &&
           EVP_DigestSign(md, sig, &siglen, (const unsigned char *)out->data + start,
                          signed_len) == 1;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(pk);
  if (!ok) {
    *why = "githubApp.privateKey: cannot sign the App's JWT with it (an RSA key is needed)";
    out->len = start;
    return -1;
  }
  herald_buf_putc(out, '.');
  herald_b64url(out, sig, siglen);
  return 0;
}
