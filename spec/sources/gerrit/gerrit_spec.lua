-- spec/sources/gerrit/gerrit_spec.lua: the gerrit source through the real binary: data
-- {headers, body, metadata}, remotes created, reused and deleted against a stand-in of Gerrit's
-- webhooks plugin API (spec/helpers/vendor_api.lua: basic auth under /a/, ")]}'" prefixed
-- answers), retried with backoff, Argo's lint errors, and examples/gerrit.
local H = require "helpers.herald"
local cjson = require "cjson"

describe("gerrit source", function()
  local api, api_port
  setup(function()
    api_port = H.free_port()
    api = H.spawn("luajit", { H.source_dir .. "/spec/helpers/vendor_api.lua", "--port", tostring(api_port),
      "--token", "http-pw", "--user", "bot", "--fail", "1" })
    api:wait_for("listening", { stream = "stdout", timeout = 5 })
  end)
  teardown(function() api:stop() end)

  local function state()
    local _, _, st = H.http{ port = api_port, method = "GET", path = "/_state" }
    return cjson.decode(st).hooks
  end
  local basic = "Basic " .. (require "mime").b64("bot:http-pw")

  it("creates and reuses remotes, emits {headers, body, metadata}, deletes the remotes", function()
    -- platform/infra already has our remote: reused as it is
    local function seed()
      return (H.http{ port = api_port, method = "PUT", path = "/a/config/server/webhooks~projects/platform%2Finfra/remotes/argo/",
        body = '{"url":"https://hooks.example.com/gerrit","events":["change-merged"]}',
        headers = { Authorization = basic, ["Content-Type"] = "application/json" } })
    end
    assert.are.equal(500, seed()) -- --fail 1 -> 500 once (the stand-in's own check)
    assert.are.equal(201, seed())
    local dir, sdir = H.tmpdir(), H.tmpdir()
    os.execute("mkdir -p " .. sdir .. "/gerrit")
    H.write(sdir .. "/gerrit/user", "bot")
    H.write(sdir .. "/gerrit/pw", "http-pw")
    local port = H.free_port()
    H.write(dir .. "/es.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: gr}
spec:
  gerrit:
    ev:
      webhook: {endpoint: /gerrit, method: POST, port: "%d", url: "https://hooks.example.com"}
      hookName: argo
      projects: [app, platform/infra]
      events: [patchset-created, change-merged]
      auth:
        username: {name: gerrit, key: user}
        password: {name: gerrit, key: pw}
      gerritBaseURL: http://127.0.0.1:%d/
      sslVerify: true
      maxTries: 3
      metadata: {site: review}
      deleteHookOnFinish: true
]]):format(port, api_port))
    H.write(dir .. "/s.yaml", H.sensor{ name = "s", deps = { { name = "d", es = "gr", event = "ev" } } })
    local p = H.start{ "run", dir, "--secrets-dir", sdir }
    p:wait_for("hooks registered for 2 targets", { timeout = 10 })
    assert.matches("platform/infra: hook argo already registered", p:output("stderr"), 1, true)
    local st = state()
    local app = st["/a/config/server/webhooks~projects/app/remotes"]
    assert.are.equal(1, #app)
    assert.are.equal("argo", app[1].name)
    assert.are.same({ url = "https://hooks.example.com/gerrit", events = { "patchset-created", "change-merged" },
      sslVerify = true, maxTries = 3 }, app[1].config)
    local infra = st["/a/config/server/webhooks~projects/platform%2Finfra/remotes"]
    assert.are.equal(1, #infra)
    assert.are.same({ "change-merged" }, infra[1].config.events)

    local body = '{"type":"patchset-created","change":{"project":"app","number":7}}'
    assert.are.equal(400, (H.http{ port = port, method = "POST", path = "/gerrit", body = "<xml/>",
      headers = { ["Content-Type"] = "application/json" } }))
    assert.are.equal(200, (H.http{ port = port, method = "POST", path = "/gerrit", body = body,
      headers = { ["Content-Type"] = "application/json" } }))
    local f = H.wait_firings(p, 1)
    local d = f[1].events.d.data
    assert.are.equal("patchset-created", d.body.type)
    assert.are.equal(7, d.body.change.number)
    assert.are.same({ "application/json" }, d.headers["Content-Type"])
    assert.are.same({ site = "review" }, d.metadata)
    assert.are.equal(1, #H.firings(p))
    assert.are.equal(0, p:stop())
    st = state()
    assert.are.equal(0, #st["/a/config/server/webhooks~projects/app/remotes"])
    assert.are.equal(0, #st["/a/config/server/webhooks~projects/platform%2Finfra/remotes"])
    assert.is_nil(p:output("stderr"):find("http-pw", 1, true))
  end)

  it("lint: Argo's required fields and a remote name", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", [[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: gr}
spec:
  gerrit:
    bad:
      webhook: {endpoint: /a, method: POST, port: "12000", url: "https://x"}
      projects: []
      events: [change-merged]
      auth: {username: {name: s, key: u}, password: {name: s, key: p}}
      gerritBaseURL: ""
    noauth:
      webhook: {endpoint: /b, method: POST, port: "12000"}
      projects: [p]
      events: [change-merged]
      gerritBaseURL: https://g
]])
    local code, out, err = H.run{ "lint", dir }
    assert.are_not.equal(0, code)
    local text = out .. err
    assert.matches("spec.gerrit.bad[^\n]*projects cannot be empty", text)
    assert.matches("spec.gerrit.bad[^\n]*gerrit base url can't be empty", text)
    assert.matches("spec.gerrit.bad[^\n]*hookName is required", text)
    assert.matches("spec.gerrit.noauth.auth", text)
  end)

  it("examples/gerrit lints clean and passes its sensor tests", function()
    local ex = H.source_dir .. "/examples/gerrit"
    local code, out, err = H.run{ "lint", "--strict", ex }
    assert.are.equal(0, code, err)
    assert.matches("^2 object%(s%) valid", out)
    local tcode, tout = H.run{ "test", ex }
    assert.are.equal(0, tcode)
    assert.matches("1 passed, 0 failed", tout)
  end)
end)
