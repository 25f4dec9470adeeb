-- spec/sources/calendar/calendar_spec.lua: the calendar source through the real `herald` binary.
--
-- An EventSource with one calendar event, a Sensor with a log trigger printing one JSON line per
-- firing on stdout. Timing is asserted from the events themselves: each event's CloudEvent
-- `time` (when the source emitted it) against its `eventTime` (the tick it stands for). Cron
-- semantics (fields, zones, DST) are covered by spec/c/cron_test.c, so the schedules here fire
-- every second.
local H = require "helpers.herald"
local cjson = require "cjson"
local signal = require "posix.signal"

local ES, EV = "cal", "tick"

-- Writes the EventSource (`body` is the event's YAML, indented 6) and the Sensor; starts herald.
local function start(body)
  local dir = H.tmpdir()
  H.write(dir .. "/es.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: %s
spec:
  calendar:
    %s:
%s]]):format(ES, EV, body))
  H.write(dir .. "/sensor.yaml", H.sensor{ name = "s", deps = { { name = "d", es = ES, event = EV } } })
  return H.start{ "run", dir, "--log-level", "debug" }, dir
end

-- The same files, run to completion (start-up failures).
local function run(body)
  local dir = H.tmpdir()
  H.write(dir .. "/es.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: %s
spec:
  calendar:
    %s:
%s]]):format(ES, EV, body))
  H.write(dir .. "/sensor.yaml", H.sensor{ name = "s", deps = { { name = "d", es = ES, event = EV } } })
  return H.run{ "run", dir }
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- "2026-11-25T21:05:26.123456789Z" -> seconds since the epoch (float)
local function parse_rfc3339(s)
  local y, mo, d, h, mi, sec, frac = s:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.?(%d*)Z$")
  assert(y, "bad CloudEvent time " .. tostring(s))
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + h * 3600 + mi * 60 + sec
  if frac ~= "" then t = t + tonumber("0." .. frac) end
  return t
end

-- Go time.String() "2006-01-02 15:04:05.999999999 -0700 MST" -> seconds since the epoch, zone
local function parse_go_time(s)
  local y, mo, d, h, mi, sec, frac, sign, oh, om, abbr =
    s:match("^(%d+)-(%d+)-(%d+) (%d+):(%d+):(%d+)%.?(%d*) ([%+%-])(%d%d)(%d%d) (%S+)$")
  assert(y, "bad eventTime " .. tostring(s))
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + h * 3600 + mi * 60 + sec
  if frac ~= "" then t = t + tonumber("0." .. frac) end
  local off = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  return t - off, sign .. oh .. om .. " " .. abbr, frac
end

-- Waits for n firings and returns their events (CloudEvent tables with .data decoded).
local function events(p, n, timeout)
  H.wait_until(function()
    if p:exited() then error("herald exited\n" .. p:describe(), 0) end
    return p:count('"triggerName":"t"', "stdout") >= n
  end, timeout or (n + 5), function() return n .. " firings\n" .. p:describe() end)
  local out = {}
  for _, line in ipairs(p:lines("stdout")) do
    if line:find('"triggerName":"t"', 1, true) then
      out[#out + 1] = cjson.decode(line).events.d
    end
  end
  return out
end

describe("calendar source", function()
  it("ticks on an interval at absolute due times, without drift", function()
    local p = start('      interval: "1s"\n')
    local evs = events(p, 6)
    local first_due
    local lateness = {}
    for i, ev in ipairs(evs) do
      assert.are.equal("calendar", ev.type)
      assert.are.equal(ES, ev.source)
      assert.are.equal(EV, ev.subject)
      local due, zone, frac = parse_go_time(ev.data.eventTime)
      assert.are.equal("+0000 UTC", zone)
      -- Like Argo, ticks of a whole-second interval fall on whole seconds.
      assert.are.equal("", frac)
      first_due = first_due or due
      -- start + k * interval: consecutive, none skipped, none doubled.
      assert.are.equal(first_due + (i - 1), due)
      local late = parse_rfc3339(ev.time) - due
      lateness[i] = late
      assert.is_true(late >= 0 and late < 0.05,
        ("tick %d emitted %.4fs after its due time %s"):format(i, late, ev.data.eventTime))
    end
    -- No accumulation: the last tick is no later than the first beyond scheduling noise.
    assert.is_true(lateness[#lateness] - lateness[1] < 0.04,
      ("lateness grew from %.4f to %.4f"):format(lateness[1], lateness[#lateness]))
    p:wait_for("calendar started; first event at", { plain = true })
    assert.are.equal(0, p:stop())
  end)

  it("skips the ticks missed while the process could not run, instead of bursting", function()
    local p = start('      interval: "1s"\n')
    events(p, 1)
    -- Freeze the process for 3.5 s: the monotonic clock runs on, like a loop blocked by work.
    signal.kill(p.pid, signal.SIGSTOP)
    local frozen_until = H.now() + 3.5
    H.wait_until(function() return H.now() >= frozen_until end, 10, "the freeze")
    signal.kill(p.pid, signal.SIGCONT)
    p:wait_for("missed interval ticks", { timeout = 5 })
    local n = #events(p, 1)
    local evs = events(p, n + 2)
    -- One event for the whole gap (the latest due tick), then back on the 1 s grid.
    local seen, gap = {}, 0
    for i, ev in ipairs(evs) do
      local due = parse_go_time(ev.data.eventTime)
      assert.is_nil(seen[due], "tick emitted twice: " .. ev.data.eventTime)
      seen[due] = true
      if i > 1 then
        local prev = parse_go_time(evs[i - 1].data.eventTime)
        assert.is_true(due > prev)
        local late = parse_rfc3339(ev.time) - due
        if due - prev > 1 then
          -- The one event for the gap is the latest tick already due: less than an interval late.
          gap = gap + 1
          assert.is_true(late >= 0 and late < 1.05, ("gap event %.3fs late"):format(late))
        else
          assert.is_true(late >= 0 and late < 0.05, ("%.3fs late: %s"):format(late, ev.data.eventTime))
        end
      end
    end
    assert.are.equal(1, gap)
    assert.are.equal(0, p:stop())
  end)

  it("carries metadata and formats eventTime in the timezone", function()
    local p = start([[
      interval: "1s"
      timezone: "Asia/Kolkata"
      metadata:
        zeta: "last"
        alpha: "first"
]])
    local evs = events(p, 2)
    for _, ev in ipairs(evs) do
      assert.are.same({ alpha = "first", zeta = "last" }, ev.data.metadata)
      local due, zone = parse_go_time(ev.data.eventTime)
      assert.are.equal("+0530 IST", zone)
      local late = parse_rfc3339(ev.time) - due
      assert.is_true(late >= 0 and late < 0.05, "eventTime is the tick in IST: " .. ev.data.eventTime)
    end
    -- Keys in Go's json.Marshal order (sorted): alpha before zeta.
    local line = p:wait_for('"metadata":{"alpha":"first","zeta":"last"}', { stream = "stdout" })
    assert.truthy(line)
    assert.are.equal(0, p:stop())
  end)

  it("follows a schedule (the wall-clock path) with a zone", function()
    -- "@every" is a robfig descriptor Argo's calendar parser rejects; Herald accepts it, which
    -- lets this test use the schedule code path without waiting for a cron minute.
    local p = start('      schedule: "@every 1s"\n      timezone: "America/New_York"\n')
    local evs = events(p, 3)
    local prev
    for _, ev in ipairs(evs) do
      local due, zone, frac = parse_go_time(ev.data.eventTime)
      assert.truthy(zone == "-0500 EST" or zone == "-0400 EDT", zone)
      assert.are.equal("", frac)
      if prev then assert.are.equal(prev + 1, due) end
      prev = due
      local late = parse_rfc3339(ev.time) - due
      assert.is_true(late >= 0 and late < 0.05, ("%.4fs late"):format(late))
    end
    assert.are.equal(0, p:stop())
  end)

  it("schedule wins over interval", function()
    local p = start('      schedule: "@every 1s"\n      interval: "1h"\n')
    local evs = events(p, 2) -- an hourly interval could not give two events in 7 s
    local a, b = parse_go_time(evs[1].data.eventTime), parse_go_time(evs[2].data.eventTime)
    assert.are.equal(1, b - a)
    assert.are.equal(0, p:stop())
  end)

  it("skips ticks on excluded dates", function()
    -- Exclude today and tomorrow (UTC) so the test cannot straddle midnight.
    local now = os.time()
    local today = os.date("!%Y%m%d", now)
    local tomorrow = os.date("!%Y%m%d", now + 86400)
    local p = start(([[
      interval: "1s"
      exclusionDates:
        - "EXDATE:%sT000000Z,%sT120000Z"
        - "not an exdate, ignored as Argo does"
]]):format(today, tomorrow))
    H.wait_until(function()
      if p:exited() then error("herald exited\n" .. p:describe(), 0) end
      return p:count("skipped: excluded date") >= 2
    end, 8, function() return "excluded ticks\n" .. p:describe() end)
    assert.are.equal(0, p:count('"triggerName":"t"', "stdout"))
    assert.are.equal(1, p:count("exclusionDates[1] ignored"))
    assert.are.equal(0, p:stop())
  end)

  describe("fails at start with a clear message", function()
    local cases = {
      { '      interval: "1x"\n', 'es.yaml:8:17: spec.calendar.tick.interval: invalid interval: time: unknown unit "x" in duration "1x"' },
      { '      interval: "10"\n', 'time: missing unit in duration "10"' },
      { '      interval: "0s"\n', 'must be at least 1ms' },
      { '      interval: "1s"\n      timezone: "Mars/Olympus"\n', 'unknown time zone Mars/Olympus' },
      { '      schedule: "61 * * * *"\n', 'spec.calendar.tick.schedule: invalid schedule: minute field "61": end of range (61) above maximum (59): 61' },
      { '      schedule: "* * * *"\n', 'expected exactly 5 fields, found 4: [* * * *]' },
      { '      schedule: "0 0 30 2 *"\n', 'never fires' },
      { '      schedule: "CRON_TZ=Nowhere/Town 0 * * * *"\n', 'provided bad location Nowhere/Town' },
      { '      interval: "1s"\n      exclusionDates: ["EXDATE:2024-01-01"]\n', 'exclusionDates[0]: cannot parse' },
    }
    for _, c in ipairs(cases) do
      it(c[1]:gsub("%s+", " "), function()
        local code, _, err = run(c[1])
        assert.are_not.equal(0, code)
        err = err:gsub('\\"', '"') -- errors from start-up are JSON log lines
        assert.truthy(err:find(c[2], 1, true), "expected " .. c[2] .. " in:\n" .. err)
      end)
    end

    it("without schedule or interval", function()
      local code, _, err = run('      timezone: "UTC"\n')
      assert.are_not.equal(0, code)
      assert.truthy(err:find("schedule", 1, true) and err:find("interval", 1, true), err)
    end)
  end)
end)
