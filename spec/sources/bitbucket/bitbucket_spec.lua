-- spec/sources/bitbucket/bitbucket_spec.lua: the bitbucket (Cloud) source through the real
-- binary: data {headers, body, metadata}, hooks created, reused (updated in place) and deleted
-- against a stand-in of Bitbucket's webhooks API (spec/helpers/vendor_api.lua, found through
-- BITBUCKET_API_BASE_URL as Argo's Go client does), basic and OAuth auth, Argo's lint errors.
local H = require "helpers.herald"
local cjson = require "cjson"

local function es(port, api_port, auth, extra)
  return ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: bb}
spec:
  bitbucket:
    ev:
      webhook: {endpoint: /bb, method: POST, port: "%d", url: "https://hooks.example.com/"}
      repositories:
        - {owner: team, repositorySlug: app}
        - {owner: team, repositorySlug: lib}
      events: ["repo:push", "pullrequest:created"]
      metadata: {env: test}
      deleteHookOnFinish: true
%s%s]]):format(port, auth, extra or "")
end

describe("bitbucket source", function()
  local api, api_port
  setup(function()
    api_port = H.free_port()
    api = H.spawn("luajit", { H.source_dir .. "/spec/helpers/vendor_api.lua", "--port", tostring(api_port),
      "--token", "app-pw", "--user", "bot" })
    api:wait_for("listening", { stream = "stdout", timeout = 5 })
  end)
  teardown(function() api:stop() end)

  local function state()
    local _, _, st = H.http{ port = api_port, method = "GET", path = "/_state" }
    return cjson.decode(st).hooks
  end

  it("creates and reuses hooks with basic auth, emits {headers, body, metadata}, deletes the hooks", function()
    -- a hook with our URL already on team/lib: updated in place, not duplicated
    local basic = "Basic " .. (require "mime").b64("bot:app-pw")
    local code = H.http{ port = api_port, method = "POST", path = "/2.0/repositories/team/lib/hooks",
      body = '{"url":"https://hooks.example.com/bb","events":["issue:created"],"active":false}',
      headers = { Authorization = basic, ["Content-Type"] = "application/json" } }
    assert.are.equal(201, code)
    local dir, sdir = H.tmpdir(), H.tmpdir()
    os.execute("mkdir -p " .. sdir .. "/bb")
    H.write(sdir .. "/bb/user", "bot")
    H.write(sdir .. "/bb/pw", "app-pw")
    local port = H.free_port()
    H.write(dir .. "/es.yaml", es(port, api_port, [[
      auth:
        basic:
          username: {name: bb, key: user}
          password: {name: bb, key: pw}
]]))
    H.write(dir .. "/s.yaml", H.sensor{ name = "s", deps = { { name = "d", es = "bb", event = "ev" } } })
    local p = H.start({ "run", dir, "--secrets-dir", sdir }, { env = { BITBUCKET_API_BASE_URL = "http://127.0.0.1:" .. api_port .. "/2.0" } })
    p:wait_for("hooks registered for 2 targets", { timeout = 10 })
    local st = state()
    local app, lib = st["/2.0/repositories/team/app/hooks"], st["/2.0/repositories/team/lib/hooks"]
    assert.are.equal(1, #app)
    assert.are.equal("https://hooks.example.com/bb", app[1].url)
    assert.are.same({ "repo:push", "pullrequest:created" }, app[1].events)
    assert.is_true(app[1].active)
    assert.are.equal("webhook managed by Argo-Events", app[1].description)
    assert.are.equal(1, #lib)
    assert.are.same({ "repo:push", "pullrequest:created" }, lib[1].events)
    assert.is_true(lib[1].active)

    local body = '{"push":{"changes":[{"new":{"name":"main"}}]},"repository":{"full_name":"team/app"}}'
    assert.are.equal(400, (H.http{ port = port, method = "POST", path = "/bb", body = "not json",
      headers = { ["Content-Type"] = "application/json" } }))
    assert.are.equal(200, (H.http{ port = port, method = "POST", path = "/bb", body = body,
      headers = { ["Content-Type"] = "application/json", ["X-Event-Key"] = "repo:push" } }))
    local f = H.wait_firings(p, 1)
    local d = f[1].events.d.data
    assert.are.equal("team/app", d.body.repository.full_name)
    assert.are.same({ "repo:push" }, d.headers["X-Event-Key"])
    assert.are.same({ env = "test" }, d.metadata)
    assert.are.equal(1, #H.firings(p))
    assert.are.equal(0, p:stop())
    st = state()
    assert.are.equal(0, #st["/2.0/repositories/team/app/hooks"])
    assert.are.equal(0, #st["/2.0/repositories/team/lib/hooks"])
    assert.is_nil(p:output("stderr"):find("app-pw", 1, true))
  end)

  it("uses an OAuth bearer token, retries a failing API with backoff and never fails the source", function()
    local dir, sdir = H.tmpdir(), H.tmpdir()
    os.execute("mkdir -p " .. sdir .. "/bb")
    H.write(sdir .. "/bb/tok", "app-pw")
    local port = H.free_port()
    H.write(dir .. "/es.yaml", es(port, api_port, [[
      auth:
        oauthToken: {name: bb, key: tok}
]]):gsub("deleteHookOnFinish: true", "deleteHookOnFinish: false"))
    H.write(dir .. "/s.yaml", H.sensor{ name = "s", deps = { { name = "d", es = "bb", event = "ev" } } })
    -- a wrong base first: 404s, retried (counted), while the route serves
    local p = H.start({ "run", dir, "--secrets-dir", sdir }, { env = { BITBUCKET_API_BASE_URL = "http://127.0.0.1:" .. api_port .. "/nope" } })
    p:wait_for("cannot list hooks: HTTP 404", { timeout = 10 })
    assert.are.equal(200, (H.http{ port = port, method = "POST", path = "/bb", body = "{}",
      headers = { ["Content-Type"] = "application/json" } }))
    H.wait_firings(p, 1)
    assert.are.equal(0, p:stop())
    p = H.start({ "run", dir, "--secrets-dir", sdir }, { env = { BITBUCKET_API_BASE_URL = "http://127.0.0.1:" .. api_port .. "/2.0/" } })
    p:wait_for("hooks registered for 2 targets", { timeout = 10 })
    local st = state()
    assert.are.equal(1, #st["/2.0/repositories/team/app/hooks"])
    assert.are.equal(0, p:stop())
    -- deleteHookOnFinish false: the hooks stay
    assert.are.equal(1, #state()["/2.0/repositories/team/app/hooks"])
    assert.is_nil(p:output("stderr"):find("app-pw", 1, true))
  end)

  it("lint: a repository is required, and events when hooks are to be created", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", [[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: bb}
spec:
  bitbucket:
    norepo:
      webhook: {endpoint: /a, method: POST, port: "12000"}
      events: ["repo:push"]
    noevents:
      webhook: {endpoint: /b, method: POST, port: "12000", url: "https://x"}
      repositories: [{owner: o, repositorySlug: r}]
      auth: {oauthToken: {name: s, key: k}}
]])
    local code, out, err = H.run{ "lint", dir }
    assert.are_not.equal(0, code)
    local text = out .. err
    assert.matches("spec.bitbucket.norepo[^\n]*at least one repository is required", text)
    assert.matches("spec.bitbucket.noevents[^\n]*events must be defined", text)
  end)

  it("examples/bitbucket lints clean and passes its sensor tests", function()
    local ex = H.source_dir .. "/examples/bitbucket"
    local code, out, err = H.run{ "lint", "--strict", ex }
    assert.are.equal(0, code, err)
    assert.matches("^2 object%(s%) valid", out)
    local tcode, tout = H.run{ "test", ex }
    assert.are.equal(0, tcode)
    assert.matches("1 passed, 0 failed", tout)
  end)
end)
