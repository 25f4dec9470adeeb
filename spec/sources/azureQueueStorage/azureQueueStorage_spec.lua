-- spec/sources/azureQueueStorage/azureQueueStorage_spec.lua: the azureQueueStorage source
-- (sources/azureQueueStorage/) against azurite's queue service (one per file): Argo's data shape,
-- messages deleted once the bus holds them, jsonBody and decodeMessage, bad messages with and
-- without dlq, azurite stopped and restarted while events flow, kill -9 of herald mid-stream
-- counted at an HTTP sink, lint, the example.
local H = require "helpers.herald"
local A = require "helpers.azurite_peer"
local cjson = require "cjson"
local mime = require "mime"

local function es(name, body)
  return ("apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: %s\nspec:\n  azureQueueStorage:\n%s"):format(name, body)
end

local function log_sensor()
  return H.sensor { name = "s", deps = { { name = "d", es = "aq", event = "ev" } } }
end

-- atLeastOnce: the bus lets an event go only once its action succeeded (without it, Argo's
-- default, an action in flight when herald dies is lost on the trigger's side, not the source's)
local function sink_sensor(port)
  return H.sensor { name = "s", deps = { { name = "d", es = "aq", event = "ev" } }, triggers = { { name = "t", extra = "      atLeastOnce: true\n", body = ([[
        http:
          url: http://127.0.0.1:%d/in
          method: POST
          payload:
            - src: {dependencyName: d, dataKey: body}
              dest: text
]]):format(port) } } }
end

describe("azureQueueStorage source", function()
  local az, why
  setup(function() az, why = A.start(H) end)
  teardown(function() if az then az.stop() end end)

  -- a directory with the connection string as the secret az/cs, and the spec's files
  local function dir_with_secret()
    local dir = H.tmpdir()
    os.execute("mkdir -p " .. dir .. "/secrets/az")
    H.write(dir .. "/secrets/az/cs", az.connection_string)
    return dir
  end

  local function run(dir, extra, env)
    local args = { "run", dir .. "/aq.yaml", "--secrets-dir", dir .. "/secrets" }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    return H.start(args, { env = env })
  end

  it("fires with Argo's data and deletes each message once the bus holds it", function()
    if not az then return pending(why) end
    assert.equal(201, (az.create_queue("shape-queue")))
    local dir = dir_with_secret()
    H.write(dir .. "/aq.yaml", es("aq", "    ev:\n      connectionString: {name: az, key: cs}\n      queueName: shape-queue\n      metadata: {team: a}\n") .. "---\n" .. log_sensor())
    assert.equal(3, az.put("shape-queue", { "hello", '{"a":1}', "x<y&z 'q' \"d\"" }))
    local p = run(dir)
    local f = H.wait_firings(p, 3, 15)
    local bodies = {}
    for _, v in ipairs(f) do
      local ev = v.events.d
      assert.equal("azureQueueStorage", ev.type)
      assert.equal("aq", ev.source)
      assert.equal("ev", ev.subject)
      local d = ev.data
      assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", d.messageID)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", d.insertionTime)
      assert.same({ team = "a" }, d.metadata)
      local keys = {}
      for k in pairs(d) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({ "body", "insertionTime", "messageID", "metadata" }, keys)
      bodies[#bodies + 1] = (mime.unb64(d.body)) -- Go's []byte: base64
    end
    table.sort(bodies)
    assert.same({ "hello", "x<y&z 'q' \"d\"", '{"a":1}' }, bodies)
    H.wait_until(function() return az.count("shape-queue") == 0 end, 10, "the three deleted")
    assert.equal(0, p:stop())
    assert.equal(3, #H.firings(p))
  end)

  it("takes a connection string with a shared access signature instead of the key", function()
    if not az then return pending(why) end
    az.create_queue("sas-queue")
    local dir = dir_with_secret()
    H.write(dir .. "/secrets/az/cs", az.sas_connection_string())
    H.write(dir .. "/aq.yaml", es("aq", "    ev:\n      connectionString: {name: az, key: cs}\n      queueName: sas-queue\n") .. "---\n" .. log_sensor())
    az.put("sas-queue", { "via-sas" })
    local p = run(dir)
    p:wait_for("shared access signature", { timeout = 10 })
    local f = H.wait_firings(p, 1, 15)
    assert.equal("via-sas", (mime.unb64(f[1].events.d.data.body)))
    H.wait_until(function() return az.count("sas-queue") == 0 end, 10, "deleted with the SAS")
    assert.equal(0, p:stop())
    assert.is_nil(p:output("stderr"):find("sig=", 1, true)) -- the signature is never logged
  end)

  it("decodeMessage and jsonBody: base64 JSON as JSON; bad ones counted and deleted, or kept with dlq", function()
    if not az then return pending(why) end
    az.create_queue("json-queue")
    az.create_queue("dlq-queue")
    local dir = dir_with_secret()
    H.write(dir .. "/aq.yaml", es("aq", [[
    ev:
      connectionString: {name: az, key: cs}
      queueName: json-queue
      decodeMessage: true
      jsonBody: true
      waitTimeInSeconds: 1
    kept:
      connectionString: {name: az, key: cs}
      queueName: dlq-queue
      decodeMessage: true
      dlq: true
      waitTimeInSeconds: 1
]]) .. "---\n" .. log_sensor())
    az.put("json-queue", { (mime.b64('{"a":[1,2]}')), "%%% not base64", (mime.b64("not json")), (mime.b64('"s"')) })
    az.put("dlq-queue", { "%%% not base64" })
    local p = run(dir)
    local f = H.wait_firings(p, 2, 15)
    local bodies = {}
    for _, v in ipairs(f) do bodies[#bodies + 1] = cjson.encode(v.events.d.data.body) end
    table.sort(bodies)
    assert.same({ '"s"', '{"a":[1,2]}' }, bodies)
    H.wait_until(function()
      local m = H.metrics(p)
      return (m['herald_eventsource_bad_body_total{eventsource_name="aq",event_name="ev"}'] or 0) == 1
        and (m['argo_events_events_processing_failed_total{eventsource_name="aq",event_name="ev"}'] or 0) >= 1
        and (m['argo_events_events_processing_failed_total{eventsource_name="aq",event_name="kept"}'] or 0) >= 1
    end, 10, "bad messages counted")
    H.wait_until(function() return az.count("json-queue") == 0 end, 10, "json-queue emptied (bad ones deleted too)")
    assert.equal(1, az.count("dlq-queue")) -- dlq: the bad message stays for the dead-letter process
    assert.equal(0, p:stop())
    assert.equal(2, #H.firings(p))
  end)

  it("keeps going when azurite is stopped and restarted while events flow", function()
    if not az then return pending(why) end
    az.create_queue("restart-queue")
    local dir = dir_with_secret()
    H.write(dir .. "/aq.yaml", es("aq", "    ev:\n      connectionString: {name: az, key: cs}\n      queueName: restart-queue\n      waitTimeInSeconds: 1\n") .. "---\n" .. log_sensor())
    local a, b = {}, {}
    for i = 1, 20 do a[i], b[i] = "a" .. i, "b" .. i end
    az.put("restart-queue", a)
    local p = run(dir)
    H.wait_firings(p, 20, 15)
    az.stop()
    p:wait_for("not connected", { timeout = 15 })
    az.launch() -- the same --location: the queue survives
    p:wait_for('"msg":"connected"', { timeout = 30, after = 1, plain = true })
    assert.equal(20, az.put("restart-queue", b))
    local f = H.wait_firings(p, 40, 30)
    local seen = {}
    for _, v in ipairs(f) do seen[(mime.unb64(v.events.d.data.body))] = true end
    for i = 1, 20 do
      assert.is_true(seen["a" .. i], "a" .. i)
      assert.is_true(seen["b" .. i], "b" .. i)
    end
    assert.equal(0, p:stop())
    assert.equal(40, #H.firings(p))
  end)

  it("loses nothing when herald is killed (-9) mid-stream and restarted", function()
    if not az then return pending(why) end
    local sink = require("helpers.sink_client").start { delay_ms = 2 }
    az.create_queue("kill-queue")
    local dir, bus = dir_with_secret(), H.tmpdir()
    H.write(dir .. "/aq.yaml", es("aq", "    ev:\n      connectionString: {name: az, key: cs}\n      queueName: kill-queue\n      waitTimeInSeconds: 1\n") .. "---\n" .. sink_sensor(sink.port))
    local N = 800
    local texts = {}
    for i = 1, N do texts[i] = ("m%05d-%s"):format(i, string.rep("x", 100)) end
    assert.equal(N, az.put("kill-queue", texts))
    local function arrived()
      local seen, n, dups = {}, 0, 0
      for _, r in ipairs(sink.requests()) do
        local t = mime.unb64(cjson.decode(r.body).text)
        if seen[t] then dups = dups + 1 else seen[t] = true n = n + 1 end
      end
      return seen, n, dups
    end
    -- a durable bus (fresh CloudEvent ids on it): what it held before the kill is delivered after
    -- received but not yet deleted when herald dies: back after the visibility timeout (Argo's
    -- 120 s; 5 s here, so the spec takes seconds)
    local env = { HERALD_AZQ_VISIBILITY_S = "5" }
    local p = run(dir, { "--bus-dir", bus }, env)
    H.wait_until(function() local _, n = arrived() return n >= 100 end, 30, "first deliveries")
    p:kill()
    local _, before = arrived()
    local p2 = run(dir, { "--bus-dir", bus }, env)
    local seen, n, dups
    H.wait_until(function()
      seen, n, dups = arrived()
      return n >= N
    end, 60, function()
      local miss = {}
      for _, t in ipairs(texts) do if not seen[t] then miss[#miss + 1] = t:sub(1, 6) end end
      return ("all %d at the sink (have %d, %d left in the queue)\nmissing: %s\n%s"):format(N, n or 0,
        az.count("kill-queue") or -1, table.concat(miss, " ", 1, math.min(#miss, 30)), p2:describe())
    end)
    for _, t in ipairs(texts) do assert.is_true(seen[t], t:sub(1, 6) .. " lost") end
    print(("\n  azureQueueStorage kill -9: %d messages, %d at the sink before the kill, %d duplicates after the restart, 0 lost"):format(N, before, dups))
    H.wait_until(function() return az.count("kill-queue") == 0 end, 10, "the queue emptied")
    assert.equal(0, p2:stop())
    sink.stop()
  end)

  it("stops receiving while the bus is full and resumes by itself, losing none", function()
    if not az then return pending(why) end
    local sink = require("helpers.sink_client").start { delay_ms = 3 }
    az.create_queue("full-queue")
    local dir = dir_with_secret()
    H.write(dir .. "/aq.yaml", es("aq", "    ev:\n      connectionString: {name: az, key: cs}\n      queueName: full-queue\n      waitTimeInSeconds: 1\n") .. "---\n" .. sink_sensor(sink.port))
    local N = 150
    local texts = {}
    for i = 1, N do texts[i] = ("f%04d"):format(i) end
    assert.equal(N, az.put("full-queue", texts))
    local p = run(dir, { "--bus-capacity", "4", "--log-level", "debug" })
    local seen, n, dups
    H.wait_until(function()
      seen, n, dups = {}, 0, 0
      for _, r in ipairs(sink.requests()) do
        local t = mime.unb64(cjson.decode(r.body).text)
        if seen[t] then dups = dups + 1 else seen[t] = true n = n + 1 end
      end
      return n >= N
    end, 30, function() return ("%d at the sink (have %d)\n%s"):format(N, n, p:describe()) end)
    for _, t in ipairs(texts) do assert.is_true(seen[t], t) end
    assert.equal(0, dups)
    assert.is_true(p:count("the bus is full: receiving stops") >= 1)
    H.wait_until(function() return az.count("full-queue") == 0 end, 10, "the queue emptied")
    assert.equal(0, p:stop())
    sink.stop()
  end)

  it("lint applies Argo's checks", function()
    local dir = H.tmpdir()
    H.write(dir .. "/bad.yaml", es("aq", [[
    a:
      queueName: q
    b:
      connectionString: {name: az, key: cs}
    c:
      storageAccountName: acct
      queueName: q
]]) .. "---\n" .. log_sensor())
    local code, out, err = H.run { "lint", dir .. "/bad.yaml" }
    assert.equal(1, code)
    local text = out .. err
    assert.matches("spec%.azureQueueStorage%.a[^\n]*connectionString", text)
    assert.matches("spec%.azureQueueStorage%.b%.queueName", text)
    assert.matches("spec%.azureQueueStorage%.c%.storageAccountName: storageAccountName without connectionString", text)
  end)

  it("runs examples/azureQueueStorage", function()
    if not az then return pending(why) end
    az.create_queue("herald-orders")
    local dir = H.tmpdir()
    os.execute("mkdir -p " .. dir .. "/azure-queue")
    H.write(dir .. "/azure-queue/connection-string", az.connection_string)
    local p = H.start({ "run", H.source_dir .. "/examples/azureQueueStorage", "--secrets-dir", dir })
    p:wait_for('"msg":"connected"', { timeout = 15 })
    az.put("herald-orders", { '{"kind":"order","amount":250}', '{"kind":"order","amount":5}' })
    local f = H.wait_firings(p, 1, 15)
    assert.equal(250, f[1].events["order-dep"].data.body.amount)
    H.wait_until(function() return az.count("herald-orders") == 0 end, 10, "both deleted")
    assert.equal(0, p:stop())
    assert.equal(1, #H.firings(p)) -- the filter dropped the small one
  end)
end)
