-- The Lua sandbox, end to end: hostile script filters fail alone, with a clear error, and the
-- engine keeps processing the next event.
local H = require "helpers.herald"
local cjson = require "cjson"

local post = H.post_json

local function yaml_block(script)
  return "|\n" .. ("          " .. script:gsub("\n", "\n          "))
end

-- name -> { script, expected error text }
local HOSTILE = {
  { "osexec", 'os.execute("touch /tmp/herald-pwned") return true', "os.execute is not available in Herald's Lua sandbox" },
  { "ioopen", 'local f = io.open("/etc/passwd") return f ~= nil', "io is not available in Herald's Lua sandbox" },
  { "ffi", 'local ffi = require "ffi" return true', "require is not available in Herald's Lua sandbox" },
  { "bytecode", 'local f = loadstring(string.dump(function() return true end)) return f()', "loadstring is not available in Herald's Lua sandbox" },
  { "dump", 'return string.dump(print) ~= nil', "string.dump is not available in Herald's Lua sandbox" },
  { "loop", "while true do end", "script exceeded its CPU budget" },
  { "pcallloop", "while true do pcall(function() while true do end end) end", "script exceeded its CPU budget" },
  { "memory", 'local s = "x" while true do s = s .. s end', "not enough memory" },
  { "globals", 'string.upper = nil return true', "cannot modify string.upper" },
  { "metatable", 'local mt = getmetatable("") mt.__index = nil return true', "getmetatable is not available in Herald's Lua sandbox" },
}

describe("sandboxed script filters", function()
  local dir, port, p
  setup(function()
    dir = H.tmpdir()
    port = H.free_port()
    local events = { { name = "good", endpoint = "/good", port = port } }
    local deps = { { name = "good", event = "good", filters = "      filters:\n        script: " ..
      yaml_block('return event.body.ok == true') .. "\n" } }
    local triggers = { { name = "t-good", conditions = "good" } }
    for _, h in ipairs(HOSTILE) do
      events[#events + 1] = { name = h[1], endpoint = "/" .. h[1], port = port }
      deps[#deps + 1] = { name = h[1], event = h[1], filters = "      filters:\n        script: " .. yaml_block(h[2]) .. "\n" }
      triggers[#triggers + 1] = { name = "t-" .. h[1], conditions = h[1] }
    end
    H.write(dir .. "/es.yaml", H.webhook_es{ events = events })
    H.write(dir .. "/s.yaml", H.sensor{ deps = deps, triggers = triggers })
    os.remove("/tmp/herald-pwned")
    p = H.start{ "run", dir }
    p:wait_for("herald started")
  end)
  teardown(function() p:kill() end)

  for i, h in ipairs(HOSTILE) do
    it(("stops %s with a clear error and keeps serving"):format(h[1]), function()
      local before = p:count(h[3], "stderr")
      local t0 = H.now()
      assert.equal(200, (post(port, "/" .. h[1], '{"ok":true}')))
      p:wait_for(h[3], { after = 0, timeout = 10 })
      H.wait_until(function() return p:count(h[3], "stderr") > before end, 10, h[3])
      assert.is_true(H.now() - t0 < 5, "stopped within the budget")
      -- the next event is processed normally
      assert.equal(200, (post(port, "/good", ('{"ok":true,"after":%d}'):format(i))))
      H.wait_until(function()
        for _, line in ipairs(p:lines("stdout")) do
          local ok, v = pcall(cjson.decode, line)
          if ok and v.triggerName == "t-good" and v.events.good.data.body.after == i then return true end
        end
      end, 5, "the good event after " .. h[1])
      -- the hostile dependency never fired its trigger
      assert.equal(0, p:count('"triggerName":"t-' .. h[1] .. '"', "stdout"))
    end)
  end

  it("never ran a command", function()
    assert.is_nil(io.open("/tmp/herald-pwned"))
  end)

  it("reports a script that does not compile, and bytecode as a script, before starting", function()
    local d = H.tmpdir()
    local port2 = H.free_port()
    H.write(d .. "/es.yaml", H.webhook_es{ port = port2 })
    H.write(d .. "/s.yaml", H.sensor{ deps = { { name = "d", filters = "      filters:\n        script: \"return (\"\n" } } })
    local code, _, err = H.run{ "run", d }
    assert.equal(1, code)
    assert.matches("s%.yaml:%d+:%d+: spec%.dependencies%[0%]%.filters%.script: script does not compile", err)
    H.write(d .. "/s.yaml", H.sensor{ deps = { { name = "d", filters = "      filters:\n        script: \"\\eLJ\\x02\"\n" } } })
    code, _, err = H.run{ "run", d }
    assert.equal(1, code)
    assert.matches("script does not compile: bytecode is not accepted", err)
  end)
end)

-- On the embedded bus every dependency on one event shares a delivery (engine.lua's
-- subscriber): a hostile sensor among them must still fail alone.
describe("sensors sharing one event", function()
  it("a hostile one fails alone; the sensors before and after it fire for every event", function()
    local dir, port = H.tmpdir(), H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port, endpoint = "/shared" })
    local docs = {}
    for _, s in ipairs{ { "a", "return true" }, { "b", "while true do end" }, { "c", "return event.body.n > 0" } } do
      docs[#docs + 1] = H.sensor{ name = s[1], deps = { { name = "d", filters = "      filters:\n        script: " .. yaml_block(s[2]) .. "\n" } },
        triggers = { { name = "t-" .. s[1] } } }
    end
    H.write(dir .. "/s.yaml", table.concat(docs, "---\n"))
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    for n = 1, 3 do assert.equal(200, (post(port, "/shared", ('{"n":%d}'):format(n)))) end
    local f = H.wait_firings(p, 6, 20)
    local seen = {}
    for _, x in ipairs(f) do
      seen[x.triggerName] = (seen[x.triggerName] or 0) + 1
    end
    assert.same({ ["t-a"] = 3, ["t-c"] = 3 }, seen)
    H.wait_until(function() return p:count("script exceeded its CPU budget", "stderr") >= 3 end, 10, "three budget errors")
    local m = H.metrics(p)
    assert.equal(3, m['herald_events_filtered_total{sensor_name="b",dependency_name="d"}'])
    assert.equal(0, m['herald_events_filtered_total{sensor_name="a",dependency_name="d"}'])
    assert.equal(0, m['herald_events_filtered_total{sensor_name="c",dependency_name="d"}'])
    p:kill()
  end)
end)
