/*
 * sigv4.h: AWS Signature Version 4 (HMAC-SHA256 request signing), as a unit of its own.
 *
 *   request -> canonical request (method, canonical URI, canonical query, canonical headers,
 *   signed headers, hex SHA-256 of the payload) -> string to sign ("AWS4-HMAC-SHA256", date,
 *   scope, hex SHA-256 of the canonical request) -> signing key (HMAC chain over the date,
 *   region, service, "aws4_request") -> Authorization header.
 *
 * Proven on AWS's published test-suite vectors in spec/c/sigv4_test.c. The caller puts every
 * header it wants signed in the request (host, x-amz-date, and x-amz-security-token when it
 * uses temporary credentials) and sends exactly those values.
 */
#ifndef HERALD_SIGV4_H
#define HERALD_SIGV4_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

/* SHA-256 of the empty payload (S3's x-amz-content-sha256 for a GET). */
#define SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

typedef struct herald_sigv4_creds {
  const char *access_key;
  const char *secret_key;
  const char *session_token; /* NULL for long-term keys */
} herald_sigv4_creds;

typedef struct herald_sigv4_req {
  const char *method;
  const char *path;            /* as sent on the wire (percent-encoded); NULL = "/" */
  const char *query;           /* as sent, without '?'; NULL or "" = none */
  const char *const *headers;  /* nheaders "Name: value" strings, all signed */
  size_t nheaders;
  const void *body;
  size_t body_len;
  const char *region;
  const char *service;
  const char *amz_date;        /* "20150830T123600Z", the X-Amz-Date value */
  int s3;                      /* S3's rules: the path is signed as sent (encoded once, not
                                  normalised), and the payload hash is the
                                  x-amz-content-sha256 header's value (sent by the caller) */
} herald_sigv4_req;

/* Appends the canonical request to out and, if signed_headers is not NULL, the
 * "host;x-amz-date" list to signed_headers. */
void herald_sigv4_canonical_request(const herald_sigv4_req *r, herald_buf *out,
                                    herald_buf *signed_headers);
/* Appends the string to sign for the canonical request creq[0..n). */
void herald_sigv4_string_to_sign(const herald_sigv4_req *r, const char *creq, size_t n,
                                 herald_buf *out);
/* Derives the signing key for date8 ("20150830"), region and service. */
void herald_sigv4_signing_key(const char *secret_key, const char *date8, const char *region,
                              const char *service, unsigned char key[32]);
/* Appends the Authorization header value ("AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
 * Signature=...") to out. */
void herald_sigv4_authorization(const herald_sigv4_req *r, const herald_sigv4_creds *c,
                                herald_buf *out);

/* Hex SHA-256 of p[0..n) into out (65 bytes with the NUL). */
void herald_sigv4_sha256_hex(const void *p, size_t n, char out[65]);
/* Formats t (ns since the epoch) as an X-Amz-Date into out (17 bytes with the NUL). */
void herald_sigv4_amz_date(int64_t t, char out[17]);
/* Appends s percent-encoded the AWS way (RFC 3986 unreserved kept, everything else %XX
 * uppercase); '/' is kept when keep_slash. */
void herald_sigv4_uri_encode(herald_buf *out, const char *s, size_t n, int keep_slash);

#endif
