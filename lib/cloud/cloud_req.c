/*
 * lib/cloud/cloud_req.c: one HTTP request of a cloud source on the loop (cloud.h).
 *
 *   cloud_req_start -> herald_curl_xfer (engine/curl_loop.h, the process's one curl multi) ->
 *   the answer kept in r->resp (or streamed to r->on_data) -> on_done: the transfer released,
 *   its headers and body freed -> r->cb(r, status, rc), which may start r again.
 *
 * The sources' requests are few and long (a pull waits for messages, a MinIO listen streams
 * for ever), so this keeps them simple: one request per cloud_req, owned by the caller.
 */
#include "cloud.h"

#include "common.h"

#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_RESP (64u << 20)

static void release(cloud_req *r) {
  herald_curl_xfer_release(&r->x);
  curl_slist_free_all(r->headers);
  r->headers = NULL;
  free(r->body);
  r->body = NULL;
  r->busy = 0;
}

static size_t on_write(char *p, size_t size, size_t n, void *ud) {
  cloud_req *r = ud;
  size_t len = size * n;
  if (!r->status) curl_easy_getinfo(r->x.easy, CURLINFO_RESPONSE_CODE, &r->status);
  if (r->on_data) {
    int rc = r->on_data(r, p, len);
    return rc == 0 ? len : rc == CLOUD_REQ_PAUSE ? CURL_WRITEFUNC_PAUSE : 0;
  }
  size_t max = r->max_resp ? r->max_resp : DEFAULT_MAX_RESP;
  if (r->resp.len + len > max) return 0;
  herald_buf_append(&r->resp, p, len);
  return len;
}

static void on_done(herald_curl_xfer *x, CURLcode rc) {
  cloud_req *r = x->data;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  r->status = status;
  /* keep the error text: the transfer's buffer goes back to the pool with it */
  release(r);
  r->cb(r, status, rc);
}

int cloud_req_start(cloud_req *r, const char *method, const char *url, struct curl_slist *headers,
                    char *body, size_t body_len, long timeout_ms, cloud_req_cb cb) {
  if (r->busy || herald_curl_xfer_init(&r->x) != 0) {
    curl_slist_free_all(headers);
    free(body);
    return HERALD_EIO;
  }
  r->busy = 1;
  r->cb = cb;
  r->headers = headers;
  r->body = body;
  r->status = 0;
  herald_buf_reset(&r->resp);
  r->x.data = r;
  CURL *e = r->x.easy;
  herald_curl_xfer_url(&r->x, url);
  int get = strcmp(method, "GET") == 0;
  if (!get && (body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0)) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? body_len : 0));
    if (strcmp(method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  } else {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    if (!get) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method); /* DELETE */
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, NULL);
  if (r->insecure) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (r->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, r->ca_file);
  if (herald_curl_xfer_start(&r->x, on_done) != 0) {
    release(r);
    return HERALD_EIO;
  }
  return 0;
}

void cloud_req_resume(cloud_req *r) {
  if (r->busy && r->x.easy) curl_easy_pause(r->x.easy, CURLPAUSE_CONT);
}

void cloud_req_cancel(cloud_req *r) {
  if (r->busy) release(r);
}

void cloud_req_free(cloud_req *r) {
  cloud_req_cancel(r);
  herald_buf_free(&r->resp);
}
