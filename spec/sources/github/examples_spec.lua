-- spec/sources/github/examples_spec.lua: examples/forges (github, gitlab, slack, stripe) lint,
-- pass their sensor tests, and fire when run: one signed request to each.
local H = require "helpers.herald"

local function hmac_hex(key, msg)
  local mf = os.tmpname()
  H.write(mf, msg)
  local p = io.popen(("openssl dgst -sha256 -hmac '%s' -r < %s"):format(key, mf))
  local out = p:read("*a")
  p:close()
  os.remove(mf)
  return out:match("^(%x+)")
end

describe("examples/forges", function()
  local ex = H.source_dir .. "/examples/forges"

  it("lints clean and passes its sensor tests", function()
    local code, out, err = H.run{ "lint", "--strict", ex }
    assert.are.equal(0, code, err)
    assert.matches("^8 object%(s%) valid", out)
    local tcode, tout = H.run{ "test", ex }
    assert.are.equal(0, tcode)
    assert.matches("4 passed, 0 failed", tout)
  end)

  it("runs and fires on signed requests", function()
    local sdir = H.tmpdir()
    for _, s in ipairs{ { "github-access", "secret", "gh-s" }, { "gitlab-access", "secret", "gl-s" },
                        { "slack-access", "signing", "sl-s" }, { "stripe-access", "whsec", "whsec_s" } } do
      os.execute("mkdir -p " .. sdir .. "/" .. s[1])
      H.write(sdir .. "/" .. s[1] .. "/" .. s[2], s[3])
    end
    local p = H.start{ "run", ex, "--secrets-dir", sdir }
    p:wait_for("herald started", { timeout = 10 })
    local gh = '{"ref":"refs/heads/main"}'
    assert.are.equal(200, (H.http{ port = 12101, path = "/push", body = gh, headers = {
      ["Content-Type"] = "application/json", ["X-GitHub-Event"] = "push",
      ["X-Hub-Signature-256"] = "sha256=" .. hmac_hex("gh-s", gh) } }))
    assert.are.equal(200, (H.http{ port = 12102, path = "/gitlab", body = '{"object_kind":"merge_request"}',
      headers = { ["Content-Type"] = "application/json", ["X-Gitlab-Token"] = "gl-s" } }))
    local ts = tostring(os.time())
    local sl = '{"type":"event_callback","event":{"type":"app_mention","text":"hi"}}'
    assert.are.equal(200, (H.http{ port = 12103, path = "/slack", body = sl, headers = {
      ["Content-Type"] = "application/json", ["X-Slack-Request-Timestamp"] = ts,
      ["X-Slack-Signature"] = "v0=" .. hmac_hex("sl-s", "v0:" .. ts .. ":" .. sl) } }))
    local st = '{"id":"evt_1","type":"charge.failed"}'
    assert.are.equal(200, (H.http{ port = 12104, path = "/stripe", body = st, headers = {
      ["Content-Type"] = "application/json",
      ["Stripe-Signature"] = ("t=%s,v1=%s"):format(ts, hmac_hex("whsec_s", ts .. "." .. st)) } }))
    local f = H.wait_firings(p, 4)
    local names = {}
    for _, x in ipairs(f) do names[x.triggerName] = true end
    assert.are.same({ ["log-push"] = true, ["log-mr"] = true, ["log-mention"] = true, ["log-failed-charge"] = true }, names)
    assert.are.equal(0, p:stop())
  end)
end)
