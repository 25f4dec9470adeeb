-- sources/redisStream/redisStream.lua: the redisStream event source's Lua half (the C is
-- redisStream.c): Argo's RedisStreamEventSource (XREADGROUP on `streams` in one consumer
-- group, XACK once the bus holds the event). Leader-elected with replicas (Argo: active/passive).
local _M = {}

_M.what = "Redis Streams event source"

function _M.schema(S)
  local redis = require "herald.sources.redis"
  local f = redis.common_fields(S)
  f.streams = S.strings { required = true, nonempty_items = true,
                          doc = "streams to read; one XREADGROUP reads them all" }
  f.maxMsgCountPerRead = S.int { min = 0, default = 10,
                                 doc = "COUNT of each XREADGROUP, per stream (0: 10)" }
  f.consumerGroup = S.str { default = "argo-events-cg",
                            doc = "consumer group, created at $ (with MKSTREAM) when missing" }
  return S.object(f, { doc = "Redis Streams consumer group" })
end

function _M.lint(ctx, spec, L)
  require("herald.sources.redis").lint_events(ctx, spec, L, "redisStream")
end

return _M
