-- spec/helpers/sink_client.lua: runs spec/helpers/sink.lua as a peer process for specs.
--
--   local sink = require("helpers.sink_client").start{status = 200, delay_ms = 0, body = "ok"}
--   ... point an HTTP trigger at "http://127.0.0.1:" .. sink.port .. "/path" ...
--   local reqs = sink.wait_requests(3, 5)  -- {{method=, path=, headers=, body=}, ...}
--   sink.stop()
local H = require "helpers.herald"
local cjson = require "cjson"

local _M = {}

---@param opts table|nil {status=200, delay_ms=0, fail_first=0, fail_status=500, port=}
---@return table sink {port=, out=, proc=, requests=fn, wait_requests=fn, stop=fn}
function _M.start(opts)
  opts = opts or {}
  local dir = H.tmpdir()
  local out = dir .. "/requests.jsonl"
  H.write(out, "")
  local port = opts.port or H.free_port()
  local args = { H.source_dir .. "/spec/helpers/sink.lua", "--port", tostring(port), "--out", out,
    "--status", tostring(opts.status or 200), "--delay-ms", tostring(opts.delay_ms or 0) }
  if opts.fail_first then
    for _, a in ipairs{ "--fail-first", tostring(opts.fail_first), "--fail-status",
                        tostring(opts.fail_status or 500) } do
      args[#args + 1] = a
    end
  end
  if opts.body then
    H.write(dir .. "/body", opts.body)
    args[#args + 1], args[#args + 2] = "--body-file", dir .. "/body"
  end
  local proc = H.spawn("luajit", args)
  proc:wait_for("listening", { stream = "stdout" })

  local sink = { port = port, out = out, proc = proc }

  --- Every request received so far, decoded, in arrival order.
  function sink.requests()
    local t = {}
    for line in (H.read(out) or ""):gmatch("[^\n]+") do t[#t + 1] = cjson.decode(line) end
    return t
  end

  --- Waits until at least n requests arrived (timeout seconds, default 5); returns them all.
  function sink.wait_requests(n, timeout)
    return H.wait_until(function()
      local r = sink.requests()
      if #r >= n then return r end
    end, timeout or 5, function()
      return ("%d requests at the sink (have %d)"):format(n, #sink.requests())
    end)
  end

  function sink.stop()
    proc:kill()
  end

  return sink
end

return _M
