-- Logs people can use (issue #17, item 3): each firing at info with its outcome, every discard
-- at debug and every error at warn with the same queryable fields, --log-format text.
local H = require "helpers.herald"
local cjson = require "cjson"

local function records(text)
  local out = {}
  for l in text:gmatch("[^\n]+") do
    local ok, r = pcall(cjson.decode, l)
    if ok then out[#out + 1] = r end
  end
  return out
end

local function spec_dir(port)
  local dir = H.tmpdir()
  H.write(dir .. "/es.yaml", H.webhook_es { port = port })
  H.write(dir .. "/s.yaml", H.sensor {
    deps = {
      { name = "big", filters = "      filters:\n        data:\n          - {path: body.n, type: number, comparator: \">\", value: [\"10\"]}\n" },
      { name = "scripted", filters = "      filters:\n        script: |\n          if event.body.boom then error('boom') end\n          return true\n" },
    },
    triggers = { { name = "t", conditions = "big" }, { name = "u", conditions = "scripted" } },
  })
  return dir
end

describe("logs", function()
  it("log each firing at info, each discard at debug and each error at warn, with fields", function()
    local port = H.free_port()
    local p = H.start { "run", spec_dir(port), "--log-level", "debug" }
    H.wait_port(port)
    assert.equal(200, (H.post_json(port, "/hook", cjson.encode { n = 50 })))
    assert.equal(200, (H.post_json(port, "/hook", cjson.encode { n = 1 })))
    assert.equal(200, (H.post_json(port, "/hook", cjson.encode { n = 1, boom = true })))
    local fired, discarded, failed
    H.wait_until(function()
      for _, r in ipairs(records(p:output("stderr"))) do
        if r.msg == "Successfully processed trigger 't'" then fired = r end
        if r.msg and r.msg:match("^event discarded") and r.dependencyName == "big" then discarded = r end
        if r.msg and r.msg:match("^event not processed") then failed = r end
      end
      return fired and discarded and failed
    end, 5, function() return p:describe() end)
    assert.equal("info", fired.level)
    assert.equal("s", fired.sensorName)
    assert.equal("t", fired.triggerName)
    assert.equal(1, fired.attempts)
    assert.is_number(fired.durationMs)
    assert.equal("debug", discarded.level)
    assert.equal("s", discarded.sensorName)
    assert.is_string(discarded.eventID)
    assert.equal("es", discarded.eventSourceName)
    assert.equal("ev", discarded.eventName)
    assert.matches("body.n: got 1, want > 10", discarded.msg, 1, true)
    assert.equal("warn", failed.level)
    assert.equal("scripted", failed.dependencyName)
    assert.matches("boom", failed.msg)
    p:stop()
  end)

  it("write text lines with --log-format text", function()
    local port = H.free_port()
    local p = H.start { "run", spec_dir(port), "--log-format", "text" }
    H.wait_port(port)
    assert.equal(200, (H.post_json(port, "/hook", cjson.encode { n = 50 })))
    H.wait_until(function()
      return p:output("stderr"):match("INFO  sensor:s/trigger:t: Successfully processed trigger 't' sensorName=s triggerName=t attempts=1 durationMs=")
    end, 5, function() return p:describe() end)
    assert.is_nil(p:output("stderr"):match("^{"))
    p:stop()
    local code, _, err = H.run { "lint", "x", "--log-format", "xml" }
    assert.equal(2, code)
    assert.matches("%-%-log%-format: expected json or text", err)
  end)
end)
