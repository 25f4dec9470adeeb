-- spec/sources/github/github_spec.lua: the github source through the real binary: signatures
-- (GitHub's documented example and values computed here), data shape, and the hooks it
-- registers with a stand-in of GitHub's REST API (spec/helpers/vendor_api.lua).
local H = require "helpers.herald"
local cjson = require "cjson"

local function hmac_hex(algo, key, msg)
  local kf, mf = os.tmpname(), os.tmpname()
  H.write(mf, msg)
  local p = io.popen(("openssl dgst -%s -hmac '%s' -r < %s"):format(algo, key:gsub("'", "'\\''"), mf))
  local out = p:read("*a")
  p:close()
  os.remove(kf) os.remove(mf)
  return out:match("^(%x+)")
end

local function secret(dir, name, key, value)
  os.execute(("mkdir -p %s/%s"):format(dir, name))
  H.write(("%s/%s/%s"):format(dir, name, key), value)
end

local function wait_listen(p, port)
  H.wait_until(function()
    if p:exited() then error("herald exited early\n" .. p:describe(), 0) end
    local s = H.http{ port = port, method = "GET", path = "/health", timeout = 0.5 }
    return s == 200
  end, 10, function() return "port " .. port .. "\n" .. p:describe() end)
end

local function start(es_body, opts)
  opts = opts or {}
  local dir, secrets = H.tmpdir(), H.tmpdir()
  for _, s in ipairs(opts.secrets or {}) do secret(secrets, s[1], s[2], s[3]) end
  H.write(dir .. "/es.yaml", "apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: gh\nspec:\n  github:\n    ev:\n" .. es_body)
  H.write(dir .. "/s.yaml", H.sensor{ name = "s", deps = { { name = "d", es = "gh", event = "ev" } } })
  local p = H.start{ "run", dir, "--secrets-dir", secrets, "--log-level", "debug" }
  return p
end

local function api(port)
  local p = H.spawn("luajit", { H.source_dir .. "/spec/helpers/vendor_api.lua", "--port", tostring(port),
    "--token", "ghp_test", "--app-id", "4242" })
  p:wait_for("listening", { stream = "stdout", timeout = 5 })
  return p
end

local function state(port)
  local _, _, body = H.http{ port = port, method = "GET", path = "/_state" }
  return cjson.decode(body)
end

local function count_calls(st, method, pattern)
  local n = 0
  for _, c in ipairs(st.calls) do
    if c.method == method and c.path:match(pattern) then n = n + 1 end
  end
  return n
end

describe("github source", function()
  local port, p
  local SECRET = "It's a Secret to Everybody"

  setup(function()
    port = H.free_port()
    p = start(([[
      webhook: {endpoint: /push, method: POST, port: "%d"}
      repositories: [{owner: argoproj, names: [argo-events]}]
      webhookSecret: {name: gh, key: secret}
      metadata: {team: infra}
]]):format(port), { secrets = { { "gh", "secret", SECRET } } })
    wait_listen(p, port)
  end)
  teardown(function() if p then p:stop() end end)

  local function post(body, headers)
    local h = { ["Content-Type"] = "application/json", ["X-GitHub-Event"] = "push",
      ["X-GitHub-Delivery"] = "72d3162e-cc78-11e3-81ab-4c9367dc0958" }
    for k, v in pairs(headers or {}) do h[k] = v or nil end
    return H.http{ port = port, method = "POST", path = "/push", headers = h, body = body }
  end

  it("accepts GitHub's documented signature example (HMAC-SHA256 of 'Hello, World!')", function()
    -- docs.github.com "Validating webhook deliveries": the payload is not a JSON object, so
    -- after the signature passed it is refused as a payload (400), not as a signature (403)
    local status, _, body = post("Hello, World!", { ["X-Hub-Signature-256"] =
      "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17" })
    assert.are.equal(400, status)
    assert.matches("not a JSON object", body)
    status = post("Hello, World!", { ["X-Hub-Signature-256"] =
      "sha256=857107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17" })
    assert.are.equal(403, status)
  end)

  it("emits {headers, body, metadata} for a signed payload, with the event and delivery in the body", function()
    local payload = '{"ref":"refs/heads/main","repository":{"full_name":"argoproj/argo-events"}}'
    local status, _, body = post(payload, { ["X-Hub-Signature-256"] = "sha256=" .. hmac_hex("sha256", SECRET, payload) })
    assert.are.equal(200, status)
    assert.are.equal("success", body)
    local f = H.wait_firings(p, 1)
    local data = f[1].events.d.data
    assert.are.equal("refs/heads/main", data.body.ref)
    assert.are.equal("push", data.body["X-GitHub-Event"])
    assert.are.equal("72d3162e-cc78-11e3-81ab-4c9367dc0958", data.body["X-GitHub-Delivery"])
    assert.are.same({ "push" }, data.headers["X-Github-Event"])
    assert.are.same({ team = "infra" }, data.metadata)
    assert.are.equal("github", f[1].events.d.type)
  end)

  it("accepts X-Hub-Signature (SHA-1) when no SHA-256 signature is sent, as go-github", function()
    local before = #H.firings(p)
    local payload = '{"zen":"Keep it logically awesome."}'
    local status = post(payload, { ["X-Hub-Signature"] = "sha1=" .. hmac_hex("sha1", SECRET, payload) })
    assert.are.equal(200, status)
    H.wait_firings(p, before + 1)
  end)

  it("takes form payloads (contentType form): the signature covers the form body", function()
    local before = #H.firings(p)
    local body = "payload=" .. ('{"zen":"form ok"}'):gsub("[^%w]", function(c) return ("%%%02X"):format(c:byte()) end)
    local status = post(body, { ["Content-Type"] = "application/x-www-form-urlencoded",
      ["X-Hub-Signature-256"] = "sha256=" .. hmac_hex("sha256", SECRET, body) })
    assert.are.equal(200, status)
    local f = H.wait_firings(p, before + 1)
    assert.are.equal("form ok", f[#f].events.d.data.body.zen)
  end)

  it("refuses a missing (401) or wrong (403) signature with no event and counts them", function()
    local before = #H.firings(p)
    local KEY = 'herald_eventsource_rejected_total{eventsource_name="gh",event_name="ev",reason="signature"}'
    local rejected = H.metrics(p)[KEY] or 0
    local payload = '{"zen":"forged"}'
    assert.are.equal(401, (post(payload)))
    assert.are.equal(403, (post(payload, { ["X-Hub-Signature-256"] = "sha256=" .. hmac_hex("sha256", "wrong", payload) })))
    assert.are.equal(403, (post(payload, { ["X-Hub-Signature-256"] = "sha256=zz" })))
    assert.are.equal(400, (post(payload, { ["Content-Type"] = "text/plain" })))
    local m = H.metrics(p)
    assert.are.equal(rejected + 3, m[KEY])
    -- a good one after: still exactly one more firing, none for the refused ones
    local good = '{"zen":"after"}'
    assert.are.equal(200, (post(good, { ["X-Hub-Signature-256"] = "sha256=" .. hmac_hex("sha256", SECRET, good) })))
    local f = H.wait_firings(p, before + 1)
    assert.are.equal(before + 1, #f)
    assert.are.equal("after", f[#f].events.d.data.body.zen)
    assert.is_nil(p:output("stderr"):find(SECRET, 1, true))
  end)
end)

describe("github hooks", function()
  local api_port, apip
  setup(function()
    api_port = H.free_port()
    apip = api(api_port)
  end)
  teardown(function() if apip then apip:stop() end end)

  local function es(port, extra)
    return ([[
      webhook: {endpoint: /push, method: POST, port: "%d", url: "https://hooks.example.com/"}
      repositories: [{owner: argoproj, names: [argo-events, argo-workflows]}]
      githubBaseURL: http://127.0.0.1:%d/api/v3
      githubUploadURL: http://127.0.0.1:%d/api/uploads
      webhookSecret: {name: gh, key: secret}
      active: true
      contentType: json
%s]]):format(port, api_port, api_port, extra)
  end

  it("creates missing hooks, reuses them at the next start, updates changed events, deletes at stop", function()
    local port = H.free_port()
    local secrets = { { "gh", "secret", "s3cret" }, { "gh", "token", "ghp_test" } }
    local p = start(es(port, "      apiToken: {name: gh, key: token}\n      events: [push]\n"), { secrets = secrets })
    p:wait_for("hooks registered for 2 targets", { timeout = 10 })
    local st = state(api_port)
    local hook = st.hooks["/repos/argoproj/argo-events/hooks"][1]
    assert.are.equal("https://hooks.example.com/push", hook.config.url)
    assert.are.equal("json", hook.config.content_type)
    assert.are.equal("0", hook.config.insecure_ssl)
    assert.are.same({ "push" }, hook.events)
    assert.is_true(hook.active)
    assert.are.equal(1, #st.hooks["/repos/argoproj/argo-workflows/hooks"])
    assert.are.equal(2, count_calls(st, "POST", "/hooks$"))
    p:stop()
    p:wait_exit(10)
    -- same spec again: reused, no new hook
    p = start(es(port, "      apiToken: {name: gh, key: token}\n      events: [push]\n"), { secrets = secrets })
    p:wait_for("hooks registered for 2 targets", { timeout = 10 })
    st = state(api_port)
    assert.are.equal(2, count_calls(st, "POST", "/hooks$"))
    assert.are.equal(1, #st.hooks["/repos/argoproj/argo-events/hooks"])
    p:stop()
    p:wait_exit(10)
    -- other events: the hook is updated in place; deleteHookOnFinish removes both at stop
    p = start(es(port, "      apiToken: {name: gh, key: token}\n      events: [push, pull_request]\n      deleteHookOnFinish: true\n"), { secrets = secrets })
    p:wait_for("hooks registered for 2 targets", { timeout = 10 })
    st = state(api_port)
    assert.are.equal(2, count_calls(st, "PATCH", "/hooks/%d+$"))
    assert.are.same({ "push", "pull_request" }, st.hooks["/repos/argoproj/argo-events/hooks"][1].events)
    p:stop()
    assert.are.equal(0, p:wait_exit(15))
    st = state(api_port)
    assert.are.equal(0, #st.hooks["/repos/argoproj/argo-events/hooks"])
    assert.are.equal(0, #st.hooks["/repos/argoproj/argo-workflows/hooks"])
    assert.is_nil(p:output("stderr"):find("ghp_test", 1, true))
    assert.is_nil(p:output("stderr"):find("s3cret", 1, true))
  end)

  it("authenticates as a GitHub App: an installation token from an RS256 JWT", function()
    local keyfile = os.tmpname()
    assert(os.execute("openssl genrsa -out " .. keyfile .. " 2048 2>/dev/null") == 0)
    local pem = H.read(keyfile)
    os.remove(keyfile)
    local port = H.free_port()
    local p = start(es(port, [[
      events: ["*"]
      organizations: []
      githubApp: {privateKey: {name: app, key: pem}, appID: 4242, installationID: 77}
]]):gsub("      repositories: %[.-%]\n", "      organizations: [argoproj]\n"):gsub("      organizations: %[%]\n", ""),
      { secrets = { { "gh", "secret", "s" }, { "app", "pem", pem } } })
    p:wait_for("hooks registered for 1 target", { timeout = 10 })
    local st = state(api_port)
    assert.are.equal(1, count_calls(st, "POST", "^/api/v3/app/installations/77/access_tokens$"))
    assert.are.equal(1, #st.hooks["/orgs/argoproj/hooks"])
    p:stop()
    p:wait_exit(10)
  end)

  it("retries a failing API with backoff without stopping the route", function()
    local port2 = H.free_port()
    local api2 = api(port2)
    -- the stand-in answers its first 2 calls with 500
    api2:stop() api2:wait_exit(5)
    api2 = H.spawn("luajit", { H.source_dir .. "/spec/helpers/vendor_api.lua", "--port", tostring(port2),
      "--token", "ghp_test", "--fail", "2" })
    api2:wait_for("listening", { stream = "stdout", timeout = 5 })
    local port = H.free_port()
    local p = start(([[
      webhook: {endpoint: /push, method: POST, port: "%d", url: "https://hooks.example.com"}
      repositories: [{owner: o, names: [r]}]
      githubBaseURL: http://127.0.0.1:%d/
      githubUploadURL: http://127.0.0.1:%d/
      apiToken: {name: gh, key: token}
      events: [push]
]]):format(port, port2, port2), { secrets = { { "gh", "token", "ghp_test" } } })
    wait_listen(p, port)
    assert.are.equal(200, (H.post_json(port, "/push", '{"a":1}')))
    p:wait_for("hooks registered for 1 target", { timeout = 15 })
    assert.are.equal(2, select(2, p:output("stderr"):gsub("cannot list hooks: HTTP 500", "")))
    assert.are.equal(2, H.metrics(p)['herald_eventsource_hook_errors_total{eventsource_name="gh",event_name="ev"}'])
    p:stop() p:wait_exit(10)
    api2:stop()
  end)

  it("refuses specs Argo refuses", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", [[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: gh}
spec:
  github:
    ev:
      webhook: {endpoint: /push, method: POST, port: "12000"}
      repositories: [{owner: o, names: [r]}]
      organizations: [o]
      contentType: xml
      githubBaseURL: https://ghe.example.com/api/v3
]])
    local code, o, e = H.run{ "lint", dir }
    assert.are_not.equal(0, code)
    local out = o .. e
    assert.matches("contentType", out)
    assert.matches("githubUploadURL", out)
    assert.matches("repositories", out)
  end)
end)
