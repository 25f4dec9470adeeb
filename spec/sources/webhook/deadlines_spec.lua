-- spec/sources/webhook/deadlines_spec.lua: the HTTP server's deadlines, strict chunk framing
-- and per-client share of the connection cap (engine/http_server.c), driven through the real
-- `herald run` binary over real sockets.
--
-- Deadlines are configured small here (about a second) so each case runs in seconds; the
-- timing bounds are loose on the late side (a loaded 2-core machine) and tight enough on the
-- early side to tell a total deadline from a per-read one. Every test ends with a good POST
-- going through end to end.
local H = require "helpers.herald"
local socket = require "socket"

local now = socket.gettime

local marker_seq = 0
local function marker()
  marker_seq = marker_seq + 1
  return ("mk-%d-%d-%d"):format(os.time(), math.random(1, 1e9), marker_seq)
end

-- Starts herald with a webhook EventSource on `port` (/hook, POST) and a log Sensor.
local function start(port, args)
  local dir = H.tmpdir()
  H.write(dir .. "/es.yaml", H.webhook_es{ name = "es", events = {
    { name = "ev", endpoint = "/hook", method = "POST", port = port } } })
  H.write(dir .. "/sensor.yaml", H.sensor{ name = "s", deps = { { name = "d", es = "es", event = "ev" } } })
  local argv = { "run", dir, "--log-level", "debug" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local p = H.start(argv)
  H.wait_until(function()
    if p:exited() then error("herald exited early\n" .. p:describe(), 0) end
    local c = socket.tcp()
    c:settimeout(0.2)
    local ok = c:connect("127.0.0.1", port)
    c:close()
    return ok
  end, 10, function() return "port " .. port .. "\n" .. p:describe() end)
  return p
end

-- A good POST gets 200 and its event reaches the log trigger.
local function assert_serving(p, port, conn)
  local m = marker()
  local status, _, body = H.http{ port = port, conn = conn, method = "POST", path = "/hook",
    headers = { ["Content-Type"] = "application/json" }, body = ('{"marker":"%s"}'):format(m) }
  assert.are.equal(200, status, body)
  assert.are.equal("success", body)
  p:wait_for(m, { stream = "stdout", timeout = 10 })
end

-- Sends `bytes` one at a time, `every` seconds apart, until the server answers or closes;
-- returns the time the first answer byte (or the close) was seen.
local function trickle(c, bytes, every, give_up)
  local t_end = now() + give_up
  for i = 1, #bytes do
    if not c:send(bytes:sub(i, i)) then break end
    local r = socket.select({ c }, nil, every)
    if r[1] or now() > t_end then break end
  end
  socket.select({ c }, nil, math.max(0, t_end - now()))
  return now()
end

-- Reads everything until the server closes (or `timeout`); returns data, "closed"|"timeout".
local function read_all(c, timeout)
  c:settimeout(timeout or 5)
  local data, err, partial = c:receive("*a")
  return data or partial or "", data and "closed" or err
end

local function connect_from(addr, port)
  local c = socket.tcp()
  assert(c:bind(addr, 0))
  c:settimeout(5)
  assert(c:connect("127.0.0.1", port))
  return c
end

local function chunked_head()
  return "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
         "Transfer-Encoding: chunked\r\n\r\n"
end

describe("webhook deadlines", function()
  describe("with short deadlines", function()
    local p, port

    lazy_setup(function()
      port = H.free_port()
      p = start(port, { "--http-header-timeout", "1500", "--http-body-deadline", "1500",
                        "--http-body-timeout", "800", "--http-idle-timeout", "1000" })
    end)

    lazy_teardown(function()
      if p and not p:exited() then p:stop() end
    end)

    it("cuts a trickled body at its total deadline with 408 and Connection: close", function()
      local c = H.connect(port, 5)
      c:send("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
             "Content-Length: 1000\r\n\r\n")
      local t0 = now()
      -- a byte every 0.25 s: each read is well within the 0.8 s idle timeout
      local t1 = trickle(c, ('{"pad":"' .. ("x"):rep(990) .. '"}'), 0.25, 6)
      local status, headers = H.read_response(c)
      local rest = read_all(c, 3)
      c:close()
      local waited = t1 - t0
      assert.are.equal(408, status)
      assert.are.equal("close", headers["connection"])
      assert.are.equal("", rest) -- and then the connection closes
      assert.is_true(waited >= 1.4, "cut too early: " .. waited)
      assert.is_true(waited < 3.0, "cut too late: " .. waited)
      assert_serving(p, port)
    end)

    it("cuts trickled headers at their total deadline, counted from the accept, with 408", function()
      local c = H.connect(port, 5)
      local t0 = now()
      socket.sleep(1.0) -- idle before the first byte buys no extra time
      local t1 = trickle(c, "POST /hook HTTP/1.1\r\nHost: x\r\nX-Slow: " .. ("z"):rep(200) .. "\r\n\r\n",
        0.05, 5)
      local status, headers = H.read_response(c)
      local rest = read_all(c, 3)
      c:close()
      local waited = t1 - t0
      assert.are.equal(408, status)
      assert.are.equal("close", headers["connection"])
      assert.are.equal("", rest)
      assert.is_true(waited >= 1.4, "cut too early: " .. waited)
      -- counted from the first byte it would be 2.5 s
      assert.is_true(waited < 2.2, "cut too late: " .. waited)
      assert_serving(p, port)
    end)

    it("closes a connection with no bytes of a request silently, fresh or kept alive", function()
      local c = H.connect(port, 5)
      local t0 = now()
      local data, why = read_all(c, 5)
      local waited = now() - t0
      c:close()
      assert.are.equal("closed", why)
      assert.are.equal("", data)
      assert.is_true(waited >= 1.4 and waited < 3.5, "waited " .. waited) -- the header deadline

      c = H.connect(port, 5)
      assert.are.equal(200, (H.http{ conn = c, port = port, method = "GET", path = "/health" }))
      t0 = now()
      data, why = read_all(c, 5)
      waited = now() - t0
      c:close()
      assert.are.equal("closed", why)
      assert.are.equal("", data)
      assert.is_true(waited >= 0.9 and waited < 3, "waited " .. waited) -- the idle timeout
      assert_serving(p, port)
    end)

    it("gives each request on a kept-alive connection its own deadlines", function()
      -- 4 requests, each with a body sent in 3 pieces 0.2 s apart and 0.3 s between requests:
      -- about 2.4 s on one connection, past every deadline if they were per connection
      local c = H.connect(port, 5)
      local marks = {}
      for i = 1, 4 do
        local m = marker()
        marks[i] = m
        local body = ('{"marker":"%s","i":%d}'):format(m, i)
        c:send(("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
                "Content-Length: %d\r\n\r\n"):format(#body))
        local third = math.floor(#body / 3)
        c:send(body:sub(1, third))
        socket.sleep(0.2)
        c:send(body:sub(third + 1, 2 * third))
        socket.sleep(0.2)
        c:send(body:sub(2 * third + 1))
        local status, headers, rbody = H.read_response(c)
        assert.are.equal(200, status, rbody)
        assert.are.equal("keep-alive", headers["connection"])
        socket.sleep(0.3)
      end
      c:close()
      for _, m in ipairs(marks) do p:wait_for(m, { stream = "stdout", timeout = 10 }) end
      assert_serving(p, port)
    end)

    it("gives a large declared body the time it needs at 64 KiB/s", function()
      -- 256 KiB may take 4 s at 64 KiB/s; sent in 2.4 s, past the 1.5 s body deadline
      local m = marker()
      local head = ('{"marker":"%s","pad":"'):format(m)
      local body = head .. ("y"):rep(256 * 1024 - #head - 2) .. '"}'
      local c = H.connect(port, 5)
      c:send(("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
              "Content-Length: %d\r\nConnection: close\r\n\r\n"):format(#body))
      local t0 = now()
      local piece = 16 * 1024
      for i = 1, #body, piece do
        assert(c:send(body:sub(i, i + piece - 1)))
        socket.sleep(0.15)
      end
      local status, _, rbody = H.read_response(c)
      c:close()
      assert.is_true(now() - t0 > 1.5)
      assert.are.equal(200, status, rbody)
      p:wait_for(m, { stream = "stdout", timeout = 10 })
      assert_serving(p, port)
    end)

    describe("chunk framing", function()
      -- each case: chunked body text, given a marker that must never reach the sensor
      local bad = {
        ["chunk data not followed by CRLF"] = function(m)
          return ("%x\r\n%sXX0\r\n\r\n"):format(#m, m) end,
        ["chunk data followed by LF only"] = function(m)
          return ("%x\r\n%s\n0\r\n\r\n"):format(#m, m) end,
        ["chunk-size line ended by CR and another byte"] = function(m)
          return ("%x\rX%s\r\n0\r\n\r\n"):format(#m, m) end,
        ["control character in a chunk extension"] = function(m)
          return ("%x;a\1b\r\n%s\r\n0\r\n\r\n"):format(#m, m) end,
        ["bare LF in a chunk extension"] = function(m)
          return ("%x;a\nb\r\n%s\r\n0\r\n\r\n"):format(#m, m) end,
        ["chunk extensions over 4 KiB"] = function(m)
          return ("%x;%s\r\n%s\r\n0\r\n\r\n"):format(#m, ("e"):rep(5000), m) end,
        ["chunk size of 17 hex digits"] = function(m)
          return ("%017x\r\n%s\r\n0\r\n\r\n"):format(#m, m) end,
        ["whitespace after a chunk size"] = function(m)
          return ("%x \r\n%s\r\n0\r\n\r\n"):format(#m, m) end,
        ["bare LF in a trailer"] = function(m)
          return ("%x\r\n%s\r\n0\r\nX-T: 1\n\r\n"):format(#m, m) end,
        ["folded trailer line"] = function(m)
          return ("%x\r\n%s\r\n0\r\nX-T: 1\r\n  2\r\n\r\n"):format(#m, m) end,
        ["last chunk not ended by CRLF CRLF"] = function(m)
          return ("%x\r\n%s\r\n0\r\n\rX"):format(#m, m) end,
      }
      local names = {}
      for name in pairs(bad) do names[#names + 1] = name end
      table.sort(names)
      for _, name in ipairs(names) do
        it("answers 400 and closes: " .. name, function()
          local m = marker()
          local data, why = H.raw(port, chunked_head() .. bad[name]('"' .. m .. '"'), { timeout = 5 })
          assert.are.equal("closed", why)
          assert.truthy(data:find("^HTTP/1.1 400 "), data)
          assert.truthy(data:find("Connection: close\r\n", 1, true), data)
          local _, n200 = data:gsub("HTTP/1.1 200", "")
          assert.are.equal(0, n200)
          assert_serving(p, port)
          assert.are.equal(0, p:count(m, "stdout", true))
        end)
      end

      it("accepts well-framed chunked bodies: extensions, trailers, tiny reads, pipelining", function()
        local function ok_body(parts, opts)
          opts = opts or {}
          local out = {}
          for _, s in ipairs(parts) do
            out[#out + 1] = (opts.fmt or "%x"):format(#s) .. (opts.ext or "") .. "\r\n" .. s .. "\r\n"
          end
          out[#out + 1] = "0" .. (opts.ext or "") .. "\r\n" .. (opts.trailer or "") .. "\r\n"
          return table.concat(out)
        end
        local function json(m) return { '{"mar', 'ker":"' .. m, '"}' } end

        -- extensions, uppercase hex with leading zeros, a large trailer
        local m1, m2, m3, m4 = marker(), marker(), marker(), marker()
        local req1 = chunked_head() .. ok_body(json(m1), { ext = ' ; name=value;q="a b"', fmt = "%04X" })
        local req2 = chunked_head() .. ok_body(json(m2),
          { trailer = "X-Trailer: " .. ("t"):rep(8000) .. "\r\nX-Other: 1\r\n" })
        -- two chunked requests and a plain one pipelined in one write
        local body4 = ('{"marker":"%s"}'):format(m4)
        local plain = ("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
                       "Content-Length: %d\r\n\r\n%s"):format(#body4, body4)
        local c = H.connect(port, 5)
        assert(c:send(req1 .. req2 .. plain))
        for _ = 1, 3 do
          local status, _, rbody = H.read_response(c)
          assert.are.equal(200, status, rbody)
        end
        -- a chunked body sent a byte per write (the check resumes across reads)
        local req3 = chunked_head() .. ok_body(json(m3))
        for i = 1, #req3 do
          assert(c:send(req3:sub(i, i)))
          if i % 16 == 0 then socket.sleep(0.001) end
        end
        local status, _, rbody = H.read_response(c)
        assert.are.equal(200, status, rbody)
        c:close()
        for _, m in ipairs{ m1, m2, m3, m4 } do p:wait_for(m, { stream = "stdout", timeout = 10 }) end
        assert_serving(p, port)
      end)
    end)
  end)

  describe("per-client share of the connection cap", function()
    local p

    after_each(function()
      if p and not p:exited() then p:stop() end
      p = nil
    end)

    -- Holds `n` kept-alive connections from addr, each proven accepted by a /health request.
    local function hold(addr, port, n)
      local t = {}
      for i = 1, n do
        local c = connect_from(addr, port)
        assert.are.equal(200, (H.http{ conn = c, port = port, method = "GET", path = "/health" }))
        t[i] = c
      end
      return t
    end

    -- True if a new connection from addr is refused (closed without an answer).
    local function refused(addr, port)
      local c = connect_from(addr, port)
      local status = H.http{ conn = c, port = port, method = "GET", path = "/health", timeout = 5 }
      c:close()
      return status == nil
    end

    it("refuses an address past its share (a quarter of the cap) while others get in", function()
      local port = H.free_port()
      p = start(port, { "--http-max-connections", "8" })
      local held = hold("127.0.0.1", port, 2)
      assert.is_true(refused("127.0.0.1", port))
      assert.is_true(refused("127.0.0.1", port))
      -- another address is served, up to its own share
      local other = hold("127.0.0.2", port, 2)
      assert_serving(p, port, connect_from("127.0.0.3", port))
      assert.is_true(refused("127.0.0.2", port))
      p:wait_for("holds its share of connections (2)", { stream = "stderr" })
      -- the held connections still work; one freed makes room for that address again
      for _, c in ipairs(held) do
        assert.are.equal(200, (H.http{ conn = c, port = port, method = "GET", path = "/health" }))
      end
      held[1]:close()
      H.wait_until(function() return not refused("127.0.0.1", port) end, 5, "a freed share")
      for _, c in ipairs(other) do c:close() end
      held[2]:close()
      -- (from a fresh address: the server may not have seen those closes yet)
      assert_serving(p, port, connect_from("127.0.0.4", port))
    end)

    it("takes the share from --http-max-client-connections", function()
      local port = H.free_port()
      p = start(port, { "--http-max-client-connections", "3" })
      local held = hold("127.0.0.1", port, 3)
      assert.is_true(refused("127.0.0.1", port))
      assert_serving(p, port, connect_from("127.0.0.2", port))
      for _, c in ipairs(held) do c:close() end
      H.wait_until(function() return not refused("127.0.0.1", port) end, 5, "a freed share")
      assert_serving(p, port, connect_from("127.0.0.4", port))
    end)

    it("lets normal keep-alive clients through under the default limits", function()
      local port = H.free_port()
      p = start(port, {})
      local c = H.connect(port, 5)
      -- pauses between requests and inside a body, as a real client might make
      for i = 1, 3 do
        local m = marker()
        local body = ('{"marker":"%s","i":%d}'):format(m, i)
        c:send(("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
                "Content-Length: %d\r\n\r\n%s"):format(#body, body:sub(1, 5)))
        socket.sleep(0.3)
        c:send(body:sub(6))
        local status, headers = H.read_response(c)
        assert.are.equal(200, status)
        assert.are.equal("keep-alive", headers["connection"])
        p:wait_for(m, { stream = "stdout", timeout = 10 })
        socket.sleep(0.5)
      end
      -- pipelined requests on the same connection
      local marks, reqs = {}, {}
      for i = 1, 3 do
        marks[i] = marker()
        local body = ('{"marker":"%s"}'):format(marks[i])
        reqs[i] = ("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
                   "Content-Length: %d\r\n\r\n%s"):format(#body, body)
      end
      c:send(table.concat(reqs))
      for _ = 1, 3 do assert.are.equal(200, (H.read_response(c))) end
      for _, m in ipairs(marks) do p:wait_for(m, { stream = "stdout", timeout = 10 }) end
      assert_serving(p, port, c)
      c:close()
      assert.are.equal(0, p:count("request timeout", "stderr", true))
    end)
  end)
end)
