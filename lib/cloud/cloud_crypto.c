/*
 * lib/cloud/cloud_crypto.c: base64 both ways, RS256 JWTs and HMAC-SHA256 for the cloud
 * sources (cloud.h), on OpenSSL.
 *
 * A Google service account proves itself with a JWT it signs (RS256, the key from its JSON key
 * file) and trades it for an OAuth2 access token; Azure Storage's Shared Key is an
 * HMAC-SHA256 of a canonical string. Neither key is ever logged: errors say what is wrong
 * with the key, never what it holds.
 */
#include "cloud.h"

#include "common.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <string.h>

static signed char b64val(unsigned char c, int url) {
  if (c >= 'A' && c <= 'Z') return (signed char)(c - 'A');
  if (c >= 'a' && c <= 'z') return (signed char)(c - 'a' + 26);
  if (c >= '0' && c <= '9') return (signed char)(c - '0' + 52);
  if (url != 1 && c == '+') return 62;
  if (url != 1 && c == '/') return 63;
  if (url != 0 && c == '-') return 62;
  if (url != 0 && c == '_') return 63;
  return -1;
}

int cloud_base64_decode(const char *s, size_t n, int url, herald_buf *out) {
  while (n > 0 && s[n - 1] == '=') n--;
  if (n % 4 == 1) return -1;
  uint32_t acc = 0;
  int bits = 0;
  char chunk[256];
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    signed char v = b64val((unsigned char)s[i], url);
    if (v < 0) return -1;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      chunk[k++] = (char)(acc >> bits & 0xFF);
      if (k == sizeof chunk) {
        herald_buf_append(out, chunk, k);
        k = 0;
      }
    }
  }
  if (k) herald_buf_append(out, chunk, k);
  return 0;
}

void cloud_base64url(herald_buf *out, const void *p, size_t n) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const unsigned char *in = p;
  char q[4];
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                 (i + 2 < n ? in[i + 2] : 0);
    size_t k = 0;
    q[k++] = tab[v >> 18 & 63];
    q[k++] = tab[v >> 12 & 63];
    if (i + 1 < n) q[k++] = tab[v >> 6 & 63];
    if (i + 2 < n) q[k++] = tab[v & 63];
    herald_buf_append(out, q, k);
  }
}

char *cloud_jwt_rs256(const char *pem, const char *kid, const char *claims, char *err,
                      size_t errlen) {
  herald_buf b = HERALD_BUF_INIT, hdr = HERALD_BUF_INIT;
  herald_buf_puts(&hdr, "{\"alg\":\"RS256\",\"typ\":\"JWT\"");
  if (kid && *kid) {
    herald_buf_puts(&hdr, ",\"kid\":");
    herald_buf_json_string(&hdr, kid, strlen(kid));
  }
  herald_buf_putc(&hdr, '}');
  cloud_base64url(&b, hdr.data, hdr.len);
  herald_buf_free(&hdr);
  herald_buf_putc(&b, '.');
  cloud_base64url(&b, claims, strlen(claims));

  BIO *bio = BIO_new_mem_buf(pem, -1);
  EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  if (!pk) {
    snprintf(err, errlen, "not a PEM private key");
    herald_buf_free(&b);
    return NULL;
  }
  unsigned char sig[1024];
  size_t siglen = sizeof sig;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_PKEY_base_id(pk) == EVP_PKEY_RSA &&
           EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk) == 1 &&
           EVP_DigestSign(md, sig, &siglen, (const unsigned char *)b.data, b.len) == 1;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(pk);
  if (!ok) {
    snprintf(err, errlen, "cannot sign RS256 with it (an RSA key is needed)");
    herald_buf_free(&b);
    return NULL;
  }
  herald_buf_putc(&b, '.');
  cloud_base64url(&b, sig, siglen);
  char *jwt = herald_xstrdup(herald_buf_cstr(&b));
  OPENSSL_cleanse(b.data, b.len);
  herald_buf_free(&b);
  return jwt;
}

void cloud_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t n,
                       unsigned char mac[32]) {
  unsigned int len = 32;
  HMAC(EVP_sha256(), key, (int)keylen, msg, n, mac, &len);
}
