-- sources/amqp/amqp.lua: the amqp event source's Lua half (the C is amqp.c): Argo's
-- AMQPEventSource fields and defaults. Leader-elected with replicas (Argo runs it
-- active/passive).
local _M = {}

_M.what = "AMQP event source"

local function check_url(v)
  if not v:match("^amqps?://") then return "not an AMQP URL (amqp://user:pass@host:5672/vhost or amqps://...)" end
end

function _M.schema(S)
  local core = S.core
  local check_args = S.engine_check(function(v)
    if v == "" then return end
    local ok, docs = pcall(core.yaml_load, v, "arguments")
    if not ok or type(docs) ~= "table" or type(docs[1]) ~= "table" or docs[1][1] ~= nil then
      return "not a YAML or JSON map (e.g. '{\"x-max-length\": 1000}')"
    end
    for k, x in pairs(docs[1]) do
      if type(k) ~= "string" then return "argument names must be strings" end
      local t = type(x)
      if t ~= "string" and t ~= "number" and t ~= "boolean" then
        return "argument " .. k .. ": only strings, numbers and booleans are supported by Herald yet"
      end
    end
  end)
  return S.object({
    url = S.str { check = check_url, doc = "amqp://user:password@host:5672/vhost (amqps:// for TLS)" },
    urlSecret = S.secret { doc = "Secret holding the URL (instead of url)" },
    exchangeName = S.str { doc = "exchange to bind the queue to (\"\": the default exchange, no bind)" },
    exchangeType = S.str { required = true, doc = "direct, fanout, topic or headers" },
    routingKey = S.str { required = true, doc = "binding key of the queue" },
    connectionBackoff = S.use(S.Backoff, { doc = "reconnect backoff (Herald retries for ever)" }),
    jsonBody = S.bool { default = false, doc = "the body is JSON: put it in body as is (not JSON: dropped and counted)" },
    tls = S.use(S.TLSConfig),
    metadata = S.es_metadata(),
    exchangeDeclare = S.object({
      durable = S.bool { default = true }, autoDelete = S.bool { default = false },
      internal = S.bool { default = false },
      noWait = S.bool { default = false, doc = "accepted; Herald always waits for the answer" },
    }, { doc = "exchange.declare options (absent: durable)" }),
    queueDeclare = S.object({
      name = S.str { doc = "queue name (\"\": a server-named queue)" },
      durable = S.bool { default = false }, autoDelete = S.bool { default = false },
      exclusive = S.bool { default = false, doc = "(absent block: an exclusive server-named queue, as Argo)" },
      noWait = S.bool { default = false, doc = "accepted; Herald always waits for the answer" },
      arguments = S.str { check = check_args, doc = "x-arguments as a YAML or JSON map in a string" },
    }, { doc = "queue.declare options" }),
    queueBind = S.object({
      noWait = S.bool { default = false, doc = "accepted; Herald always waits for the answer" },
    }),
    consume = S.object({
      consumerTag = S.str(), autoAck = S.bool { default = false, doc = "the broker forgets a delivery as it sends it (absent block: true, as Argo); otherwise Herald acks once the bus holds the event" },
      exclusive = S.bool { default = false }, noLocal = S.bool { default = false },
      noWait = S.bool { default = false, doc = "accepted; Herald always waits for the answer" },
    }, { doc = "basic.consume options" }),
    auth = S.use(S.BasicAuth),
    filter = S.es_filter(),
  }, { doc = "AMQP (RabbitMQ) consumer", exactly_one_of = { "url", "urlSecret" } })
end

return _M
