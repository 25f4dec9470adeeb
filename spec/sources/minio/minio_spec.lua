-- spec/sources/minio/minio_spec.lua: the minio source (sources/minio/) against
-- spec/helpers/minio_fake.lua, a stand-in for MinIO's ListenBucketNotification API written from
-- its documentation (no MinIO server is packaged here): minio-go's query and a SigV4 signature
-- the fake verifies, Argo's data, one event per notification, a refused signature, the stream
-- ended by the server, the fake stopped and restarted while events flow, lint, the example.
local H = require "helpers.herald"
local cjson = require "cjson"

local AK, SK = "AKIAHERALDTEST", "minio/secret+key"

local function es(name, body)
  return ("apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: %s\nspec:\n  minio:\n%s"):format(name, body)
end

local function log_sensor()
  return H.sensor { name = "s", deps = { { name = "d", es = "mn", event = "ev" } } }
end

local function ev_yaml(port, extra)
  return ("    ev:\n      endpoint: 127.0.0.1:%d\n      insecure: true\n      bucket: {name: images}\n" ..
          "      accessKey: {name: minio, key: ak}\n      secretKey: {name: minio, key: sk}\n%s"):format(port, extra or "")
end

describe("minio source", function()
  local fake, port
  local function start_fake()
    fake = H.spawn("luajit", { H.source_dir .. "/spec/helpers/minio_fake.lua", "--port", tostring(port),
                               "--access", AK, "--secret", SK, "--bucket", "images" })
    fake:wait_for("listening", { stream = "stdout" })
  end
  setup(function()
    port = H.free_port()
    start_fake()
  end)
  teardown(function() if fake then fake:kill() end end)

  local function control(path)
    local st, _, body = H.http { port = port, method = "POST", path = path }
    assert.equal(200, st)
    return tonumber(body)
  end
  local function listens()
    local _, _, body = H.http { port = port, method = "GET", path = "/control/log" }
    local t = {}
    for l in (body or ""):gmatch("[^\n]+") do t[#t + 1] = cjson.decode(l) end
    return t
  end
  -- waits until the fake has seen n listens in all
  local function wait_listens(n)
    return H.wait_until(function() local l = listens() return #l >= n and l end, 20, n .. " listens")
  end
  local function dir_with_secrets()
    local dir = H.tmpdir()
    os.execute("mkdir -p " .. dir .. "/secrets/minio")
    H.write(dir .. "/secrets/minio/ak", AK)
    H.write(dir .. "/secrets/minio/sk", SK .. "\n")
    return dir
  end
  local function run(dir)
    return H.start { "run", dir .. "/mn.yaml", "--secrets-dir", dir .. "/secrets" }
  end

  it("listens with minio-go's query, signed with SigV4, and fires one event per notification with Argo's data", function()
    local dir = dir_with_secrets()
    local before = #listens()
    H.write(dir .. "/mn.yaml", es("mn", ev_yaml(port, [[
      events: ["s3:ObjectCreated:Put", "s3:ObjectRemoved:*"]
      filter: {prefix: "in/", suffix: ".jpg"}
      metadata: {team: a}
]])) .. "---\n" .. log_sensor())
    local p = run(dir)
    p:wait_for('"msg":"connected"', { timeout = 10 })
    local l = wait_listens(before + 1)[before + 1]
    assert.is_true(l.auth_ok, l.why)
    assert.equal("us-east-1", l.region)
    assert.equal("/images", l.path)
    assert.same({ "s3:ObjectCreated:Put", "s3:ObjectRemoved:*" }, l.events)
    assert.equal("in/", l.prefix)
    assert.equal(".jpg", l.suffix)
    assert.equal("10", l.ping)
    assert.equal(1, control("/control/put?bucket=images&key=in/a.jpg"))
    assert.equal(0, control("/control/put?bucket=images&key=in/b.png")) -- the fake filters as MinIO
    assert.equal(1, control("/control/put?bucket=images&key=in/c.jpg&event=s3:ObjectRemoved:Delete"))
    assert.equal(0, control("/control/put?bucket=images&key=in/d.jpg&event=s3:ObjectAccessed:Get"))
    local f = H.wait_firings(p, 2, 10)
    local names = {}
    for _, v in ipairs(f) do
      local ev = v.events.d
      assert.equal("minio", ev.type)
      assert.equal("mn", ev.source)
      assert.equal("ev", ev.subject)
      local keys = {}
      for k in pairs(ev.data) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({ "metadata", "notification" }, keys)
      assert.same({ team = "a" }, ev.data.metadata)
      assert.equal(1, #ev.data.notification)
      local r = ev.data.notification[1]
      assert.equal("minio:s3", r.eventSource)
      assert.equal("images", r.s3.bucket.name)
      names[#names + 1] = r.eventName .. " " .. r.s3.object.key
    end
    table.sort(names)
    assert.same({ "s3:ObjectCreated:Put in/a.jpg", "s3:ObjectRemoved:Delete in/c.jpg" }, names)
    H.wait_until(function() return #listens() == before + 1 end, 1, "no second listen")
    assert.equal(0, p:stop())
    assert.equal(2, #H.firings(p))
    local err = p:output("stderr")
    assert.is_nil(err:find(SK, 1, true)) -- the secret key is never logged
  end)

  it("signs for the region given; a wrong secret key is refused and reported, never logged", function()
    local dir = dir_with_secrets()
    H.write(dir .. "/secrets/minio/sk", "wrong-secret-key")
    local before = #listens()
    H.write(dir .. "/mn.yaml", es("mn", ev_yaml(port, "      region: eu-west-1\n")) .. "---\n" .. log_sensor())
    local p = run(dir)
    local line = p:wait_for("not connected", { timeout = 10 })
    assert.matches("HTTP 403: SignatureDoesNotMatch", line)
    local l = wait_listens(before + 1)[before + 1]
    assert.is_false(l.auth_ok)
    assert.equal("eu-west-1", l.region)
    assert.equal(0, p:stop())
    assert.is_nil(p:output("stderr"):find("wrong-secret-key", 1, true))
  end)

  it("listens again when the server ends the stream", function()
    local dir = dir_with_secrets()
    H.write(dir .. "/mn.yaml", es("mn", ev_yaml(port)) .. "---\n" .. log_sensor())
    local before = #listens()
    local p = run(dir)
    p:wait_for('"msg":"connected"', { timeout = 10 })
    wait_listens(before + 1)
    assert.equal(1, control("/control/put?bucket=images&key=one"))
    H.wait_firings(p, 1, 10)
    -- a clean end of the chunked answer (MinIO restarting, a proxy's idle timeout)
    H.wait_until(function() return control("/control/close") == 1 end, 5, "the stream closed")
    p:wait_for("the notification stream ended", { timeout = 10 })
    wait_listens(before + 2)
    H.wait_until(function() return control("/control/put?bucket=images&key=two") == 1 end, 10, "a listener again")
    local f = H.wait_firings(p, 2, 10)
    assert.equal("two", f[2].events.d.data.notification[1].s3.object.key)
    assert.equal(0, p:stop())
  end)

  it("keeps going when the server is stopped and restarted while events flow", function()
    local dir = dir_with_secrets()
    H.write(dir .. "/mn.yaml", es("mn", ev_yaml(port)) .. "---\n" .. log_sensor())
    local p = run(dir)
    p:wait_for('"msg":"connected"', { timeout = 10 })
    H.wait_until(function() return control("/control/put?bucket=images&key=a&n=20") == 20 end, 10, "20 sent")
    H.wait_firings(p, 20, 10)
    fake:kill()
    p:wait_for("not connected", { timeout = 10 })
    start_fake() -- the same port
    p:wait_for('"msg":"connected"', { timeout = 20, after = 1 })
    H.wait_until(function() return control("/control/put?bucket=images&key=b&n=20") == 20 end, 10, "20 more sent")
    local f = H.wait_firings(p, 40, 10)
    local seen = {}
    for _, v in ipairs(f) do seen[v.events.d.data.notification[1].s3.object.key] = true end
    for i = 1, 20 do
      assert.is_true(seen["a" .. i], "a" .. i)
      assert.is_true(seen["b" .. i], "b" .. i)
    end
    assert.equal(0, p:stop())
    assert.equal(40, #H.firings(p))
  end)

  it("holds notifications while the bus is full and pauses the stream, losing none", function()
    local sink = require("helpers.sink_client").start { delay_ms = 3 }
    local dir = dir_with_secrets()
    H.write(dir .. "/mn.yaml", es("mn", ev_yaml(port)) .. "---\n" .. H.sensor { name = "s",
      deps = { { name = "d", es = "mn", event = "ev" } }, triggers = { { name = "t", body = ([[
        http:
          url: http://127.0.0.1:%d/in
          method: POST
          payload:
            - src: {dependencyName: d, dataKey: notification.0.s3.object.key}
              dest: key
]]):format(sink.port) } } })
    -- a bus of 4 and a slow sink: notifications wait in herald, and past 20 the stream is paused
    -- (the rest stays in the socket) until the bus has room again
    local p = H.start({ "run", dir .. "/mn.yaml", "--secrets-dir", dir .. "/secrets", "--bus-capacity", "4",
                        "--log-level", "debug" }, { env = { HERALD_MINIO_HOLD_MAX = "20" } })
    p:wait_for('"msg":"connected"', { timeout = 10 })
    local N = 300
    H.wait_until(function() return control("/control/put?bucket=images&key=k&n=" .. N) == 1 * N end, 10, N .. " sent")
    p:wait_for("the stream paused", { timeout = 10 })
    local seen, n, dups
    H.wait_until(function()
      seen, n, dups = {}, 0, 0
      for _, r in ipairs(sink.requests()) do
        local k = cjson.decode(r.body).key
        if seen[k] then dups = dups + 1 else seen[k] = true n = n + 1 end
      end
      return n >= N
    end, 30, function() return ("%d at the sink (have %d)\n%s"):format(N, n, p:describe()) end)
    for i = 1, N do assert.is_true(seen["k" .. i], "k" .. i) end
    assert.equal(0, dups)
    assert.is_true(p:count("the stream resumed") >= 1)
    assert.equal(0, p:stop())
    sink.stop()
  end)

  it("lint applies Argo's and minio-go's checks", function()
    local dir = H.tmpdir()
    H.write(dir .. "/bad.yaml", es("mn", [[
    a:
      endpoint: http://127.0.0.1:9000
      bucket: {name: images}
      accessKey: {name: m, key: ak}
      secretKey: {name: m, key: sk}
    b:
      endpoint: 127.0.0.1:9000
      bucket: {name: images}
      secretKey: {name: m, key: sk}
    c:
      endpoint: 127.0.0.1:9000
      bucket: {name: images}
      accessKey: {name: m, key: ak}
      secretKey: {name: m, key: sk}
      events: [""]
]]) .. "---\n" .. log_sensor())
    local code, out, err = H.run { "lint", dir .. "/bad.yaml" }
    assert.equal(1, code)
    local text = out .. err
    assert.matches("spec%.minio%.a%.endpoint: endpoint is host%[:port%]", text)
    assert.matches("spec%.minio%.b%.accessKey", text)
    assert.matches("spec%.minio%.c%.events", text)
  end)

  it("runs examples/minio", function()
    local dir = dir_with_secrets()
    os.execute("mkdir -p " .. dir .. "/secrets/minio && cp " .. dir .. "/secrets/minio/ak " .. dir .. "/secrets/minio/accesskey && cp " ..
               dir .. "/secrets/minio/sk " .. dir .. "/secrets/minio/secretkey")
    local text = H.read(H.source_dir .. "/examples/minio/minio.yaml"):gsub("127%.0%.0%.1:9000", "127.0.0.1:" .. port)
    H.write(dir .. "/minio.yaml", text)
    local p = H.start { "run", dir .. "/minio.yaml", "--secrets-dir", dir .. "/secrets" }
    p:wait_for('"msg":"connected"', { timeout = 10 })
    H.wait_until(function() return control("/control/put?bucket=images&key=uploads/cat.jpg") == 1 end, 10, "sent")
    control("/control/put?bucket=images&key=uploads/notes.txt")
    control("/control/put?bucket=images&key=uploads/cat.jpg&event=s3:ObjectRemoved:Delete")
    local f = H.wait_firings(p, 1, 10)
    assert.equal("uploads/cat.jpg", f[1].events["upload-dep"].data.notification[1].s3.object.key)
    assert.equal(0, p:stop())
    assert.equal(1, #H.firings(p)) -- the .txt and the deletion filtered out
  end)
end)
