-- An EventBus object with jetstreamExotic selects the JetStream bus, as in Argo: the
-- EventSource and the Sensor name it (eventBusName, default "default"), no --bus flag needed.
local H = require "helpers.herald"

local has_server = os.execute("command -v nats-server >/dev/null 2>&1")
if has_server ~= true and has_server ~= 0 then has_server = false end

describe("EventBus jetstreamExotic", function()
  if not has_server then
    pending("nats-server is not installed")
    return
  end

  it("carries events between an eventsource and a sensor process that name it", function()
    local port = H.free_port()
    local srv = H.spawn("nats-server", { "-a", "127.0.0.1", "-p", tostring(port), "-js", "-sd", H.tmpdir() })
    H.wait_port(port, 10)
    local dir = H.tmpdir()
    local wport = H.free_port()
    H.write(dir .. "/bus.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstreamExotic:
    url: nats://127.0.0.1:%d
]]):format(port))
    H.write(dir .. "/es.yaml", H.webhook_es{ port = wport })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    local sensor = H.start{ "sensor", dir }
    sensor:wait_for("JetStream at nats://127.0.0.1:" .. port, { timeout = 10 })
    sensor:wait_for(" ready on ", { timeout = 10 })
    local es = H.start{ "eventsource", dir }
    es:wait_for("listening for", { timeout = 10 })
    assert.equal(200, (H.post_json(wport, "/hook", '{"via":"eventbus"}')))
    local f = H.wait_firings(sensor, 1, 10)[1]
    assert.equal("eventbus", f.events.d.data.body.via)
    es:kill()
    sensor:kill()
    srv:kill()
  end)

  it("still refuses component mode with neither --bus nor an EventBus", function()
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    local code, _, err = H.run{ "sensor", dir }
    assert.equal(2, code)
    assert.matches("never meet", err)
  end)

  -- A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
  local function make_certs(dir)
    H.write(dir .. "/srv.ext", "subjectAltName=IP:127.0.0.1\n")
    local cmds = {
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=herald-test-ca",
      "openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1",
      "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile srv.ext",
      "openssl req -newkey rsa:2048 -nodes -keyout cli.key -out cli.csr -subj /CN=herald",
      "openssl x509 -req -in cli.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cli.pem -days 2",
    }
    for _, c in ipairs(cmds) do
      local r = os.execute(("cd %s && %s >/dev/null 2>&1"):format(dir, c))
      assert(r == 0 or r == true, c)
    end
  end

  -- The streams nats-server reports on its monitoring port: name -> config.
  local function streams(mport)
    local status, _, body = H.http{ port = mport, method = "GET", path = "/jsz?streams=true&config=true" }
    assert.equal(200, status)
    local out = {}
    for _, a in ipairs(require("cjson").decode(body).account_details or {}) do
      for _, st in ipairs(a.stream_detail or {}) do out[st.name] = st.config end
    end
    return out
  end

  local function bus_yaml(port, extra)
    return ([[
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstreamExotic:
    url: nats://127.0.0.1:%d
]]):format(port) .. (extra or "")
  end

  local function round_trip(dir, secrets, wport, marker)
    local p = H.start{ "run", dir, "--secrets-dir", secrets }
    p:wait_for(" ready on ", { timeout = 10 })
    local st = H.wait_until(function()
      local code = H.post_json(wport, "/hook", ('{"via":"%s"}'):format(marker))
      return code == 200 and code
    end, 10, "a 200 from the webhook")
    assert.equal(200, st)
    local f = H.wait_firings(p, 1, 10)[1]
    assert.equal(marker, f.events.d.data.body.via)
    return p
  end

  it("authenticates with accessSecret (basic) over TLS, and applies streamConfig (create, then update)", function()
    if not (os.execute("command -v openssl >/dev/null 2>&1") == 0 or os.execute("command -v openssl >/dev/null 2>&1") == true) then
      pending("openssl is needed to make the test certificates")
      return
    end
    local certs, secrets, dir = H.tmpdir(), H.tmpdir(), H.tmpdir()
    make_certs(certs)
    local port, mport, wport = H.free_port(), H.free_port(), H.free_port()
    local srv = H.spawn("nats-server", { "-a", "127.0.0.1", "-p", tostring(port), "-m", tostring(mport),
      "-js", "-sd", H.tmpdir(), "--user", "herald", "--pass", "s3cret",
      "--tlsverify", "--tlscert", certs .. "/srv.pem", "--tlskey", certs .. "/srv.key", "--tlscacert", certs .. "/ca.pem" })
    H.wait_port(port, 10)
    assert(os.execute(("mkdir -p %s/nats-auth %s/nats-tls"):format(secrets, secrets)) == 0)
    H.write(secrets .. "/nats-auth/auth.yaml", "username: herald\npassword: s3cret\n")
    for _, f in ipairs{ "ca.pem", "cli.pem", "cli.key" } do H.write(secrets .. "/nats-tls/" .. f, H.read(certs .. "/" .. f)) end
    local tls = [[
    accessSecret: {name: nats-auth, key: auth.yaml}
    tls:
      caCertSecret: {name: nats-tls, key: ca.pem}
      clientCertSecret: {name: nats-tls, key: cli.pem}
      clientKeySecret: {name: nats-tls, key: cli.key}
]]
    H.write(dir .. "/bus.yaml", bus_yaml(port, tls .. "    streamConfig: |\n      maxMsgs: 500\n      maxAge: 2h\n      duplicates: 60s\n"))
    H.write(dir .. "/es.yaml", H.webhook_es{ port = wport })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    local p = round_trip(dir, secrets, wport, "tls")
    local cfg = streams(mport).default
    assert.equal(500, cfg.max_msgs)
    assert.equal(2 * 3600 * 1e9, cfg.max_age)
    assert.equal(60 * 1e9, cfg.duplicate_window)
    assert.equal(1024 * 1024 * 1024, cfg.max_bytes) -- Herald's default for what is not given
    p:kill()
    -- a changed streamConfig updates the stream, as Argo does
    H.write(dir .. "/bus.yaml", bus_yaml(port, tls .. "    streamConfig: |\n      maxMsgs: 700\n"))
    p = round_trip(dir, secrets, wport, "updated")
    p:wait_for("updated stream default")
    assert.equal(700, streams(mport).default.max_msgs)
    p:kill()
    -- a wrong password: the server refuses, the webhook answers 503, nothing is started wrongly
    H.write(secrets .. "/nats-auth/auth.yaml", "username: herald\npassword: wrong\n")
    p = H.start{ "run", dir, "--secrets-dir", secrets }
    p:wait_for("Authorization Violation", { timeout = 10 })
    assert.equal(503, (H.post_json(wport, "/hook", '{"via":"refused"}')))
    p:kill()
    srv:kill()
  end)

  it("authenticates with a token", function()
    local secrets, dir = H.tmpdir(), H.tmpdir()
    local port, wport = H.free_port(), H.free_port()
    local srv = H.spawn("nats-server", { "-a", "127.0.0.1", "-p", tostring(port), "-js", "-sd", H.tmpdir(), "--auth", "t0ken" })
    H.wait_port(port, 10)
    assert(os.execute(("mkdir -p %s/nats-auth"):format(secrets)) == 0)
    H.write(secrets .. "/nats-auth/auth.yaml", "token: t0ken\n")
    H.write(dir .. "/bus.yaml", bus_yaml(port, "    auth: token\n    accessSecret: {name: nats-auth, key: auth.yaml}\n"))
    H.write(dir .. "/es.yaml", H.webhook_es{ port = wport })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    round_trip(dir, secrets, wport, "token"):kill()
    srv:kill()
  end)

  it("authenticates with a NATS credentials file (auth: jwt) against an operator-mode server", function()
    local J = require "helpers.nats_jwt"
    local conf, creds = J.setup(H.tmpdir())
    local port, wport = H.free_port(), H.free_port()
    local cdir, secrets, dir = H.tmpdir(), H.tmpdir(), H.tmpdir()
    H.write(cdir .. "/server.conf", ("listen: 127.0.0.1:%d\n"):format(port) .. conf)
    local srv = H.spawn("nats-server", { "-c", cdir .. "/server.conf" })
    H.wait_port(port, 10)
    assert(os.execute(("mkdir -p %s/nats-jwt"):format(secrets)) == 0)
    H.write(secrets .. "/nats-jwt/creds", creds)
    H.write(dir .. "/bus.yaml", bus_yaml(port, "    auth: jwt\n    accessSecret: {name: nats-jwt, key: creds}\n"))
    H.write(dir .. "/es.yaml", H.webhook_es{ port = wport })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    round_trip(dir, secrets, wport, "jwt"):kill()
    -- the server refuses a user the account did not sign (a credentials file of a stranger)
    local _, other = J.setup(H.tmpdir())
    H.write(secrets .. "/nats-jwt/creds", other)
    local p = H.start{ "run", dir, "--secrets-dir", secrets }
    p:wait_for("Authorization Violation", { timeout = 10 })
    p:kill()
    -- and a secret that is not a credentials file is refused before starting
    H.write(secrets .. "/nats-jwt/creds", "username: x\n")
    local code, _, err = H.run{ "run", dir, "--secrets-dir", secrets }
    assert.equal(1, code)
    assert.matches("spec%.jetstreamExotic%.accessSecret: jwt auth: the secret is not a NATS credentials file", err)
    srv:kill()
  end)

  it("managed jetstream: embedded in one process; in component mode the controller's Service, TLS and client-auth secret", function()
    local dir, secrets = H.tmpdir(), H.tmpdir()
    local wport = H.free_port()
    local managed = [[
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstream:
    version: 2.9.10
    replicas: 3
    streamConfig: |
      maxMsgs: 321
]]
    H.write(dir .. "/bus.yaml", managed)
    H.write(dir .. "/es.yaml", H.webhook_es{ port = wport })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    -- herald run: everything in one process, on the embedded bus
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    assert.truthy(p:output("stderr"):find("is a managed JetStream", 1, true))
    assert.equal(200, (H.post_json(wport, "/hook", '{"via":"embedded"}')))
    assert.equal("embedded", H.wait_firings(p, 1, 5)[1].events.d.data.body.via)
    assert.equal(1, H.metrics(p)['herald_bus_connected{bus="embedded"}'])
    p:kill()
    -- component mode: the servers' Service (here a local TLS nats-server standing in for it)
    local certs = H.tmpdir()
    make_certs(certs)
    local port, mport = H.free_port(), H.free_port()
    local srv = H.spawn("nats-server", { "-a", "127.0.0.1", "-p", tostring(port), "-m", tostring(mport),
      "-js", "-sd", H.tmpdir(), "--user", "argo", "--pass", "pw", "--tls", "--tlscert", certs .. "/srv.pem",
      "--tlskey", certs .. "/srv.key" })
    H.wait_port(port, 10)
    assert(os.execute(("mkdir -p %s/eventbus-default-js-client-auth"):format(secrets)) == 0)
    H.write(secrets .. "/eventbus-default-js-client-auth/client-auth", "username: argo\npassword: pw\n")
    local env = { HERALD_JETSTREAM_URL = "nats://127.0.0.1:" .. port }
    local sensor = H.start({ "sensor", dir, "--secrets-dir", secrets }, { env = env })
    sensor:wait_for(" ready on ", { timeout = 10 })
    local es = H.start({ "eventsource", dir, "--secrets-dir", secrets }, { env = env })
    es:wait_for("listening for", { timeout = 10 })
    local st = H.wait_until(function()
      local code = H.post_json(wport, "/hook", '{"via":"managed"}')
      return code == 200 and code
    end, 10, "a 200 from the webhook")
    assert.equal(200, st)
    assert.equal("managed", H.wait_firings(sensor, 1, 10)[1].events.d.data.body.via)
    assert.equal(321, streams(mport).default.max_msgs)
    es:kill()
    sensor:kill()
    -- without the client-auth secret: a clear error naming it
    local code, _, err = H.run({ "sensor", dir, "--secrets-dir", H.tmpdir() }, { env = env })
    assert.equal(1, code)
    assert.matches("spec%.jetstream: cannot read secret eventbus%-default%-js%-client%-auth/client%-auth", err)
    srv:kill()
    -- two servers cannot make a quorum
    H.write(dir .. "/bus.yaml", (managed:gsub("replicas: 3", "replicas: 2")))
    code, _, err = H.run{ "lint", dir }
    assert.equal(1, code)
    assert.matches("spec%.jetstream%.replicas: replicas must be 1, or 3 and more", err)
  end)

  it("reports a bad streamConfig, a missing secret and jwt auth without a secret with the field's position", function()
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    -- {EventBus fields, herald command, the error expected}
    local cases = {
      { "    streamConfig: |\n      retention: 2\n", { "lint", dir },
        "bus%.yaml:%d+:%d+: spec%.jetstreamExotic%.streamConfig: retention: 2 %(WorkQueue%)" },
      { "    streamConfig: |\n      maxMessages: 10\n", { "lint", dir },
        "streamConfig: unknown setting maxMessages %(known: maxMsgs" },
      { "    streamConfig: |\n      maxAge: soon\n", { "lint", dir }, "streamConfig: maxAge: invalid duration soon" },
      { "    accessSecret: {name: nowhere, key: auth.yaml}\n", { "sensor", dir, "--secrets-dir", H.tmpdir() },
        "bus%.yaml:8:%d+: spec%.jetstreamExotic%.accessSecret: cannot read secret nowhere/auth%.yaml" },
      { "    auth: jwt\n", { "sensor", dir }, "spec%.jetstreamExotic%.auth: auth jwt needs accessSecret" },
    }
    for _, c in ipairs(cases) do
      H.write(dir .. "/bus.yaml", bus_yaml(4222, c[1]))
      local code, _, err = H.run(c[2])
      assert.equal(1, code, c[3])
      assert.matches(c[3], err)
    end
  end)
end)
