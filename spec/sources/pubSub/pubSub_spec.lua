-- spec/sources/pubSub/pubSub_spec.lua: the pubSub source (sources/pubSub/) against Google's
-- Pub/Sub emulator (one per file: it takes up to ~25 s to start): Argo's data shape, the
-- subscription created (and topic) with Argo's name, deleteSubscriptionOnFinish, jsonBody, the
-- emulator restarted while events flow, kill -9 of herald mid-stream counted at an HTTP sink,
-- the service-account (OAuth2 JWT) path against a stand-in token endpoint, lint, the example.
local H = require "helpers.herald"
local P = require "helpers.pubsub_peer"
local cjson = require "cjson"

local function es(name, body)
  return ("apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: %s\nspec:\n  pubSub:\n%s"):format(name, body)
end

local function log_sensor()
  return H.sensor { name = "s", deps = { { name = "d", es = "ps", event = "ev" } } }
end

local function sink_sensor(port)
  return H.sensor { name = "s", deps = { { name = "d", es = "ps", event = "ev" } }, triggers = { { name = "t", body = ([[
        http:
          url: http://127.0.0.1:%d/in
          method: POST
          payload:
            - src: {dependencyName: d, dataKey: id}
              dest: id
]]):format(port), -- at least once: "loses nothing" holds only if the bus delivery is acked after
  -- the HTTP action (with Argo's default at-most-once an action in flight at the kill is lost)
  extra = "      atLeastOnce: true\n" } } }
end

describe("pubSub source", function()
  local emu, why
  setup(function() emu, why = P.start(H) end)
  teardown(function() if emu then emu.stop() end end)

  local function env() return { PUBSUB_EMULATOR_HOST = emu.host } end

  it("creates the topic and Argo's subscription, fires with Argo's data, deletes it on finish", function()
    if not emu then return pending(why) end
    local dir = H.tmpdir()
    H.write(dir .. "/ps.yaml", es("ps", [[
    ev:
      projectID: test-proj
      topic: shape-topic
      deleteSubscriptionOnFinish: true
      metadata: {team: a}
]]) .. "---\n" .. log_sensor())
    local p = H.start({ "run", dir }, { env = env() })
    local line = p:wait_for("subscriptionID not given: using ", { timeout = 10 })
    local sub = line:match("using (ev%-%d+)")
    assert.truthy(sub)
    p:wait_for("connected", { timeout = 15 })
    assert.is_true(emu.sub_exists(sub))
    local st, ids = emu.publish("shape-topic", { "hello", "two" }, { k = "v" })
    assert.equal(200, st)
    local f = H.wait_firings(p, 2, 15)
    local seen = {}
    for _, v in ipairs(f) do
      local ev = v.events.d
      assert.equal("pubsub", ev.type)
      assert.equal("ev", ev.subject)
      local d = ev.data
      seen[d.id] = d
      assert.same({ k = "v" }, d.attributes)
      assert.same({ team = "a" }, d.metadata)
      assert.matches("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d[.%d]* %+0000 UTC$", d.publishTime)
    end
    assert.equal("aGVsbG8=", seen[ids[1]].body) -- Go's []byte: base64
    assert.equal("dHdv", seen[ids[2]].body)
    assert.equal(0, p:stop())
    assert.is_false(emu.sub_exists(sub)) -- deleteSubscriptionOnFinish
    -- acked: a new run on the same (recreated) subscription gets nothing old
    assert.equal(2, #H.firings(p))
  end)

  it("jsonBody puts JSON data as JSON and drops (and acks) data that is not JSON", function()
    if not emu then return pending(why) end
    emu.create_topic("json-topic")
    emu.create_sub("json-sub", "json-topic")
    local dir = H.tmpdir()
    H.write(dir .. "/ps.yaml", es("ps", "    ev:\n      projectID: test-proj\n      subscriptionID: json-sub\n      jsonBody: true\n") .. "---\n" .. log_sensor())
    local p = H.start({ "run", dir }, { env = env() })
    p:wait_for("connected", { timeout = 15 })
    emu.publish("json-topic", { '{"a":[1,2]}', "not json", '"s"' })
    local f = H.wait_firings(p, 2, 15)
    local bodies = {}
    for _, v in ipairs(f) do bodies[#bodies + 1] = cjson.encode(v.events.d.data.body) end
    table.sort(bodies)
    assert.same({ '"s"', '{"a":[1,2]}' }, bodies)
    H.wait_until(function()
      return (H.metrics(p)['herald_eventsource_bad_body_total{eventsource_name="ps",event_name="ev"}'] or 0) == 1
    end, 5, "bad body counted")
    assert.equal(0, p:stop())
    -- all three were acknowledged: a new puller sees none of them
    local st, _, body = emu.api("POST", "/subscriptions/json-sub:pull", '{"maxMessages":10,"returnImmediately":true}')
    assert.equal(200, st)
    assert.is_nil(cjson.decode(body).receivedMessages)
  end)

  it("keeps going when the emulator is stopped and restarted while events flow", function()
    if not emu then return pending(why) end
    local dir = H.tmpdir()
    H.write(dir .. "/ps.yaml", es("ps", "    ev:\n      projectID: test-proj\n      topic: restart-topic\n      subscriptionID: restart-sub\n") .. "---\n" .. log_sensor())
    local p = H.start({ "run", dir }, { env = env() })
    p:wait_for("connected", { timeout = 15 })
    local a = {}
    for i = 1, 20 do a[i] = "a" .. i end
    emu.publish("restart-topic", a)
    H.wait_firings(p, 20, 15)
    emu.restart() -- the emulator keeps nothing: herald must create topic and subscription again
    p:wait_for("not connected", { timeout = 30 })
    H.wait_until(function() return emu.sub_exists("restart-sub") end, 40, "subscription recreated")
    local b = {}
    for i = 1, 20 do b[i] = "b" .. i end
    assert.equal(200, (emu.publish("restart-topic", b)))
    local f = H.wait_firings(p, 40, 30)
    local seen = {}
    for _, v in ipairs(f) do seen[v.events.d.data.body] = true end
    local mime = require "mime"
    for i = 1, 20 do
      assert.is_true(seen[(mime.b64("a" .. i))], "a" .. i)
      assert.is_true(seen[(mime.b64("b" .. i))], "b" .. i)
    end
    assert.equal(0, p:stop())
  end)

  it("loses nothing when herald is killed (-9) mid-stream and restarted (durable bus)", function()
    if not emu then return pending(why) end
    local sink = require("helpers.sink_client").start { delay_ms = 2 }
    emu.create_topic("kill-topic")
    emu.create_sub("kill-sub", "kill-topic")
    local dir, bus = H.tmpdir(), H.tmpdir()
    H.write(dir .. "/ps.yaml", es("ps", "    ev:\n      projectID: test-proj\n      subscriptionID: kill-sub\n") .. "---\n" .. sink_sensor(sink.port))
    local all = {}
    local N = 1500
    for k = 1, N / 500 do
      local d = {}
      for i = 1, 500 do d[i] = ("m%05d-%s"):format((k - 1) * 500 + i, string.rep("x", 100)) end
      local st, ids = emu.publish("kill-topic", d)
      assert.equal(200, st)
      for _, id in ipairs(ids) do all[#all + 1] = id end
    end
    local function arrived()
      local seen, n, dups = {}, 0, 0
      for _, r in ipairs(sink.requests()) do
        local id = cjson.decode(r.body).id
        if seen[id] then dups = dups + 1 else seen[id] = true n = n + 1 end
      end
      return seen, n, dups
    end
    local p = H.start({ "run", dir, "--bus-dir", bus }, { env = env() })
    H.wait_until(function() local _, n = arrived() return n >= 100 end, 30, "first deliveries")
    p:kill()
    local _, before = arrived()
    local p2 = H.start({ "run", dir, "--bus-dir", bus }, { env = env() })
    local seen, n, dups
    H.wait_until(function()
      seen, n, dups = arrived()
      return n >= N
    end, 90, function()
      local m, fails = H.metrics(p2), {}
      local st, _, body = emu.api("POST", "/subscriptions/kill-sub:pull", '{"maxMessages":1000,"returnImmediately":true}')
      local left = #(cjson.decode(body).receivedMessages or {})
      fails[#fails + 1] = "left in the emulator: " .. left
      local s2 = {}
      for id in pairs(arrived()) do s2[id] = true end
      local miss = {}
      for _, id in ipairs(all) do if not s2[id] then miss[#miss + 1] = id end end
      fails[#fails + 1] = "missing: " .. table.concat(miss, " ", 1, math.min(#miss, 40))
      for k, v in pairs(m) do if k:match("fail") or k:match("sent") or k:match("connected") then fails[#fails + 1] = k .. " " .. v end end
      return ("all %d at the sink (have %d)\n%s\n%s"):format(N, n or 0, table.concat(fails, "\n"), p2:describe())
    end)
    for _, id in ipairs(all) do assert.is_true(seen[id], "message " .. id .. " lost") end
    print(("\n  pubSub kill -9: %d messages, %d at the sink before the kill, %d duplicates after the restart, 0 lost"):format(N, before, dups))
    assert.equal(0, p2:stop())
    sink.stop()
  end)

  it("trades a service-account key's RS256 JWT for tokens, refreshes them before expiry, and sends them", function()
    local dir = H.tmpdir()
    if os.execute(("openssl genrsa -out %s/k.pem 2048 2>/dev/null && openssl rsa -in %s/k.pem -pubout -out %s/pub.pem 2>/dev/null"):format(dir, dir, dir)) ~= 0 then
      return pending("openssl cannot make a key")
    end
    local port = H.free_port()
    local out = dir .. "/fake.jsonl"
    H.write(out, "")
    local fake = H.spawn("luajit", { H.source_dir .. "/spec/helpers/pubsub_peer.lua", "fake", "--port", tostring(port), "--pub", dir .. "/pub.pem", "--out", out })
    fake:wait_for("listening", { stream = "stdout" })
    local key = cjson.encode({ type = "service_account", project_id = "key-proj", private_key_id = "kid1",
      private_key = H.read(dir .. "/k.pem"), client_email = "herald@key-proj.iam.gserviceaccount.com",
      token_uri = "http://127.0.0.1:" .. port .. "/token" })
    os.execute("mkdir -p " .. dir .. "/secrets/gcp")
    H.write(dir .. "/secrets/gcp/key.json", key)
    H.write(dir .. "/ps.yaml", es("ps", "    ev:\n      subscriptionID: oauth-sub\n      credentialSecret: {name: gcp, key: key.json}\n") .. "---\n" .. log_sensor())
    local p = H.start({ "run", dir .. "/ps.yaml", "--secrets-dir", dir .. "/secrets" },
                      { env = { HERALD_PUBSUB_ENDPOINT = "http://127.0.0.1:" .. port } })
    local f = H.wait_firings(p, 1, 10)
    assert.equal("aGVsbG8=", f[1].events.d.data.body)
    assert.equal("2026-01-02 03:04:05.1 +0000 UTC", f[1].events.d.data.publishTime)
    local recs
    H.wait_until(function()
      recs = {}
      for l in (H.read(out) or ""):gmatch("[^\n]+") do recs[#recs + 1] = cjson.decode(l) end
      local toks, acked = 0, false
      for _, r in ipairs(recs) do
        if r.path == "/token" then toks = toks + 1 end
        if r.path:match(":acknowledge$") and r.body:match("ack%-1") then acked = true end
      end
      return toks >= 2 and acked -- expires_in 3 s: refreshed before it ends
    end, 10, "a refreshed token and the ack")
      for _, r in ipairs(recs) do
      if r.path == "/token" then
        assert.is_true(r.jwt_ok, "the JWT's RS256 signature verifies with the public key")
        assert.equal("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer", r.grant)
        local c = cjson.decode(r.claims)
        assert.equal("herald@key-proj.iam.gserviceaccount.com", c.iss)
        assert.equal("http://127.0.0.1:" .. port .. "/token", c.aud)
        assert.equal("https://www.googleapis.com/auth/pubsub", c.scope)
        assert.equal(3600, c.exp - c.iat)
      else
        assert.matches("^Bearer tok%-%d+$", r.auth)
        assert.matches("^/v1/projects/key%-proj/subscriptions/oauth%-sub", r.path) -- project from the key
      end
    end
    H.wait_until(function()
      for l in (H.read(out) or ""):gmatch("[^\n]+") do
        local r = cjson.decode(l)
        if r.auth == "Bearer tok-2" or r.auth == "Bearer tok-3" then return true end
      end
    end, 10, "the refreshed token used")
    local err = p:output("stderr")
    assert.is_nil(err:find("PRIVATE KEY", 1, true)) -- never logged
    assert.is_nil(err:find("tok-1", 1, true))
    assert.equal(0, p:stop())
    fake:kill()
  end)

  it("lint applies Argo's checks", function()
    local dir = H.tmpdir()
    H.write(dir .. "/bad.yaml", es("ps", "    a:\n      projectID: p\n    b:\n      topicProjectID: x\n      subscriptionID: s\n") .. "---\n" .. log_sensor())
    local code, out, err = H.run { "lint", dir .. "/bad.yaml" }
    assert.equal(1, code)
    local text = out .. err
    assert.matches("spec%.pubSub%.a", text)
    assert.matches("topic", text)
    assert.matches("spec%.pubSub%.b%.topicProjectID: topicProjectID needs topic", text)
  end)

  it("runs examples/pubSub", function()
    if not emu then return pending(why) end
    local p = H.start({ "run", H.source_dir .. "/examples/pubSub" }, { env = env() })
    p:wait_for("connected", { timeout = 15 })
    emu.project = "herald-example"
    emu.publish("herald-example", { '{"kind":"order","amount":250}', '{"kind":"order","amount":5}' })
    emu.project = "test-proj"
    local f = H.wait_firings(p, 1, 15)
    assert.equal(250, f[1].events["order-dep"].data.body.amount)
    assert.equal(0, p:stop())
    assert.equal(1, #H.firings(p)) -- the filter dropped the small one
  end)
end)
