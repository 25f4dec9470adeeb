/*
 * lib/aws: what the AWS types (the sqs and sns sources, the awsLambda trigger) share.
 *
 *   endpoints    herald_aws_endpoint: a service base URL parsed once (origin, Host header,
 *                path), from the spec's `endpoint`, AWS_ENDPOINT_URL_<SERVICE> /
 *                AWS_ENDPOINT_URL (the SDKs' variables), else https://<svc>.<region>.amazonaws.com
 *   signing      herald_aws_sign: Host, X-Amz-Date, X-Amz-Security-Token and Authorization
 *                headers for one request, on engine/sigv4.c (the one SigV4 implementation)
 *   credentials  herald_aws_creds: the chain a user on EC2/EKS expects, fetched on the loop with
 *                libcurl (engine/curl_loop.h) and refreshed before they expire:
 *                  static keys (Kubernetes secrets in the spec) -> AWS_ACCESS_KEY_ID /
 *                  AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN -> web identity token file
 *                  (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN: EKS IRSA, STS
 *                  AssumeRoleWithWebIdentity) -> instance metadata (IMDSv2)
 *                and, when a roleARN is given, STS AssumeRole signed with those
 *   reading      herald_aws_json_*: a small reader for the JSON answers (SQS's JSON protocol,
 *                IMDS), and herald_aws_xml_text for the Query APIs' XML (STS, SNS)
 *
 * Credentials are never logged: errors name the step and the AWS error code, not the values.
 */
#ifndef HERALD_LIB_AWS_H
#define HERALD_LIB_AWS_H

#include "buf.h"
#include "curl_loop.h"
#include "log.h"
#include "sigv4.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* ---- endpoints ---- */

typedef struct herald_aws_endpoint {
  char *base;   /* scheme://host[:port][/path] without a trailing slash */
  char *origin; /* scheme://host[:port] */
  char *host;   /* the Host header value: host or host:port as curl sends it */
  char *path;   /* the base path ("" for none), no trailing slash */
} herald_aws_endpoint;

/* Fills ep for service ("sqs", "sns", "sts", "lambda"): `given` when not NULL/empty, else
 * AWS_ENDPOINT_URL_<SERVICE> (upper case), AWS_ENDPOINT_URL, else
 * https://<service>.<region>.amazonaws.com. Returns 0, or HERALD_EINVAL for a URL curl cannot
 * parse (ep left empty). */
int herald_aws_endpoint_init(herald_aws_endpoint *ep, const char *service, const char *region,
                             const char *given);
void herald_aws_endpoint_free(herald_aws_endpoint *ep);

/* ---- signing ---- */

/* Appends to list the signed headers of one request to ep (path: ep->path + `path`, query
 * without '?', may be NULL): Host, X-Amz-Date, X-Amz-Security-Token (temporary credentials),
 * the `extra` "Name: value" headers (all signed, at most 8), Authorization, and an empty
 * Expect. Writes the full URL into url (cleared first) when url is not NULL. */
struct curl_slist *herald_aws_sign(struct curl_slist *list, const herald_aws_endpoint *ep,
                                   const char *method, const char *path, const char *query,
                                   const char *const *extra, size_t nextra, const void *body,
                                   size_t blen, const char *region, const char *service,
                                   const herald_sigv4_creds *c, herald_buf *url);

/* ---- credentials ---- */

typedef struct herald_aws_creds herald_aws_creds;
typedef struct herald_aws_waiter herald_aws_waiter;

/* status 0: herald_aws_creds_current() now holds usable credentials; else a negative error
 * and why (a short reason without secrets). */
typedef void (*herald_aws_creds_cb)(herald_aws_waiter *w, int status, const char *why);

/* Caller-owned; queued while credentials are being fetched. */
struct herald_aws_waiter {
  herald_aws_creds_cb cb;
  void *data;
  herald_aws_waiter *next, *prev;
  int queued;
};

typedef struct herald_aws_creds_opts {
  const char *region;
  /* static keys (from the spec's secrets); NULL: the chain */
  const char *access_key, *secret_key, *session_token;
  const char *role_arn;     /* roleARN: assume it with the base credentials; NULL: none */
  const char *sts_endpoint; /* NULL: AWS_ENDPOINT_URL_STS / AWS_ENDPOINT_URL / the region's */
  const herald_logger *log;
  const char *who; /* how errors name the user, e.g. "sqs" */
} herald_aws_creds_opts;

/* Makes a provider (takes a reference on the curl loop). Returns NULL with *why set when the
 * options cannot work (e.g. only one of the two keys). */
herald_aws_creds *herald_aws_creds_new(uv_loop_t *loop, const herald_aws_creds_opts *o,
                                       const char **why);
/* Replaces the static keys (re-read secrets after an ExpiredToken) and drops what is cached. */
void herald_aws_creds_set_static(herald_aws_creds *c, const char *access_key,
                                 const char *secret_key, const char *session_token);
/* Forgets cached credentials (an AWS error said they expired): the next get fetches again. */
void herald_aws_creds_expire(herald_aws_creds *c);
/* Returns 1 when usable credentials are at hand (read them with herald_aws_creds_current);
 * otherwise queues w, starts a fetch if none runs, and returns 0: w->cb runs later. Credentials
 * that expire within 5 minutes are refreshed in the background while still used. */
int herald_aws_creds_get(herald_aws_creds *c, herald_aws_waiter *w);
/* Removes a queued waiter (no callback). */
void herald_aws_creds_cancel(herald_aws_creds *c, herald_aws_waiter *w);
/* The credentials to sign with now (valid until the next call into the provider). */
herald_sigv4_creds herald_aws_creds_current(const herald_aws_creds *c);
/* Cancels a fetch in progress, fails the waiters with HERALD_ECLOSED and frees c. */
void herald_aws_creds_free(herald_aws_creds *c);

/* ---- reading answers ---- */

/* A span of JSON text: one value (after validation with herald_json_valid). */
typedef struct herald_aws_json {
  const char *p, *end;
} herald_aws_json;

/* The value of member `key` of the object v; returns 0 and sets *out, or -1. */
int herald_aws_json_get(herald_aws_json v, const char *key, herald_aws_json *out);
/* Iterates the members of an object or the items of an array: *it starts as {0}; returns 1
 * with *key (raw, quotes included; NULL for arrays) and *val, or 0 at the end. */
typedef struct herald_aws_json_iter {
  const char *p;
  int started;
} herald_aws_json_iter;
int herald_aws_json_next(herald_aws_json v, herald_aws_json_iter *it, herald_aws_json *key,
                         herald_aws_json *val);
/* Appends the decoded string value v (without quotes) to out; -1 when v is not a string. */
int herald_aws_json_str(herald_aws_json v, herald_buf *out);
/* 1 when v is the string s. */
int herald_aws_json_is(herald_aws_json v, const char *s);

/* The text of the first <tag>...</tag> in xml, entities decoded; a new string or NULL. */
char *herald_aws_xml_text(const char *xml, const char *tag);
/* An ISO 8601 UTC time ("2026-12-03T20:21:04Z") in ns since the epoch, 0 when unreadable. */
int64_t herald_aws_parse_time(const char *s);

#endif
