-- spec/sources/stripe/stripe_spec.lua: the stripe source through the real binary:
-- Stripe-Signature (t=, v1=, tolerance), eventFilter, data {event, metadata}, and
-- createWebhook against a stand-in of Stripe's webhook_endpoints API.
local H = require "helpers.herald"
local cjson = require "cjson"

local function hmac_hex(key, msg)
  local mf = os.tmpname()
  H.write(mf, msg)
  local p = io.popen(("openssl dgst -sha256 -hmac '%s' -r < %s"):format(key, mf))
  local out = p:read("*a")
  p:close()
  os.remove(mf)
  return out:match("^(%x+)")
end

local function start(body, secrets, env)
  local dir, sdir = H.tmpdir(), H.tmpdir()
  for _, s in ipairs(secrets or {}) do
    os.execute("mkdir -p " .. sdir .. "/" .. s[1])
    H.write(sdir .. "/" .. s[1] .. "/" .. s[2], s[3])
  end
  H.write(dir .. "/es.yaml", "apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata: {name: st}\nspec:\n  stripe:\n    ev:\n" .. body)
  H.write(dir .. "/s.yaml", H.sensor{ name = "s", deps = { { name = "d", es = "st", event = "ev" } } })
  return H.start({ "run", dir, "--secrets-dir", sdir }, { env = env })
end

local function wait_listen(p, port)
  H.wait_until(function()
    if p:exited() then error(p:describe(), 0) end
    return H.http{ port = port, method = "GET", path = "/health", timeout = 0.5 } == 200
  end, 10)
end

local function post(port, body, secret, t)
  t = t or os.time()
  return H.http{ port = port, method = "POST", path = "/stripe", body = body, headers = {
    ["Content-Type"] = "application/json; charset=utf-8",
    ["Stripe-Signature"] = ("t=%d,v1=%s,v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"):format(t, hmac_hex(secret, t .. "." .. body)) } }
end

describe("stripe source", function()
  local port, p
  setup(function()
    port = H.free_port()
    p = start(([[
      webhook: {endpoint: /stripe, method: POST, port: "%d"}
      signingSecret: {name: stripe, key: whsec}
      eventFilter: [charge.succeeded, charge.failed]
      metadata: {env: test}
]]):format(port), { { "stripe", "whsec", "whsec_test_secret" } })
    wait_listen(p, port)
  end)
  teardown(function() if p then p:stop() end end)

  it("emits {event, metadata} for a signed event whose type passes eventFilter", function()
    local ev = '{"id":"evt_1","object":"event","type":"charge.succeeded","data":{"object":{"id":"ch_1","amount":2000}}}'
    local status, _, body = post(port, ev, "whsec_test_secret")
    assert.are.equal(200, status)
    assert.are.equal("success", body)
    local f = H.wait_firings(p, 1)
    assert.are.equal(2000, f[1].events.d.data.event.data.object.amount)
    assert.are.same({ env = "test" }, f[1].events.d.data.metadata)
  end)

  it("refuses wrong signatures, old timestamps and filtered types with no event", function()
    local ev = '{"id":"evt_2","object":"event","type":"charge.succeeded"}'
    assert.are.equal(401, (post(port, ev, "whsec_other")))
    assert.are.equal(401, (post(port, ev, "whsec_test_secret", os.time() - 400)))
    assert.are.equal(401, (H.post_json(port, "/stripe", ev)))
    assert.are.equal(400, (post(port, '{"id":"evt_3","type":"customer.created"}', "whsec_test_secret")))
    local m = H.metrics(p)
    assert.are.equal(2, m['herald_eventsource_rejected_total{eventsource_name="st",event_name="ev",reason="signature"}'])
    assert.are.equal(1, m['herald_eventsource_rejected_total{eventsource_name="st",event_name="ev",reason="replay"}'])
    assert.are.equal(1, #H.firings(p))
  end)
end)

describe("stripe createWebhook", function()
  it("creates the endpoint once, checks signatures with the secret Stripe returned, reuses it at the next start", function()
    local api_port = H.free_port()
    local api = H.spawn("luajit", { H.source_dir .. "/spec/helpers/vendor_api.lua", "--port", tostring(api_port), "--token", "sk_test_123" })
    api:wait_for("listening", { stream = "stdout", timeout = 5 })
    local port = H.free_port()
    local body = ([[
      webhook: {endpoint: /stripe, method: POST, port: "%d", url: "https://pay.example.com"}
      createWebhook: true
      apiKey: {name: stripe, key: key}
      eventFilter: [charge.succeeded]
]]):format(port)
    local env = { HERALD_STRIPE_API = "http://127.0.0.1:" .. api_port }
    local p = start(body, { { "stripe", "key", "sk_test_123" } }, env)
    p:wait_for("hooks registered for 1 target", { timeout = 10 })
    local _, _, st = H.http{ port = api_port, method = "GET", path = "/_state" }
    st = cjson.decode(st)
    local ep = st.hooks["/v1/webhook_endpoints"][1]
    assert.are.equal("https://pay.example.com/stripe", ep.url)
    assert.are.same({ "charge.succeeded" }, ep.enabled_events)
    local ev = '{"id":"evt_9","type":"charge.succeeded"}'
    assert.are.equal(200, (post(port, ev, "whsec_test_" .. ep.id)))
    assert.are.equal(401, (post(port, ev, "whsec_other")))
    H.wait_firings(p, 1)
    p:stop()
    p = start(body, { { "stripe", "key", "sk_test_123" } }, env)
    p:wait_for("hook " .. ep.id .. " already registered", { timeout = 10 })
    _, _, st = H.http{ port = api_port, method = "GET", path = "/_state" }
    assert.are.equal(1, #cjson.decode(st).hooks["/v1/webhook_endpoints"])
    p:stop()
    api:stop()
  end)
end)
