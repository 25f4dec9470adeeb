-- spec/sources/webhook/webhook_spec.lua: the webhook source and the HTTP server under it,
-- driven through the real `herald` binary over real sockets.
--
-- Every test ends by checking that the engine still serves: a fresh good POST gets 200 and
-- its event reaches the log trigger (a line on stdout carrying the POST's marker).
local H = require "helpers.herald"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"
local socket = require "socket"

local ES_NAME = "es"

-- Writes an EventSource with `events` ({name=, endpoint=, method=, port=, extra=}) and one
-- log Sensor per event, starts herald on that folder and waits for every port to listen.
-- opts: {events=, args={extra CLI args}, es_name=, files={name=text}, no_wait=bool}
local function start(opts)
  local dir = H.tmpdir()
  H.write(dir .. "/es.yaml", H.webhook_es{ name = opts.es_name or ES_NAME, events = opts.events })
  for _, e in ipairs(opts.events) do
    H.write(("%s/sensor-%s.yaml"):format(dir, e.name), H.sensor{
      name = "s-" .. e.name:lower(),
      deps = { { name = "d", es = opts.es_name or ES_NAME, event = e.name } },
    })
  end
  for name, text in pairs(opts.files or {}) do H.write(dir .. "/" .. name, text) end
  local args = { "run", dir, "--log-level", "debug" }
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  local p = H.start(args)
  if not opts.no_wait then
    for _, e in ipairs(opts.events) do
      H.wait_until(function()
        if p:exited() then error("herald exited early\n" .. p:describe(), 0) end
        local c = socket.tcp()
        c:settimeout(0.2)
        local ok = c:connect("127.0.0.1", e.port)
        c:close()
        return ok
      end, 10, function() return "port " .. e.port .. "\n" .. p:describe() end)
    end
  end
  return p, dir
end

local marker_seq = 0
local function marker()
  marker_seq = marker_seq + 1
  return ("mk-%d-%d-%d"):format(os.time(), math.random(1, 1e9), marker_seq)
end

-- POSTs a JSON body carrying a fresh marker; asserts 200 "success"; returns the stdout line of
-- the log trigger that carries the marker.
local function post_and_see(p, port, path, extra_headers)
  local m = marker()
  local headers = { ["Content-Type"] = "application/json" }
  for k, v in pairs(extra_headers or {}) do headers[k] = v end
  local status, _, body = H.http{ port = port, method = "POST", path = path or "/hook",
    headers = headers, body = ('{"marker":"%s"}'):format(m) }
  assert.are.equal(200, status)
  assert.are.equal("success", body)
  return p:wait_for(m, { stream = "stdout", timeout = 10 })
end

-- The engine keeps serving: a good POST still goes through end to end.
local function assert_serving(p, port, path, extra_headers)
  return post_and_see(p, port, path, extra_headers)
end

-- Finds the webhook event data ({header=, body=}) inside a decoded log-trigger line, whether
-- the data is embedded as JSON or carried as a JSON string.
local function find_data(v, seen)
  seen = seen or {}
  if type(v) == "string" and v:sub(1, 1) == "{" then
    local ok, d = pcall(cjson.decode, v)
    if ok then return find_data(d, seen) end
  end
  if type(v) ~= "table" or seen[v] then return nil end
  seen[v] = true
  if v.header ~= nil and v.body ~= nil and type(v.header) == "table" then return v end
  for _, x in pairs(v) do
    local d = find_data(x, seen)
    if d then return d end
  end
end

-- Sends `req` with a marker header and returns the event data the log trigger printed.
local function data_of(p, req)
  local m = marker()
  req.headers = req.headers or {}
  req.headers["X-Marker"] = m
  local status, _, body = H.http(req)
  assert.are.equal(200, status, body)
  local line = p:wait_for(m, { stream = "stdout", timeout = 10 })
  local d = find_data(cjson.decode(line))
  assert.is_table(d, "no webhook data in: " .. line)
  assert.are.same({ m }, d.header["X-Marker"])
  return d
end

local function statuses(raw)
  local t = {}
  for code in raw:gmatch("HTTP/1%.1 (%d%d%d)") do t[#t + 1] = tonumber(code) end
  return t
end

describe("webhook source", function()
  local p

  after_each(function()
    if p then
      if not p:exited() then
        p:stop()
      end
      p = nil
    end
  end)

  it("answers 200 success and the event reaches the log trigger", function()
    local port = H.free_port()
    p = start{ events = { { name = "ev", endpoint = "/hook", method = "POST", port = port } } }
    local line = post_and_see(p, port, "/hook")
    assert.truthy(line:find('"es"', 1, true) or line:find("es", 1, true))
    assert_serving(p, port)
  end)

  describe("event data", function()
    local port

    before_each(function()
      port = H.free_port()
      p = start{ events = {
        { name = "post", endpoint = "/hook", method = "POST", port = port,
          extra = '      metadata:\n        team: blue\n        env: "prod"\n' },
        { name = "get", endpoint = "/get", method = "GET", port = port },
      } }
    end)

    it("embeds a JSON body raw, with canonical header keys and repeated values in order", function()
      local d = data_of(p, { port = port, method = "POST", path = "/hook",
        headers = { ["content-type"] = "application/json", ["x-multi-word"] = "1" },
        body = '{"a":1,"b":[true,null,"x"],"c":{"d":"e"}}' })
      assert.are.same({ a = 1, b = { true, cjson.null, "x" }, c = { d = "e" } }, d.body)
      assert.are.same({ "application/json" }, d.header["Content-Type"])
      assert.are.same({ "1" }, d.header["X-Multi-Word"])
      assert.is_nil(d.header["Host"])
      assert.are.same({ team = "blue", env = "prod" }, d.metadata)

      -- repeated headers: several lines with the same name become one key, values in order
      local m = marker()
      local raw = H.raw(port, "POST /hook HTTP/1.1\r\nHost: x\r\nX-Marker: " .. m ..
        "\r\nX-Rep: one\r\nx-rep: two\r\nX-REP: three\r\nContent-Type: application/json\r\n" ..
        "Content-Length: 2\r\nConnection: close\r\n\r\n{}", { timeout = 5 })
      assert.are.same({ 200 }, statuses(raw))
      local dd = find_data(cjson.decode(p:wait_for(m, { stream = "stdout" })))
      assert.are.same({ "one", "two", "three" }, dd.header["X-Rep"])
      assert.are.same({}, dd.body)
      assert_serving(p, port)
    end)

    it("wraps a non-JSON body as a string and an empty body as null", function()
      local d = data_of(p, { port = port, method = "POST", path = "/hook",
        headers = { ["Content-Type"] = "text/plain" }, body = "hello {not json" })
      assert.are.equal("hello {not json", d.body)
      local e = data_of(p, { port = port, method = "POST", path = "/hook", body = "" })
      assert.are.equal(cjson.null, e.body)
      -- JSON grammar but not UTF-8: carried as a string, bad bytes replaced by U+FFFD
      local f = data_of(p, { port = port, method = "POST", path = "/hook",
        headers = { ["Content-Type"] = "application/json" }, body = '{"a":"\255"}' })
      assert.are.equal('{"a":"\239\191\189"}', f.body)
      assert_serving(p, port)
    end)

    it("turns a form-encoded body into a map of value lists", function()
      local d = data_of(p, { port = port, method = "POST", path = "/hook",
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
        body = "a=1&b=x+y%21&a=2&empty=&bad=%zz" })
      assert.are.same({ a = { "1", "2" }, b = { "x y!" }, empty = { "" } }, d.body)
      assert_serving(p, port)
    end)

    it("turns a GET query string into a map of value lists", function()
      local d = data_of(p, { port = port, method = "GET", path = "/get?q=herald&n=1&q=two%20words" })
      assert.are.same({ q = { "herald", "two words" }, n = { "1" } }, d.body)
      local e = data_of(p, { port = port, method = "GET", path = "/get" })
      assert.are.same({}, e.body)
      assert_serving(p, port)
    end)
  end)

  describe("routing", function()
    local port

    before_each(function()
      port = H.free_port()
      p = start{ events = { { name = "ev", endpoint = "/hook", method = "POST", port = port } } }
    end)

    it("answers 405 to a wrong method and 404 to an unknown path", function()
      local status = H.http{ port = port, method = "PUT", path = "/hook", body = "{}" }
      assert.are.equal(405, status)
      status = H.http{ port = port, method = "GET", path = "/hook" }
      assert.are.equal(405, status)
      status = H.http{ port = port, method = "POST", path = "/nope", body = "{}" }
      assert.are.equal(404, status)
      status = H.http{ port = port, method = "POST", path = "/hook/extra", body = "{}" }
      assert.are.equal(404, status)
      assert_serving(p, port)
    end)

    it("serves GET /health with 200 OK", function()
      local status, _, body = H.http{ port = port, method = "GET", path = "/health" }
      assert.are.equal(200, status)
      assert.are.equal("OK", body)
      assert_serving(p, port)
    end)

    it("keeps a connection alive for several requests", function()
      local c = H.connect(port)
      local m1, m2 = marker(), marker()
      local s1, h1, b1 = H.http{ conn = c, port = port, path = "/hook",
        headers = { ["Content-Type"] = "application/json" }, body = ('{"m":"%s"}'):format(m1) }
      local s2, _, b2 = H.http{ conn = c, port = port, path = "/hook",
        headers = { ["Content-Type"] = "application/json" }, body = ('{"m":"%s"}'):format(m2) }
      c:close()
      assert.are.equal(200, s1)
      assert.are.equal("success", b1)
      assert.are.equal("keep-alive", h1["connection"])
      assert.are.equal(200, s2)
      assert.are.equal("success", b2)
      p:wait_for(m1, { stream = "stdout" })
      p:wait_for(m2, { stream = "stdout" })
      assert_serving(p, port)
    end)

    it("answers pipelined requests in order", function()
      local m1, m2 = marker(), marker()
      local function req(m, close)
        local body = ('{"m":"%s"}'):format(m)
        return ("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
          "Content-Length: %d\r\n%s\r\n%s"):format(#body, close and "Connection: close\r\n" or "", body)
      end
      local raw, why = H.raw(port, req(m1) .. "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" .. req(m2, true),
        { timeout = 5 })
      assert.are.equal("closed", why)
      assert.are.same({ 200, 404, 200 }, statuses(raw))
      p:wait_for(m1, { stream = "stdout" })
      p:wait_for(m2, { stream = "stdout" })
      assert_serving(p, port)
    end)

    it("answers 400 to malformed HTTP and closes the connection", function()
      local raw, why = H.raw(port, "THIS IS NOT HTTP\r\n\r\n", { timeout = 5 })
      assert.are.same({ 400 }, statuses(raw))
      assert.are.equal("closed", why)
      -- Transfer-Encoding together with Content-Length (request smuggling)
      raw, why = H.raw(port, "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n" ..
        "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", { timeout = 5 })
      assert.are.same({ 400 }, statuses(raw))
      assert.are.equal("closed", why)
      -- HTTP/1.1 without Host
      raw, why = H.raw(port, "GET /health HTTP/1.1\r\n\r\n", { timeout = 5 })
      assert.are.same({ 400 }, statuses(raw))
      assert.are.equal("closed", why)
      -- a bad chunk size
      raw, why = H.raw(port, "POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        { timeout = 5 })
      assert.are.same({ 400 }, statuses(raw))
      assert.are.equal("closed", why)
      assert_serving(p, port)
    end)

    it("closes after the response for HTTP/1.0 without keep-alive", function()
      local raw, why = H.raw(port, "GET /health HTTP/1.0\r\n\r\n", { timeout = 5 })
      assert.are.same({ 200 }, statuses(raw))
      assert.are.equal("closed", why)
      assert.truthy(raw:find("Connection: close", 1, true))
      assert_serving(p, port)
    end)

    it("answers 431 to a header block too big or with too many fields", function()
      local raw, why = H.raw(port, "POST /hook HTTP/1.1\r\nHost: x\r\nX-Big: " .. ("a"):rep(17 * 1024) ..
        "\r\nContent-Length: 2\r\n\r\n{}", { timeout = 5 })
      assert.are.same({ 431 }, statuses(raw))
      assert.are.equal("closed", why)
      local many = {}
      for i = 1, 101 do many[#many + 1] = ("X-H%d: v\r\n"):format(i) end
      raw, why = H.raw(port, "POST /hook HTTP/1.1\r\nHost: x\r\n" .. table.concat(many) ..
        "Content-Length: 2\r\n\r\n{}", { timeout = 5 })
      assert.are.same({ 431 }, statuses(raw))
      assert.are.equal("closed", why)
      -- 97 extra fields plus Host, Content-Length and Connection: exactly 100 is fine
      many = {}
      for i = 1, 97 do many[#many + 1] = ("X-H%d: v\r\n"):format(i) end
      raw = H.raw(port, "POST /hook HTTP/1.1\r\nHost: x\r\n" .. table.concat(many) ..
        "Content-Length: 2\r\nConnection: close\r\n\r\n{}", { timeout = 5 })
      assert.are.same({ 200 }, statuses(raw))
      assert_serving(p, port)
    end)
  end)

  describe("maxPayloadSize", function()
    local port

    before_each(function()
      port = H.free_port()
      p = start{ events = { { name = "ev", endpoint = "/hook", method = "POST", port = port,
        extra = "      maxPayloadSize: 100\n" } } }
    end)

    it("answers 413 from Content-Length, before the body is sent", function()
      local c = H.connect(port)
      c:send("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 101\r\n\r\n")
      local status = H.read_response(c)
      assert.are.equal(413, status)
      local _, err = c:receive(1)
      assert.are.equal("closed", err)
      c:close()
      -- exactly at the limit is accepted
      local body = '{"k":"' .. ("x"):rep(100 - 8) .. '"}'
      assert.are.equal(100, #body)
      assert.are.equal(200, (H.http{ port = port, path = "/hook", body = body }))
      assert_serving(p, port)
    end)

    it("answers 413 to a chunked body that grows past the limit", function()
      local chunk = ("y"):rep(60)
      local raw, why = H.raw(port, "POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        ("3c\r\n%s\r\n3c\r\n%s\r\n0\r\n\r\n"):format(chunk, chunk), { timeout = 5 })
      assert.are.same({ 413 }, statuses(raw))
      assert.are.equal("closed", why)
      -- a small chunked body goes through
      raw = H.raw(port, "POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" ..
        "Connection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n", { timeout = 5 })
      assert.are.same({ 200 }, statuses(raw))
      assert_serving(p, port)
    end)
  end)

  describe("authSecret", function()
    local port, secrets

    local function es_auth(secret_name)
      return { { name = "ev", endpoint = "/hook", method = "POST", port = port,
        extra = ("      authSecret:\n        name: %s\n        key: token\n"):format(secret_name) } }
    end

    before_each(function()
      port = H.free_port()
      secrets = H.tmpdir()
      os.execute("mkdir -p '" .. secrets .. "/hook-auth'")
      H.write(secrets .. "/hook-auth/token", "s3cr3t-token\n")
    end)

    it("requires the bearer token and keeps it out of the event", function()
      p = start{ events = es_auth("hook-auth"), args = { "--secrets-dir", secrets } }
      local status = H.http{ port = port, path = "/hook", body = "{}" }
      assert.are.equal(401, status)
      status = H.http{ port = port, path = "/hook", body = "{}",
        headers = { Authorization = "Bearer wrong-token" } }
      assert.are.equal(401, status)
      status = H.http{ port = port, path = "/hook", body = "{}",
        headers = { Authorization = "Bearer s3cr3t-tokenX" } }
      assert.are.equal(401, status)
      status = H.http{ port = port, path = "/hook", body = "{}",
        headers = { Authorization = "Basic s3cr3t-token" } }
      assert.are.equal(401, status)
      -- two Authorization headers are refused even if one is right
      local raw = H.raw(port, "POST /hook HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t-token\r\n" ..
        "Authorization: Bearer s3cr3t-token\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", { timeout = 5 })
      assert.are.same({ 401 }, statuses(raw))

      local d = data_of(p, { port = port, method = "POST", path = "/hook", body = '{"ok":true}',
        headers = { Authorization = "Bearer s3cr3t-token", ["Content-Type"] = "application/json" } })
      assert.are.same({ ok = true }, d.body)
      assert.is_nil(d.header["Authorization"])
      assert.is_nil(p:output("stdout"):find("s3cr3t", 1, true))
      assert_serving(p, port, "/hook", { Authorization = "Bearer s3cr3t-token" })
    end)

    it("refuses to start when the secret file is missing, and says which", function()
      p = start{ events = es_auth("no-such-secret"), args = { "--secrets-dir", secrets }, no_wait = true }
      local code = p:wait_exit(10)
      assert.are_not.equal(0, code)
      local err = p:output("stderr")
      assert.truthy(err:find("authSecret", 1, true), err)
      assert.truthy(err:find("no-such-secret", 1, true), err)
    end)
  end)

  describe("slow and idle clients", function()
    local port

    before_each(function()
      port = H.free_port()
      p = start{ events = { { name = "ev", endpoint = "/hook", method = "POST", port = port } },
        args = { "--http-header-timeout", "300", "--http-body-timeout", "300",
                 "--http-idle-timeout", "300" } }
    end)

    -- Sends `bytes`, then waits for the server to close; returns how long that took.
    local function time_to_close(bytes)
      local c = H.connect(port, 5)
      if #bytes > 0 then c:send(bytes) end
      local t0 = socket.gettime()
      local data, err, partial = c:receive("*a") -- blocks until the server gives up on us
      local waited = socket.gettime() - t0
      c:close()
      return waited, err or "closed", data or partial
    end

    it("closes a client that does not finish its headers", function()
      local waited, err, data = time_to_close("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Ty")
      assert.are.equal("closed", err)
      assert.truthy(data:find("^HTTP/1.1 408 "), data) -- part of a request came: 408, then close
      assert.is_true(waited >= 0.2, "closed too early: " .. waited)
      assert.is_true(waited < 3, "closed too late: " .. waited)
      -- a client that trickles its headers a byte at a time is bounded the same way
      local c = H.connect(port, 5)
      local t0 = socket.gettime()
      local req = "POST /hook HTTP/1.1\r\nHost: x\r\nX-Slow: " .. ("z"):rep(200) .. "\r\n\r\n"
      local closed = false
      for i = 1, #req do
        local ok = c:send(req:sub(i, i))
        if not ok then closed = true break end
        socket.sleep(0.02) -- deliberately slow client
        if socket.gettime() - t0 > 3 then break end
      end
      if not closed then
        local _, e = c:receive(1)
        closed = e == "closed"
      end
      c:close()
      assert.is_true(closed)
      assert.is_true(socket.gettime() - t0 < 3)
      assert_serving(p, port)
    end)

    it("closes a client that stalls in the middle of its body", function()
      local waited, err, data = time_to_close("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}")
      assert.are.equal("closed", err)
      assert.truthy(data:find("^HTTP/1.1 408 "), data)
      assert.is_true(waited >= 0.2 and waited < 3, "waited " .. waited)
      assert_serving(p, port)
    end)

    it("closes an idle keep-alive connection", function()
      local c = H.connect(port, 5)
      local status = H.http{ conn = c, port = port, method = "GET", path = "/health" }
      assert.are.equal(200, status)
      local t0 = socket.gettime()
      local _, err = c:receive(1)
      local waited = socket.gettime() - t0
      c:close()
      assert.are.equal("closed", err)
      assert.is_true(waited >= 0.2 and waited < 3, "waited " .. waited)
      assert_serving(p, port)
    end)

    it("answers 100 Continue before reading a body when asked to", function()
      local c = H.connect(port, 5)
      local body = '{"expect":"continue"}'
      c:send(("POST /hook HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: application/json\r\n" ..
        "Content-Length: %d\r\n\r\n"):format(#body))
      assert.are.equal("HTTP/1.1 100 Continue", c:receive("*l"))
      assert.are.equal("", c:receive("*l"))
      c:send(body)
      local status, _, rbody = H.read_response(c)
      c:close()
      assert.are.equal(200, status)
      assert.are.equal("success", rbody)
      p:wait_for('"expect":"continue"', { stream = "stdout" })
      assert_serving(p, port)
    end)
  end)

  it("serves two endpoints on one port, and two ports", function()
    local port1, port2 = H.free_port(), H.free_port()
    while port2 == port1 do port2 = H.free_port() end
    local other_es = H.webhook_es{ name = "es2", events = {
      { name = "other", endpoint = "/other", method = "POST", port = port1 } } }
    local other_sensor = H.sensor{ name = "s-es2", deps = { { name = "d", es = "es2", event = "other" } } }
    p = start{ events = {
      { name = "a", endpoint = "/a", method = "POST", port = port1 },
      { name = "b", endpoint = "/b", method = "POST", port = port1 },
      { name = "c", endpoint = "/c", method = "POST", port = port2 },
    }, files = { ["es2.yaml"] = other_es, ["sensor-es2.yaml"] = other_sensor } }
    post_and_see(p, port1, "/a")
    post_and_see(p, port1, "/b")
    post_and_see(p, port2, "/c")
    post_and_see(p, port1, "/other") -- another EventSource sharing port1
    assert.are.equal(404, (H.http{ port = port2, path = "/a", body = "{}" }))
    assert.are.equal(404, (H.http{ port = port1, path = "/c", body = "{}" }))
    local status, _, body = H.http{ port = port2, method = "GET", path = "/health" }
    assert.are.equal(200, status)
    assert.are.equal("OK", body)
    assert_serving(p, port1, "/a")
  end)

  it("fails to start with a clear error when the port is taken or a route is doubled", function()
    local port = H.free_port()
    local blocker = assert(socket.bind("127.0.0.1", port))
    p = start{ events = { { name = "ev", endpoint = "/hook", method = "POST", port = port } }, no_wait = true }
    assert.are_not.equal(0, p:wait_exit(10))
    blocker:close()
    local err = p:output("stderr")
    assert.truthy(err:find("cannot listen on 127.0.0.1:" .. port, 1, true), err)
    assert.truthy(err:lower():find("address already in use", 1, true), err)

    port = H.free_port()
    p = start{ events = {
      { name = "one", endpoint = "/same", method = "POST", port = port },
      { name = "two", endpoint = "/same", method = "POST", port = port },
    }, no_wait = true }
    assert.are_not.equal(0, p:wait_exit(10))
    err = p:output("stderr")
    assert.truthy(err:find("already served by another event", 1, true), err)
  end)

  it("answers 503 with Retry-After when the bus is full, and recovers", function()
    local port = H.free_port()
    local sink = sink_client.start{ delay_ms = 60000 }
    local http_sensor = H.sensor{ name = "s-http", deps = { { name = "d", es = ES_NAME, event = "ev" } },
      triggers = { { name = "slow", body = ("        http:\n          url: http://127.0.0.1:%d/slow\n" ..
        "          method: POST\n"):format(sink.port),
        -- at-least-once: each event stays on the bus until its (never-ending) action finishes
        extra = "      atLeastOnce: true\n" } } }
    p = start{ events = { { name = "ev", endpoint = "/hook", method = "POST", port = port } },
      args = { "--bus-capacity", "2" }, files = { ["sensor-http.yaml"] = http_sensor } }
    local got = {}
    local full_headers, full_body
    for _ = 1, 20 do
      local status, headers, body = H.http{ port = port, path = "/hook", body = "{}" }
      got[#got + 1] = status
      if status == 503 then
        full_headers, full_body = headers, body
        break
      end
      assert.are.equal(200, status)
    end
    assert.are.equal(200, got[1])
    assert.are.equal(503, got[#got], table.concat(got, ","))
    assert.is_true(#got <= 4, table.concat(got, ","))
    assert.are.equal("1", full_headers["retry-after"])
    assert.are.equal("event bus is full, retry later", full_body)
    sink.wait_requests(1, 10)
    -- once the sink goes away the slow actions fail, the bus drains and POSTs succeed again
    sink.stop()
    H.wait_until(function()
      return (H.http{ port = port, path = "/hook", body = '{"after":"full"}' }) == 200
    end, 30, function() return "a 200 after the bus drained\n" .. p:describe() end)
    assert_serving(p, port)
  end)
end)
