-- herald/engine.lua: turns validated objects into running parts.
--
--   EventSource -> one source instance per (type, event name): core.source_new
--   Sensor      -> compiled (herald/sensor.lua); one trigger instance per trigger
--                  (core.trigger_new); bus subscriptions (core.subscribe, see `subscriber`)
--                  handing events to herald/sensor_runtime.lua, whose actions go to the
--                  trigger executors (core.fire).
local core = require "herald.core"
local compiler = require "herald.sensor"
local runtime = require "herald.sensor_runtime"
local ffi = require "ffi"
-- the source and trigger types of this build (sources/<type>/, triggers/<type>/); the schema
-- rejects the others before we get here
local registry = require "herald.registry"

local _M = {}

--- herald run --dry-run: every firing prints the action it would take (as herald test renders
--- it) on stdout instead of handing it to an executor; no trigger executor is created.
_M.dry_run = false

--- Triggers that need a Kubernetes cluster when none is configured, filled by build:
--- {sensor=, trigger=, type=, why=}. herald run says so once at start (see _M.cluster_notice).
_M.no_cluster = {}

local cluster_checked, cluster_err

--- Whether a k8s / argoWorkflow trigger can have a cluster: nil, or why not (checked once).
local function cluster_missing()
  if not cluster_checked then
    cluster_checked = true
    local ok, kube = pcall(require, "herald.kube")
    if ok then
      local cfg, err = kube.load_config()
      if not cfg then cluster_err = tostring(err) end
    end
  end
  return cluster_err
end

--- The one line herald run prints at start when triggers need a cluster it cannot reach, or nil.
function _M.cluster_notice()
  local list = _M.no_cluster
  if #list == 0 then return nil end
  local names = {}
  for i, t in ipairs(list) do
    if i > 3 then names[#names + 1] = ("and %d more"):format(#list - 3) break end
    names[#names + 1] = ("the %s trigger %s (sensor %s)"):format(t.type, t.trigger, t.sensor)
  end
  return ("no Kubernetes cluster reachable (%s): %s will fail; set KUBECONFIG to a cluster's "
    .. "kubeconfig, or use herald run --dry-run to see what %s would create"):format(
    list[1].why, table.concat(names, ", "), #list > 1 and "they" or "it")
end

--- A trigger's executor, or the reason it has none (dry run, no cluster): handle | nil, err, skip.
local function new_trigger(sensor, trig)
  if _M.dry_run then return nil, nil, "dry-run" end
  local tmod = registry.trigger_module(trig.type)
  if tmod and tmod.cluster then -- its module (triggers/<type>/) says it needs a cluster
    local why = cluster_missing()
    if why then
      _M.no_cluster[#_M.no_cluster + 1] = { sensor = sensor.name, trigger = trig.name, type = trig.type, why = why }
      return nil, nil, "no-cluster"
    end
  end
  return core.trigger_new(trig.type, sensor.name, trig.name, trig.config, trig.delivery)
end

--- One dry-run line: what a firing would do, in herald test's form, with the sensor's name.
local function print_dry_run(sensor, trig, action, events)
  local T = require "herald.testing"
  local ids = {}
  for dep, ev in pairs(events) do ids[dep] = ev.context.id end
  io.stdout:write(T.encode({ dryRun = true, sensor = sensor.name, trigger = trig.name, events = ids,
    action = T.describe_action(trig, action) }), "\n")
  io.stdout:flush()
end


local function locate_with(obj)
  local ok, loader = pcall(require, "herald.loader")
  if ok and loader.position then
    return function(tbl, key)
      local line, col = loader.position(obj.pos, tbl, key)
      return line, col
    end
  end
  return function() return 0, 0 end
end

--- Compiles a Sensor object for the engine: the compiled sensor, or nil, err.
local function compile(obj)
  -- the filters can also record why they said no (the --explain code: one `if trace` per
  -- filter when nobody asks), for debug lines and herald tap's verdicts
  return compiler.load(obj, { locate = locate_with(obj), engine = true, explain = true })
end

-- herald tap: records are made only while a reader is attached (core.tap_flag, read through
-- FFI so the per-event check stays inside the JIT's traces)
local int_ptr = ffi.typeof("int *")
local tap_on
local function tap_flag()
  if not tap_on then
    local p = ffi.cast(int_ptr, core.tap_flag())
    tap_on = function() return p[0] ~= 0 end
  end
  return tap_on
end

local function tap_verdict(sensor_name, dep, event, passed, reason, is_error)
  local T = require "herald.testing"
  local ctx = event.context
  local rec = { sensorName = sensor_name, dependencyName = dep.name, eventID = ctx.id,
    eventSourceName = ctx.source, eventName = ctx.subject, passed = passed, error = is_error or nil }
  if not passed then
    local trace = {}
    if dep.filter and not is_error then pcall(dep.filter, event, trace) end
    rec.filters = #trace > 0 and trace or nil
    rec.reason = reason
  end
  local body = T.encode(rec)
  core.tap_record("verdict", ctx.source, sensor_name, nil, ctx.id, body:sub(2, -2))
end

local function tap_firing(sensor_name, trig, action, events)
  local T = require "herald.testing"
  local ids, first = {}, nil
  for dep, ev in pairs(events) do
    ids[dep] = ev.context.id
    first = first or ev.context.id
  end
  if first and not core.tap_wants(first) then return end
  local ok, desc = pcall(T.describe_action, trig, action)
  local body = T.encode({ sensorName = sensor_name, triggerName = trig.name, events = ids,
    action = ok and desc or nil })
  core.tap_record("firing", nil, sensor_name, trig.name, first, body:sub(2, -2))
end

--- Why a dependency's filters said no, from their trace (debug level only: re-runs them).
local function discard_reason(dep, event, why)
  if not dep.filter then return why end
  local trace = {}
  local ok = pcall(dep.filter, event, trace)
  if not ok then return why end
  local parts = {}
  for _, t in ipairs(trace) do
    if not t.passed then parts[#parts + 1] = tostring(t.reason) end
  end
  return #parts > 0 and table.concat(parts, "; ") or why
end

--- Compiles an EventSource `filter.expression` (expr-lang) into fn(data_json) -> pass [, err].
local function source_filter(expr)
  local exprlang = require "herald.exprlang"
  local cjson = require "cjson"
  local c, err = exprlang.compile(expr)
  if not c then return nil, err end
  return function(json)
    local ok, data = pcall(cjson.decode, json)
    if not ok then return false, "event data is not JSON" end
    return exprlang.eval_bool(c, exprlang.prepare_env(data))
  end
end

local function build_eventsource(obj, locate, made)
  local spec = obj.doc.spec
  for _, e in ipairs(registry.sources) do
    local typ = e.name
    local events = e.built and spec[typ]
    if events then
      local names = {}
      for name in pairs(events) do names[#names + 1] = name end
      table.sort(names)
      for _, name in ipairs(names) do
        local cfg = events[name]
        local filter
        if cfg.filter and cfg.filter.expression then
          local err
          filter, err = source_filter(cfg.filter.expression)
          if not filter then
            local line, col = locate(cfg.filter, "expression")
            return nil, ("%s:%d:%d: spec.%s.%s.filter.expression: invalid expression: %s"):format(
              obj.file, line or 0, col or 0, typ, name, tostring(err))
          end
        end
        local src, err = core.source_new(typ, obj.name, name, cfg)
        if not src then return nil, ("%s: EventSource %s: %s"):format(obj.file, obj.name, err) end
        if filter then core.source_filter(src, filter) end
        if made then made[#made + 1] = src end
      end
    end
  end
  return true
end

local double_ptr = ffi.typeof("double *")

--- A counter metric (core.metric) as a function the JIT compiles inline: a C call per
--- discarded event would break the trace that runs 1,000 sensors' filters. metrics.h keeps
--- the value as the struct's first field for this.
local function counter(metric)
  local p = ffi.cast(double_ptr, metric)
  return function() p[0] = p[0] + 1 end
end

--- The subscriptions a sensor has on JetStream: one per (trigger, dependency it listens to),
--- named "<trigger>/<dependency>" (the durable consumer is "<sensor>/<trigger>/<dependency>"),
--- as Argo's per-trigger subscriptions: each trigger takes and acknowledges its events on its
--- own, so a trigger that fails or is slow re-runs nothing of the others.
local function subscriptions(sensor)
  local by_name, list = {}, {}
  for _, dep in ipairs(sensor.dependencies) do by_name[dep.name] = dep end
  for _, trig in ipairs(sensor.triggers) do
    for _, d in ipairs(trig.dependencies) do
      list[#list + 1] = { name = trig.name .. "/" .. d, dep = by_name[d], trig = trig }
    end
  end
  return list
end

--- How dependencies meet the bus. On JetStream the server fans out to the durable consumers of
--- `subscriptions`, each keeping its own position. On the embedded bus all dependencies on
--- one (eventSource, event name) share one subscription whose handler runs them in turn, in
--- the order the sensors were built: with 1,000 sensors on one event a delivery, a C-to-Lua
--- call and an ack per dependency cost more than the filters.
--- The shared delivery is acknowledged once every firing it caused has finished; its window is
--- wide (the bus's capacity bounds the events held), so a sensor whose triggers are slow does
--- not hold back the others on the same event, as its own subscription would not have.
local SHARED_WINDOW = 1048576 -- in effect unbounded: the bus capacity (default 16384) binds first

local function subscriber()
  if core.bus_kind() ~= "embedded" then
    return {
      add = function(sensor, on_event)
        for _, s in ipairs(subscriptions(sensor)) do
          local dep, trig = s.dep, s.trig
          local ok, err = core.subscribe(sensor.name, s.name, dep.eventSourceName, dep.eventName,
            function(event) on_event(dep, event, trig) end)
          if not ok then return nil, err end
        end
        return true
      end,
      remove = function(sensor)
        for _, sub in ipairs(subscriptions(sensor)) do core.unsubscribe(sensor.name, sub.name) end
      end,
      finish = function() return true end,
    }
  end
  local groups, order = {}, {}
  local function dispatcher(g)
    local fns, deps, names = g.fns, g.deps, g.names
    local at = 0
    local function run(event, from)
      for i = from, #fns do
        at = i
        fns[i](deps[i], event)
      end
    end
    -- one pcall per event: a failure in one dependency's handling (a bug: user code is already
    -- isolated inside on_event) is logged and the others still get the event
    return function(event)
      local from = 1
      while true do
        local ok, err = pcall(run, event, from)
        if ok then return end
        core.log("error", "sensor:" .. names[at], ("dependency %s: cannot handle event %s: %s"):format(
          deps[at].name, tostring(event.context.id), tostring(err)))
        from = at + 1
      end
    end
  end
  return {
    add = function(sensor, on_event)
      for _, dep in ipairs(sensor.dependencies) do
        local key = dep.eventSourceName .. "\0" .. dep.eventName
        local g = groups[key]
        if not g then
          g = { source = dep.eventSourceName, subject = dep.eventName, fns = {}, deps = {}, names = {} }
          groups[key] = g
          order[#order + 1] = g
        end
        local n = #g.fns + 1
        g.fns[n], g.deps[n], g.names[n] = on_event, dep, sensor.name
      end
      return true
    end,
    -- a reload removed the sensor: its dependencies leave their groups (the group's shared
    -- subscription stays, so no delivery in flight is disturbed)
    remove = function(sensor)
      for _, g in ipairs(order) do
        for i = #g.fns, 1, -1 do
          if g.names[i] == sensor.name then
            table.remove(g.fns, i)
            table.remove(g.deps, i)
            table.remove(g.names, i)
          end
        end
      end
    end,
    finish = function()
      for _, g in ipairs(order) do
        if not g.subscribed then
          local ok, err = core.subscribe("herald", ("%s/%s"):format(g.source, g.subject), g.source,
            g.subject, dispatcher(g), SHARED_WINDOW)
          if not ok then return nil, ("cannot subscribe to %s/%s: %s"):format(g.source, g.subject, err) end
          g.subscribed = true
        end
      end
      return true
    end,
  }
end

local function build_sensor(obj, subs)
  local sensor, err = compile(obj)
  if not sensor then return nil, err end
  local logger = "sensor:" .. sensor.name
  local debug_on = core.log_enabled("debug") -- the level is set before sensors are built
  local filtered = {}
  for _, dep in ipairs(sensor.dependencies) do
    filtered[dep.name] = counter(core.metric("herald_events_filtered_total",
      "Events a dependency's filters discarded (or that failed filter evaluation).",
      "counter", "sensor_name", sensor.name, "dependency_name", dep.name))
  end
  -- On a bus with a state store (JetStream) the events a half-met condition holds survive a
  -- restart: stored when held, deleted when the trigger fires or its conditions reset. Both
  -- calls hold the current delivery, so it is acked only once the store has the change.
  local persist = false
  local stored = {} -- trigger name -> {dep name = true}: keys written and not yet deleted
  local function store(trig, dep_name, event)
    if not persist then return end
    local ok, perr = core.state_put(sensor.name, trig.name, dep_name, event)
    if not ok then core.log("error", logger .. "/trigger:" .. trig.name, "cannot store the dependency state: " .. tostring(perr)) end
    stored[trig.name] = stored[trig.name] or {}
    stored[trig.name][dep_name] = true
  end
  local function clear(trig)
    local keys = stored[trig.name]
    if not persist or not keys then return end
    stored[trig.name] = nil
    for dep_name in pairs(keys) do
      local ok, perr = core.state_put(sensor.name, trig.name, dep_name, nil)
      if not ok then core.log("error", logger .. "/trigger:" .. trig.name, "cannot clear the dependency state: " .. tostring(perr)) end
    end
  end
  local tapping = tap_flag()
  local rt = runtime.new(sensor, {
    store = store,
    clear = clear,
    pass = function(dep, event)
      if tapping() and core.tap_wants(event.context.id) then tap_verdict(sensor.name, dep, event, true) end
    end,
    fire = function(trig, action, events)
      if tapping() then tap_firing(sensor.name, trig, action, events) end -- (sampled inside)
      if trig.skip == "dry-run" then return print_dry_run(sensor, trig, action, events) end
      if trig.skip == "no-cluster" then -- said once at start; each firing only counts
        core.metric_add(trig.failed_metric)
        core.log("debug", logger .. "/trigger:" .. trig.name, "not executed: no Kubernetes cluster configured")
        return
      end
      local handle = trig.handle
      if trig.handles then -- e.g. the lua trigger: its script chose which executor runs the action
        if action.dispatch == "none" then return end
        handle, action = trig.handles[action.dispatch], action.action
      end
      local fired, ferr = core.fire(handle, action)
      if not fired then core.log("error", logger .. "/trigger:" .. trig.name, "cannot execute: " .. tostring(ferr)) end
    end,
    discard = function(dep, event, why, is_error)
      -- a discard is the common case with many sensors: format the debug line only if written
      -- every discard (a filter said no) at debug, every error (a script raised, a budget
      -- ran out) at warn, both with the same queryable fields (docs/logging.md)
      if is_error or debug_on then
        core.log(is_error and "warn" or "debug", logger,
          (is_error and "event not processed: " or "event discarded: ") ..
            (is_error and why or discard_reason(dep, event, why)),
          { sensorName = sensor.name, dependencyName = dep.name, eventID = event.context.id,
            eventSourceName = event.context.source, eventName = event.context.subject })
      end
      if tapping() and core.tap_wants(event.context.id) then tap_verdict(sensor.name, dep, event, false, why, is_error) end
      filtered[dep.name]()
    end,
    action_error = function(trig, aerr)
      core.log("error", logger .. "/trigger:" .. trig.name, "cannot build the action: " .. aerr)
      core.metric_add(trig.failed_metric)
    end,
  })
  for _, trig in ipairs(sensor.triggers) do
    local handle, terr, skip
    if _M.dry_run then
      skip = "dry-run"
    elseif registry.trigger_module(trig.type).dispatch then
      -- a type whose actions run on other types' executors (the lua trigger: http and log),
      -- under this trigger's name; the action's `dispatch` picks one
      local tmod = registry.trigger_module(trig.type)
      trig.handles = {}
      for _, d in ipairs(tmod.dispatch_order) do
        trig.handles[d] = core.trigger_new(d, sensor.name, trig.name, tmod.dispatch[d], trig.delivery)
      end
      handle = trig.handles[tmod.dispatch_order[1]]
    else
      handle, terr, skip = new_trigger(sensor, trig)
    end
    trig.skip = skip
    if not handle and not skip then return nil, ("%s: %s"):format(obj.file, terr) end
    trig.handle = handle
    local dlq = trig.dlq
    if dlq and handle then
      local dh, derr, dskip = new_trigger(sensor, dlq)
      if not dh and not dskip then return nil, ("%s: %s"):format(obj.file, derr) end
      trig.dlq_handle = dh
      if dh then core.trigger_dlq(handle, dh, function(events)
        local ok, action, aerr = pcall(dlq.action, events)
        if not ok then return nil, action end
        return action, aerr
      end) end
    end
    trig.failed_metric = core.metric("argo_events_action_failed_total", "How many actions failed.",
      "counter", "sensor_name", sensor.name, "trigger_name", trig.name)
    for _, reset in ipairs(trig.conditions_reset or {}) do
      local ok, cerr = core.cron_timer(reset.cron, reset.timezone, function()
        rt.reset(trig)
        core.log("debug", logger .. "/trigger:" .. trig.name, "conditionsReset: dependency state cleared")
      end)
      if not ok then return nil, ("%s: sensor %s: conditionsReset: %s"):format(obj.file, sensor.name, cerr) end
    end
  end
  -- the state: a key per (trigger, dependency), each fed by the subscription of that name
  local spec = { deps = {}, keys = {} }
  for _, s in ipairs(subscriptions(sensor)) do
    spec.deps[#spec.deps + 1] = { name = s.name, source = s.dep.eventSourceName, subject = s.dep.eventName }
    spec.keys[#spec.keys + 1] = { s.trig.name, s.dep.name, s.name }
  end
  persist = core.state_open(sensor.name, spec, function(state, lerr)
    if lerr then return end -- logged by the bus; start with an empty state
    local n = 0
    for tname, deps in pairs(state) do
      for dname in pairs(deps) do
        stored[tname] = stored[tname] or {}
        stored[tname][dname] = true
        n = n + 1
      end
    end
    rt.restore(state)
    if n > 0 then core.log("info", logger, ("restored %d held event(s) of the dependency state"):format(n)) end
  end) == true
  local ok, serr = subs.add(sensor, rt.on_event)
  if not ok then return nil, ("%s: sensor %s: %s"):format(obj.file, sensor.name, serr) end
  return sensor
end

--- Where a drain that runs out of time writes what it could not deliver, for the next start to
--- replay: DIR/spill.jsonl for --state-dir DIR, else for --bus-dir DIR, else
--- $XDG_STATE_HOME/herald/spill-<FNV-1a of the absolute PATHs>.jsonl, so that two deployments
--- on one machine never replay each other's events.
function _M.spill_file(paths, opts)
  local dir = opts.state_dir or opts.bus_dir
  if dir then return (dir:gsub("/+$", "")) .. "/spill.jsonl" end
  local bit = require "bit"
  local cwd = os.getenv("PWD") or ""
  local h = 2166136261
  for i, p in ipairs(paths) do
    local abs = (p:sub(1, 1) == "/" and p or (cwd .. "/" .. p)):gsub("/+$", "")
    local key = (i > 1 and "\0" or "") .. abs
    for j = 1, #key do -- h = (h ^ byte) * 16777619 mod 2^32, exact in doubles
      h = bit.bxor(h, key:byte(j)) % 2 ^ 32
      h = (bit.lshift(h, 24) % 2 ^ 32 + h * 403) % 2 ^ 32
    end
  end
  local state = os.getenv("XDG_STATE_HOME")
  if not state or state == "" then
    local home = os.getenv("HOME")
    state = (home and home ~= "" and home or "/tmp") .. "/.local/state"
  end
  return ("%s/herald/spill-%s.jsonl"):format(state, bit.tohex(h))
end

--- The leases the objects need for active/passive replicas, as Argo elects a leader: a Sensor
--- with replicas > 1 ("sensor-<name>"), and an EventSource with replicas > 1 that has a source
--- only one replica may run (a calendar, ...: "eventsource-<name>").
function _M.leases(objects)
  local names = {}
  for _, obj in ipairs(objects) do
    local spec = obj.doc.spec or {}
    if type(spec.replicas) == "number" and spec.replicas > 1 then
      if obj.kind == "Sensor" then
        names[#names + 1] = "sensor-" .. obj.name
      elseif obj.kind == "EventSource" then
        for _, e in ipairs(registry.sources) do
          local mod = registry.module(e)
          if mod and spec[e.name] and not mod.active_active then -- Argo's "AP" types
            names[#names + 1] = "eventsource-" .. obj.name
            break
          end
        end
      end
    end
  end
  return names
end

--- Compiles every Sensor without building anything (a standby replica reports a broken spec
--- at once, not when it is elected). Returns true or nil, err.
function _M.check(objects)
  for _, obj in ipairs(objects) do
    if obj.kind == "Sensor" then
      local sensor, err = compile(obj)
      if not sensor then return nil, err end
    end
  end
  return true
end

--- The names of a Sensor object's JetStream subscriptions (for `herald sensor --cleanup`), or
--- nil, err when it does not compile.
function _M.subscription_names(obj)
  local sensor, err = compile(obj)
  if not sensor then return nil, err end
  local names = {}
  for _, s in ipairs(subscriptions(sensor)) do names[#names + 1] = s.name end
  return names
end

-- What runs, for a reload: the subscriber, and per object (kind/name) its fingerprint (the
-- spec as canonical JSON) and its parts (sources, or the compiled sensor and its triggers).
local running

local function fingerprint(obj)
  return require("herald.testing").encode(obj.doc)
end

local function build_one(obj, subs)
  local part = { kind = obj.kind, fp = nil }
  if obj.kind == "EventSource" then
    part.sources = {}
    local ok, err = build_eventsource(obj, locate_with(obj), part.sources)
    if not ok then return nil, err, part end
  elseif obj.kind == "Sensor" then
    local sensor, err = build_sensor(obj, subs)
    if not sensor then return nil, err, part end
    part.sensor = sensor
  end
  return part
end

--- Builds every object; returns true or nil, err (nothing is started yet either way).
function _M.build(objects)
  local subs = subscriber()
  running = { subs = subs, parts = {} }
  for _, obj in ipairs(objects) do
    local part, err = build_one(obj, subs)
    if not part then return nil, err end
    if obj.kind == "EventSource" or obj.kind == "Sensor" then
      part.fp = fingerprint(obj)
      running.parts[obj.kind .. "/" .. obj.name] = part
    end
  end
  return subs.finish()
end

-- Takes a running part down: sources stop (a webhook's route goes), a sensor's dependencies
-- leave the bus and its triggers retire (the actions already taken finish).
local function take_down(part)
  for _, src in ipairs(part.sources or {}) do core.source_stop(src) end
  local sensor = part.sensor
  if sensor then
    running.subs.remove(sensor)
    for _, trig in ipairs(sensor.triggers) do
      if trig.handle then core.trigger_retire(trig.handle) end
      for name, h in pairs(trig.handles or {}) do
        if h ~= trig.handle then core.trigger_retire(h) end
        trig.handles[name] = nil
      end
      if trig.dlq_handle then core.trigger_retire(trig.dlq_handle) end
    end
  end
end

--- Applies a new set of objects to the running engine (SIGHUP, herald run --watch): objects
--- whose spec did not change keep running untouched (a sensor keeps its dependency state);
--- removed ones are taken down, new and changed ones built and started. Everything is
--- validated and compiled first: a bad edit changes nothing. Returns a summary or nil, err.
function _M.reload(objects)
  if not running then return nil, "nothing is running" end
  local ok, err = _M.check(objects)
  if not ok then return nil, err end
  local want, keep = {}, {}
  for _, obj in ipairs(objects) do
    if obj.kind == "EventSource" or obj.kind == "Sensor" then
      local key = obj.kind .. "/" .. obj.name
      want[key] = obj
      local part = running.parts[key]
      if part and part.fp == fingerprint(obj) then keep[key] = true end
    end
  end
  local n = { kept = 0, removed = 0, added = 0, changed = 0 }
  for key, part in pairs(running.parts) do
    if not keep[key] then
      take_down(part)
      running.parts[key] = nil
      if want[key] then n.changed = n.changed + 1 else n.removed = n.removed + 1 end
    else
      n.kept = n.kept + 1
    end
  end
  local errors = {}
  for key, obj in pairs(want) do
    if not keep[key] then
      local part, berr, partial = build_one(obj, running.subs)
      if part then
        part.fp = fingerprint(obj)
        running.parts[key] = part
        for _, src in ipairs(part.sources or {}) do
          local sok, serr = core.source_start(src)
          if not sok then errors[#errors + 1] = ("%s: %s"):format(key, tostring(serr)) end
        end
        if not n.changed_keys then n.changed_keys = {} end
        n.changed_keys[#n.changed_keys + 1] = key
      else
        errors[#errors + 1] = berr
        if partial then take_down(partial) end
      end
      n.added = n.added + 1
    end
  end
  n.added = n.added - n.changed
  local fok, ferr = running.subs.finish()
  if not fok then errors[#errors + 1] = ferr end
  if #errors > 0 then return nil, table.concat(errors, "\n"), n end
  return n
end

return _M
