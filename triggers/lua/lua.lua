-- triggers/lua/lua.lua: Herald's lua trigger (an extension, not in Argo): a sandboxed Lua script
-- receives the events and returns the action, which runs on the http or log trigger's executor
-- under this trigger's name. It has no C of its own (plugin.cmake: PLUGIN_EXECUTOR FALSE).
local _M = {}

_M.copies_spec = true -- the action function copies the spec (the script may not change it)

--- The executors its actions run on, and the configuration each is created with: the action's
--- `dispatch` picks one ("none" runs nothing).
_M.dispatch = { http = { url = "lua:" }, log = {} }
_M.dispatch_order = { "http", "log" }

function _M.schema(S)
  return S.object({
    script = S.str { required = true, doc = "Lua; `events` = {dependency = {context, data}}; returns {type = \"http\"|\"log\"|\"none\", ...}" },
  }, { doc = "Herald extension: a Lua script decides the action" })
end

function _M.compile(c, t)
  local where = t.tpath .. ".template.lua.script"
  local script = t.spec.script
  local id, err = require("herald.rt").script(c.name, script, "=" .. where)
  if not id then c:fail(where, t.spec, "script", "script does not compile: " .. tostring(err)) end
  local sid = c:const("SCRIPT", ("assert(rt.script(%s, %s, %s))"):format(c:lit(c.name), c:lit(script), c:lit("=" .. where)))
  c:comment("    -- %s: sandboxed Lua; `events` holds each dependency's event; it returns the action", where)
  c:emit("    local dispatch, action = lua_trigger(%s, %s, events)", c:lit(c.name), sid)
  c:emit("    if not dispatch then return nil, action end")
  c:emit("    return { dispatch = dispatch, action = action, events = events }, template")
end

--- The script's action, shown as the type it dispatched to would show it.
function _M.describe(action, spec, D)
  if action.dispatch == "none" then return { type = "none" } end
  local inner = D.describe({ type = action.dispatch }, action.action)
  if action.dispatch == "log" and action.action.message then inner.message = action.action.message end
  return inner
end

return _M
