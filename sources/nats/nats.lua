-- sources/nats/nats.lua: the nats event source's Lua half (the C is nats.c): its schema, Argo's
-- NATSEventsSource unchanged plus Herald's `jetstream` (a durable JetStream consumer, acked once
-- the bus holds the event), and the check that `queue` and `jetstream` are not mixed.
local _M = {}

_M.what = "NATS event source"
-- Not active_active: Argo runs a nats event source on one replica (the elected leader).

function _M.schema(S)
  local str, int = S.str, S.int
  return S.object({
    url = str { required = true, doc = "nats://HOST:PORT (or tls://), several separated by commas" },
    subject = str { required = true, doc = "subject to subscribe to; wildcards * and > allowed" },
    connectionBackoff = S.use(S.Backoff, { doc = "wait between reconnect attempts (Herald reconnects for ever; steps is not a limit)" }),
    jsonBody = S.bool { doc = "the body is JSON: put it in the event as JSON (a body that is not JSON is dropped and counted)" },
    tls = S.use(S.TLSConfig),
    metadata = S.es_metadata(),
    auth = S.use(S.NATSAuth),
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
    queue = str { doc = "queue group: the subscribers of one group share the messages",
      check = function(v) if v == "" then return "queue group cannot be empty if specified" end end },
    jetstream = S.object({
      stream = str { doc = "the stream holding `subject` (default: the one whose subjects match it)" },
      durable = str { doc = "durable consumer name (default herald-<eventsource>-<event>)",
        check = function(v)
          if v == "" or v:find("[^%w_%-]") then return "a durable name holds only letters, digits, - and _" end
        end },
      deliverPolicy = str { enum = { "all", "new" }, default = "all",
        doc = "where a new consumer starts: all (the stream's first message) or new" },
      ackWait = str { default = "30s", doc = "Go duration a message stays unacked before the server redelivers it",
        check = S.engine_check(function(v)
          local ns, err = S.core.duration_check(v)
          if not ns then return "invalid ackWait: " .. err end
          if ns <= 0 then return "ackWait must be positive" end
        end) },
      maxAckPending = int { min = 1, default = 1000, doc = "messages delivered and not yet acked, at most" },
    }, { doc = "Herald extension: read `subject` through a durable JetStream pull consumer and ack each message once the bus holds its event (lossless), instead of a core NATS subscription" }),
  }, { doc = "NATS subscription: each message on subject becomes an event {subject, body, header, metadata}" })
end

--- `queue` is a core NATS queue group; a JetStream durable consumer is shared by whoever pulls
--- from it already, so the two together are refused rather than one silently ignored.
function _M.lint(ctx, spec, L)
  local m = spec.nats
  if type(m) ~= "table" or L.what_is(m, ctx.pos) ~= "mapping" then return end
  for _, ev in ipairs(L.keys_in_order(ctx.pos, m)) do
    local e = m[ev]
    if type(e) == "table" and e.queue ~= nil and type(e.jetstream) == "table" then
      local line, col = L.value_position(ctx.pos, e, "queue")
      ctx.errors[#ctx.errors + 1] = L.format_error(ctx.file, line or 1, col or 1,
        "spec.nats." .. L.show(ev) .. ".queue",
        "queue and jetstream do not go together: replicas pulling from one durable consumer share its messages already; remove queue")
    end
  end
end

return _M
