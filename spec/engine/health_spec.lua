-- /healthz, /readyz, process_* metrics, and the Grafana dashboard in docs/ reading only series
-- the engine exports (issue #17, "Metrics and health").
local H = require "helpers.herald"
local cjson = require "cjson"

local function get(port, path)
  local code, _, body = H.http { port = port, method = "GET", path = path }
  return code, body
end

describe("health and metrics", function()
  local p, port, dir
  setup(function()
    port = H.free_port()
    dir = H.tmpdir()
    H.write(dir .. "/es.yaml", H.webhook_es { port = port })
    H.write(dir .. "/s.yaml", H.sensor { deps = { { name = "d" } } })
    p = H.start { "run", dir }
    H.wait_port(port)
    -- one event end to end, so every family has a series
    assert.equal(200, (H.post_json(port, "/hook", '{"a":1}')))
    H.wait_firings(p, 1)
  end)
  teardown(function() if p then p:stop() end end)

  it("answer /healthz and /readyz", function()
    local code, body = get(p.metrics_port, "/healthz")
    assert.equal(200, code)
    assert.equal("ok\n", body)
    code, body = get(p.metrics_port, "/readyz")
    assert.equal(200, code, body)
    assert.same({ ready = true, notReady = {} }, cjson.decode(body))
  end)

  it("export process_* series", function()
    local m = H.metrics(p)
    assert.is_true(m.process_cpu_seconds_total > 0)
    assert.is_true(m.process_resident_memory_bytes > 1e6)
    assert.is_true(m.process_open_fds >= 3)
    assert.is_true(m.process_max_fds >= m.process_open_fds)
    local now = os.time()
    assert.is_true(math.abs(m.process_start_time_seconds - now) < 600, tostring(m.process_start_time_seconds))
  end)

  it("the dashboard in docs/ queries only series the engine exports", function()
    local text = H.read(H.source_dir .. "/docs/grafana-dashboard.json")
    local dash = cjson.decode(text)
    local _, metrics_text = get(p.metrics_port, "/metrics")
    local names = {}
    for name in metrics_text:gmatch("\n?([%a_][%w_]*)[{ ]") do names[name] = true end
    local used = 0
    for _, panel in ipairs(dash.panels) do
      for _, t in ipairs(panel.targets) do
        for name in t.expr:gmatch("[%a_][%w_]*") do
          if name:match("^argo_events_") or name:match("^herald_") or name:match("^process_") then
            used = used + 1
            assert.is_true(names[name] == true, name .. " (panel " .. panel.title .. ") is not exported")
          end
        end
      end
    end
    assert.is_true(used >= 15, used .. " series used")
  end)
end)

describe("readiness", function()
  it("is 503 while the engine is stopping", function()
    local port = H.free_port()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", H.webhook_es { port = port })
    -- a trigger that never answers keeps the drain waiting
    local hold = H.free_port()
    local srv = assert(require("socket").bind("127.0.0.1", hold))
    H.write(dir .. "/s.yaml", H.sensor { deps = { { name = "d" } }, triggers = { { name = "t",
      body = ("        http:\n          url: http://127.0.0.1:%d/\n          timeout: 30\n"):format(hold) } } })
    local p = H.start { "run", dir, "--drain-timeout", "5000" }
    H.wait_port(port)
    assert.equal(200, (H.post_json(port, "/hook", '{"a":1}')))
    local c = srv:accept() -- the action is in flight
    require("posix.signal").kill(p.pid, require("posix.signal").SIGTERM)
    H.wait_until(function()
      local code = get(p.metrics_port, "/readyz")
      return code == 503
    end, 5, function() return p:describe() end)
    local _, body = get(p.metrics_port, "/readyz")
    assert.matches("engine: stopping", body)
    c:close()
    srv:close()
    p:kill()
  end)
end)
