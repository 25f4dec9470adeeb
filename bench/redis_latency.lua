-- bench/redis_latency.lua: reads the log trigger's lines (stdin) of bench/run-source-redis.sh
-- and prints the count and the latency percentiles from each message's send time (its t
-- field) to the trigger's log line (its ts, UTC). Lines from a prefill (t = 0) count only.
local function epoch(ts) -- 2026-12-03T20:50:25.033633835Z
  local y, mo, d, h, mi, s = ts:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):([%d.]+)Z$")
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo <= 2 then y, mo = y - 1, mo + 12 end
  local days = 365 * y + math.floor(y / 4) - math.floor(y / 100) + math.floor(y / 400) + math.floor((153 * (mo - 3) + 2) / 5) + d - 719469
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
end
local lat, n, first, last = {}, 0, nil, nil
for line in io.lines() do
  local ts = line:match('^{"ts":"([^"]+)"')
  if ts and line:find('"msg":"triggered"', 1, true) then
    n = n + 1
    local e = epoch(ts)
    first = first or e
    last = e
    local t = tonumber(line:match('\\?"t\\?":\\?"?([%d.]+)'))
    if t and t > 0 then lat[#lat + 1] = (e - t) * 1000 end
  end
end
table.sort(lat)
local function pct(p) return #lat > 0 and lat[math.max(1, math.ceil(#lat * p))] or 0 end
io.write(string.format("triggered=%d span_s=%.3f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n", n,
  first and (last - first) or 0, pct(0.5), pct(0.99), pct(1)))
