-- wrk script: POST the body in $BODY_FILE with the headers in $HDRS ("K: V|K: V").
local f = assert(io.open(os.getenv("BODY_FILE")))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
for kv in (os.getenv("HDRS") or ""):gmatch("[^|]+") do
  local k, v = kv:match("^([^:]+):%s*(.*)$")
  if k then wrk.headers[k] = v end
end
