-- triggers/http/http.lua: the http trigger's Lua half (the C is http.c): its schema (Argo's
-- HTTPTrigger), the action the executor receives, how the compiled sensor builds it, and how
-- herald test and the REPL show it.
local _M = {}

_M.argo_order = 3   -- where Argo's TriggerTemplate declares it (lists of types follow Argo)
_M.payload = true   -- `payload` parameters build the request body

local HTTP_METHODS = { "GET", "DELETE", "PATCH", "POST", "PUT" }

function _M.schema(S)
  local str, int, use, array, params = S.str, S.int, S.use, S.array, S.params
  return S.object({
    url = str { required = true, doc = "URL to call" },
    payload = array(S.PayloadParameter, { doc = "builds the JSON body from events" }),
    tls = use(S.TLSConfig, { doc = "TLS client settings (CA, client certificate and key from secrets)" }),
    method = str { enum = HTTP_METHODS, default = "POST", doc = "HTTP method" },
    parameters = params { doc = "parameters applied to this http spec (e.g. dest url)" },
    timeout = int { min = 0, default = 60, doc = "request timeout in seconds" },
    basicAuth = use(S.BasicAuth, { doc = "basic authentication from secrets" }),
    headers = S.strmap { doc = "request headers" },
    secureHeaders = array(S.SecureHeader, { doc = "headers whose values come from secrets or ConfigMaps" }),
    dynamicHeaders = params { doc = "headers from the events: dest is the header name" },
    host = str { doc = "virtual host (the Host header)" },
    serverURL = S.retired("replaced by url", { moved_to = "url" }),
  }, { doc = "send an HTTP request" })
end

--- The action the executor (http.c) runs: the one place it is built, for the compiled sensor
--- and for the lua trigger's http actions. spec: {url, method, headers, timeout}; body: the
--- request body (a string) or nil; allow: policy.status.allow or nil.
function _M.action(spec, body, events, allow)
  return { url = spec.url, method = spec.method or "POST", headers = spec.headers, body = body,
           timeout = spec.timeout, spec = spec, events = events, allow = allow }
end

--- Compiles dynamicHeaders before the action (they change the spec: it is then copied).
function _M.prepare(c, t)
  t.dyn_headers = c:params(t.spec.dynamicHeaders, t.tpath .. ".template.http.dynamicHeaders")
  t.changes_spec = t.dyn_headers ~= nil
end

--- The end of the compiled action function: headers and body from the events, then the action.
function _M.compile(c, t)
  if t.dyn_headers then
    c:comment("    -- %s.template.http.dynamicHeaders: header values from the events", t.tpath)
    c:emit("    spec.headers = apply_params(spec.headers or {}, %s, events)", t.dyn_headers)
  end
  c:emit("    local body")
  if t.payload then
    c:comment("    -- %s.template.http.payload builds the request body", t.tpath)
    c:emit("    local err3")
    c:emit("    body, err3 = build_payload(%s, events)", t.payload)
    c:emit("    if not body then return nil, err3 end")
  end
  local action = c:const("HTTP_ACTION", 'require("herald.triggers.http").action')
  c:emit("    return %s(spec, body, events, %s), template", action, t.allow and c:lit(t.allow) or "nil")
end

--- What a firing would do, for herald test, --dry-run and the REPL.
function _M.describe(action, spec, D)
  local body = action.body
  if type(body) == "string" then
    local ok, v = pcall(D.decode, body)
    if ok then body = v end
  end
  return { type = "http", method = action.method or "POST", url = action.url,
    headers = action.headers or {}, body = body == nil and D.null or body }
end

return _M
