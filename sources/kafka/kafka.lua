-- sources/kafka/kafka.lua: the kafka event source's Lua half (the C is kafka.c): its schema
-- (Argo's KafkaEventSource) and the translation of Argo's `config` (sarama.Config overrides in
-- YAML) into librdkafka properties.
--
-- `config` is YAML text that Argo decodes into a sarama.Config with viper (keys match the Go
-- field names case-insensitively; durations are Go duration strings or nanoseconds). Herald's
-- consumer is librdkafka, so each setting that has a librdkafka equivalent is mapped (MAP
-- below); every other one is refused at load with its file:line:col, never dropped quietly.
-- kafka.c calls rdkafka_props() at start to get the same mapping.
local _M = {}

local fmt, lower, tostring, type, pairs, ipairs = string.format, string.lower, tostring, type, pairs, ipairs
local floor = math.floor

_M.what = "Kafka event source"
-- not active_active: Argo runs the kafka source on the elected leader only (active/passive)

local has_core, core = pcall(require, "herald.core")

-- value converters: return the librdkafka value, or nil and why
local function dur_ms(v)
  local ns
  if type(v) == "number" then ns = v
  elseif type(v) == "string" then
    if not has_core then return "0" end
    local n, err = core.duration_check(v)
    if not n then return nil, "not a Go duration (" .. tostring(err) .. ")" end
    ns = n
  else return nil, "expected a duration such as 10s" end
  if ns < 0 then return nil, "must not be negative" end
  return fmt("%d", floor(ns / 1e6))
end
local function int_(v)
  local n = tonumber(v)
  if not n or n ~= floor(n) then return nil, "expected an integer" end
  return fmt("%d", n)
end
local function bool_(v)
  if v == true or v == "true" then return "true" end
  if v == false or v == "false" then return "false" end
  return nil, "expected true or false"
end
local function str_(v)
  if type(v) ~= "string" and type(v) ~= "number" then return nil, "expected a string" end
  return tostring(v)
end
local function keepalive(v)
  local ms, err = dur_ms(v)
  if not ms then return nil, err end
  return ms ~= "0" and "true" or "false"
end
local function initial(v)
  local n = tonumber(v)
  if n == -2 then return "earliest" end
  if n == -1 then return "latest" end
  return nil, "expected -2 (OffsetOldest) or -1 (OffsetNewest)"
end
local function isolation(v)
  local n = tonumber(v)
  if n == 0 then return "read_uncommitted" end
  if n == 1 then return "read_committed" end
  return nil, "expected 0 (ReadUncommitted) or 1 (ReadCommitted)"
end

-- sarama.Config path (lower case, as viper sees it) -> librdkafka property and converter
local MAP = {
  ["clientid"] = { "client.id", str_ },
  ["rackid"] = { "client.rack", str_ },
  ["net.maxopenrequests"] = { "max.in.flight.requests.per.connection", int_ },
  ["net.dialtimeout"] = { "socket.connection.setup.timeout.ms", dur_ms },
  ["net.readtimeout"] = { "socket.timeout.ms", dur_ms },
  ["net.keepalive"] = { "socket.keepalive.enable", keepalive },
  ["metadata.retry.backoff"] = { "retry.backoff.ms", dur_ms },
  ["metadata.refreshfrequency"] = { "topic.metadata.refresh.interval.ms", dur_ms },
  ["metadata.allowautotopiccreation"] = { "allow.auto.create.topics", bool_ },
  ["consumer.fetch.min"] = { "fetch.min.bytes", int_ },
  ["consumer.fetch.default"] = { "max.partition.fetch.bytes", int_ },
  ["consumer.fetch.max"] = { "fetch.max.bytes", int_ },
  ["consumer.retry.backoff"] = { "fetch.error.backoff.ms", dur_ms },
  ["consumer.maxwaittime"] = { "fetch.wait.max.ms", dur_ms },
  ["consumer.isolationlevel"] = { "isolation.level", isolation },
  ["consumer.offsets.initial"] = { "auto.offset.reset", initial },
  ["consumer.offsets.autocommit.interval"] = { "auto.commit.interval.ms", dur_ms },
  ["consumer.group.session.timeout"] = { "session.timeout.ms", dur_ms },
  ["consumer.group.heartbeat.interval"] = { "heartbeat.interval.ms", dur_ms },
  ["consumer.group.rebalance.timeout"] = { "max.poll.interval.ms", dur_ms },
  ["consumer.group.instanceid"] = { "group.instance.id", str_ },
}
-- refused with a pointer to the field that does it
local INSTEAD = {
  ["net.sasl"] = "use the sasl field",
  ["net.tls"] = "use the tls field",
  ["version"] = "use the version field",
  ["consumer.group.rebalance.strategy"] = "use consumerGroup.rebalanceStrategy",
  ["consumer.group.rebalance.groupstrategies"] = "use consumerGroup.rebalanceStrategy",
  ["consumer.offsets.autocommit.enable"] = "Herald commits each offset once the bus holds its event",
}

local function mapped_list()
  local t = {}
  for k in pairs(MAP) do t[#t + 1] = k end
  table.sort(t)
  return t
end

-- The librdkafka properties the config text maps to, and the settings refused.
-- Returns props ({ {name, value, path} ... } in text order), problems ({ {line, col, path,
-- msg} ... } with line/col inside the text, 1-based), or nil, err when it is not YAML.
function _M.translate(text)
  if not has_core then return {}, {} end
  local docs, pos = core.yaml_load(text, "config")
  if not docs then return nil, tostring(pos) end
  local props, problems = {}, {}
  local doc = docs[1]
  if doc == nil then return props, problems end
  local function where(tbl, key)
    local p = pos[tbl]
    local k = p and p.keys and p.keys[key]
    if k then return k.line, k.col end
    return p and p.line or 1, p and p.col or 1
  end
  if type(doc) ~= "table" then
    problems[1] = { line = 1, col = 1, path = "", msg = "expected a YAML mapping of sarama.Config fields" }
    return props, problems
  end
  local function walk(tbl, prefix, shown)
    local keys = {}
    local p = pos[tbl]
    if p and p.order then keys = p.order else for k in pairs(tbl) do keys[#keys + 1] = k end end
    for _, k in ipairs(keys) do
      local v = tbl[k]
      local path = prefix .. lower(tostring(k))
      local show = shown .. tostring(k)
      local line, col = where(tbl, k)
      local m = MAP[path]
      local instead = INSTEAD[path]
      if m then
        local val, err = m[2](v)
        if val then props[#props + 1] = { m[1], val, show }
        else problems[#problems + 1] = { line = line, col = col, path = show, msg = err } end
      elseif instead then
        problems[#problems + 1] = { line = line, col = col, path = show,
          msg = "not taken from config by Herald: " .. instead }
      elseif type(v) == "table" and next(v) ~= nil and #v == 0 then
        walk(v, path .. ".", show .. ".")
      else
        problems[#problems + 1] = { line = line, col = col, path = show,
          msg = "has no librdkafka equivalent in Herald (the sarama settings it maps: " ..
            table.concat(mapped_list(), ", ") .. ")" }
      end
    end
  end
  walk(doc, "", "")
  return props, problems
end

--- For kafka.c: the config text's librdkafka properties as a flat list {name1, value1, ...}.
function _M.rdkafka_props(text)
  local props = _M.translate(text) or {}
  local out = {}
  for _, p in ipairs(props) do
    out[#out + 1] = p[1]
    out[#out + 1] = p[2]
  end
  return out
end

-- sarama.ParseKafkaVersion: 0.X.Y.Z before 1.0, X.Y.Z after
local function version_check(v)
  if v == "" then return nil end
  if v:match("^0%.%d+%.%d+%.%d+$") or v:match("^[1-9]%d*%.%d+%.%d+$") then return nil end
  return "invalid version `" .. v .. "` (Argo's Kafka versions look like 2.5.0, or 0.10.2.0 before 1.0)"
end

function _M.schema(S)
  local str, int, bool, use, object = S.str, S.int, S.bool, S.use, S.object
  local group = object({
    groupName = str { required = true, doc = "consumer group name" },
    oldest = bool { default = false, doc = "a new group starts from the oldest offset (else the newest)" },
    rebalanceStrategy = str { default = "range", doc = "sticky (librdkafka's cooperative-sticky), roundrobin or range",
      check = function(v)
        if v ~= "" and v ~= "sticky" and v ~= "roundrobin" and v ~= "range" then
          return "rebalanceStrategy must be sticky, roundrobin or range"
        end
      end },
  }, { doc = "Kafka consumer group" })
  local sasl = use(S.SASLConfig)
  sasl.fields = {}
  for k, f in pairs(S.SASLConfig.fields) do sasl.fields[k] = f end
  sasl.fields.mechanism = str { default = "PLAIN", doc = "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    check = function(v)
      if v == "OAUTHBEARER" or v == "GSSAPI" then
        return "sasl.mechanism " .. v .. " is not supported by Herald yet (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 are)"
      end
      if v ~= "" and v ~= "PLAIN" and v ~= "SCRAM-SHA-256" and v ~= "SCRAM-SHA-512" then
        return "sasl.mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
      end
    end }
  return object({
    url = str { required = true, doc = "brokers, comma separated (host:port,host:port)" },
    partition = str { doc = "the one partition to read when there is no consumerGroup",
      check = function(v)
        local n = tonumber(v)
        if v ~= "" and (not v:match("^%s*[+-]?%d+%s*$") or n < 0 or n > 2147483647) then
          return "partition must be a partition number such as \"0\""
        end
      end },
    topic = str { required = true, doc = "topic to consume" },
    connectionBackoff = use(S.Backoff, { doc = "reconnect backoff: librdkafka's reconnect.backoff.ms (duration) up to 60 s" }),
    tls = use(S.TLSConfig),
    jsonBody = bool { default = false, doc = "the body is JSON: put it in the event as JSON, not base64" },
    metadata = S.es_metadata(),
    consumerGroup = use(group),
    limitEventsPerSecond = int { min = 0, doc = "at most this many events a second (0: no limit)" },
    version = str { default = "1.0.0", doc = "Kafka version (librdkafka's broker.version.fallback)",
      check = version_check },
    sasl = sasl,
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
    config = str { doc = "sarama.Config overrides (YAML); the ones with a librdkafka equivalent are mapped" },
    schemaRegistry = use(S.SchemaRegistryConfig, { supported = false, what = "Kafka schemaRegistry (Avro to JSON)" }),
    awsMskIamAuth = object({ region = str { required = true } },
      { supported = false, what = "Kafka awsMskIamAuth (SASL/OAUTHBEARER with AWS IAM)" }),
  }, { doc = "consumes a Kafka topic (consumer group, or one partition)" })
end

-- Where a position inside the config text is in the file: a block scalar (config: |) starts
-- on the line after its indicator, indented; any other style points at the value.
local function file_position(ctx, vline, vcol, line, col)
  if not vline then return nil end
  local text = has_core and core.read_file(ctx.file)
  if text then
    local n, first = 0, nil
    local indicator
    for l in (text .. "\n"):gmatch("([^\n]*)\n") do
      n = n + 1
      if n == vline then indicator = l:sub(vcol, vcol) end
      if n == vline + 1 then first = l break end
    end
    if (indicator == "|" or indicator == ">") and first then
      local indent = #first:match("^ *")
      return vline + line, indent + col
    end
  end
  return vline, vcol
end

--- Argo's checks that span fields, and the config keys, before the schema walk: each with its
--- file:line:col.
function _M.lint(ctx, spec, L)
  local m = spec.kafka
  if type(m) ~= "table" or L.what_is(m, ctx.pos) ~= "mapping" then return end
  for _, ev in ipairs(L.keys_in_order(ctx.pos, m)) do
    local e = m[ev]
    if type(e) == "table" and L.what_is(e, ctx.pos) == "mapping" then
      local path = "spec.kafka." .. L.show(ev)
      local part = e.partition
      if (part == nil or part == "") and not L.has_key(ctx.pos, e, "consumerGroup") then
        L.err_table(ctx, e, path, "consumerGroup or partition must be specified (as in Argo)")
      end
      if type(part) == "number" then e.partition = fmt("%d", part) end -- partition: 0 unquoted
      local cfg = e.config
      if type(cfg) == "string" and cfg ~= "" then
        local vline, vcol = L.value_position(ctx.pos, e, "config")
        local _, problems = _M.translate(cfg)
        if not _ then
          ctx.errors[#ctx.errors + 1] = L.format_error(ctx.file, vline, vcol, path .. ".config",
            "not YAML: " .. tostring(problems))
        else
          for _, p in ipairs(problems) do
            local line, col = file_position(ctx, vline, vcol, p.line, p.col)
            ctx.errors[#ctx.errors + 1] = L.format_error(ctx.file, line, col,
              path .. ".config" .. (p.path ~= "" and (" " .. p.path) or ""), p.msg)
          end
        end
      end
    end
  end
end

return _M
