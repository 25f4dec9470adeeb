-- wrk script: POST the 152-byte event at a fixed rate (env RATE, events/s, default 10000),
-- for the latency at a given load (wrk's -R needs wrk2, not in Debian). delay() is called
-- before each request: requests follow one schedule of 1/RATE steps per wrk thread, so the
-- pace does not depend on the server's latency as long as connections are free (use more
-- connections than RATE x latency). Use one wrk thread, or divide RATE by the thread count.
local ffi = require "ffi"
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } herald_ts;
  int clock_gettime(int clk, herald_ts *ts);
]]
local ts = ffi.new("herald_ts")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local STEP_MS = 1000 / tonumber(os.getenv("RATE") or "10000")
local next_t

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"type":"order.created","id":"0f8fad5b-d9cb-469f-a165-70867728950e","customer":"c-104277-xy","amount":129.95,"currency":"EUR","items":3,"priority":true}'

function delay()
  local t = now_ms()
  next_t = (next_t or t) + STEP_MS
  local d = next_t - t
  return d > 0 and math.floor(d) or 0
end
