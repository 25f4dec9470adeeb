-- The drain at SIGTERM when the drain timeout runs out with triggers still busy (a sink slower
-- than the input): no crash, an exit code that says something was left (3), and nothing lost
-- silently: every event the webhook answered 200 for reached the sink, the dlqTrigger's sink,
-- or the spill file, and the next start replays the spill file.
local H = require "helpers.herald"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"

local N = 300 -- events posted as fast as one keep-alive connection goes (~1,000/s and more)

local function write_specs(dir, port, sink_port, extra)
  H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
  H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = { { name = "call", body = ([[
        http:
          url: http://127.0.0.1:%d/x
          payload:
            - src: {dependencyName: d, dataKey: body.n}
              dest: n
]]):format(sink_port), extra = extra } } })
end

-- Posts events 1..n on one keep-alive connection; returns the set of n answered 200.
local function post_all(port, n)
  local c = H.connect(port)
  local ok = {}
  for i = 1, n do
    local status = H.http{ conn = c, port = port, path = "/hook", body = ('{"n":%d}'):format(i),
      headers = { ["Content-Type"] = "application/json" } }
    if status == 200 then ok[i] = true end
  end
  c:close()
  return ok
end

-- The n of each request a sink got (a set, and the number of requests).
local function sink_ns(sink)
  local set, count = {}, 0
  for _, r in ipairs(sink.requests()) do
    local b = cjson.decode(r.body)
    local n = b.n or (b.d and b.d.data and b.d.data.body and b.d.data.body.n)
    if n then set[tonumber(n)] = true end
    count = count + 1
  end
  return set, count
end

-- The n of each event in the spill file.
local function spill_ns(path)
  local set, count = {}, 0
  for line in (H.read(path) or ""):gmatch("[^\n]+") do
    local ev = cjson.decode(line)
    set[ev.data.body.n] = true
    count = count + 1
  end
  return set, count
end

local function size(set)
  local n = 0
  for _ in pairs(set) do n = n + 1 end
  return n
end

describe("drain at the timeout", function()
  for _, mode in ipairs{ { name = "at most once", extra = nil }, { name = "atLeastOnce", extra = "      atLeastOnce: true\n" } } do
    it(("(%s) spills what is left, exits 3, and the next start replays it"):format(mode.name), function()
      local slow = sink_client.start{ delay_ms = 300 }
      local dir, state = H.tmpdir(), H.tmpdir()
      local port = H.free_port()
      write_specs(dir, port, slow.port, mode.extra)
      local args = { "run", dir, "--drain-timeout", "400", "--state-dir", state }
      local p = H.start(args)
      p:wait_for("herald started")
      local ok = post_all(port, N)
      assert.is_true(size(ok) >= N * 0.9, "answered 200: " .. size(ok))
      local code = p:stop()
      assert.equal(3, code, p:describe()) -- 3: drained with events left, not a signal
      local at_sink = sink_ns(slow)
      local spilled, nspilled = spill_ns(state .. "/spill.jsonl")
      assert.is_true(nspilled > 0, "nothing spilled\n" .. p:describe())
      for n in pairs(ok) do
        assert.is_true(at_sink[n] or spilled[n], ("event %d answered 200 is neither at the sink nor spilled"):format(n))
      end
      assert.truthy(p:output("stderr"):find("written to " .. state .. "/spill.jsonl", 1, true))
      slow.stop()

      -- restart against a fast sink: the spilled events are delivered, and the file goes
      local fast = sink_client.start{}
      write_specs(dir, port, fast.port, mode.extra)
      local p2 = H.start(args)
      H.wait_until(function() return size(sink_ns(fast)) >= size(spilled) end, 10,
        function() return ("%d of %d spilled events replayed\n%s"):format(size(sink_ns(fast)), size(spilled), p2:describe()) end)
      local replayed = sink_ns(fast)
      for n in pairs(spilled) do assert.is_true(replayed[n], ("spilled event %d not replayed"):format(n)) end
      H.wait_until(function() return not H.read(state .. "/spill.jsonl") end, 5, "the spill file to go")
      assert.truthy(p2:output("stderr"):find(("%d event(s) replayed"):format(nspilled), 1, true), p2:describe())
      assert.equal(0, p2:stop())
      fast.stop()
    end)
  end

  it("hands the actions in flight to the dlqTrigger, spills the rest, and exits 3", function()
    local slow = sink_client.start{ delay_ms = 300 }
    local dlq = sink_client.start{}
    local dir, state = H.tmpdir(), H.tmpdir()
    local port = H.free_port()
    write_specs(dir, port, slow.port, ([[
      atLeastOnce: true
      dlqTrigger:
        template:
          name: dead
          http:
            url: http://127.0.0.1:%d/dlq
            payload:
              - src: {dependencyName: d, dataKey: body.n}
                dest: n
]]):format(dlq.port))
    local p = H.start{ "run", dir, "--drain-timeout", "500", "--state-dir", state }
    p:wait_for("herald started")
    local ok = post_all(port, N)
    local code = p:stop()
    assert.equal(3, code, p:describe())
    local at_sink = sink_ns(slow)
    local at_dlq, ndlq = sink_ns(dlq)
    local spilled, nspilled = spill_ns(state .. "/spill.jsonl")
    assert.is_true(ndlq > 0, "nothing dead-lettered\n" .. p:describe())
    for n in pairs(ok) do
      assert.is_true(at_sink[n] or at_dlq[n] or spilled[n],
        ("event %d answered 200 is not at the sink, the DLQ sink or the spill file"):format(n))
    end
    -- each action dead-lettered reached the DLQ sink, or was itself cut short by the deadline
    -- and spilled (both, when the sink had it but had not answered yet)
    local m = tonumber(p:output("stderr"):match("(%d+) action%(s%) dead%-lettered"))
    assert.is_true(m > 0 and m <= ndlq + nspilled, p:describe())
    slow.stop()
    dlq.stop()
  end)

  it("waits for the sources to stop and exits 0 when everything was delivered", function()
    local sink = sink_client.start{}
    local dir, state = H.tmpdir(), H.tmpdir()
    local port = H.free_port()
    write_specs(dir, port, sink.port)
    local p = H.start{ "run", dir, "--state-dir", state }
    p:wait_for("herald started")
    local ok = post_all(port, 50)
    assert.equal(0, p:stop())
    assert.equal(size(ok), size(sink_ns(sink)))
    assert.is_nil(H.read(state .. "/spill.jsonl"))
    sink.stop()
  end)
end)
