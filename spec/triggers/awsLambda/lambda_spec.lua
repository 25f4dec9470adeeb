-- End-to-end: webhook event -> Sensor with an awsLambda trigger -> a local Lambda/STS endpoint
-- (spec/peers/lambda_endpoint.lua) that verifies the SigV4 signature before answering.
local H = require "helpers.herald"
local cjson = require "cjson"

local AK, SK = "AKIDHERALDTEST", "wJalr/XUtn+FEMI/secret"

local function start_endpoint()
  local dir = H.tmpdir()
  local out = dir .. "/invocations.jsonl"
  H.write(out, "")
  local port = H.free_port()
  local proc = H.spawn("luajit", { H.source_dir .. "/spec/peers/lambda_endpoint.lua", "--port",
    tostring(port), "--out", out, "--key", AK .. ":" .. SK })
  proc:wait_for("listening", { stream = "stdout" })
  local ep = { port = port, url = "http://127.0.0.1:" .. port, proc = proc }
  function ep.records()
    local t = {}
    for line in (H.read(out) or ""):gmatch("[^\n]+") do t[#t + 1] = cjson.decode(line) end
    return t
  end
  function ep.wait(n)
    return H.wait_until(function()
      local r = ep.records()
      return #r >= n and r
    end, 5, function() return n .. " requests at the Lambda endpoint, have " .. #ep.records() end)
  end
  return ep
end

local function secrets(secret)
  local sdir = H.tmpdir()
  os.execute("mkdir -p " .. sdir .. "/aws")
  H.write(sdir .. "/aws/accesskey", AK .. "\n")
  H.write(sdir .. "/aws/secretkey", (secret or SK) .. "\n")
  return sdir
end

local KEYS = [[
          accessKey: {name: aws, key: accesskey}
          secretKey: {name: aws, key: secretkey}
]]

-- Writes the specs and starts herald; returns the process and the webhook port.
local function run(ep, body, sdir, env)
  local dir = H.tmpdir()
  local port = H.free_port()
  H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
  H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } },
    triggers = { { name = "lambda", body = body } } })
  env = env or {}
  env.AWS_ENDPOINT_URL_LAMBDA = ep.url
  local p = H.start({ "run", dir, "--secrets-dir", sdir or secrets() }, { env = env })
  p:wait_for("herald started")
  return p, port
end

local function metric(p, name)
  return H.metrics(p)[name .. '{sensor_name="s",trigger_name="lambda"}'] or 0
end

local function wait_outcomes(p, n)
  return H.wait_until(function()
    return metric(p, "argo_events_action_triggered_total") + metric(p, "argo_events_action_failed_total") >= n
  end, 5, function() return n .. " outcomes\n" .. p:describe() end)
end

local PAYLOAD = [[
          payload:
            - src: {dependencyName: d, dataKey: body.message}
              dest: message
            - src: {dependencyName: d, dataKey: body.n, useRawData: true}
              dest: n
          parameters:
            - src: {dependencyName: d, dataKey: body.fn}
              dest: functionName
]]

describe("awsLambda trigger", function()
  it("invokes the function named by a parameter, signed, with the payload from the event", function()
    local ep = start_endpoint()
    local p, port = run(ep, [[
        awsLambda:
          functionName: placeholder
          region: us-east-1
]] .. KEYS .. PAYLOAD)
    assert.equal(200, (H.post_json(port, "/hook", '{"fn":"orders:prod","message":"hello","n":3}')))
    local r = ep.wait(1)[1]
    assert.is_true(r.verified, r.error)
    assert.equal("lambda", r.api)
    assert.equal("orders:prod", r["function"])
    assert.equal("/2015-03-31/functions/orders%3Aprod/invocations", r.path)
    assert.equal("RequestResponse", r.invocation_type)
    assert.equal(AK, r.access_key)
    assert.is_nil(r.session_token)
    assert.same({ message = "hello", n = 3 }, cjson.decode(r.payload))
    wait_outcomes(p, 1)
    assert.equal(1, metric(p, "argo_events_action_triggered_total"))
    assert.equal(0, metric(p, "argo_events_action_failed_total"))
    p:kill()
    ep.proc:kill()
  end)

  it("sends the invocation type (Event, DryRun)", function()
    local ep = start_endpoint()
    local p, port = run(ep, [[
        awsLambda:
          functionName: f
          region: eu-west-1
          invocationType: Event
]] .. KEYS .. [[
          payload:
            - src: {dependencyName: d, dataKey: body.type}
              dest: type
            - src: {dependencyName: d, dataKey: body.type}
              dest: invocationType
          parameters:
            - src: {dependencyName: d, dataKey: body.type}
              dest: invocationType
]])
    H.post_json(port, "/hook", '{"type":"Event"}')
    ep.wait(1)
    H.post_json(port, "/hook", '{"type":"DryRun"}')
    local recs = ep.wait(2)
    assert.is_true(recs[1].verified, recs[1].error)
    assert.equal("Event", recs[1].invocation_type)
    assert.equal("DryRun", recs[2].invocation_type)
    wait_outcomes(p, 2)
    assert.equal(2, metric(p, "argo_events_action_triggered_total"))
    p:kill()
    ep.proc:kill()
  end)

  it("counts function errors, throttling, server errors and unknown functions as failures", function()
    local ep = start_endpoint()
    local p, port = run(ep, [[
        awsLambda:
          functionName: placeholder
          region: us-east-1
]] .. KEYS .. PAYLOAD)
    for _, fn in ipairs{ "fail-unhandled", "throttled", "broken", "missing" } do
      H.post_json(port, "/hook", ('{"fn":"%s","message":"m","n":1}'):format(fn))
    end
    local recs = ep.wait(4)
    for _, r in ipairs(recs) do assert.is_true(r.verified, r.error) end
    wait_outcomes(p, 4)
    assert.equal(4, metric(p, "argo_events_action_failed_total"))
    assert.equal(0, metric(p, "argo_events_action_triggered_total"))
    local err = p:output("stderr")
    assert.truthy(err:find("function fail-unhandled failed (X-Amz-Function-Error: Unhandled): boom", 1, true))
    assert.truthy(err:find("invoking throttled: status 429 TooManyRequestsException: Rate exceeded", 1, true))
    assert.truthy(err:find("invoking broken: status 500", 1, true))
    assert.truthy(err:find("invoking missing: status 404 ResourceNotFoundException", 1, true))
    p:kill()
    ep.proc:kill()
  end)

  it("applies policy.status.allow to the invocation status", function()
    local ep = start_endpoint()
    local p, port = run(ep, [[
        awsLambda:
          functionName: f
          region: us-east-1
]] .. KEYS .. PAYLOAD .. [[
      policy:
        status:
          allow: [202]
]])
    H.post_json(port, "/hook", '{"fn":"f","message":"sync","n":1}')
    ep.wait(1)
    wait_outcomes(p, 1)
    assert.equal(1, metric(p, "argo_events_action_failed_total"))
    assert.truthy(p:output("stderr"):find("invoking f: status 200", 1, true))
    p:kill()
    ep.proc:kill()
  end)

  it("is refused by the endpoint when signed with the wrong secret", function()
    local ep = start_endpoint()
    local p, port = run(ep, [[
        awsLambda:
          functionName: f
          region: us-east-1
]] .. KEYS .. PAYLOAD, secrets("not-the-secret"))
    H.post_json(port, "/hook", '{"fn":"f","message":"m","n":1}')
    local r = ep.wait(1)[1]
    assert.is_false(r.verified)
    assert.truthy(r.error:find("signature mismatch", 1, true))
    wait_outcomes(p, 1)
    assert.equal(1, metric(p, "argo_events_action_failed_total"))
    assert.truthy(p:output("stderr"):find("InvalidSignatureException", 1, true))
    p:kill()
    ep.proc:kill()
  end)

  it("uses AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY when the spec gives no keys", function()
    local ep = start_endpoint()
    local p, port = run(ep, [[
        awsLambda:
          functionName: from-env
          region: us-east-1
          payload:
            - src: {dependencyName: d, dataKey: body.message}
              dest: message
]], nil, { AWS_ACCESS_KEY_ID = AK, AWS_SECRET_ACCESS_KEY = SK })
    H.post_json(port, "/hook", '{"message":"x"}')
    local r = ep.wait(1)[1]
    assert.is_true(r.verified, r.error)
    assert.equal("from-env", r["function"])
    assert.equal(AK, r.access_key)
    p:kill()
    ep.proc:kill()
  end)

  it("assumes roleARN through STS once and signs with the temporary credentials", function()
    local ep = start_endpoint()
    local p, port = run(ep, [[
        awsLambda:
          functionName: f
          region: us-east-1
          roleARN: arn:aws:iam::123456789012:role/invoker
]] .. KEYS .. [[
          payload:
            - src: {dependencyName: d, dataKey: body.message}
              dest: message
]], nil, { AWS_ENDPOINT_URL_STS = ep.url })
    H.post_json(port, "/hook", '{"message":"one"}')
    ep.wait(2)
    H.post_json(port, "/hook", '{"message":"two"}')
    local recs = ep.wait(3)
    local sts, calls = {}, {}
    for _, r in ipairs(recs) do
      assert.is_true(r.verified, r.error)
      if r.api == "sts" then sts[#sts + 1] = r else calls[#calls + 1] = r end
    end
    assert.equal(1, #sts)
    assert.equal("AssumeRole", sts[1].action)
    assert.equal("arn:aws:iam::123456789012:role/invoker", sts[1].role_arn)
    assert.equal(AK, sts[1].access_key)
    assert.equal(2, #calls)
    for _, c in ipairs(calls) do
      assert.equal(sts[1].issued, c.access_key)
      assert.equal("token/1+&more", c.session_token)
    end
    assert.same({ message = "one" }, cjson.decode(calls[1].payload))
    assert.same({ message = "two" }, cjson.decode(calls[2].payload))
    wait_outcomes(p, 2)
    assert.equal(2, metric(p, "argo_events_action_triggered_total"))
    p:kill()
    ep.proc:kill()
  end)
end)
