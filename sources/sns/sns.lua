-- sources/sns/sns.lua: the sns event source's Lua half (the C is sns.c): its schema, Argo's
-- SNSEventSource. Data {header, body: the SNS envelope as posted[, metadata]} as Argo; the
-- notification's own message is the envelope's `Message` string (body.Message), which for S3
-- event notifications is itself JSON: see docs/compat.md ("AWS SQS, SNS and S3 notifications").
local _M = {}

_M.what = "AWS SNS event source"
_M.active_active = true -- a webhook: every replica serves it, as Argo

function _M.schema(S)
  local str, secret, bool = S.str, S.secret, S.bool
  return S.object({
    webhook = S.use(S.WebhookContext, { required = true }),
    topicArn = str { required = true, doc = "the topic to subscribe webhook.url + endpoint to" },
    accessKey = secret { doc = "access key id (with secretKey); without: the AWS credential chain" },
    secretKey = secret { doc = "secret access key" },
    region = str { required = true, doc = "the topic's region; signing certificates are accepted from its SNS host only" },
    roleARN = str { doc = "IAM role to assume (STS AssumeRole) for Subscribe/Unsubscribe" },
    validateSignature = bool { doc = "verify each message's SNS signature (SignatureVersion 1 and 2)" },
    endpoint = str { doc = "SNS endpoint URL (emulators, VPC endpoints); default https://sns.<region>.amazonaws.com" },
    metadata = S.es_metadata(),
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
  }, { doc = "an HTTP endpoint subscribed to an AWS SNS topic" })
end

return _M
