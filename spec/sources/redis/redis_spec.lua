-- spec/sources/redis/redis_spec.lua: the redis event source (sources/redis/, Redis pub/sub)
-- against a real redis-server: Argo's example shape, the event data as Argo marshals it
-- (metadata keys sorted, pattern ""), jsonBody (a bad body counted, not fired), auth with
-- requirepass and with an ACL user, TLS with a CA and a client certificate, the server
-- restarted while messages flow (reconnects by itself, the connected gauge says so), and the
-- checks Argo's validator makes.
local H = require "helpers.herald"
local R = require "helpers.redis_peer"

local function es(addr, extra, name)
  return ("apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: %s\nspec:\n  redis:\n    example:\n      hostAddress: %s\n      channels: [FOO]\n%s")
    :format(name or "redis", addr, extra or "")
end

local function sensor(es_name)
  return H.sensor { name = "s", deps = { { name = "d", es = es_name or "redis", event = "example" } } }
end

local function gauge(p, es_name)
  return H.metrics(p)[('herald_eventsource_connected{eventsource_name="%s",event_name="example"}'):format(es_name or "redis")]
end

-- publishes until n firings were printed (a subscription made a moment after "connected"
-- could miss the very first message: pub/sub keeps nothing)
local function publish_until(srv, p, n, body, timeout)
  return H.wait_until(function()
    srv.cmd("PUBLISH", "FOO", body)
    local f = H.firings(p)
    return #f >= n and f
  end, timeout or 10, function() return n .. " firings\n" .. p:describe() end)
end

describe("redis source", function()
  if not R.available() then
    it("needs redis-server", function() pending("redis-server and redis-cli are not installed (scripts/install-deps.sh test)") end)
    return
  end
  local srv
  setup(function() srv = R.start() end)
  teardown(function() if srv then srv.stop() end end)

  it("runs Argo's example shape and fires with the data Argo writes", function()
    local dir = H.tmpdir()
    local ex = H.read(H.source_dir .. "/examples/redis/redis.yaml")
    H.write(dir .. "/es.yaml", (ex:gsub("hostAddress: [^\n]+", "hostAddress: " .. srv.addr, 1)))
    local p = H.start { "run", dir }
    p:wait_for("subscribed to 1 channel", { timeout = 10 })
    srv.cmd("PUBLISH", "FOO", "hello")
    local f = H.wait_firings(p, 1, 5)
    local ev = f[1].events["test-dep"]
    assert.equal("redis", ev.type)
    assert.equal("redis", ev.source)
    assert.equal("example", ev.subject)
    assert.same({ channel = "FOO", pattern = "", body = "hello" }, ev.data)
    p:stop()
  end)

  it("writes body as a string, metadata with sorted keys, every channel", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(srv.addr, "      metadata: {zeta: z, alpha: a}\n"):gsub("%[FOO%]", "[FOO, BAR]") .. "---\n" .. sensor())
    local p = H.start { "run", dir }
    p:wait_for("subscribed to 2 channels", { timeout = 10 })
    srv.cmd("PUBLISH", "FOO", '{"a":1}')
    srv.cmd("PUBLISH", "BAR", "two")
    local f = H.wait_firings(p, 2, 5)
    assert.same({ channel = "FOO", pattern = "", body = '{"a":1}', metadata = { alpha = "a", zeta = "z" } }, f[1].events.d.data)
    assert.equal("BAR", f[2].events.d.data.channel)
    assert.equal("two", f[2].events.d.data.body)
    -- the raw line keeps Go's map order: keys sorted
    assert.truthy(p:output("stdout"):find('"metadata":{"alpha":"a","zeta":"z"}', 1, true))
    p:stop()
  end)

  it("with jsonBody puts the JSON in body, and counts and drops a body that is not JSON", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(srv.addr, "      jsonBody: true\n") .. "---\n" .. sensor())
    local p = H.start { "run", dir }
    p:wait_for("subscribed to 1 channel", { timeout = 10 })
    srv.cmd("PUBLISH", "FOO", "not json {")
    srv.cmd("PUBLISH", "FOO", '{"n":2,"s":"x"}')
    local f = H.wait_firings(p, 1, 5)
    assert.same({ n = 2, s = "x" }, f[1].events.d.data.body)
    H.wait_until(function()
      return H.metrics(p)['herald_eventsource_bad_body_total{eventsource_name="redis",event_name="example"}'] == 1
    end, 5, "bad body counted")
    assert.equal(1, #H.firings(p))
    assert.equal(1, p:count("is not JSON"))
    p:stop()
  end)

  it("authenticates with requirepass, with an ACL user, and says why a wrong password fails", function()
    local auth = R.start { args = { "--requirepass", "s3cret", "--user", "alice", "on", ">alicepw", "~*", "&*", "+@all" },
                           cli = { "-a", "s3cret" } }
    local dir = H.tmpdir()
    local secrets = dir .. "/secrets"
    os.execute(("mkdir -p %s/pw %s/alice %s/bad"):format(secrets, secrets, secrets))
    H.write(secrets .. "/pw/password", "s3cret\n")
    H.write(secrets .. "/alice/password", "alicepw")
    H.write(secrets .. "/bad/password", "nope")
    H.write(dir .. "/a.yaml", es(auth.addr, "      namespace: argo-events\n      password: {name: pw, key: password}\n", "pw")
      .. "---\n" .. es(auth.addr, "      namespace: argo-events\n      username: alice\n      password: {name: alice, key: password}\n", "acl")
      .. "---\n" .. es(auth.addr, "      namespace: argo-events\n      password: {name: bad, key: password}\n", "bad")
      .. "---\n" .. sensor("pw") .. "---\n" .. sensor("acl"):gsub("name: s\n", "name: s2\n", 1))
    local p = H.start { "run", dir, "--secrets-dir", secrets }
    p:wait_for("subscribed to 1 channel", { timeout = 10 })
    H.wait_until(function() return p:count("subscribed to 1 channel") == 2 end, 10, "both subscribed")
    auth.cmd("PUBLISH", "FOO", "hi")
    local f = H.wait_firings(p, 2, 5)
    local seen = {}
    for _, x in ipairs(f) do seen[x.sensorName] = x.events.d.data.body end
    assert.same({ s = "hi", s2 = "hi" }, seen)
    p:wait_for("not connected: AUTH: WRONGPASS")
    assert.equal(0, gauge(p, "bad"))
    assert.equal(1, gauge(p, "acl"))
    p:stop()
    auth.stop()
  end)

  it("connects over TLS with the CA and a client certificate from secrets", function()
    local dir = H.tmpdir()
    local certs = R.make_certs(H.tmpdir())
    if not certs then return pending("openssl could not make test certificates") end
    local tls = R.start { tls = certs, args = { "--tls-auth-clients", "yes" } }
    local secrets = dir .. "/secrets"
    os.execute(("mkdir -p %s/tls"):format(secrets))
    for k, path in pairs { ca = certs.ca, cert = certs.client_cert, key = certs.client_key } do
      H.write(secrets .. "/tls/" .. k, H.read(path))
    end
    H.write(dir .. "/es.yaml", es(tls.addr, [[
      tls:
        caCertSecret: {name: tls, key: ca}
        clientCertSecret: {name: tls, key: cert}
        clientKeySecret: {name: tls, key: key}
]]) .. "---\n" .. es(tls.addr, "      tls: {insecureSkipVerify: true}\n", "nocert") .. "---\n" .. sensor())
    local p = H.start { "run", dir, "--secrets-dir", secrets }
    p:wait_for("connected: " .. tls.addr .. " (TLS)", { timeout = 10 })
    p:wait_for("subscribed to 1 channel", { timeout = 10 })
    tls.cmd("PUBLISH", "FOO", "over tls")
    local f = H.wait_firings(p, 1, 5)
    assert.equal("over tls", f[1].events.d.data.body)
    -- no client certificate: the server (tls-auth-clients yes) refuses the session
    p:wait_for('"logger":"source:redis:nocert/example","msg":"not connected:', { timeout = 10 })
    assert.equal(0, gauge(p, "nocert"))
    p:stop()
    tls.stop()
  end)

  it("refuses a server certificate it cannot verify", function()
    local certs = R.make_certs(H.tmpdir())
    if not certs then return pending("openssl could not make test certificates") end
    local tls = R.start { tls = certs }
    local dir = H.tmpdir()
    -- TLS with no CA: the system's roots, which did not sign the test CA
    H.write(dir .. "/es.yaml", es(tls.addr, "      tls: {enabled: true}\n") .. "---\n" .. sensor())
    local p = H.start { "run", dir }
    p:wait_for("certificate verify failed", { timeout = 10 })
    assert.equal(0, gauge(p))
    p:stop()
    tls.stop()
  end)

  it("reconnects by itself when the server restarts while messages flow", function()
    local own = R.start()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(own.addr) .. "---\n" .. sensor())
    local p = H.start { "run", dir }
    p:wait_for("subscribed to 1 channel", { timeout = 10 })
    publish_until(own, p, 3, "before")
    assert.equal(1, gauge(p))
    own.restart()
    p:wait_for("not connected:", { timeout = 10 })
    -- the first retry comes after about 1 s (connectionBackoff's default)
    p:wait_for("subscribed to 1 channel", { timeout = 15, after = 0 })
    H.wait_until(function() return p:count("subscribed to 1 channel") == 2 end, 15, "subscribed again")
    assert.equal(1, gauge(p))
    local n = #H.firings(p)
    local f = publish_until(own, p, n + 1, "after")
    assert.equal("after", f[#f].events.d.data.body)
    p:stop()
    own.stop()
  end)

  it("stops reading while the bus is full and goes on by itself: every message fires", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(srv.addr) .. "---\n" .. sensor())
    local p = H.start { "run", dir, "--bus-capacity", "4" }
    p:wait_for("subscribed to 1 channel", { timeout = 10 })
    local cmds = {}
    for i = 1, 300 do cmds[i] = { "PUBLISH", "FOO", "m" .. i } end
    srv.pipe(cmds)
    local f = H.wait_firings(p, 300, 20)
    for i = 1, 300 do assert.equal("m" .. i, f[i].events.d.data.body) end
    p:stop()
  end)

  it("drops a message over --max-message-bytes, counted and logged", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(srv.addr) .. "---\n" .. sensor())
    local p = H.start { "run", dir, "--max-message-bytes", "100" }
    p:wait_for("subscribed to 1 channel", { timeout = 10 })
    srv.cmd("PUBLISH", "FOO", string.rep("x", 101))
    srv.cmd("PUBLISH", "FOO", "small")
    local f = H.wait_firings(p, 1, 5)
    assert.equal("small", f[1].events.d.data.body)
    assert.equal(1, H.metrics(p)['herald_eventsource_oversize_total{eventsource_name="redis",event_name="example"}'])
    assert.equal(1, p:count("over the limit of 100"))
    p:stop()
  end)

  it("examples/redis: lints clean and its sensor test passes", function()
    local dir = H.source_dir .. "/examples/redis"
    local code, out, err = H.run { "lint", "--strict", dir }
    assert.equal(0, code, out .. err)
    assert.matches("^2 object%(s%) valid", out)
    local tcode, tout = H.run { "test", dir }
    assert.equal(0, tcode, tout)
    assert.matches("passed, 0 failed\n$", tout)
  end)

  it("lint: Argo's validator's rules and host:port", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("localhost", "      password: {name: p, key: k}\n      tls: {insecureSkipVerify: false}\n"))
    local code, out, err = H.run { "lint", dir .. "/es.yaml" }
    local text = out .. err
    assert.equal(1, code)
    assert.truthy(text:find("spec.redis.example.hostAddress: must be host:port", 1, true), text)
    assert.truthy(text:find("namespace must be defined in order to retrieve the password from the secret", 1, true), text)
    assert.truthy(text:find("invalid tls config, please configure either caCertSecret", 1, true), text)
  end)
end)
