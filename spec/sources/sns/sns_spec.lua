-- spec/sources/sns/sns_spec.lua: the sns event source (sources/sns/): Subscribe through the SNS
-- API of fauxqs at start and Unsubscribe at stop; fauxqs does not deliver over HTTP, so the
-- spec POSTs synthetic SNS envelopes itself, signed (SignatureVersion 1 and 2) with a key and
-- certificate it makes, the certificate served over HTTPS by spec/helpers/fauxqs.js with a CA
-- of the spec's own (HERALD_SNS_TEST_CERT_HOST / HERALD_SNS_TEST_CAFILE, the test-only override).
local H = require "helpers.herald"
local A = require "helpers.aws_peer"
local cjson = require "cjson"

local aws, tls, topic

local function sh(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  assert(ok == 0 or ok == true, cmd)
end

--- A CA, a certificate for 127.0.0.1 it signs (the HTTPS server), and a signing key with its
--- self-signed certificate (what SNS's SigningCertURL serves).
local function make_tls()
  local d = H.tmpdir()
  sh(("cd %s && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=herald-spec-ca"):format(d))
  sh(("cd %s && openssl req -newkey rsa:2048 -nodes -keyout key.pem -out srv.csr -subj /CN=127.0.0.1"):format(d))
  H.write(d .. "/san.ext", "subjectAltName=IP:127.0.0.1\n")
  sh(("cd %s && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile san.ext"):format(d))
  sh(("cd %s && openssl req -x509 -newkey rsa:2048 -nodes -keyout signing.key -out signing.pem -days 2 -subj /CN=sns.us-east-1.amazonaws.com"):format(d))
  sh(("cd %s && openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem -days 2 -subj /CN=someone-else"):format(d))
  return d
end

--- AWS's string to sign, then the base64 signature made with openssl.
local function sign(env, version, keyfile)
  local keys = env.Type == "Notification"
    and { "Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type" }
    or { "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type" }
  local parts = {}
  for _, k in ipairs(keys) do
    if env[k] then parts[#parts + 1] = k .. "\n" .. env[k] .. "\n" end
  end
  local d = H.tmpdir()
  H.write(d .. "/text", table.concat(parts))
  sh(("openssl dgst -%s -sign %s -out %s/sig %s/text"):format(version == "1" and "sha1" or "sha256",
    keyfile or (tls .. "/signing.key"), d, d))
  local f = io.popen(("openssl base64 -A -in %s/sig"):format(d))
  local sig = f:read("*a")
  f:close()
  env.SignatureVersion = version
  env.Signature = sig
  env.SigningCertURL = env.SigningCertURL or ("https://127.0.0.1:%d/files/signing.pem"):format(aws.tls)
  return env
end

local function notification(msg, subject)
  return { Type = "Notification", MessageId = "m-" .. math.random(1e9), TopicArn = topic,
    Subject = subject, Message = msg, Timestamp = "2026-12-03T20:00:00.000Z",
    UnsubscribeURL = "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe" }
end

local function secrets()
  local d = H.tmpdir()
  os.execute("mkdir -p " .. d .. "/aws")
  H.write(d .. "/aws/access", "AKIASNS\n")
  H.write(d .. "/aws/secret", "sns-secret\n")
  return d
end

local function es(port, validate)
  return ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: aws
spec:
  sns:
    uploads:
      webhook:
        endpoint: /sns
        method: POST
        port: "%d"
        url: http://127.0.0.1:%d
      topicArn: %s
      region: us-east-1
      endpoint: %s
      validateSignature: %s
      accessKey: {name: aws, key: access}
      secretKey: {name: aws, key: secret}
      metadata: {team: storage}
---
]]):format(port, port, topic, aws.endpoint, tostring(validate)) .. H.sensor { name = "s", deps = { { name = "d", es = "aws", event = "uploads" } } }
end

local function start(validate)
  local port = H.free_port()
  local dir = H.tmpdir()
  H.write(dir .. "/es.yaml", es(port, validate))
  local p = H.start({ "run", dir, "--secrets-dir", secrets() }, { env = {
    HERALD_SNS_TEST_CERT_HOST = "127.0.0.1:" .. aws.tls, HERALD_SNS_TEST_CAFILE = tls .. "/ca.pem" } })
  p:wait_for("subscribed http://127.0.0.1:" .. port .. "/sns", { timeout = 10 })
  return p, port
end

local function post(port, env)
  local status, _, body = H.http { port = port, method = "POST", path = "/sns", body = cjson.encode(env),
    headers = { ["Content-Type"] = "text/plain; charset=UTF-8", ["x-amz-sns-message-type"] = env.Type } }
  return status, body
end

local function subscriptions()
  local xml = aws.sns { Action = "ListSubscriptionsByTopic", TopicArn = topic }
  local t = {}
  for e in xml:gmatch("<Endpoint>(.-)</Endpoint>") do t[#t + 1] = e end
  return t
end

describe("sns source", function()
  setup(function()
    if not A.available then return end
    tls = make_tls()
    aws = A.start { tls_dir = tls }
    topic = aws.sns({ Action = "CreateTopic", Name = "uploads" }):match("<TopicArn>(.-)</TopicArn>")
  end)
  teardown(function()
    if aws then aws.stop() end
  end)

  it("subscribes at start, confirms by SubscribeURL, turns verified notifications (v1 and v2) into {header, body} and unsubscribes at stop", function()
    if not aws then return pending("node or fauxqs (spec/peers/npm) missing") end
    local p, port = start(true)
    local url = "http://127.0.0.1:" .. port .. "/sns"
    assert.same({ url }, subscriptions())
    -- SNS's keys signed the Subscribe
    assert.is_true((aws.keys().sns or {}).AKIASNS > 0)

    local confirm = ("https://127.0.0.1:%d/confirm?Action=ConfirmSubscription&TopicArn=%s&Token=tok1"):format(aws.tls, topic)
    local st = post(port, sign({ Type = "SubscriptionConfirmation", MessageId = "c1", Token = "tok1", TopicArn = topic,
      Message = "You have chosen to subscribe", SubscribeURL = confirm, Timestamp = "2026-12-03T20:00:00.000Z" }, "1"))
    assert.equal(200, st)
    H.wait_until(function()
      for _, e in ipairs(aws.log()) do
        if e.what == "confirm" and e.query.Token == "tok1" then return true end
      end
    end, 10, "the SubscribeURL fetched")

    local n1 = sign(notification('{"hello": 1}', "greeting"), "1")
    local n2 = sign(notification("plain text"), "2")
    assert.equal(200, (post(port, n1)))
    assert.equal(200, (post(port, n2)))
    local f = H.wait_firings(p, 2, 10)
    local by = {}
    for _, v in ipairs(f) do by[v.events.d.data.body.MessageId] = v.events.d end
    local e1 = by[n1.MessageId]
    assert.equal("sns", e1.type)
    assert.equal("uploads", e1.subject)
    assert.equal('{"hello": 1}', e1.data.body.Message) -- the envelope as posted
    assert.equal("greeting", e1.data.body.Subject)
    assert.same({ "Notification" }, e1.data.header["X-Amz-Sns-Message-Type"])
    assert.same({ team = "storage" }, e1.data.metadata)
    assert.equal("plain text", by[n2.MessageId].data.body.Message)

    -- refused: a wrong signature, a key that is not the certificate's, a certificate host
    -- that is not SNS's, a message of another topic
    local bad = sign(notification("x"), "2")
    bad.Message = "tampered"
    assert.equal(400, (post(port, bad)))
    assert.equal(400, (post(port, sign(notification("y"), "1", tls .. "/other.key"))))
    local foreign = notification("z")
    foreign.SigningCertURL = "https://example.com/cert.pem"
    assert.equal(400, (post(port, sign(foreign, "2"))))
    local other = notification("w")
    other.TopicArn = topic .. "-other"
    assert.equal(400, (post(port, sign(other, "2"))))
    local fetched = 0
    for _, e in ipairs(aws.log()) do
      if e.what == "https" and e.path == "/files/signing.pem" then fetched = fetched + 1 end
    end
    assert.equal(1, fetched) -- cached
    assert.equal(0, p:stop())
    assert.equal(2, #H.firings(p))
    assert.same({}, subscriptions()) -- unsubscribed
  end)

  it("without validateSignature takes unsigned notifications but fetches no SubscribeURL off SNS's host", function()
    if not aws then return pending("node or fauxqs (spec/peers/npm) missing") end
    local p, port = start(false)
    local st = post(port, { Type = "SubscriptionConfirmation", MessageId = "c2", Token = "tok2", TopicArn = topic,
      Message = "m", SubscribeURL = ("https://127.0.0.1:%d/confirm?Token=tok2"):format(aws.tls + 0) .. "&x=1",
      Timestamp = "2026-12-03T20:00:00.000Z" })
    -- 127.0.0.1:<tls> is allowed by the test override; a random host is not
    local st2 = post(port, { Type = "SubscriptionConfirmation", MessageId = "c3", Token = "tok3", TopicArn = topic,
      Message = "m", SubscribeURL = "https://evil.example.com/confirm", Timestamp = "2026-12-03T20:00:00.000Z" })
    assert.equal(400, st2)
    assert.is_number(st)
    assert.equal(200, (post(port, notification('{"a": 1}'))))
    local f = H.wait_firings(p, 1, 10)
    assert.equal('{"a": 1}', f[1].events.d.data.body.Message)
    assert.equal(400, (post(port, { hello = "not sns" })))
    assert.equal(0, p:stop())
  end)

  it("examples/sns lints clean and its sensor test passes", function()
    local ex = H.source_dir .. "/examples/sns"
    local code, out, err = H.run { "lint", "--strict", ex }
    assert.equal(0, code, out .. err)
    code, out = H.run { "test", ex }
    assert.equal(0, code, out)
    assert.matches("1 passed, 0 failed", out)
  end)

  it("lint: topicArn, region and webhook required", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", [[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: aws
spec:
  sns:
    a: {region: us-east-1, webhook: {endpoint: /x, method: POST, port: "12000"}}
    b: {topicArn: "arn:aws:sns:us-east-1:1:t"}
]])
    local code, out, err = H.run { "lint", dir .. "/es.yaml" }
    assert.equal(1, code)
    local text = out .. err
    assert.matches("spec%.sns%.a%.topicArn", text)
    assert.matches("spec%.sns%.b%.region", text)
    assert.matches("spec%.sns%.b%.webhook", text)
  end)
end)
