-- spec/sources/gitlab/gitlab_spec.lua: the gitlab source through the real binary:
-- X-Gitlab-Token, data {headers, body, metadata}, and hooks against a stand-in of GitLab's
-- project and group hook API (spec/helpers/vendor_api.lua).
local H = require "helpers.herald"
local cjson = require "cjson"

describe("gitlab source", function()
  it("checks X-Gitlab-Token, emits {headers, body}, creates, reuses and deletes hooks", function()
    local api_port, port = H.free_port(), H.free_port()
    local api = H.spawn("luajit", { H.source_dir .. "/spec/helpers/vendor_api.lua", "--port", tostring(api_port), "--token", "glpat-x" })
    api:wait_for("listening", { stream = "stdout", timeout = 5 })
    local dir, sdir = H.tmpdir(), H.tmpdir()
    os.execute("mkdir -p " .. sdir .. "/gl")
    H.write(sdir .. "/gl/access", "glpat-x")
    H.write(sdir .. "/gl/secret", "tok3n")
    H.write(dir .. "/es.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: gl}
spec:
  gitlab:
    ev:
      webhook: {endpoint: /gl, method: POST, port: "%d", url: "https://hooks.example.com"}
      projects: ["group/app", "42"]
      groups: [platform]
      events: [PushEvents, MergeRequestsEvents]
      accessToken: {name: gl, key: access}
      secretToken: {name: gl, key: secret}
      enableSSLVerification: true
      gitlabBaseURL: http://127.0.0.1:%d
      deleteHookOnFinish: true
]]):format(port, api_port))
    H.write(dir .. "/s.yaml", H.sensor{ name = "s", deps = { { name = "d", es = "gl", event = "ev" } } })
    local p = H.start{ "run", dir, "--secrets-dir", sdir }
    p:wait_for("hooks registered for 3 targets", { timeout = 10 })
    local _, _, st = H.http{ port = api_port, method = "GET", path = "/_state" }
    st = cjson.decode(st).hooks
    local h = st["/api/v4/projects/group%2Fapp/hooks"][1]
    assert.are.equal("https://hooks.example.com/gl", h.url)
    assert.is_true(h.push_events)
    assert.is_true(h.merge_requests_events)
    assert.is_false(h.issues_events)
    assert.is_true(h.enable_ssl_verification)
    assert.are.equal(1, #st["/api/v4/projects/42/hooks"])
    assert.are.equal(1, #st["/api/v4/groups/platform/hooks"])

    local body = '{"object_kind":"push","ref":"refs/heads/main"}'
    local function post(tok)
      return H.http{ port = port, method = "POST", path = "/gl", body = body,
        headers = { ["Content-Type"] = "application/json", ["X-Gitlab-Event"] = "Push Hook", ["X-Gitlab-Token"] = tok } }
    end
    assert.are.equal(401, (H.post_json(port, "/gl", body)))
    assert.are.equal(403, (post("wrong")))
    assert.are.equal(200, (post("tok3n")))
    local f = H.wait_firings(p, 1)
    assert.are.equal("push", f[1].events.d.data.body.object_kind)
    assert.are.same({ "Push Hook" }, f[1].events.d.data.headers["X-Gitlab-Event"])
    assert.are.equal(1, #H.firings(p))
    assert.are.equal(0, p:stop())
    _, _, st = H.http{ port = api_port, method = "GET", path = "/_state" }
    st = cjson.decode(st).hooks
    assert.are.equal(0, #st["/api/v4/projects/group%2Fapp/hooks"])
    assert.are.equal(0, #st["/api/v4/groups/platform/hooks"])
    assert.is_nil(p:output("stderr"):find("glpat-x", 1, true))
    api:stop()
  end)
end)
