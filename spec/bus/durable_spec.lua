-- The durable embedded bus (`herald run --bus-dir DIR`): an event the webhook answered 200 for
-- survives `kill -9` of herald and is delivered after the restart (at least once, as on
-- JetStream). A client posts steadily from its own process, counting 200s; herald is killed
-- 20 times mid-stream and restarted on the same DIR; an HTTP sink counts what arrives.
local H = require "helpers.herald"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"

-- A client posting {"n": 1, 2, ...} on a keep-alive connection, about 300 a second, appending
-- each n answered 200 to OUT; it reconnects when herald goes away (a request cut short is not
-- counted: its sender cannot know whether it was taken).
local CLIENT = [[
local socket = require "socket"
local port, out = tonumber(arg[1]), arg[2]
local f = assert(io.open(out, "a"))
f:setvbuf("line")
local n, c = 0, nil
while true do
  if not c then
    c = socket.tcp()
    c:settimeout(2)
    if not c:connect("127.0.0.1", port) then
      c:close()
      c = nil
      socket.sleep(0.01)
    end
  end
  if c then
    n = n + 1
    local body = '{"n":' .. n .. '}'
    local ok = c:send(("POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"):format(#body, body))
    local status = ok and c:receive("*l")
    local len = 0
    while status do
      local h = c:receive("*l")
      if not h or h == "" then break end
      len = tonumber(h:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")) or len
    end
    if status and status:match("^HTTP/1%.1 200 ") then f:write(n, "\n") end
    if not (status and status:match("^HTTP/1%.1 200 ")) or (len > 0 and not c:receive(len)) then
      c:close()
      c = nil
    end
    socket.sleep(0.002)
  end
end
]]

local function write_specs(dir, port, sink_port)
  H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
  H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = { { name = "call", body = ([[
        http:
          url: http://127.0.0.1:%d/x
          payload:
            - src: {dependencyName: d, dataKey: body.n}
              dest: n
]]):format(sink_port), extra = "      atLeastOnce: true\n" } } })
end

local function lines(path)
  local t = {}
  for l in (H.read(path) or ""):gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

describe("durable embedded bus (--bus-dir)", function()
  it("delivers every event answered 200 across 20 kill -9s mid-stream", function()
    local sink = sink_client.start{}
    local dir, busdir, tmp = H.tmpdir(), H.tmpdir(), H.tmpdir()
    local port = H.free_port()
    write_specs(dir, port, sink.port)
    local args = { "run", dir, "--bus-dir", busdir .. "/bus" }
    local p = H.start(args)
    p:wait_for("herald started")
    H.write(tmp .. "/client.lua", CLIENT)
    local acked = tmp .. "/acked"
    local client = H.spawn("luajit", { tmp .. "/client.lua", tostring(port), acked })
    local kills = 0
    for _ = 1, 20 do
      local before = #lines(acked)
      H.wait_until(function() return #lines(acked) >= before + 20 end, 10,
        function() return "the client's 200s to grow\n" .. p:describe() end)
      p:kill() -- SIGKILL: no drain, no last commit
      kills = kills + 1
      p = H.start(args)
      p:wait_for("herald started", { timeout = 10 })
    end
    local before = #lines(acked) -- and the last start takes events too
    H.wait_until(function() return #lines(acked) >= before + 20 end, 10, "200s after the last restart")
    client:stop()
    local ok = {}
    for _, l in ipairs(lines(acked)) do ok[tonumber(l)] = true end
    local nok = 0
    for _ in pairs(ok) do nok = nok + 1 end
    local got, requests
    H.wait_until(function()
      got, requests = {}, 0
      for _, r in ipairs(sink.requests()) do
        got[tonumber(cjson.decode(r.body).n)] = true
        requests = requests + 1
      end
      for n in pairs(ok) do if not got[n] then return false end end
      return true
    end, 20, function()
      local missing = {}
      for n in pairs(ok) do if not got[n] then missing[#missing + 1] = n end end
      table.sort(missing)
      return ("%d of %d events answered 200 never reached the sink (first: %s)\n%s"):format(
        #missing, nok, tostring(missing[1]), p:describe())
    end)
    local unique = 0
    for _ in pairs(got) do unique = unique + 1 end
    print(("  %d kill -9s: %d events answered 200, %d requests at the sink, %d unique, %d duplicates"):format(
      kills, nok, requests, unique, requests - unique))
    assert.equal(20, kills)
    assert.is_true(nok >= 20 * 20)
    assert.equal(0, p:stop())
    sink.stop()
  end)

  it("keeps what a timed-out drain leaves on the bus, exits 3, and delivers it after the restart", function()
    local slow = sink_client.start{ delay_ms = 300 }
    local dir, busdir = H.tmpdir(), H.tmpdir()
    local port = H.free_port()
    write_specs(dir, port, slow.port)
    local args = { "run", dir, "--bus-dir", busdir, "--drain-timeout", "300" }
    local p = H.start(args)
    p:wait_for("herald started")
    local c = H.connect(port)
    local ok = {}
    for i = 1, 200 do
      local status = H.http{ conn = c, port = port, path = "/hook", body = ('{"n":%d}'):format(i),
        headers = { ["Content-Type"] = "application/json" } }
      if status == 200 then ok[#ok + 1] = i end
    end
    c:close()
    assert.equal(3, p:stop(), p:describe())
    local kept = tonumber(p:output("stderr"):match("(%d+) event%(s%) stay on the embedded bus"))
    assert.is_true(kept and kept > 0, p:describe())
    assert.is_nil(H.read(busdir .. "/spill.jsonl")) -- atLeastOnce: nothing needed spilling
    slow.stop()
    local fast = sink_client.start{}
    write_specs(dir, port, fast.port)
    local p2 = H.start(args)
    local got = {}
    H.wait_until(function()
      for _, r in ipairs(fast.requests()) do got[tonumber(cjson.decode(r.body).n)] = true end
      local n = 0
      for _ in pairs(got) do n = n + 1 end
      return n >= kept
    end, 10, function() return "the kept events at the sink\n" .. p2:describe() end)
    local at_slow = {}
    for _, r in ipairs(slow.requests()) do at_slow[tonumber(cjson.decode(r.body).n)] = true end
    for _, n in ipairs(ok) do
      assert.is_true(at_slow[n] or got[n], ("event %d answered 200 was lost"):format(n))
    end
    assert.equal(0, p2:stop())
    fast.stop()
  end)

  it("refuses a bus directory another herald is using", function()
    local dir, busdir = H.tmpdir(), H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    local p = H.start{ "run", dir, "--bus-dir", busdir }
    p:wait_for("herald started")
    local dir2 = H.tmpdir()
    H.write(dir2 .. "/es.yaml", H.webhook_es{ port = H.free_port() })
    local code, _, err = H.run{ "run", dir2, "--bus-dir", busdir }
    assert.equal(1, code)
    assert.truthy(err:find("in use by another herald process", 1, true), err)
    assert.equal(0, p:stop())
  end)
end)
