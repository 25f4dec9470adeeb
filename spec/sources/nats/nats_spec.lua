-- The nats event source against a real nats-server on 127.0.0.1: Argo's example fires its
-- Sensor; the event data's shape (subject, JSON or base64 body, headers, metadata); a queue
-- group; jsonBody with a body that is not JSON and a message over --max-message-bytes (both
-- counted, logged and dropped); auth (token, user/password, NKey, JWT credentials) and TLS with
-- client certificates; the server stopped and started again while Herald runs (the gauge goes
-- 0 then 1, events flow again); and the jetstream option: herald killed with -9 mid-stream and
-- started again, every message the server acknowledged reaching an HTTP sink.
local H = require "helpers.herald"
local N = require "helpers.nats_peer"
local J = require "helpers.nats_jwt"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"
local signal = require "posix.signal"

local has_server = os.execute("command -v nats-server >/dev/null 2>&1")
has_server = has_server == true or has_server == 0

local function es(name, events)
  return ("apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: %s\nspec:\n  nats:\n%s"):format(name, events)
end

-- A Sensor `name` logging every event of es/event.
local function log_sensor(name, esname, event)
  return H.sensor{ name = name, deps = { { name = "d", es = esname, event = event } } }
end

local function gauge(p, esname, ev)
  return H.metrics(p)[('herald_eventsource_connected{eventsource_name="%s",event_name="%s"}'):format(esname, ev)]
end

local function wait_connected(p, esname, ev, want)
  H.wait_until(function() return gauge(p, esname, ev) == (want or 1) end, 10,
    function() return "connected gauge " .. tostring(want or 1) .. "\n" .. p:describe() end)
end

local function firings_of(p, sensor)
  local t = {}
  for _, f in ipairs(H.firings(p)) do
    if f.sensorName == sensor then t[#t + 1] = f.events.d end
  end
  return t
end

local function wait_firings_of(p, sensor, n, timeout)
  return H.wait_until(function()
    local f = firings_of(p, sensor)
    return #f >= n and f
  end, timeout or 5, function() return ("%d firings of %s\n%s"):format(n, sensor, p:describe()) end)
end

local function b64(s)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  return ((s:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end

describe("nats event source", function()
  if not has_server then
    pending("nats-server is not installed")
    return
  end

  local procs = {}
  local function track(p)
    procs[#procs + 1] = p
    return p
  end
  after_each(function()
    for _, p in ipairs(procs) do p:kill() end
    procs = {}
  end)

  describe("on one core server", function()
    local srv, port, mport, url
    setup(function()
      port, mport = H.free_port(), H.free_port()
      srv = N.server(port, { "-m", tostring(mport) })
      url = "nats://127.0.0.1:" .. port
    end)
    teardown(function() srv:kill() end)

    it("runs Argo's example: its Sensor fires on a JSON message", function()
      local dir = H.tmpdir()
      local text = H.read(H.source_dir .. "/examples/nats/nats.yaml"):gsub("nats://127%.0%.0%.1:4222", url)
      H.write(dir .. "/nats.yaml", text)
      local p = track(H.start{ "run", dir })
      p:wait_for("subscribed to foo")
      local c = assert(N.connect(port))
      c:pub("foo", '{"type":"invoice.paid","id":1}')
      c:pub("foo", '{"type":"order.created","id":7}', { ["Trace-Id"] = "abc" })
      assert(c:flush())
      local f = H.wait_firings(p, 1)
      local ev = f[1].events["test-dep"]
      assert.equal("nats", ev.type)
      assert.same({ subject = "foo", body = { type = "order.created", id = 7 }, header = { ["Trace-Id"] = { "abc" } } }, ev.data)
      c:close()
      assert.equal(0, p:stop())
      assert.equal(1, #H.firings(p))
    end)

    it("puts subject, body, headers and metadata in Argo's shape; drops bad and oversize messages", function()
      local dir = H.tmpdir()
      H.write(dir .. "/es.yaml", es("es", ([[
    json:
      url: %s
      subject: orders.*
      jsonBody: true
      metadata: {team: shop, tier: "1"}
    raw:
      url: %s
      subject: raw.>
    grouped:
      url: %s
      subject: jobs
      queue: workers
]]):format(url, url, url)))
      H.write(dir .. "/s1.yaml", log_sensor("s1", "es", "json"))
      H.write(dir .. "/s2.yaml", log_sensor("s2", "es", "raw"))
      H.write(dir .. "/s3.yaml", log_sensor("s3", "es", "grouped"))
      local p = track(H.start{ "run", dir, "--max-message-bytes", "512" })
      for _, s in ipairs{ "orders.*", "raw.>", "jobs in queue group workers" } do p:wait_for("subscribed to " .. s) end
      local c = assert(N.connect(port))
      c:pub("orders.new", '{"type": "order.created", "n": 1}', { ["X-Id"] = "1", multi = { "a", "b" } })
      c:pub("orders.new", "not json {")                       -- jsonBody: counted, dropped
      c:pub("orders.new", '{"pad":"' .. ("x"):rep(600) .. '"}') -- over 512 bytes: dropped
      c:pub("orders.new", '{\n  "n": 2,\n  "s": "a b"\n}\n') -- pretty-printed: compacted, as Go writes it
      c:pub("raw.a.b", "\0\1binary\255")
      c:pub("jobs", "j1")
      assert(c:flush())
      local f1 = wait_firings_of(p, "s1", 2)
      assert.same({ subject = "orders.new", body = { type = "order.created", n = 1 },
        header = { ["X-Id"] = { "1" }, multi = { "a", "b" } }, metadata = { team = "shop", tier = "1" } }, f1[1].data)
      assert.same({ subject = "orders.new", body = { n = 2, s = "a b" }, metadata = { team = "shop", tier = "1" } }, f1[2].data)
      assert.truthy(p:output("stdout"):find('"body":{"n":2,"s":"a b"}', 1, true))
      local f2 = wait_firings_of(p, "s2", 1)
      assert.same({ subject = "raw.a.b", body = b64("\0\1binary\255") }, f2[1].data)
      local f3 = wait_firings_of(p, "s3", 1)
      assert.same({ subject = "jobs", body = b64("j1") }, f3[1].data)
      local m = H.metrics(p)
      assert.equal(1, m['herald_eventsource_bad_body_total{eventsource_name="es",event_name="json"}'])
      assert.equal(1, m['herald_eventsource_oversize_total{eventsource_name="es",event_name="json"}'])
      assert.equal(1, p:count("jsonBody is set and its body (10 bytes) is not JSON"))
      assert.equal(1, p:count("message dropped: 610 bytes is over the limit of 512"))
      -- the queue group is the server's: its subscription of `jobs` is in group workers
      local _, _, body = H.http{ port = mport, method = "GET", path = "/connz?subs=detail" }
      local queues = {}
      for _, conn in ipairs(cjson.decode(body).connections or {}) do
        for _, s in ipairs(conn.subscriptions_list_detail or {}) do
          if s.qgroup and s.qgroup ~= "" then queues[s.subject] = s.qgroup end
        end
      end
      assert.same({ jobs = "workers" }, queues)
      c:close()
      assert.equal(0, p:stop())
      assert.equal(2, #firings_of(p, "s1"))
    end)

    it("refuses queue with jetstream, an empty queue and a missing subject at load", function()
      local dir = H.tmpdir()
      H.write(dir .. "/es.yaml", es("es", ([[
    a:
      url: %s
      subject: x
      queue: q
      jetstream: {stream: S}
    b:
      url: %s
      subject: y
      queue: ""
    c:
      url: %s
]]):format(url, url, url)))
      local code, _, err = H.run{ "lint", dir }
      assert.equal(1, code)
      assert.truthy(err:find("spec.nats.a.queue: queue and jetstream do not go together", 1, true), err)
      assert.truthy(err:find("queue group cannot be empty if specified", 1, true), err)
      assert.truthy(err:find("spec.nats.c.subject", 1, true), err)
    end)
  end)

  it("reconnects by itself when the server stops and starts again", function()
    local port = H.free_port()
    local srv = track(N.server(port))
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("es", ([[
    ev:
      url: nats://127.0.0.1:%d
      subject: ticks
      connectionBackoff: {duration: 100ms, factor: 1, jitter: 0}
]]):format(port)))
    H.write(dir .. "/s.yaml", log_sensor("s", "es", "ev"))
    local p = track(H.start{ "run", dir })
    p:wait_for("subscribed to ticks")
    wait_connected(p, "es", "ev", 1)
    local c = assert(N.connect(port))
    for i = 1, 5 do c:pub("ticks", tostring(i)) end
    assert(c:flush())
    wait_firings_of(p, "s", 5)
    c:close()
    srv:stop()
    wait_connected(p, "es", "ev", 0)
    p:wait_for("not connected: connection to nats://127.0.0.1:" .. port .. " lost")
    track(N.server(port))
    wait_connected(p, "es", "ev", 1)
    -- nats.c sends the subscription again on reconnect; a message is seen once the server has it
    c = assert(N.connect(port))
    H.wait_until(function()
      c:pub("ticks", "again")
      assert(c:flush())
      return #firings_of(p, "s") > 5
    end, 10, function() return "a firing after the restart\n" .. p:describe() end)
    c:close()
    assert.equal(0, p:stop())
    assert.equal(2, p:count("connected: nats://127.0.0.1:" .. port)) -- the first time, and after the restart
    assert.equal(1, p:count("not connected: connection to"))
  end)

  describe("auth and TLS", function()
    it("connects with a token, and says why when the token is wrong", function()
      local port = H.free_port()
      track(N.server(port, { "--auth", "s3cret" }))
      local secrets, dir = H.tmpdir(), H.tmpdir()
      os.execute("mkdir -p " .. secrets .. "/nats")
      H.write(secrets .. "/nats/token", "s3cret\n")
      H.write(secrets .. "/nats/bad", "nope\n")
      H.write(dir .. "/es.yaml", es("es", ([[
    good:
      url: nats://127.0.0.1:%d
      subject: t
      auth: {token: {name: nats, key: token}}
    bad:
      url: nats://127.0.0.1:%d
      subject: t
      auth: {token: {name: nats, key: bad}}
]]):format(port, port)))
      H.write(dir .. "/s.yaml", log_sensor("s", "es", "good"))
      local p = track(H.start{ "run", dir, "--secrets-dir", secrets })
      p:wait_for("subscribed to t")
      p:wait_for("not connected:.*[Aa]uthorization", { plain = false })
      assert.equal(0, gauge(p, "es", "bad"))
      local c = assert(N.connect(port, { token = "s3cret" }))
      c:pub("t", "hello")
      assert(c:flush())
      local f = wait_firings_of(p, "s", 1)
      assert.equal(b64("hello"), f[1].data.body)
      c:close()
      assert.equal(0, p:stop())
    end)

    it("connects over TLS with a client certificate, as a user with a password and with an NKey", function()
      local d = H.tmpdir()
      local function sh(cmd) assert(os.execute("cd " .. d .. " && " .. cmd .. " >/dev/null 2>&1"), cmd) end
      local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      sh("openssl req -x509 " .. ec .. " -keyout ca.key -out ca.pem -days 1 -subj /CN=spec-ca")
      H.write(d .. "/san.ext", "subjectAltName=IP:127.0.0.1\n")
      for _, n in ipairs{ "server", "client" } do
        sh(("openssl req %s -keyout %s.key -out %s.csr -subj /CN=%s"):format(ec, n, n, n == "server" and "127.0.0.1" or "herald"))
        sh(("openssl x509 -req -in %s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out %s.pem -days 1 -extfile san.ext"):format(n, n))
      end
      local seed = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"
      local pub = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
      local port = H.free_port()
      local conf = H.write(d .. "/nats.conf", ([[
tls {
  cert_file: "%s/server.pem"
  key_file: "%s/server.key"
  ca_file: "%s/ca.pem"
  verify: true
}
authorization {
  users = [ { user: spec, password: pw }, { nkey: %s } ]
}
]]):format(d, d, d, pub))
      track(N.server(port, { "-c", conf }))
      local secrets, dir = H.tmpdir(), H.tmpdir()
      os.execute("mkdir -p " .. secrets .. "/tls " .. secrets .. "/users")
      for _, f in ipairs{ "ca.pem", "client.pem", "client.key" } do H.write(secrets .. "/tls/" .. f, H.read(d .. "/" .. f)) end
      H.write(secrets .. "/users/user", "spec")
      H.write(secrets .. "/users/password", "pw")
      H.write(secrets .. "/users/seed", seed .. "\n")
      local tls = "{caCertSecret: {name: tls, key: ca.pem}, clientCertSecret: {name: tls, key: client.pem}, clientKeySecret: {name: tls, key: client.key}}"
      local basic = "{basic: {username: {name: users, key: user}, password: {name: users, key: password}}}"
      H.write(dir .. "/es.yaml", es("es", ([[
    basic:
      url: nats://127.0.0.1:%d
      subject: sec.basic
      jsonBody: true
      tls: %s
      auth: %s
    nkey:
      url: nats://127.0.0.1:%d
      subject: sec.nkey
      jsonBody: true
      tls: %s
      auth: {nkey: {name: users, key: seed}}
]]):format(port, tls, basic, port, tls)))
      -- the publisher is Herald's own nats trigger (TLS and a user), fed by a webhook
      local wport = H.free_port()
      H.write(dir .. "/hook.yaml", H.webhook_es{ name = "hook", port = wport })
      local trig = ""
      for _, s in ipairs{ "basic", "nkey" } do
        trig = trig .. ([[
    - template:
        name: pub-%s
        nats:
          url: nats://127.0.0.1:%d
          subject: sec.%s
          tls: %s
          auth: %s
          payload:
            - src: {dependencyName: d, dataKey: body.msg}
              dest: msg
]]):format(s, port, s, tls, basic)
      end
      H.write(dir .. "/pub.yaml", ("apiVersion: argoproj.io/v1alpha1\nkind: Sensor\nmetadata:\n  name: pub\nspec:\n  dependencies:\n    - {name: d, eventSourceName: hook, eventName: ev}\n  triggers:\n%s"):format(trig))
      H.write(dir .. "/s1.yaml", log_sensor("s1", "es", "basic"))
      H.write(dir .. "/s2.yaml", log_sensor("s2", "es", "nkey"))
      local p = track(H.start{ "run", dir, "--secrets-dir", secrets })
      p:wait_for("subscribed to sec.basic")
      p:wait_for("subscribed to sec.nkey")
      assert.equal(200, (H.post_json(wport, "/hook", '{"msg":"over tls"}')))
      for _, s in ipairs{ "s1", "s2" } do
        local f = wait_firings_of(p, s, 1)
        assert.same({ msg = "over tls" }, f[1].data.body)
      end
      assert.equal(0, p:stop())
    end)

    it("connects with a JWT credentials file (operator mode)", function()
      local port, store = H.free_port(), H.tmpdir()
      local conf_text, creds = J.setup(store)
      local conf = H.write(H.tmpdir() .. "/op.conf", conf_text)
      track(N.server(port, { "-c", conf }))
      local secrets, dir = H.tmpdir(), H.tmpdir()
      os.execute("mkdir -p " .. secrets .. "/creds")
      H.write(secrets .. "/creds/user.creds", creds)
      local wport = H.free_port()
      H.write(dir .. "/es.yaml", es("es", ([[
    ev:
      url: nats://127.0.0.1:%d
      subject: jwt.events
      jsonBody: true
      auth: {credential: {name: creds, key: user.creds}}
]]):format(port)))
      H.write(dir .. "/hook.yaml", H.webhook_es{ name = "hook", port = wport })
      H.write(dir .. "/pub.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: pub
spec:
  dependencies:
    - {name: d, eventSourceName: hook, eventName: ev}
  triggers:
    - template:
        name: pub
        nats:
          url: nats://127.0.0.1:%d
          subject: jwt.events
          auth: {credential: {name: creds, key: user.creds}}
          payload:
            - src: {dependencyName: d, dataKey: body.msg}
              dest: msg
]]):format(port))
      H.write(dir .. "/s.yaml", log_sensor("s", "es", "ev"))
      local p = track(H.start{ "run", dir, "--secrets-dir", secrets })
      p:wait_for("subscribed to jwt.events")
      assert.equal(200, (H.post_json(wport, "/hook", '{"msg":"signed"}')))
      local f = wait_firings_of(p, "s", 1)
      assert.same({ msg = "signed" }, f[1].data.body)
      assert.equal(0, p:stop())
    end)
  end)

  it("jetstream: kill -9 mid-stream and a restart lose nothing the server acknowledged", function()
    local port, store = H.free_port(), H.tmpdir()
    track(N.server(port, { "-js", "-sd", store }))
    local c = assert(N.connect(port))
    c:js_stream("ORDERS", { "orders.>" })
    local sink = sink_client.start{}
    local dir, busdir = H.tmpdir(), H.tmpdir()
    H.write(dir .. "/es.yaml", es("es", ([[
    ev:
      url: nats://127.0.0.1:%d
      subject: orders.>
      jsonBody: true
      jetstream: {stream: ORDERS, durable: herald-spec, ackWait: 2s}
]]):format(port)))
    H.write(dir .. "/s.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: s
spec:
  dependencies:
    - {name: d, eventSourceName: es, eventName: ev}
  triggers:
    - template:
        name: sink
        http:
          url: http://127.0.0.1:%d/in
          method: POST
          payload:
            - src: {dependencyName: d, dataKey: body.n}
              dest: n
      atLeastOnce: true
]]):format(sink.port))
    local function start() return track(H.start{ "run", dir, "--bus-dir", busdir }) end
    local function seen()
      local ns, dups = {}, 0
      for _, r in ipairs(sink.requests()) do
        local n = tonumber(cjson.decode(r.body).n)
        if ns[n] then dups = dups + 1 end
        ns[n] = true
      end
      local count = 0
      for _ in pairs(ns) do count = count + 1 end
      return count, ns, dups
    end
    local p = start()
    p:wait_for("jetstream: consuming orders.> from stream ORDERS as durable herald-spec")
    local TOTAL, acked = 3000, {}
    local function publish(from, to)
      local payloads = {}
      for i = from, to do payloads[#payloads + 1] = ('{"n":%d}'):format(i) end
      local seqs = c:js_publish("orders.new", payloads)
      for k, _ in ipairs(seqs) do acked[#acked + 1] = from + k - 1 end
    end
    publish(1, 1000)
    H.wait_until(function() return (seen()) >= 200 end, 10, function() return "200 at the sink\n" .. p:describe() end)
    publish(1001, 1500) -- while herald works through the first thousand
    signal.kill(p.pid, signal.SIGKILL)
    p:wait_exit(5)
    local before = (seen())
    publish(1501, TOTAL) -- while herald is down: the stream keeps them
    p = start()
    H.wait_until(function() return (seen()) >= #acked end, 30, function()
      return ("%d of %d acknowledged messages at the sink\n%s"):format((seen()), #acked, p:describe())
    end)
    local count, ns, dups = seen()
    local missing = 0
    for _, n in ipairs(acked) do if not ns[n] then missing = missing + 1 end end
    assert.equal(TOTAL, #acked) -- the server acknowledged every publish
    assert.equal(0, missing)
    assert.equal(TOTAL, count)
    assert.is_true(before < TOTAL, "the kill came mid-stream")
    print(("\n    jetstream kill -9: %d acknowledged, %d at the sink before the kill, %d distinct after, %d duplicates, 0 lost")
      :format(#acked, before, count, dups))
    assert.equal(0, p:stop())
    sink.stop()
    c:close()
  end)
end)
