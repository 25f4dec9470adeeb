-- spec/sources/storageGrid/storageGrid_spec.lua: the storageGrid source through the real
-- binary: the endpoint and the bucket notification registered against a stand-in of the
-- StorageGRID tenant API (spec/helpers/vendor_api.lua; reused on a restart), SNS-style form
-- notifications shaped as Argo's {notification, metadata}, filter.prefix/suffix, lint errors and
-- examples/storageGrid.
local H = require "helpers.herald"
local cjson = require "cjson"

local function urlencode(s)
  return (s:gsub("[^%w%-_%.~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function notification(key, extra)
  local msg = cjson.encode({ Records = { {
    eventVersion = "2.0", storageGridEventSource = "sgws:s3", eventTime = "2019-02-13T11:55:38Z",
    eventName = "ObjectCreated:Put", userIdentity = { principalId = "11111111" },
    requestParameters = { sourceIPAddress = "10.96.1.1" }, responseElements = { ["x-amz-request-id"] = "1550058938" },
    s3 = { s3SchemaVersion = "1.0", configurationId = "Object-Event", bucket = { name = "photos", arn = "urn:sgws:s3:::photos" },
      object = { key = key, size = 6, eTag = "abc", sequencer = "1588" } }, extra = extra } } })
  return "Action=Publish&Message=" .. urlencode(msg) .. "&TopicArn=" .. urlencode("urn:sgws:sns:us-east-1:1:argo")
    .. "&Version=2010-03-31"
end

describe("storageGrid source", function()
  local api, api_port
  setup(function()
    api_port = H.free_port()
    api = H.spawn("luajit", { H.source_dir .. "/spec/helpers/vendor_api.lua", "--port", tostring(api_port), "--token", "sg-tok" })
    api:wait_for("listening", { stream = "stdout", timeout = 5 })
  end)
  teardown(function() api:stop() end)

  local function state()
    local _, _, st = H.http{ port = api_port, method = "GET", path = "/_state" }
    return cjson.decode(st)
  end

  it("registers the endpoint and the notification, emits {notification, metadata}, filters by key", function()
    local dir, sdir = H.tmpdir(), H.tmpdir()
    os.execute("mkdir -p " .. sdir .. "/sg")
    H.write(sdir .. "/sg/token", "sg-tok")
    local port = H.free_port()
    H.write(dir .. "/es.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: grid}
spec:
  storageGrid:
    ev:
      webhook: {endpoint: /sg, method: POST, port: "%d", url: "https://hooks.example.com"}
      events: ["s3:ObjectCreated:*", "s3:ObjectRemoved:Delete"]
      topicArn: urn:sgws:sns:us-east-1:1:argo
      bucket: photos
      region: us-east-1
      authToken: {name: sg, key: token}
      apiURL: http://127.0.0.1:%d/api/v3/
      filter: {prefix: "img/", suffix: ".png"}
      metadata: {grid: dc1}
]]):format(port, api_port))
    H.write(dir .. "/s.yaml", H.sensor{ name = "s", deps = { { name = "d", es = "grid", event = "ev" } } })
    local p = H.start{ "run", dir, "--secrets-dir", sdir }
    p:wait_for("hooks registered for 2 targets", { timeout = 10 })
    local st = state()
    local eps = st.hooks["/org/endpoints"]
    assert.are.equal(1, #eps)
    assert.are.same({ "ev", "https://hooks.example.com/sg", "urn:sgws:sns:us-east-1:1:argo", "anonymous", true },
      { eps[1].displayName, eps[1].endpointURI, eps[1].endpointURN, eps[1].authType, eps[1].insecureTLS })
    local xml = st.hooks["/org/containers/photos/notification"]
    assert.matches("<Id>ev</Id>", xml, 1, true)
    assert.matches("<Topic>urn:sgws:sns:us-east-1:1:argo</Topic>", xml, 1, true)
    assert.matches("<Event>s3:ObjectCreated:*</Event>\n<Event>s3:ObjectRemoved:Delete</Event>", xml, 1, true)

    local function post(body)
      return (H.http{ port = port, method = "POST", path = "/sg", body = body,
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } })
    end
    assert.are.equal(200, post(notification("docs/a.png"))) -- prefix misses: no event
    assert.are.equal(200, post(notification("img/a.jpg")))  -- suffix misses: no event
    assert.are.equal(400, post("Action=Publish&Message=" .. urlencode('{"Records":"no"}')))
    assert.are.equal(200, post(notification("img/cat.png", "dropped")))
    local f = H.wait_firings(p, 1)
    local d = f[1].events.d.data
    assert.are.same({ grid = "dc1" }, d.metadata)
    local n = d.notification
    assert.are.equal("Publish", n.Action)
    assert.are.equal("urn:sgws:sns:us-east-1:1:argo", n.TopicArn)
    assert.are.equal("2010-03-31", n.Version)
    local rec = n.Message.Records[1]
    assert.are.equal("img/cat.png", rec.s3.object.key)
    assert.are.equal(6, rec.s3.object.size)
    assert.are.equal("photos", rec.s3.bucket.name)
    assert.are.equal("", rec.s3.bucket.ownerIdentity.principalId) -- absent: Go's zero value
    assert.are.equal("1550058938", rec.responseElements["x-amz-request-id"])
    assert.is_nil(rec.extra) -- not a field of Argo's struct
    assert.are.equal(1, #H.firings(p))
    local m = H.metrics(p)
    assert.are.equal(2, m['herald_eventsource_rejected_total{eventsource_name="grid",event_name="ev",reason="ignored"}'])
    assert.are.equal(1, m['herald_eventsource_rejected_total{eventsource_name="grid",event_name="ev",reason="bad_request"}'])
    assert.are.equal(0, p:stop())
    -- a restart reuses the endpoint (StorageGRID refuses a second one with the same URN)
    p = H.start{ "run", dir, "--secrets-dir", sdir }
    p:wait_for("hooks registered for 2 targets", { timeout = 10 })
    assert.matches("hook [^\n]* already registered", p:output("stderr"))
    assert.are.equal(1, #state().hooks["/org/endpoints"])
    assert.are.equal(0, p:stop())
    assert.is_nil(p:output("stderr"):find("sg-tok", 1, true))
  end)

  it("lint: Argo's required fields; tls is not run yet", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", [[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: grid}
spec:
  storageGrid:
    bad:
      webhook: {endpoint: /a, method: POST, port: "12000"}
      events: ["s3:ObjectCreated:*"]
      topicArn: ""
      bucket: b
      authToken: {name: s, key: k}
      apiURL: https://g/api/v3
      tls: {insecureSkipVerify: true}
    missing:
      webhook: {endpoint: /b, method: POST, port: "12000"}
      topicArn: urn:x
]])
    local code, out, err = H.run{ "lint", dir }
    assert.are_not.equal(0, code)
    local text = out .. err
    assert.matches("spec.storageGrid.bad[^\n]*topic arn must be provided", text)
    assert.matches("spec.storageGrid.bad.tls[^\n]*not", text)
    assert.matches("spec.storageGrid.missing.bucket", text)
    assert.matches("spec.storageGrid.missing.apiURL", text)
  end)

  it("examples/storageGrid lints clean and passes its sensor tests", function()
    local ex = H.source_dir .. "/examples/storageGrid"
    local code, out, err = H.run{ "lint", "--strict", ex }
    assert.are.equal(0, code, err)
    assert.matches("^2 object%(s%) valid", out)
    local tcode, tout = H.run{ "test", ex }
    assert.are.equal(0, tcode)
    assert.matches("1 passed, 0 failed", tout)
  end)
end)
