-- triggers/kafka/kafka.lua: the kafka trigger's Lua half (the C is kafka.c): its schema (Argo's
-- KafkaTrigger) and how herald test shows the action.
local _M = {}

_M.argo_order = 6 -- where Argo's TriggerTemplate declares it (lists of types follow Argo)
_M.payload = true -- `payload` parameters build the message

function _M.schema(S)
  local str, int, bool, use, params = S.str, S.int, S.bool, S.use, S.params
  return S.object({
    url = str { required = true }, topic = str { required = true }, partition = int(),
    parameters = params(), requiredAcks = int(), compress = bool(), flushFrequency = int(),
    tls = use(S.TLSConfig), payload = params { required = true }, partitioningKey = str(),
    version = str(), sasl = use(S.SASLConfig),
    schemaRegistry = use(S.SchemaRegistryConfig, { supported = false, what = "Kafka trigger schemaRegistry (Avro encoding)" }),
    headers = S.strmap(), secureHeaders = S.array(S.SecureHeader),
  })
end

function _M.describe(action, spec, D)
  return { type = "kafka", topic = spec.topic, key = spec.partitioningKey or D.null,
    headers = spec.headers or {}, payload = D.body(action) }
end

return _M
