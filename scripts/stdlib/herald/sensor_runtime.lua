-- herald/sensor_runtime.lua: what happens to one event in one dependency of a compiled sensor,
-- independent of where events come from and where actions go. The engine drives it from the
-- bus and hands actions to trigger executors; `herald test` drives it from a file and prints
-- the actions instead.
--
--   on_event(dep, event[, trig]):  transform -> filter -> for each trigger listening to dep
--                          (or just trig):
--                          state[dep] = event (latest wins) -> condition? -> action -> fire
--                          -> the trigger's state is cleared
local _M = {}

local pcall, tostring = pcall, tostring

---@class herald.SensorHooks
---@field fire fun(trig: table, action: table, events: table)        an action to execute
---@field discard fun(dep: table, event: table, why: string, is_error: boolean)  filtered or failed
---@field pass? fun(dep: table, event: table)                      optional: the event passed dep
---@field action_error fun(trig: table, err: string, events: table)  the action could not be built
---@field store? fun(trig: table, dep_name: string, event: table)  optional: persist a held event
---@field clear? fun(trig: table, state: table)                  optional: forget the held events

--- Prepares a compiled sensor (herald/sensor.lua) for events: per-trigger state and, per
--- dependency, the triggers listening to it. Returns the runtime.
---@param sensor table
---@param hooks herald.SensorHooks
function _M.new(sensor, hooks)
  local listeners = {}
  for _, trig in ipairs(sensor.triggers) do
    trig.state = {}
    for _, d in ipairs(trig.dependencies) do
      listeners[d] = listeners[d] or {}
      listeners[d][#listeners[d] + 1] = trig
    end
  end
  local rt = { sensor = sensor, listeners = listeners }

  -- The event of dependency `dep_name` offered to one trigger listening to it.
  local function offer(trig, dep_name, event)
    local state = trig.state
    state[dep_name] = event
    if trig.condition(state) then
      trig.state = {}
      if hooks.clear then hooks.clear(trig, state) end
      local ok, action, err = pcall(trig.action, state)
      if not ok or not action then
        hooks.action_error(trig, tostring(ok and err or action), state)
      else
        hooks.fire(trig, action, state)
      end
    elseif hooks.store then
      hooks.store(trig, dep_name, event)
    end
  end

  --- Runs one event through dependency `dep` (an entry of sensor.dependencies), for every
  --- trigger listening to it, or only for `only` (a trigger with its own subscription).
  local pass_hook = hooks.pass -- optional: every event a dependency accepted (herald tap)
  function rt.on_event(dep, event, only)
    local transform, filter = dep.transform, dep.filter
    if transform then
      local ok, tev, terr = pcall(transform, event)
      if not ok or not tev then
        hooks.discard(dep, event, "transform failed: " .. tostring(ok and terr or tev), true)
        return
      end
      event = tev
    end
    if filter then
      local ok, pass, why, is_error = pcall(filter, event)
      if not ok then why, is_error, pass = pass, true, false end
      if not pass then
        hooks.discard(dep, event, tostring(why), is_error == true)
        return
      end
    end
    if pass_hook then pass_hook(dep, event) end
    if only then return offer(only, dep.name, event) end
    local ls = listeners[dep.name]
    if not ls then return end
    for i = 1, #ls do offer(ls[i], dep.name, event) end
  end

  --- Clears a trigger's dependency state (conditionsReset).
  function rt.reset(trig)
    local state = trig.state
    trig.state = {}
    if hooks.clear then hooks.clear(trig, state) end
  end

  --- Puts back events held before a restart: stored = {trigger_name = {dep_name = event}}.
  function rt.restore(stored)
    for _, trig in ipairs(sensor.triggers) do
      for dep_name, event in pairs(stored[trig.name] or {}) do trig.state[dep_name] = event end
    end
  end

  return rt
end

return _M
