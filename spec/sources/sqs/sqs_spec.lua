-- spec/sources/sqs/sqs_spec.lua: the sqs event source (sources/sqs/) against fauxqs (npm, on
-- 127.0.0.1 through spec/helpers/fauxqs.js): Argo's data shape, delete after the bus holds the
-- event, bad bodies with and without dlq, the credential chain (static keys, environment, web
-- identity, instance metadata, roleARN with refresh; fake STS and IMDS beside fauxqs), an
-- emulator outage and a kill -9 of herald mid-stream counted at an HTTP sink, examples/sqs.
local H = require "helpers.herald"
local A = require "helpers.aws_peer"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"

local aws

local function es(name, queue, extra)
  return ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: aws
spec:
  sqs:
    %s:
      region: us-east-1
      queue: %s
      endpoint: %s
      waitTimeSeconds: 1
%s]]):format(name, queue, aws.endpoint, extra or "")
end

local STATIC = "      accessKey: {name: aws, key: access}\n      secretKey: {name: aws, key: secret}\n"

local function secrets()
  local d = H.tmpdir()
  os.execute("mkdir -p " .. d .. "/aws")
  H.write(d .. "/aws/access", "AKIASTATIC\n")
  H.write(d .. "/aws/secret", "static-secret\n")
  return d
end

local function run(dir, env, extra_args)
  local args = { "run", dir, "--secrets-dir", secrets() }
  for _, a in ipairs(extra_args or {}) do args[#args + 1] = a end
  return H.start(args, { env = env })
end

local function log_sensor(event)
  return H.sensor { name = "s", deps = { { name = "d", es = "aws", event = event } } }
end

local function http_sensor(event, port)
  -- atLeastOnce: the bus lets an event go only once its action succeeded (without it, Argo's
  -- at-most-once, an event whose HTTP call was in flight at a kill -9 is gone)
  return H.sensor { name = "s", deps = { { name = "d", es = "aws", event = event } },
    triggers = { { name = "call", extra = "      atLeastOnce: true\n", body = ([[
        http:
          url: http://127.0.0.1:%d/in
          payload:
            - src: {dependencyName: d, dataKey: body.n}
              dest: n
]]):format(port) } } }
end

local function wait_empty(queue, timeout)
  H.wait_until(function()
    local v, nv = aws.counts(queue)
    return v == 0 and nv == 0
  end, timeout or 10, "queue " .. queue .. " empty")
end

--- The distinct n values the sink got, and the number of requests.
local function seen(sink)
  local s, total = {}, 0
  for _, r in ipairs(sink.requests()) do
    local ok, b = pcall(cjson.decode, r.body)
    if ok and b.n then s[b.n] = true end
    total = total + 1
  end
  local n = 0
  for _ in pairs(s) do n = n + 1 end
  return n, total, s
end

describe("sqs source", function()
  setup(function()
    if A.available then aws = A.start() end
  end)
  teardown(function()
    if aws then aws.stop() end
  end)

  it("turns each message into Argo's {messageId, messageAttributes, body} and deletes it once on the bus", function()
    if not aws then return pending("node or fauxqs (spec/peers/npm) missing") end
    aws.create_queue("shape")
    local id1 = aws.send("shape", '{"n": 1, "s": "x"}', { color = "red", size = "L" })
    local id2 = aws.send("shape", '{"n": 2}')
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("q", "shape", STATIC .. "      jsonBody: true\n      metadata: {team: a}\n") .. "---\n" .. log_sensor("q"))
    local p = run(dir)
    local f = H.wait_firings(p, 2, 15)
    local by = {}
    for _, v in ipairs(f) do by[v.events.d.data.messageId] = v.events.d end
    local e1, e2 = by[id1], by[id2]
    assert.is_table(e1, p:describe())
    assert.equal("sqs", e1.type)
    assert.equal("q", e1.subject)
    assert.is_not.equal(id1:gsub("-", ""), e1.id) -- a fresh id on the embedded bus (the MessageId on JetStream)
    assert.same({ n = 1, s = "x" }, e1.data.body)
    assert.same({ team = "a" }, e1.data.metadata)
    assert.same({ BinaryListValues = cjson.null, BinaryValue = cjson.null, DataType = "String",
      StringListValues = cjson.null, StringValue = "red" }, e1.data.messageAttributes.color)
    assert.equal("L", e1.data.messageAttributes.size.StringValue)
    assert.equal(cjson.null, e2.data.messageAttributes) -- Go's nil map
    wait_empty("shape")
    -- signed with the static keys from the secrets
    assert.is_true((aws.keys().sqs or {}).AKIASTATIC > 0)
    assert.equal(0, p:stop())
    assert.equal(2, #H.firings(p))
  end)

  it("base64-encodes bodies without jsonBody; drops a non-JSON body with jsonBody, or leaves it to the DLQ with dlq", function()
    if not aws then return pending("node or fauxqs (spec/peers/npm) missing") end
    aws.create_queue("b64")
    aws.create_queue("bad")
    aws.create_queue("baddlq", { VisibilityTimeout = "30" })
    aws.send("b64", "plain text")
    aws.send("bad", "not json")
    aws.send("bad", '{"n": 7}')
    aws.send("baddlq", "not json either")
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: aws
spec:
  sqs:
    b64: {region: us-east-1, queue: b64, endpoint: %s, waitTimeSeconds: 1, accessKey: {name: aws, key: access}, secretKey: {name: aws, key: secret}}
    bad: {region: us-east-1, queue: bad, endpoint: %s, waitTimeSeconds: 1, jsonBody: true, accessKey: {name: aws, key: access}, secretKey: {name: aws, key: secret}}
    baddlq: {region: us-east-1, queue: baddlq, endpoint: %s, waitTimeSeconds: 1, jsonBody: true, dlq: true, accessKey: {name: aws, key: access}, secretKey: {name: aws, key: secret}}
---
]]):format(aws.endpoint, aws.endpoint, aws.endpoint) .. H.sensor { name = "s", deps = {
      { name = "a", es = "aws", event = "b64" }, { name = "b", es = "aws", event = "bad" } },
      triggers = { { name = "t", conditions = "a || b" } } })
    local p = run(dir)
    local f = H.wait_firings(p, 2, 15)
    local bodies = {}
    for _, v in ipairs(f) do
      for _, ev in pairs(v.events) do bodies[ev.subject] = ev.data.body end
    end
    assert.equal("cGxhaW4gdGV4dA==", bodies.b64) -- Go's []byte
    assert.same({ n = 7 }, bodies.bad)
    wait_empty("bad")
    H.wait_until(function()
      local m = H.metrics(p)
      return (m['herald_eventsource_bad_body_total{eventsource_name="aws",event_name="baddlq"}'] or 0) >= 1
        and (m['herald_eventsource_bad_body_total{eventsource_name="aws",event_name="bad"}'] or 0) >= 1
    end, 10, "bad bodies counted")
    local v, nv = aws.counts("baddlq")
    assert.equal(1, v + nv) -- still in its queue, for the redrive policy
    assert.equal(0, p:stop())
  end)

  it("signs with the environment's keys, a web identity token, or instance metadata when the spec has none", function()
    if not aws then return pending("node or fauxqs (spec/peers/npm) missing") end
    local d = H.tmpdir()
    H.write(d .. "/token", "eyJ-web-identity-token\n")
    local cases = {
      { q = "envq", env = { AWS_ACCESS_KEY_ID = "AKIAENV", AWS_SECRET_ACCESS_KEY = "env-secret" }, key = "AKIAENV" },
      { q = "webq", env = { AWS_WEB_IDENTITY_TOKEN_FILE = d .. "/token", AWS_ROLE_ARN = "arn:aws:iam::000000000000:role/irsa",
        AWS_ENDPOINT_URL_STS = aws.aux_url .. "/sts" }, key = "ASIA" },
      { q = "imdsq", env = { AWS_EC2_METADATA_SERVICE_ENDPOINT = aws.aux_url }, key = "ASIAIMDS" },
    }
    for _, c in ipairs(cases) do
      aws.create_queue(c.q)
      aws.send(c.q, '{"n": 1}')
      local dir = H.tmpdir()
      H.write(dir .. "/es.yaml", es("q", c.q) .. "---\n" .. log_sensor("q"))
      local p = run(dir, c.env)
      H.wait_firings(p, 1, 15)
      wait_empty(c.q)
      assert.equal(0, p:stop())
    end
    local keys = aws.keys().sqs
    assert.is_true(keys.AKIAENV > 0)
    assert.is_true(keys.ASIAIMDS > 0)
    local web, imds = false, 0
    for _, e in ipairs(aws.log()) do
      if e.action == "AssumeRoleWithWebIdentity" then
        web = true
        assert.equal("eyJ-web-identity-token", e.token)
        assert.equal("arn:aws:iam::000000000000:role/irsa", e.role)
      end
      if e.what == "imds" then imds = imds + 1 end
    end
    assert.is_true(web)
    assert.is_true(imds >= 3) -- token, role, credentials
  end)

  it("assumes roleARN with the spec's keys and renews the role's credentials before they expire", function()
    if not aws then return pending("node or fauxqs (spec/peers/npm) missing") end
    aws.create_queue("roleq")
    aws.sts_ttl(302) -- renewed 300 s before expiry: after about 2 s
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("q", "roleq", STATIC .. "      roleARN: arn:aws:iam::000000000000:role/reader\n") .. "---\n" .. log_sensor("q"))
    local p = run(dir, { AWS_ENDPOINT_URL_STS = aws.aux_url .. "/sts" })
    local function assumed()
      local n = 0
      for _, e in ipairs(aws.log()) do
        if e.action == "AssumeRole" and e.role == "arn:aws:iam::000000000000:role/reader" then
          assert.equal("AKIASTATIC", e.signedBy)
          n = n + 1
        end
      end
      return n
    end
    aws.send("roleq", '{"n": 1}')
    H.wait_firings(p, 1, 15)
    H.wait_until(function() return assumed() >= 2 end, 15, "a second AssumeRole")
    aws.send("roleq", '{"n": 2}')
    H.wait_firings(p, 2, 15)
    aws.sts_ttl(3600)
    assert.equal(0, p:stop())
    for k in pairs(aws.keys().sqs) do
      assert.is_not.equal("AKIASTATIC-never", k)
    end
    local role_keys = 0
    for k, n in pairs(aws.keys().sqs) do
      if k:match("^ASIA%d+$") then role_keys = role_keys + n end
    end
    assert.is_true(role_keys > 0)
    assert.is_falsy(p:output("stderr"):find("static-secret", 1, true)) -- credentials never logged
  end)

  it("keeps every message through an emulator outage while events flow", function()
    if not aws then return pending("node or fauxqs (spec/peers/npm) missing") end
    aws.create_queue("outage", { VisibilityTimeout = "2" })
    local sink = sink_client.start()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("q", "outage", STATIC .. "      jsonBody: true\n") .. "---\n" .. http_sensor("q", sink.port))
    local p = run(dir)
    local bodies = {}
    for i = 1, 300 do bodies[i] = ('{"n": %d}'):format(i) end
    aws.send_batch("outage", { table.unpack(bodies, 1, 150) })
    H.wait_until(function() return seen(sink) >= 20 end, 15, "first events")
    aws.stop_emulator()
    p:wait_for("not connected", { timeout = 15 })
    aws.start_emulator()
    aws.send_batch("outage", { table.unpack(bodies, 151, 300) })
    H.wait_until(function() return seen(sink) >= 300 end, 30, function()
      return ("300 distinct at the sink, have %d\n%s"):format(seen(sink), p:describe())
    end)
    wait_empty("outage", 15)
    p:wait_for("connected: queue outage", { after = 3 })
    local n, total = seen(sink)
    assert.equal(300, n)
    assert.is_true(total >= 300)
    assert.equal(0, p:stop())
    sink.stop()
  end)

  it("loses nothing when herald is killed -9 mid-stream and started again (duplicates counted)", function()
    if not aws then return pending("node or fauxqs (spec/peers/npm) missing") end
    aws.create_queue("kill9", { VisibilityTimeout = "2" })
    local sink = sink_client.start()
    local dir, bus = H.tmpdir(), H.tmpdir()
    H.write(dir .. "/es.yaml", es("q", "kill9", STATIC .. "      jsonBody: true\n") .. "---\n" .. http_sensor("q", sink.port))
    local bodies = {}
    for i = 1, 400 do bodies[i] = ('{"n": %d}'):format(i) end
    aws.send_batch("kill9", { table.unpack(bodies, 1, 200) })
    local p = run(dir, nil, { "--bus-dir", bus })
    H.wait_until(function() return seen(sink) >= 40 end, 15, "first events")
    p:kill()
    aws.send_batch("kill9", { table.unpack(bodies, 201, 400) })
    local p2 = run(dir, nil, { "--bus-dir", bus })
    H.wait_until(function() return seen(sink) >= 400 end, 40, function()
      return ("400 distinct at the sink, have %d\n%s"):format(seen(sink), p2:describe())
    end)
    wait_empty("kill9", 15)
    local n, total = seen(sink)
    assert.equal(400, n)
    print(("  sqs kill -9: 400 messages, %d requests at the sink (%d duplicates)"):format(total, total - n))
    assert.equal(0, p2:stop())
    sink.stop()
  end)

  it("lint: queue and region required, waitTimeSeconds at most 20", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", [[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: aws
spec:
  sqs:
    a: {region: us-east-1, waitTimeSeconds: 21, queue: q}
    b: {region: us-east-1}
]])
    local code, out, err = H.run { "lint", dir .. "/es.yaml" }
    assert.equal(1, code)
    local text = out .. err
    assert.matches("spec%.sqs%.a%.waitTimeSeconds", text)
    assert.matches("spec%.sqs%.b%.queue", text)
  end)

  it("examples/sqs lints clean, its sensor test passes, and it fires against the emulator", function()
    local ex = H.source_dir .. "/examples/sqs"
    local code, out, err = H.run { "lint", "--strict", ex }
    assert.equal(0, code, out .. err)
    code, out = H.run { "test", ex }
    assert.equal(0, code, out)
    assert.matches(" passed, 0 failed", out)
    if not aws then return pending("node or fauxqs (spec/peers/npm) missing") end
    aws.create_queue("orders")
    aws.send("orders", '{"kind": "order", "id": 42, "total": 120}')
    local p = run(ex, { AWS_ENDPOINT_URL_SQS = aws.endpoint, AWS_ACCESS_KEY_ID = "AKIAEXAMPLE",
      AWS_SECRET_ACCESS_KEY = "x" })
    local f = H.wait_firings(p, 1, 15)
    assert.equal(42, f[1].events.order.data.body.id)
    assert.equal(0, p:stop())
  end)
end)
