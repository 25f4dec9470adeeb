-- sources/sqs/sqs.lua: the sqs event source's Lua half (the C is sqs.c): its schema, Argo's
-- SQSEventSource. Every field runs; data {messageId, messageAttributes, body[, metadata]}.
local _M = {}

_M.what = "AWS SQS event source"
-- Argo runs sqs on every replica (SQS hands each message to one reader)
_M.active_active = true

function _M.schema(S)
  local str, secret, bool, int = S.str, S.secret, S.bool, S.int
  return S.object({
    accessKey = secret { doc = "access key id (with secretKey); without: the AWS credential chain (environment, web identity token file, instance metadata)" },
    secretKey = secret { doc = "secret access key" },
    sessionToken = secret { doc = "session token of temporary keys" },
    region = str { required = true, doc = "AWS region, e.g. us-east-1" },
    queue = str { required = true, doc = "queue name" },
    queueAccountId = str { doc = "account that owns the queue (another account's queue)" },
    waitTimeSeconds = int { min = 0, max = 20, doc = "long-poll wait of each receive (0: 3 s, as Argo)" },
    roleARN = str { doc = "IAM role to assume (STS AssumeRole) with the credentials above" },
    jsonBody = bool { doc = "the body is JSON: put it in the event as JSON, not base64" },
    dlq = bool { doc = "a message that cannot become an event stays in the queue for its redrive policy (dead-letter queue) instead of being deleted" },
    endpoint = str { doc = "SQS endpoint URL (emulators, VPC endpoints); default https://sqs.<region>.amazonaws.com" },
    metadata = S.es_metadata(),
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
  }, { doc = "messages of an AWS SQS queue, deleted once the bus holds them" })
end

return _M
