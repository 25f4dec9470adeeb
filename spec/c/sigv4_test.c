/*
 * sigv4_test.c: the SigV4 signer (engine/sigv4.c) against AWS's published
 * Signature Version 4 test suite (aws-sig-v4-test-suite: credentials AKIDEXAMPLE, region
 * us-east-1, service "service", 2015-08-30T12:36:00Z). Each case checks the canonical
 * request, the string to sign and the Authorization header, plus the signing-key example from
 * AWS's "derive the signing key" documentation.
 */
#include "sigv4.h"

#include <stdio.h>
#include <string.h>

static const char *AK = "AKIDEXAMPLE";
static const char *SK = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
#define TOKEN                                                                                   \
  "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpS" \
  "PfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQD" \
  "YwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scq" \
  "Kmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
#define EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SCOPE "20150830/us-east-1/service/aws4_request"
#define CRED "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/" SCOPE ", "

typedef struct vector {
  const char *name;
  const char *method, *path, *query;
  const char *headers[4];
  const char *body;
  const char *creq, *sts, *authz;
} vector;

static const vector V[] = {
    {"get-vanilla", "GET", "/", NULL,
     {"Host:example.amazonaws.com", "X-Amz-Date:20150830T123600Z"}, NULL,
     "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" EMPTY,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n" SCOPE
     "\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
     CRED "SignedHeaders=host;x-amz-date, "
          "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
    {"post-vanilla", "POST", "/", NULL,
     {"Host:example.amazonaws.com", "X-Amz-Date:20150830T123600Z"}, NULL,
     "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" EMPTY,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n" SCOPE
     "\n553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87",
     CRED "SignedHeaders=host;x-amz-date, "
          "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
    {"get-vanilla-query-order-key-case", "GET", "/", "Param2=value2&Param1=value1",
     {"Host:example.amazonaws.com", "X-Amz-Date:20150830T123600Z"}, NULL,
     "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" EMPTY,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n" SCOPE
     "\n816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0",
     CRED "SignedHeaders=host;x-amz-date, "
          "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
    {"get-vanilla-query-order-key", "GET", "/", "Param1=value2&Param1=Value1",
     {"Host:example.amazonaws.com", "X-Amz-Date:20150830T123600Z"}, NULL,
     "GET\n/\nParam1=Value1&Param1=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" EMPTY,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n" SCOPE
     "\n704b4cef673542d84cdff252633f065e8daeba5f168b77116f8b1bcaf3d38f89",
     CRED "SignedHeaders=host;x-amz-date, "
          "Signature=eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1"},
    {"post-x-www-form-urlencoded", "POST", "/", NULL,
     {"Content-Type:application/x-www-form-urlencoded", "Host:example.amazonaws.com",
      "X-Amz-Date:20150830T123600Z"},
     "Param1=value1",
     "POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\n"
     "x-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n"
     "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
     "AWS4-HMAC-SHA256\n20150830T123600Z\n" SCOPE
     "\n42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281",
     CRED "SignedHeaders=content-type;host;x-amz-date, "
          "Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"},
    {"get-header-value-trim", "GET", "/", NULL,
     {"Host:example.amazonaws.com", "My-Header1: value1", "My-Header2: \"a   b   c\"",
      "X-Amz-Date:20150830T123600Z"},
     NULL,
     "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\n"
     "x-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\n" EMPTY,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n" SCOPE
     "\na726db9b0df21c14f559d0a978e563112acb1b9e05476f0a6a1c7d68f28605c7",
     CRED "SignedHeaders=host;my-header1;my-header2;x-amz-date, "
          "Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"},
    {"post-sts-header-before", "POST", "/", NULL,
     {"Host:example.amazonaws.com", "X-Amz-Date:20150830T123600Z", "X-Amz-Security-Token:" TOKEN},
     NULL,
     "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\nx-amz-security-token:" TOKEN
     "\n\nhost;x-amz-date;x-amz-security-token\n" EMPTY,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n" SCOPE
     "\nc237e1b440d4c63c32ca95b5b99481081cb7b13c7e40434868e71567c1a882f6",
     CRED "SignedHeaders=host;x-amz-date;x-amz-security-token, "
          "Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"},
    {"get-space (normalize-path)", "GET", "/example space/", NULL,
     {"Host:example.amazonaws.com", "X-Amz-Date:20150830T123600Z"}, NULL,
     "GET\n/example%20space/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" EMPTY,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n" SCOPE
     "\n63ee75631ed7234ae61b5f736dfc7754cdccfedbff4b5128a915706ee9390d86",
     CRED "SignedHeaders=host;x-amz-date, "
          "Signature=652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"},
    {"get-slashes (normalize-path)", "GET", "//example//", NULL,
     {"Host:example.amazonaws.com", "X-Amz-Date:20150830T123600Z"}, NULL,
     "GET\n/example/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" EMPTY,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n" SCOPE
     "\ncb96b4ac96d501f7c5c15bc6d67b3035061cfced4af6585ad927f7e6c985c015",
     CRED "SignedHeaders=host;x-amz-date, "
          "Signature=9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84"},
    {"get-relative (normalize-path)", "GET", "/example/..", NULL,
     {"Host:example.amazonaws.com", "X-Amz-Date:20150830T123600Z"}, NULL,
     "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" EMPTY,
     "AWS4-HMAC-SHA256\n20150830T123600Z\n" SCOPE
     "\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
     CRED "SignedHeaders=host;x-amz-date, "
          "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
};

static int passed, failed;

static void check(const char *name, const char *what, const char *got, const char *want) {
  if (strcmp(got, want) == 0) {
    passed++;
  } else {
    failed++;
    printf("FAIL %s: %s\n--- got ---\n%s\n--- want ---\n%s\n", name, what, got, want);
  }
}

int main(void) {
  for (size_t i = 0; i < sizeof V / sizeof V[0]; i++) {
    const vector *v = &V[i];
    size_t nh = 0;
    while (nh < 4 && v->headers[nh]) nh++;
    herald_sigv4_req r = {
        .method = v->method, .path = v->path, .query = v->query, .headers = v->headers,
        .nheaders = nh, .body = v->body, .body_len = v->body ? strlen(v->body) : 0,
        .region = "us-east-1", .service = "service", .amz_date = "20150830T123600Z",
    };
    herald_buf creq = HERALD_BUF_INIT, sts = HERALD_BUF_INIT, authz = HERALD_BUF_INIT;
    herald_sigv4_canonical_request(&r, &creq, NULL);
    check(v->name, "canonical request", herald_buf_cstr(&creq), v->creq);
    herald_sigv4_string_to_sign(&r, creq.data, creq.len, &sts);
    check(v->name, "string to sign", herald_buf_cstr(&sts), v->sts);
    herald_sigv4_creds c = {AK, SK, NULL};
    herald_sigv4_authorization(&r, &c, &authz);
    check(v->name, "authorization", herald_buf_cstr(&authz), v->authz);
    herald_buf_free(&creq), herald_buf_free(&sts), herald_buf_free(&authz);
  }

  /* AWS docs, "Derive a signing key for SigV4": the IAM example (20120215, us-east-1, iam). */
  unsigned char key[32];
  herald_sigv4_signing_key(SK, "20120215", "us-east-1", "iam", key);
  char khex[65];
  for (int i = 0; i < 32; i++) sprintf(khex + 2 * i, "%02x", key[i]);
  check("signing-key", "derived key", khex,
        "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");

  /* Wire-encoded path segments are encoded once more (non-S3 double encoding). */
  {
    const char *h[] = {"Host:lambda.us-east-1.amazonaws.com", "X-Amz-Date:20150830T123600Z"};
    herald_sigv4_req r = {.method = "POST", .path = "/2015-03-31/functions/a%3Ab/invocations",
                          .headers = h, .nheaders = 2, .region = "us-east-1",
                          .service = "lambda", .amz_date = "20150830T123600Z"};
    herald_buf creq = HERALD_BUF_INIT;
    herald_sigv4_canonical_request(&r, &creq, NULL);
    check("double-encoding", "canonical uri", strtok(strchr(herald_buf_cstr(&creq), '\n') + 1, "\n"),
          "/2015-03-31/functions/a%253Ab/invocations");
    herald_buf_free(&creq);
  }

  /* S3 rules, AWS's "Signature Calculations for the Authorization Header" example GET Object
   * (examplebucket, test.txt, Range bytes=0-9, payload hash of the empty body). */
  {
    const char *h[] = {"Host:examplebucket.s3.amazonaws.com", "Range:bytes=0-9",
                       "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                       "x-amz-date:20130524T000000Z"};
    herald_sigv4_req r = {.method = "GET", .path = "/test.txt", .headers = h, .nheaders = 4,
                          .region = "us-east-1", .service = "s3", .amz_date = "20130524T000000Z",
                          .s3 = 1};
    herald_buf creq = HERALD_BUF_INIT, sts = HERALD_BUF_INIT, authz = HERALD_BUF_INIT;
    herald_sigv4_canonical_request(&r, &creq, NULL);
    herald_sigv4_string_to_sign(&r, creq.data, creq.len, &sts);
    check("s3-get-object", "string to sign", herald_buf_cstr(&sts),
          "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
          "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
    herald_sigv4_creds c = {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", NULL};
    herald_sigv4_authorization(&r, &c, &authz);
    check("s3-get-object", "authorization", herald_buf_cstr(&authz),
          "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
          "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
          "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    /* and S3 signs an encoded path as sent, not encoded again */
    r.path = "/my%20file.txt";
    herald_buf_free(&creq);
    creq = (herald_buf)HERALD_BUF_INIT;
    herald_sigv4_canonical_request(&r, &creq, NULL);
    check("s3-path", "canonical uri", strtok(strchr(herald_buf_cstr(&creq), '\n') + 1, "\n"), "/my%20file.txt");
    herald_buf_free(&creq), herald_buf_free(&sts), herald_buf_free(&authz);
  }

  /* SQS (JSON protocol) and SNS (Query API, temporary credentials): requests as the sqs and sns
   * sources send them, with values computed independently by botocore's SigV4Auth (1.43) for
   * the same headers, body, date and AWS's example keys. */
  {
    const char *body = "{\"QueueUrl\":\"https://sqs.us-east-1.amazonaws.com/123456789012/orders\","
                       "\"MaxNumberOfMessages\":10,\"WaitTimeSeconds\":20,\"MessageAttributeNames\":[\"All\"]}";
    const char *h[] = {"Content-Type: application/x-amz-json-1.0", "X-Amz-Target: AmazonSQS.ReceiveMessage",
                       "Host: sqs.us-east-1.amazonaws.com", "X-Amz-Date: 20150830T123600Z"};
    herald_sigv4_req r = {.method = "POST", .path = "/", .headers = h, .nheaders = 4, .body = body,
                          .body_len = strlen(body), .region = "us-east-1", .service = "sqs",
                          .amz_date = "20150830T123600Z"};
    herald_buf creq = HERALD_BUF_INIT, sts = HERALD_BUF_INIT, authz = HERALD_BUF_INIT;
    herald_sigv4_canonical_request(&r, &creq, NULL);
    check("sqs-receive", "canonical request", herald_buf_cstr(&creq),
          "POST\n/\n\ncontent-type:application/x-amz-json-1.0\nhost:sqs.us-east-1.amazonaws.com\n"
          "x-amz-date:20150830T123600Z\nx-amz-target:AmazonSQS.ReceiveMessage\n\n"
          "content-type;host;x-amz-date;x-amz-target\n"
          "b8f6b5ba6fbe683f5de706b33dd1f525e05a49e3d870349eaa033261c938f671");
    herald_sigv4_string_to_sign(&r, creq.data, creq.len, &sts);
    check("sqs-receive", "string to sign", herald_buf_cstr(&sts),
          "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/sqs/aws4_request\n"
          "186764ce8766e7e261d48545eb963aa6ffe97b3a2ac5a3b89a58afb95e84a1f6");
    herald_sigv4_creds c = {AK, SK, NULL};
    herald_sigv4_authorization(&r, &c, &authz);
    check("sqs-receive", "authorization", herald_buf_cstr(&authz),
          "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/sqs/aws4_request, "
          "SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
          "Signature=b59d3de4767902a3249d471595cb63cdcd7c013a5a3ddb7df0e13b3dfa31f10f");
    herald_buf_free(&creq), herald_buf_free(&sts), herald_buf_free(&authz);
  }
  {
    const char *body = "Action=Subscribe&Endpoint=https%3A%2F%2Fhooks.example.com%2Fsns&Protocol=https"
                       "&TopicArn=arn%3Aaws%3Asns%3Aus-east-1%3A123456789012%3Auploads&Version=2010-03-31";
    const char *h[] = {"Content-Type: application/x-www-form-urlencoded; charset=utf-8",
                       "Host: sns.us-east-1.amazonaws.com", "X-Amz-Date: 20150830T123600Z",
                       "X-Amz-Security-Token: session-token-example"};
    herald_sigv4_req r = {.method = "POST", .path = "/", .headers = h, .nheaders = 4, .body = body,
                          .body_len = strlen(body), .region = "us-east-1", .service = "sns",
                          .amz_date = "20150830T123600Z"};
    herald_buf creq = HERALD_BUF_INIT, sts = HERALD_BUF_INIT, authz = HERALD_BUF_INIT;
    herald_sigv4_canonical_request(&r, &creq, NULL);
    herald_sigv4_string_to_sign(&r, creq.data, creq.len, &sts);
    check("sns-subscribe", "string to sign", herald_buf_cstr(&sts),
          "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/sns/aws4_request\n"
          "28642f0cfaa4b70979ee6386169d4431256d4082a65d4980632d3a9f37e363ce");
    herald_sigv4_creds c = {AK, SK, "session-token-example"};
    herald_sigv4_authorization(&r, &c, &authz);
    check("sns-subscribe", "authorization", herald_buf_cstr(&authz),
          "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/sns/aws4_request, "
          "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, "
          "Signature=7916a5ca74f2e8a76e1ce24f455bd7d792fa2737ec754a12d3c3590861c4ae8e");
    herald_buf_free(&creq), herald_buf_free(&sts), herald_buf_free(&authz);
  }

  char d[17];
  herald_sigv4_amz_date(1440938160LL * 1000000000LL, d);
  check("amz-date", "format", d, "20150830T123600Z");

  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
