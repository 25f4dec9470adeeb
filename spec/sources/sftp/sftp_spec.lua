-- spec/sources/sftp/sftp_spec.lua: the sftp event source (sources/sftp/) against OpenSSH's sshd
-- (spec/helpers/sshd_peer.lua) on 127.0.0.1: a file created on the server fires CREATE and a
-- removed one REMOVE, password and key logins, an unknown host key refused, and sshd restarted
-- (the source reconnects and reports what changed meanwhile).
local H = require "helpers.herald"
local S = require "helpers.sshd_peer"

if not S.available() then
  describe("sftp source", function()
    it("needs sshd", function() pending(S.why()) end)
  end)
  return
end

local function secrets(srv, o)
  local d = H.tmpdir()
  local function put(name, text) H.write(d .. "/" .. name .. "/v", text) end
  os.execute("mkdir -p " .. d .. "/addr " .. d .. "/user " .. d .. "/pass " .. d .. "/key " .. d .. "/kh")
  put("addr", "127.0.0.1:" .. srv.port)
  put("user", srv.user)
  put("pass", o.password or srv.password)
  put("key", o.key or srv.key)
  put("kh", o.known_hosts or srv.known_hosts)
  return d
end

local function start(srv, dir, o)
  o = o or {}
  local sec = secrets(srv, o)
  local auth = o.auth == "key" and "      sshKeySecret: {name: key, key: v}\n" or "      password: {name: pass, key: v}\n"
  local kh = o.no_known_hosts and "" or "      knownHostsSecret: {name: kh, key: v}\n"
  local d = H.tmpdir()
  H.write(d .. "/es.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: es
spec:
  sftp:
    ev:
      eventType: %s
      watchPathConfig:
        directory: %s/
        pathRegexp: '\.csv$'
      address: {name: addr, key: v}
      username: {name: user, key: v}
%s%s      pollIntervalDuration: 200ms
      metadata: {via: sftp}
]]):format(o.event or "CREATE", dir, auth, kh) .. "---\n" .. H.sensor { name = "s", deps = { { name = "d" } } })
  return H.start({ "run", d, "--log-level", "debug", "--secrets-dir", sec })
end

describe("sftp source", function()
  local srv
  setup(function() srv = S.start() end)
  teardown(function() if srv then srv:stop() end end)

  it("password login: a file created on the server fires CREATE with Argo's data; others do not", function()
    local dir = srv:dir_for_files()
    H.write(dir .. "/old.csv", "x") -- there before: the baseline, no event
    local p = start(srv, dir)
    p:wait_for('"connected"', { timeout = 10 })
    H.write(dir .. "/new.csv", "1")
    H.write(dir .. "/new.txt", "1") -- not matched by pathRegexp
    local f = H.wait_firings(p, 1, 10)
    local d = f[1].events.d
    assert.equal("sftp", d.type)
    assert.same({ name = "new.csv", op = 1, metadata = { via = "sftp" } }, d.data)
    H.write(dir .. "/old.csv", "changed, longer") -- another size: CREATE again, as Argo
    f = H.wait_firings(p, 2, 10)
    assert.equal("old.csv", f[2].events.d.data.name)
    assert.equal(0, p:stop())
    assert.equal(2, #H.firings(p))
  end)

  it("key login, REMOVE", function()
    local dir = srv:dir_for_files()
    H.write(dir .. "/gone.csv", "x")
    local p = start(srv, dir, { auth = "key", event = "REMOVE" })
    p:wait_for('"connected"', { timeout = 10 })
    H.write(dir .. "/other.csv", "x") -- a CREATE: not asked for
    os.remove(dir .. "/gone.csv")
    local f = H.wait_firings(p, 1, 10)
    assert.same({ name = "gone.csv", op = 4, metadata = { via = "sftp" } }, f[1].events.d.data)
    assert.equal(0, p:stop())
    assert.equal(1, #H.firings(p))
  end)

  it("an unknown host key is refused: no login, no events", function()
    local dir = srv:dir_for_files()
    local p = start(srv, dir, { no_known_hosts = true })
    p:wait_for("is unknown (no knownHostsSecret): refused", { timeout = 10 })
    local other = S.start() -- known_hosts names another key for this address: refused as well
    local q = start(srv, dir, { known_hosts = other.known_hosts:gsub("%]:%d+", "]:" .. srv.port) })
    q:wait_for("differs from the known one: refused", { timeout = 10 })
    other:stop()
    H.write(dir .. "/a.csv", "1")
    assert.equal(0, p:count('"connected"'))
    assert.equal(0, p:stop())
    assert.equal(0, q:stop())
    assert.equal(0, #H.firings(p))
    assert.equal(0, #H.firings(q))
  end)

  it("sshd restarted: the source reconnects and fires for what was created meanwhile", function()
    local dir = srv:dir_for_files()
    local p = start(srv, dir)
    p:wait_for('"connected"', { timeout = 10 })
    srv:stop()
    p:wait_for("not connected", { timeout = 10 })
    H.write(dir .. "/while-down.csv", "1")
    srv:restart()
    local f = H.wait_firings(p, 1, 15)
    assert.equal("while-down.csv", f[1].events.d.data.name)
    assert.is_true(p:count('"connected"') >= 2)
    assert.equal(0, p:stop())
    assert.equal(1, #H.firings(p))
  end)

  it("examples/sftp lints clean, its sensor test passes, and it fires", function()
    local ex = H.source_dir .. "/examples/sftp"
    local code, out, err = H.run { "lint", "--strict", ex }
    assert.equal(0, code, err)
    assert.matches("^2 object%(s%) valid", out)
    code, out = H.run { "test", ex }
    assert.equal(0, code, out)
    assert.matches("1 passed, 0 failed", out)
    -- live, against sshd: the example's secrets written for it, its directory a temp one
    local dir = srv:dir_for_files()
    local sec = H.tmpdir()
    os.execute("mkdir -p " .. sec .. "/sftp")
    H.write(sec .. "/sftp/address", "127.0.0.1:" .. srv.port)
    H.write(sec .. "/sftp/username", srv.user)
    H.write(sec .. "/sftp/key", srv.key)
    H.write(sec .. "/sftp/known_hosts", srv.known_hosts)
    local d = H.tmpdir()
    H.write(d .. "/sftp.yaml", (H.read(ex .. "/sftp.yaml"):gsub("directory: /upload/", "directory: " .. dir .. "/")
      :gsub("pollIntervalDuration: 10s", "pollIntervalDuration: 200ms")))
    local p = H.start { "run", d, "--secrets-dir", sec }
    p:wait_for('"connected"', { timeout = 10 })
    H.write(dir .. "/report.csv", "1")
    local f = H.wait_firings(p, 1, 10)
    assert.same({ name = "report.csv", op = 1, metadata = require("cjson").null }, f[1].events.upload.data)
    assert.equal(0, p:stop())
  end)

  it("lint: password or sshKeySecret, a duration, a known operation", function()
    local d = H.tmpdir()
    H.write(d .. "/bad.yaml", [[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: es
spec:
  sftp:
    ev:
      eventType: MODIFY
      watchPathConfig:
        directory: data
        path: a.csv
      address: {name: a, key: v}
      username: {name: u, key: v}
      pollIntervalDuration: often
]])
    local code, out, err = H.run { "lint", d .. "/bad.yaml" }
    local text = out .. err
    assert.equal(1, code, text)
    assert.matches("eventType must be one of", text)
    assert.matches("directory must be an absolute file path", text)
    assert.matches("invalid pollIntervalDuration", text)
    assert.matches("password", text)
  end)
end)
