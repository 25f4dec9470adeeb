-- The JetStream bus under faults: a bounded stream of webhook events, each with a unique
-- sequence number, posted at a steady pace through `herald eventsource` -> JetStream ->
-- `herald sensor` (HTTP trigger with atLeastOnce: true) -> an HTTP sink that records requests.
-- Mid-stream one process is killed or stopped; the checks are counts at the two ends:
--   every seq answered 200 reaches the sink at least once (a 200 means "PubAck received");
--   duplicates stay within the in-flight window (the consumer's MaxAckPending).
-- HERALD_JS_ACK_WAIT_MS shortens the consumer's AckWait so that what a killed sensor had
-- fetched is redelivered within the test, not after the 60 s default.
local H = require "helpers.herald"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"
local socket = require "socket"
local signal = require "posix.signal"

local has_server = os.execute("command -v nats-server >/dev/null 2>&1")
has_server = has_server == true or has_server == 0

local N = 600            -- events per test
local RATE = 300         -- posts per second
local INFLIGHT = 256     -- the sensor's consumer MaxAckPending (DEFAULT_INFLIGHT in the bus)
local ENV = { HERALD_JS_ACK_WAIT_MS = "2000" }

local function start_nats(port, store, extra)
  local args = { "-a", "127.0.0.1", "-p", tostring(port), "-js", "-sd", store }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local srv = H.spawn("nats-server", args)
  H.wait_port(port, 10)
  return srv
end

local function start_sensor(dir, url, env)
  local p = H.start({ "sensor", dir, "--bus", url }, { env = env or ENV })
  H.wait_until(function()
    if p:exited() then error("herald sensor exited\n" .. p:describe()) end
    return p:count(" ready on ") >= 1
  end, 30, function() return "consumer ready\n" .. p:describe() end)
  return p
end

local function start_es(dir, url, env)
  local p = H.start({ "eventsource", dir, "--bus", url }, { env = env or ENV })
  p:wait_for("listening for", { timeout = 10 })
  return p
end

local function post(port, seq, timeout)
  return H.http{ port = port, method = "POST", path = "/hook", timeout = timeout or 10,
    body = cjson.encode{ seq = seq }, headers = { ["Content-Type"] = "application/json" } }
end

-- A raw request on the NATS text protocol: returns the decoded JSON reply or nil, err.
local function nats_request(port, subject, payload)
  local c = socket.tcp()
  c:settimeout(2)
  if not c:connect("127.0.0.1", port) then return nil, "connect" end
  local info = c:receive("*l")
  if not info then c:close() return nil, "no INFO" end
  c:send('CONNECT {"verbose":false,"pedantic":false,"protocol":1,"lang":"lua"}\r\n')
  c:send("SUB _INBOX.res 1\r\n")
  c:send(("PUB %s _INBOX.res %d\r\n%s\r\n"):format(subject, #payload, payload))
  while true do
    local line, err = c:receive("*l")
    if not line then c:close() return nil, err end
    if line == "PING" then c:send("PONG\r\n") end
    local size = line:match("^MSG %S+ %S+ (%d+)$")
    if size then
      local body = c:receive(tonumber(size))
      c:close()
      local ok, v = pcall(cjson.decode, body or "")
      return ok and v or nil, "bad reply"
    end
  end
end

-- Sets up sink, sensor and eventsource on url; returns a context for run_stream.
local function setup(url, env, sink_opts)
  local ctx = { hook_port = H.free_port(), sdir = H.tmpdir(), edir = H.tmpdir(), url = url, env = env }
  ctx.sink = sink_client.start(sink_opts)
  H.write(ctx.sdir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = { { name = "call",
    body = ("        http:\n          url: http://127.0.0.1:%d/x\n          method: POST\n" ..
      "          payload:\n            - src: {dependencyName: d, dataKey: body.seq}\n" ..
      "              dest: seq\n"):format(ctx.sink.port),
    extra = "      atLeastOnce: true\n" } } })
  H.write(ctx.edir .. "/es.yaml", H.webhook_es{ port = ctx.hook_port })
  ctx.sensor = start_sensor(ctx.sdir, url, env)
  ctx.es = start_es(ctx.edir, url, env)
  ctx.nats_port = tonumber(url:match(":(%d+)$"))
  return ctx
end

-- Posts seq 1..N at RATE/s; at_seq[k](ctx) runs just before seq k is posted. Records statuses.
local function run_stream(ctx, at_seq)
  ctx.status = {}
  local t0 = H.now()
  for seq = 1, N do
    if at_seq[seq] then at_seq[seq](ctx) end
    local due = t0 + seq / RATE
    local wait = due - H.now()
    if wait > 0 then H.sleep_poll(wait) end
    ctx.status[seq] = post(ctx.hook_port, seq) or "none"
  end
end

-- Waits until every seq answered 200 is at the sink; returns accepted, unique, duplicates.
local function check_sink(ctx, timeout)
  local accepted = {}
  for seq, st in pairs(ctx.status) do
    if st == 200 then accepted[#accepted + 1] = seq end
  end
  local seen, missing, total
  H.wait_until(function()
    seen, total = {}, 0
    for _, r in ipairs(ctx.sink.requests()) do
      local ok, b = pcall(cjson.decode, r.body)
      local sq = ok and type(b) == "table" and tonumber(b.seq)
      if sq then
        seen[sq] = (seen[sq] or 0) + 1
        total = total + 1
      end
    end
    missing = {}
    for _, seq in ipairs(accepted) do
      if not seen[seq] then missing[#missing + 1] = seq end
    end
    return #missing == 0
  end, timeout or 30, function()
    local r = ctx.sink.requests()
    return ("%d accepted seqs at the sink (%d requests, last %s); missing %d: %s\n%s\n%s"):format(#accepted,
      #r, r[#r] and cjson.encode(r[#r]) or "-", #missing,
      table.concat(missing, ",", 1, math.min(#missing, 30)), ctx.sensor:describe(), ctx.es:describe())
  end)
  -- then wait until the consumer owes nothing (redeliveries of what a dead sensor had fetched
  -- come after AckWait), and count again
  H.wait_until(function()
    local v = nats_request(ctx.nats_port, "$JS.API.CONSUMER.INFO.default." .. H.consumer_name("s", "call", "d"), "")
    return v and v.num_ack_pending == 0 and v.num_pending == 0
  end, timeout or 30, "the consumer to settle")
  seen, total = {}, 0
  for _, r in ipairs(ctx.sink.requests()) do
    local ok, b = pcall(cjson.decode, r.body)
    local sq = ok and type(b) == "table" and tonumber(b.seq)
    if sq then
      seen[sq] = (seen[sq] or 0) + 1
      total = total + 1
    end
  end
  local unique = 0
  for _ in pairs(seen) do unique = unique + 1 end
  return #accepted, unique, total - unique
end

local function statuses(ctx)
  local c = {}
  for _, st in pairs(ctx.status) do c[tostring(st)] = (c[tostring(st)] or 0) + 1 end
  return c
end

local function teardown(ctx)
  if ctx.es then ctx.es:kill() end
  if ctx.sensor then ctx.sensor:kill() end
  if ctx.sink then ctx.sink.stop() end
end

describe("jetstream bus under faults", function()
  if not has_server then
    pending("nats-server is not installed")
    return
  end

  local nats_port, url, store, srv, ctx

  before_each(function()
    nats_port = H.free_port()
    url = "nats://127.0.0.1:" .. nats_port
    store = H.tmpdir()
    srv = start_nats(nats_port, store)
  end)

  after_each(function()
    if ctx then teardown(ctx) end
    ctx = nil
    srv:kill()
  end)

  it("kill -9 of the sensor mid-stream: every accepted event triggered, duplicates bounded", function()
    -- a sink answering after 30 ms keeps actions in flight when the sensor dies
    ctx = setup(url, nil, { delay_ms = 30 })
    run_stream(ctx, {
      [200] = function(c) c.sensor:kill() end,
      [400] = function(c) c.sensor = start_sensor(c.sdir, c.url) end,
    })
    local c = statuses(ctx)
    assert.equal(N, c["200"], cjson.encode(c))
    local accepted, unique, dups = check_sink(ctx, 30)
    print(("\n  sensor kill: accepted=%d at sink unique=%d duplicates=%d"):format(accepted, unique, dups))
    assert.equal(N, unique)
    assert.is_true(dups <= INFLIGHT, dups .. " duplicates")
  end)

  it("kill -9 of the eventsource mid-stream: no event that got 200 is lost", function()
    ctx = setup(url)
    run_stream(ctx, {
      [300] = function(c)
        -- requests in flight when the process dies: their outcome is whatever was read
        local conns = {}
        for i = 1, 8 do
          local s = socket.tcp()
          s:settimeout(5)
          assert(s:connect("127.0.0.1", c.hook_port))
          local body = cjson.encode{ seq = N + i }
          s:send(("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
            "Content-Length: %d\r\n\r\n%s"):format(#body, body))
          conns[i] = s
        end
        signal.kill(c.es.pid, signal.SIGKILL)
        c.es:wait_exit(5)
        for i, s in ipairs(conns) do
          c.status[N + i] = H.read_response(s) or "none"
          s:close()
        end
        c.es = start_es(c.edir, c.url)
      end,
    })
    local c = statuses(ctx)
    assert.equal(N, (c["200"] or 0) - (function()
      local k = 0
      for i = 1, 8 do if ctx.status[N + i] == 200 then k = k + 1 end end
      return k
    end)(), cjson.encode(c))
    local accepted, unique, dups = check_sink(ctx, 30)
    print(("\n  eventsource kill: accepted=%d (in flight at the kill: %s) at sink unique=%d duplicates=%d")
      :format(accepted, cjson.encode(c), unique, dups))
    assert.is_true(unique >= accepted)
    assert.is_true(dups <= INFLIGHT)
  end)

  it("nats-server restarted mid-stream: 503 while down, nothing accepted lost, both recover", function()
    ctx = setup(url)
    local down_at
    run_stream(ctx, {
      [200] = function() srv:kill() down_at = H.now() end,
      [260] = function()
        -- 60 posts later (about 0.2 s): bring it back on the same store
        srv = start_nats(nats_port, store)
      end,
    })
    local c = statuses(ctx)
    assert.is_true((c["503"] or 0) > 0, cjson.encode(c))
    for st in pairs(c) do assert.is_true(st == "200" or st == "503", cjson.encode(c)) end
    -- both processes recovered: the tail of the stream was accepted and triggered
    for seq = N - 50, N do assert.equal(200, ctx.status[seq], "seq " .. seq .. " " .. cjson.encode(c)) end
    local accepted, unique, dups = check_sink(ctx, 30)
    print(("\n  nats-server restart: statuses %s, accepted=%d at sink unique=%d duplicates=%d (down %.2f s)")
      :format(cjson.encode(c), accepted, unique, dups, H.now() - down_at))
    assert.is_true(dups <= INFLIGHT)
    assert.is_false(ctx.es:exited())
    assert.is_false(ctx.sensor:exited())
  end)
end)

describe("jetstream bus on a three-node cluster (stream replicas 3)", function()
  if not has_server then
    pending("nats-server is not installed")
    return
  end

  local nodes, ctx

  after_each(function()
    if ctx then teardown(ctx) end
    ctx = nil
    for _, n in ipairs(nodes or {}) do n.proc:kill() end
  end)

  it("stop the stream leader mid-stream: counts hold", function()
    nodes = {}
    for i = 1, 3 do
      nodes[i] = { port = H.free_port(), cport = H.free_port(), name = "n" .. i, store = H.tmpdir() }
    end
    local routes = {}
    for i = 1, 3 do routes[i] = "nats://127.0.0.1:" .. nodes[i].cport end
    for i = 1, 3 do
      local n = nodes[i]
      n.proc = H.spawn("nats-server", { "-a", "127.0.0.1", "-p", tostring(n.port), "-js", "-sd", n.store,
        "--server_name", n.name, "--cluster_name", "herald", "--cluster", routes[i],
        "--routes", table.concat(routes, ",") })
    end
    for i = 1, 3 do H.wait_port(nodes[i].port, 10) end
    local env = { HERALD_JS_ACK_WAIT_MS = "2000", HERALD_JS_REPLICAS = "3" }
    -- eventsource and sensor on different nodes; nats.c learns the others from INFO
    ctx = setup("nats://127.0.0.1:" .. nodes[1].port, env)
    local info = H.wait_until(function()
      local v = nats_request(nodes[2].port, "$JS.API.STREAM.INFO.default", "")
      return v and v.cluster and v.cluster.leader and v
    end, 20, "stream info with a leader")
    assert.equal(3, info.config.num_replicas)
    local leader
    run_stream(ctx, {
      [200] = function()
        local v = assert(nats_request(nodes[3].port, "$JS.API.STREAM.INFO.default", ""))
        for _, n in ipairs(nodes) do
          if n.name == v.cluster.leader then leader = n end
        end
        assert(leader, "leader " .. tostring(v.cluster.leader))
        leader.proc:stop()
      end,
    })
    local c = statuses(ctx)
    for st in pairs(c) do assert.is_true(st == "200" or st == "503", cjson.encode(c)) end
    for seq = N - 50, N do assert.equal(200, ctx.status[seq], "seq " .. seq .. " " .. cjson.encode(c)) end
    ctx.nats_port = leader == nodes[1] and nodes[2].port or nodes[1].port
    local accepted, unique, dups = check_sink(ctx, 40)
    print(("\n  cluster, leader %s stopped: statuses %s, accepted=%d at sink unique=%d duplicates=%d")
      :format(leader.name, cjson.encode(c), accepted, unique, dups))
    assert.is_true(dups <= INFLIGHT)
  end)
end)
