-- spec/sources/slack/slack_spec.lua: the slack source through the real binary: v0 signatures
-- (Slack's documented example and values computed here), replays refused, the
-- url_verification challenge, events, interactions and slash commands as Argo's data.
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

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

describe("slack source", function()
  local port, p
  -- api.slack.com/authentication/verifying-requests-from-slack: the documented example
  local DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
  local DOC_TS = "1531420618"
  local DOC_BODY = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
  local DOC_SIG = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

  setup(function()
    port = H.free_port()
    local dir, secrets = H.tmpdir(), H.tmpdir()
    os.execute("mkdir -p " .. secrets .. "/slack")
    H.write(secrets .. "/slack/signing", "signing-secret-123")
    H.write(dir .. "/es.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: sl}
spec:
  slack:
    ev:
      webhook: {endpoint: /slack, method: POST, port: "%d"}
      signingSecret: {name: slack, key: signing}
]]):format(port))
    H.write(dir .. "/s.yaml", H.sensor{ name = "s", deps = { { name = "d", es = "sl", event = "ev" } } })
    p = H.start{ "run", dir, "--secrets-dir", secrets }
    H.wait_until(function()
      if p:exited() then error(p:describe(), 0) end
      return H.http{ port = port, method = "GET", path = "/health", timeout = 0.5 } == 200
    end, 10)
  end)
  teardown(function() if p then p:stop() end end)

  local function post(body, ctype, ts, secret)
    ts = ts or tostring(os.time())
    return H.http{ port = port, method = "POST", path = "/slack", body = body, headers = {
      ["Content-Type"] = ctype or "application/json",
      ["X-Slack-Request-Timestamp"] = ts,
      ["X-Slack-Signature"] = "v0=" .. hmac_hex(secret or "signing-secret-123", "v0:" .. ts .. ":" .. body) } }
  end

  it("computes Slack's documented example signature", function()
    assert.are.equal(DOC_SIG, "v0=" .. hmac_hex(DOC_SECRET, "v0:" .. DOC_TS .. ":" .. DOC_BODY))
  end)

  it("refuses the documented example as a replay: its timestamp is from 2018", function()
    local status = H.http{ port = port, method = "POST", path = "/slack", body = DOC_BODY, headers = {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["X-Slack-Request-Timestamp"] = DOC_TS, ["X-Slack-Signature"] = DOC_SIG } }
    assert.are.equal(401, status)
    local m = H.metrics(p)
    assert.are.equal(1, m['herald_eventsource_rejected_total{eventsource_name="sl",event_name="ev",reason="replay"}'])
  end)

  it("refuses a correctly signed request replayed 6 minutes later, and a wrong signature", function()
    local old = tostring(os.time() - 360)
    assert.are.equal(401, (post('{"type":"event_callback","event":{"type":"x"}}', nil, old)))
    assert.are.equal(401, (post('{"type":"event_callback","event":{"type":"x"}}', nil, nil, "wrong")))
    assert.are.equal(0, #H.firings(p))
  end)

  it("answers the url_verification challenge without an event", function()
    local status, _, body = post('{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}')
    assert.are.equal(200, status)
    assert.are.equal("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", body)
    assert.are.equal(0, #H.firings(p))
  end)

  it("emits the inner event of an event_callback as {type, Data}", function()
    local status = post('{"token":"t","team_id":"T1","type":"event_callback","event":{"type":"app_mention","user":"U1","text":"<@U0> hi","channel":"C1"}}')
    assert.are.equal(200, status)
    local f = H.wait_firings(p, 1)
    local data = f[1].events.d.data
    assert.are.equal("app_mention", data.type)
    assert.are.equal("<@U0> hi", data.Data.text)
  end)

  it("emits interaction payloads and slash commands", function()
    local n = #H.firings(p)
    local payload = '{"type":"block_actions","user":{"id":"U1"},"actions":[{"action_id":"a1","value":"go"}]}'
    assert.are.equal(200, (post("payload=" .. urlencode(payload), "application/x-www-form-urlencoded")))
    local f = H.wait_firings(p, n + 1)
    assert.are.equal("go", f[n + 1].events.d.data.actions[1].value)
    assert.are.equal(200, (post("command=%2Fdeploy&text=prod&user_id=U2&channel_id=C9&team_id=T1", "application/x-www-form-urlencoded")))
    f = H.wait_firings(p, n + 2)
    local c = f[n + 2].events.d.data
    assert.are.equal("/deploy", c.command)
    assert.are.equal("prod", c.text)
    assert.are.equal("U2", c.user_id)
    assert.are.equal(false, c.is_enterprise_install)
    assert.is_nil(c.enterprise_id)
  end)
end)
