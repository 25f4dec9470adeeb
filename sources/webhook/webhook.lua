-- sources/webhook/webhook.lua: the webhook event source's Lua half (the C is webhook.c): its
-- schema (Argo's WebhookEventSource) and the loader's completion of a missing port.
local _M = {}

local fmt = string.format

_M.what = "webhook event source"
-- Argo runs webhook-style sources on every replica (active-active); the others on one leader.
_M.active_active = true

--- Argo's WebhookEventSource: the shared webhook context plus the source-side filter.
function _M.schema(S)
  local f = S.webhook_context_fields()
  f.filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" }
  return S.object(f, { doc = "an HTTP endpoint that turns each request into an event" })
end

--- A webhook event with no `port` listens where the EventSource's Service sends its traffic:
--- the targetPort (else port) of spec.service.ports when it holds exactly one. Argo Events
--- requires `port`; manifests written for it (and courses) often leave it to the Service.
function _M.lint(ctx, spec, L)
  local what_is, keys_in_order, has_key, err_table, list = L.what_is, L.keys_in_order, L.has_key, L.err_table, L.list
  local m = spec.webhook
  if type(m) ~= "table" or what_is(m, ctx.pos) ~= "mapping" then return end
  local svc = type(spec.service) == "table" and spec.service or nil
  local ports = svc and type(svc.ports) == "table" and svc.ports or {}
  for _, ev in ipairs(keys_in_order(ctx.pos, m)) do
    local e = m[ev]
    if type(e) == "table" and what_is(e, ctx.pos) == "mapping" and not has_key(ctx.pos, e, "port") then
      local path = "spec.webhook." .. L.show(ev) .. ".port"
      local function where(i, key)
        local line, col = L.value_position(ctx.pos, ports[i], key)
        return fmt("%s:%d:%d", ctx.file, line or 1, col or 1)
      end
      local function port_of(i)
        local sp = ports[i]
        if type(sp) ~= "table" then return nil end
        local key = sp.targetPort ~= nil and "targetPort" or "port"
        local n = tonumber(sp[key])
        return n, key
      end
      if #ports == 1 then
        local n, key = port_of(1)
        if n and n == math.floor(n) and n >= 1 and n <= 65535 then
          e.port = fmt("%d", n)
          local p = ctx.pos[e]
          local sl, sc = L.value_position(ctx.pos, ports[1], key)
          if p and p.keys then p.keys.port = { line = sl, col = sc, vline = sl, vcol = sc } end
          ctx.notes[#ctx.notes + 1] = L.format_error(ctx.file, sl, sc, path,
            fmt("port %s taken from spec.service.ports[0].%s", e.port, key))
        else
          err_table(ctx, e, path, fmt("required: spec.service.ports[0].%s (%s) is not a port number Herald can listen on; add port: \"12000\" (the port this endpoint listens on) under spec.webhook.%s",
            key or "port", where(1, key or "port"), L.show(ev)))
        end
      elseif #ports == 0 then
        err_table(ctx, e, path, fmt("required: add port: \"12000\" (the port this endpoint listens on) under spec.webhook.%s; without it Herald takes the port from spec.service.ports, which holds none here",
          L.show(ev)))
      else
        local list_ = {}
        for i = 1, #ports do
          local n, key = port_of(i)
          list_[#list_ + 1] = fmt("%s at %s", n and fmt("%d", n) or "?", where(i, key or "port"))
        end
        local first = port_of(1)
        err_table(ctx, e, path, fmt("required: spec.service.ports holds %d ports (%s), so Herald cannot tell which this endpoint listens on; add port: \"%s\" under spec.webhook.%s",
          #ports, list(list_), first and fmt("%d", first) or "12000", L.show(ev)))
      end
    end
  end
end

return _M
