-- spec/sources/redisStream/redisStream_spec.lua: the redisStream event source
-- (sources/redisStream/) against a real redis-server: Argo's example shape, the data as Argo
-- marshals it (values' keys sorted, a repeated field's last value, metadata), the consumer
-- group made when missing, this consumer's pending entries read first, XACK once the bus holds
-- the event, an ACL user and a db, the server restarted (reconnects by itself), and kill -9
-- of herald mid-stream on a durable bus: every entry XADDed reaches an HTTP sink after a
-- restart (duplicates counted, none lost).
local H = require "helpers.herald"
local R = require "helpers.redis_peer"
local sink_client = require "helpers.sink_client"

local function es(addr, extra, name)
  return ("apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: %s\nspec:\n  redisStream:\n    example:\n      hostAddress: %s\n%s")
    :format(name or "rs", addr, extra or "      streams: [S]\n")
end

local function sensor()
  return H.sensor { name = "s", deps = { { name = "d", es = "rs", event = "example" } } }
end

local function gauge(p)
  return H.metrics(p)['herald_eventsource_connected{eventsource_name="rs",event_name="example"}']
end

-- number of entries pending in group g of stream s
local function pending_count(srv, s, g, cli_db)
  local out = cli_db and srv.cmd("-n", cli_db, "XPENDING", s, g) or srv.cmd("XPENDING", s, g)
  return tonumber(out:match("^(%d+)"))
end

describe("redisStream source", function()
  if not R.available() then
    it("needs redis-server", function() pending("redis-server and redis-cli are not installed (scripts/install-deps.sh test)") end)
    return
  end
  local srv
  setup(function() srv = R.start() end)
  teardown(function() if srv then srv.stop() end end)

  it("runs Argo's example shape: the group is made, entries fire, each is acknowledged", function()
    local dir = H.tmpdir()
    local ex = H.read(H.source_dir .. "/examples/redisStream/redis-streams.yaml")
    H.write(dir .. "/es.yaml", (ex:gsub("hostAddress: [^\n]+", "hostAddress: " .. srv.addr, 1)))
    local p = H.start { "run", dir }
    p:wait_for("created consumer group argo-events-cg on stream FOO", { timeout = 10 })
    srv.cmd("XADD", "FOO", "1-1", "kind", "refund", "id", "1")
    srv.cmd("XADD", "FOO", "1-2", "kind", "order", "id", "2")
    local f = H.wait_firings(p, 1, 5)
    local ev = f[1].events["test-dep"]
    assert.equal("redisStream", ev.type)
    assert.equal("redis-stream", ev.source)
    assert.same({ stream = "FOO", message_id = "1-2", values = { kind = "order", id = "2" } }, ev.data)
    H.wait_until(function() return pending_count(srv, "FOO", "argo-events-cg") == 0 end, 5, "both acknowledged")
    assert.equal(1, #H.firings(p))
    p:stop()
  end)

  it("writes values as Go's map (sorted, the last of a repeated field), metadata, several streams", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(srv.addr, "      streams: [A, B]\n      consumerGroup: g1\n      metadata: {team: x, app: y}\n") .. "---\n" .. sensor())
    local p = H.start { "run", dir }
    p:wait_for("created consumer group g1 on stream B", { timeout = 10 })
    srv.cmd("XADD", "A", "5-1", "z", "1", "a", "2", "a", "3")
    srv.cmd("XADD", "B", "6-1", "k", "v")
    local f = H.wait_firings(p, 2, 5)
    table.sort(f, function(x, y) return x.events.d.data.stream < y.events.d.data.stream end)
    assert.same({ stream = "A", message_id = "5-1", values = { a = "3", z = "1" }, metadata = { app = "y", team = "x" } }, f[1].events.d.data)
    assert.same({ k = "v" }, f[2].events.d.data.values)
    local raw = p:output("stdout")
    assert.truthy(raw:find('"values":{"a":"3","z":"1"},"metadata":{"app":"y","team":"x"}', 1, true), raw)
    H.wait_until(function() return pending_count(srv, "A", "g1") == 0 and pending_count(srv, "B", "g1") == 0 end, 5, "acknowledged")
    p:stop()
  end)

  it("reads this consumer's pending entries first (read before a crash, never acknowledged)", function()
    srv.cmd("XGROUP", "CREATE", "P", "argo-events-cg", "$", "MKSTREAM")
    for i = 1, 3 do srv.cmd("XADD", "P", "7-" .. i, "n", tostring(i)) end
    -- another process read them as argo-events-worker and died before XACK
    srv.cmd("XREADGROUP", "GROUP", "argo-events-cg", "argo-events-worker", "COUNT", "10", "STREAMS", "P", ">")
    assert.equal(3, pending_count(srv, "P", "argo-events-cg"))
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(srv.addr, "      streams: [P]\n      maxMsgCountPerRead: 2\n") .. "---\n" .. sensor())
    local p = H.start { "run", dir }
    local f = H.wait_firings(p, 3, 10)
    for i = 1, 3 do assert.equal(tostring(i), f[i].events.d.data.values.n) end
    H.wait_until(function() return pending_count(srv, "P", "argo-events-cg") == 0 end, 5, "acknowledged")
    srv.cmd("XADD", "P", "8-1", "n", "4")
    assert.equal("4", H.wait_firings(p, 4, 5)[4].events.d.data.values.n)
    p:stop()
  end)

  it("authenticates as an ACL user and reads the db it is given", function()
    local auth = R.start { args = { "--requirepass", "pw", "--user", "bob", "on", ">bobpw", "~*", "&*", "+@all" },
                           cli = { "-a", "pw" } }
    local dir = H.tmpdir()
    local secrets = dir .. "/secrets"
    os.execute(("mkdir -p %s/bob"):format(secrets))
    H.write(secrets .. "/bob/password", "bobpw\n")
    H.write(dir .. "/es.yaml", es(auth.addr, "      streams: [S]\n      db: 3\n      username: bob\n      password: {name: bob, key: password}\n") .. "---\n" .. sensor())
    local p = H.start { "run", dir, "--secrets-dir", secrets }
    p:wait_for("created consumer group argo-events-cg on stream S", { timeout = 10 })
    auth.cmd("-n", "3", "XADD", "S", "9-1", "who", "bob")
    assert.equal("bob", H.wait_firings(p, 1, 5)[1].events.d.data.values.who)
    assert.equal("0", auth.cmd("XLEN", "S")) -- db 0 untouched
    H.wait_until(function() return pending_count(auth, "S", "argo-events-cg", "3") == 0 end, 5, "acknowledged")
    p:stop()
    auth.stop()
  end)

  it("reconnects by itself when the server restarts, and makes the group again", function()
    local own = R.start()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(own.addr) .. "---\n" .. sensor())
    local p = H.start { "run", dir }
    p:wait_for("created consumer group argo-events-cg on stream S", { timeout = 10 })
    for i = 1, 5 do own.cmd("XADD", "S", "*", "i", tostring(i)) end
    H.wait_firings(p, 5, 5)
    assert.equal(1, gauge(p))
    own.restart() -- no persistence: the stream and its group are gone
    p:wait_for("not connected:", { timeout = 10 })
    H.wait_until(function() return p:count("created consumer group argo-events-cg on stream S") == 2 end, 15, "group made again")
    assert.equal(1, gauge(p))
    for i = 6, 8 do own.cmd("XADD", "S", "*", "i", tostring(i)) end
    local f = H.wait_firings(p, 8, 5)
    assert.equal("8", f[8].events.d.data.values.i)
    p:stop()
    own.stop()
  end)

  it("loses nothing when herald is killed mid-stream (durable bus, small bus): all reach the sink", function()
    local N = 4000
    local sink = sink_client.start {}
    local dir, busdir = H.tmpdir(), H.tmpdir()
    H.write(dir .. "/es.yaml", es(srv.addr, "      streams: [K]\n      maxMsgCountPerRead: 50\n"))
    H.write(dir .. "/s.yaml", H.sensor { name = "s", deps = { { name = "d", es = "rs", event = "example" } },
      -- atLeastOnce: the bus lets an event go only once its action succeeded (without it, at
      -- receipt, as Argo: a kill -9 during the HTTP call loses that event)
      triggers = { { name = "post", extra = "      atLeastOnce: true\n", body = ([[
        http:
          url: http://127.0.0.1:%d/x
          method: POST
          payload:
            - src: {dependencyName: d, dataKey: message_id}
              dest: id
]]):format(sink.port) } } })
    local args = { "run", dir, "--bus-dir", busdir, "--bus-capacity", "64" }
    local p = H.start(args)
    p:wait_for("created consumer group argo-events-cg on stream K", { timeout = 10 })
    local cmds = {}
    for i = 1, N / 2 do cmds[i] = { "XADD", "K", "*", "i", tostring(i) } end
    srv.pipe(cmds)
    -- the ids at the sink so far (its file may end in a line being written: complete ones only)
    local function sink_ids()
      local ids = {}
      for line in (H.read(sink.out) or ""):gmatch("[^\n]+}") do
        ids[#ids + 1] = line:match('\\"id\\":\\"([%d%-]+)\\"')
      end
      return ids
    end
    H.wait_until(function() return #sink_ids() >= 50 end, 10, "some delivered")
    p:kill() -- SIGKILL, mid-stream
    assert.is_true(#sink_ids() < N / 2, "killed before the first half was delivered")
    cmds = {}
    for i = 1, N / 2 do cmds[i] = { "XADD", "K", "*", "i", tostring(N / 2 + i) } end
    srv.pipe(cmds)
    assert.equal(tostring(N), srv.cmd("XLEN", "K"))
    local p2 = H.start(args)
    local seen, dups
    H.wait_until(function()
      seen, dups = {}, 0
      for _, id in ipairs(sink_ids()) do
        if seen[id] then dups = dups + 1 else seen[id] = true end
      end
      local n = 0
      for _ in pairs(seen) do n = n + 1 end
      seen.n = n
      return n == N
    end, 60, function()
      local warns = {}
      for _, q in ipairs { p, p2 } do
        for _, l in ipairs(q:lines("stderr")) do
          if not l:find('"level":"info"', 1, true) then warns[#warns + 1] = l end
        end
      end
      return ("all %d entries at the sink (%d there, %s pending, XINFO: %s)\n%s"):format(N, seen.n,
        tostring(pending_count(srv, "K", "argo-events-cg")), srv.cmd("XINFO", "GROUPS", "K"):gsub("\n", " "),
        table.concat(warns, "\n"):sub(1, 3000))
    end)
    H.wait_until(function() return pending_count(srv, "K", "argo-events-cg") == 0 end, 10, "all acknowledged")
    print(("\n    kill -9 mid-stream: %d entries, all %d delivered, duplicates: %d"):format(N, N, dups))
    p2:stop()
    sink.stop()
  end)

  it("examples/redisStream: lints clean and its sensor test passes", function()
    local dir = H.source_dir .. "/examples/redisStream"
    local code, out, err = H.run { "lint", "--strict", dir }
    assert.equal(0, code, out .. err)
    assert.matches("^2 object%(s%) valid", out)
    local tcode, tout = H.run { "test", dir }
    assert.equal(0, tcode, tout)
    assert.matches("passed, 0 failed\n$", tout)
  end)

  it("lint: streams required, host:port, Argo's TLS rule", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("localhost:0", "      tls: {clientCertSecret: {name: a, key: b}}\n"))
    local code, out, err = H.run { "lint", dir .. "/es.yaml" }
    local text = out .. err
    assert.equal(1, code)
    assert.truthy(text:find("spec.redisStream.example.streams: required", 1, true), text)
    assert.truthy(text:find("port must be from 1 to 65535", 1, true), text)
    assert.truthy(text:find("both of clientCertSecret and clientKeySecret need to be configured", 1, true), text)
  end)
end)
