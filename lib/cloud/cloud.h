/*
 * lib/cloud/cloud.h: what the cloud event sources (pubSub, azureQueueStorage, minio) share.
 *
 *   - a JSON reader for API answers (cloud_json.c): one pass turns the text into a flat token
 *     array (no allocation per value), then members are looked up by key and strings copied
 *     out unescaped. Pull answers of a thousand messages cost one tokenisation.
 *   - base64 (standard and URL alphabets) decoding, base64url encoding (cloud_crypto.c)
 *   - RS256 JWTs (Google service-account assertions; the same signing the GitHub App token of
 *     lib/kube/git.c does) and HMAC-SHA256 (Azure Shared Key), with OpenSSL
 *   - one HTTP request on the loop (cloud_req.c): engine/curl_loop.h with the whole answer
 *     kept (or handed over piece by piece for a stream), the request's headers and body owned
 *     until it ends.
 */
#ifndef HERALD_CLOUD_H
#define HERALD_CLOUD_H

#include "buf.h"
#include "curl_loop.h"

#include <stddef.h>
#include <stdint.h>

/* ---- JSON reader ---- */

enum { CJ_OBJECT = 1, CJ_ARRAY, CJ_STRING, CJ_NUMBER, CJ_TRUE, CJ_FALSE, CJ_NULL };

typedef struct cj_tok {
  uint8_t type;
  uint32_t start, end; /* bytes of the value in the text (a string: inside its quotes) */
  uint32_t next;       /* index of the token after this value's whole subtree */
} cj_tok;

typedef struct cj_doc {
  const char *s;
  cj_tok *t;
  uint32_t n, cap;
} cj_doc;

/* Tokenises text[0..len) (one JSON value, nested at most 64 deep). Returns 0, or -1 when it is
 * not JSON. The doc points into text, which must outlive it; free it with cj_free. */
int cj_parse(cj_doc *d, const char *text, size_t len);
void cj_free(cj_doc *d);
/* The value of member `key` of the object at token obj, or -1. */
int cj_get(const cj_doc *d, int obj, const char *key);
/* For iteration: the first element of an array (or the first key of an object) at token i, or
 * -1 when empty; the next element after element e of the container at i, or -1. For an
 * object, the element is the key and its value is the token after it. */
int cj_first(const cj_doc *d, int i);
int cj_next(const cj_doc *d, int container, int e);
/* Appends the string at token i, unescaped (UTF-8), to b; other values as their JSON text.
 * Returns 0, or -1 for i < 0. */
int cj_append(const cj_doc *d, int i, herald_buf *b);
/* A new NUL-terminated copy of the string at token i (NULL when i < 0 or not a string). */
char *cj_strdup(const cj_doc *d, int i);
/* 1 when the token is a string equal to s. */
int cj_streq(const cj_doc *d, int i, const char *s);
/* The number at token i (a number, or a string holding one, as Google's int64 fields are), or
 * dflt. */
double cj_number(const cj_doc *d, int i, double dflt);

/* ---- encodings and signatures ---- */

/* Decodes base64 (standard or URL alphabet, padding optional; whitespace refused) of
 * s[0..n) and appends the bytes to out. Returns 0, or -1 when it is not base64 (out is then
 * left with a partial result). `url`: 1 the URL alphabet only, 0 the standard one only, -1
 * either. */
int cloud_base64_decode(const char *s, size_t n, int url, herald_buf *out);
/* Appends the unpadded base64url of p[0..n) (JWT segments). */
void cloud_base64url(herald_buf *out, const void *p, size_t n);
/* A new JWT "<header>.<claims>.<signature>" signed RS256 with the PEM private key `pem`,
 * header {"alg":"RS256","typ":"JWT"[,"kid":kid]}; claims is the JSON object text. Returns
 * NULL with err filled (never quoting the key) when the key is not an RSA PEM key. */
char *cloud_jwt_rs256(const char *pem, const char *kid, const char *claims, char *err,
                      size_t errlen);
/* HMAC-SHA256 of msg[0..n) with key[0..keylen) into mac (32 bytes). */
void cloud_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t n,
                       unsigned char mac[32]);

/* ---- one HTTP request on the loop ---- */

typedef struct cloud_req cloud_req;
/* The request ended: status is the HTTP status (0 when none arrived: rc says why), the body is
 * in r->resp. The transfer is released already: the callback may start r again. */
typedef void (*cloud_req_cb)(cloud_req *r, long status, CURLcode rc);
/* Streaming: each piece of the answer body as it arrives (instead of r->resp); return 0 to go
 * on, CLOUD_REQ_PAUSE to pause the transfer without taking the piece (it is offered again
 * after cloud_req_resume), other non-zero to abort the transfer (it then ends with
 * CURLE_WRITE_ERROR). */
#define CLOUD_REQ_PAUSE 2
typedef int (*cloud_req_data_cb)(cloud_req *r, const char *p, size_t n);

struct cloud_req {
  herald_curl_xfer x;
  herald_buf resp;            /* the answer's body (reset by each start) */
  size_t max_resp;            /* bytes kept at most (0: 64 MiB); beyond that the answer fails */
  cloud_req_data_cb on_data;  /* set for a stream */
  long status;                /* the last answer's status, set once its headers arrived */
  int insecure;               /* do not verify the server's certificate */
  const char *ca_file;        /* a CA bundle to verify it with (NULL: the system's) */
  void *data;                 /* the user's */
  /* cloud_req's */
  cloud_req_cb cb;
  struct curl_slist *headers;
  char *body;
  int busy;
};

/* Starts method url with headers (taken: freed when the request ends) and body (taken; NULL
 * for none), timing out after timeout_ms (0: never, for streams). Returns 0, or HERALD_EIO
 * (nothing started, headers and body freed, no callback). r must be idle. */
int cloud_req_start(cloud_req *r, const char *method, const char *url, struct curl_slist *headers,
                    char *body, size_t body_len, long timeout_ms, cloud_req_cb cb);
/* Resumes a stream its on_data paused (the piece refused is offered again, perhaps at once). */
void cloud_req_resume(cloud_req *r);
/* Abandons r if it is running (no callback) and frees what it holds; r may be started again. */
void cloud_req_cancel(cloud_req *r);
/* Frees r's response buffer (after cancel, when r is no longer needed). */
void cloud_req_free(cloud_req *r);

#endif
