-- herald/repl.lua: `herald repl [SENSOR.yaml] [--events EVENTS.jsonl] [-e CODE]`, a LuaJIT
-- prompt for prototyping a Sensor without a cluster.
--
--   line --(":cmd" or ".")--> command --> the same functions Lua code can call (filter, fire...)
--        \--(Lua)--> "return " .. line, else line --(incomplete: '<eof>')--> "..." prompt
--                     --> run in the REPL environment --> results printed as JSON-like values
--
-- The sensor is compiled and driven by herald.testing in dry run (nothing is sent); events are
-- CloudEvents read from a JSON-lines file, with a cursor moved by :next / :prev. Everything the
-- commands show is also a function at the prompt (`filter("dep")` returns the verdict table),
-- and `event`, `events`, `sensor` ... are variables of the REPL environment (not _G).
--
-- Line editing, history and completion come from engine/repl.c (libedit); without a terminal
-- (`-e CODE`, or a script on stdin) lines are read the same way and processed by the same
-- code, and the first error ends the run with exit code 1.
local cjson = require "cjson"
local T = require "herald.testing"

local _M = {}

local null = cjson.null
local fmt, concat, sort = string.format, table.concat, table.sort

local function try_require(name)
  local ok, m = pcall(require, name)
  return ok and m or nil
end

local core = try_require("herald.core") or {}
local gjson = try_require("herald.gjson")
local govaluate = try_require("herald.govaluate")
local gotemplate = try_require("herald.gotemplate")
local sprig = try_require("herald.sprig")
local exprlang = try_require("herald.exprlang")
local rt = try_require("herald.rt")
local ARRAY_MT = gjson and gjson.array_mt

local MAX_INLINE = 76 -- a value whose one-line form fits prints on one line

---------------------------------------------------------------------------------------------
-- Printing values
---------------------------------------------------------------------------------------------

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or fmt("\\u%04x", c:byte())
  end) .. '"'
end

local function is_array(t)
  if ARRAY_MT and getmetatable(t) == ARRAY_MT then return true end
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta == "number" and tb == "number" then return a < b end
    if ta ~= tb then return ta == "number" end
    return tostring(a) < tostring(b)
  end)
  return keys
end

local function scalar(v)
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "number" then
    if v ~= v then return "NaN" end
    if v == math.floor(v) and math.abs(v) < 1e15 then return fmt("%d", v) end
    return fmt("%.14g", v)
  end
  if v == null then return "null" end
  if t == "nil" then return "nil" end
  if t == "boolean" then return tostring(v) end
  return "<" .. tostring(v) .. ">"
end

--- The value as indented JSON-like text (sorted keys; functions and userdata as <...>;
--- tables seen twice on the way down as <cycle>). Small values stay on one line.
local function pretty(v, indent, seen)
  if type(v) ~= "table" then return scalar(v) end
  indent, seen = indent or "", seen or {}
  if seen[v] then return "<cycle>" end
  seen[v] = true
  local arr = is_array(v)
  local items, inline_len, multiline = {}, 0, false
  local inner = indent .. "  "
  if arr then
    for i = 1, #v do items[i] = pretty(v[i], inner, seen) end
  else
    for _, k in ipairs(sorted_keys(v)) do
      items[#items + 1] = (type(k) == "string" and quote(k) or quote(tostring(k))) .. ": " .. pretty(v[k], inner, seen)
    end
  end
  seen[v] = nil
  if #items == 0 then return arr and "[]" or "{}" end
  for _, s in ipairs(items) do
    inline_len = inline_len + #s + 2
    if s:find("\n", 1, true) then multiline = true end
  end
  local open, close = arr and "[" or "{", arr and "]" or "}"
  if not multiline and inline_len + #indent <= MAX_INLINE then
    return open .. concat(items, ", ") .. close
  end
  return open .. "\n" .. inner .. concat(items, ",\n" .. inner) .. "\n" .. indent .. close
end
_M.pretty = pretty

---------------------------------------------------------------------------------------------
-- Help
---------------------------------------------------------------------------------------------

local COMMANDS = {
  { ".", "show the current event (context and data)" },
  { ":next", "move to the next event and show it" },
  { ":prev", "move to the previous event and show it" },
  { ":events", "list the loaded events (* marks the current one)" },
  { ":deps", "the sensor's dependencies and how each judges the current event" },
  { ":filter [DEP]", "each filter's verdict on the current event, with the reason" },
  { ":transform DEP", "the current event before and after DEP's transform" },
  { ":params TRIGGER", "each parameter: source, value, destination before/after" },
  { ":fire TRIGGER", "the dry-run action, as `herald test` prints it" },
  { ":load FILE", "load a Sensor (.yaml, .yml) or events (JSON lines)" },
  { ":reload", "re-read the sensor file (after editing it)" },
  { ":edit", "open the sensor in $VISUAL / $EDITOR (default vi), then reload" },
  { ":help [NAME]", "this list, or help on a function or module" },
  { ":quit", "leave (Ctrl-D does too)" },
}

local COMMAND_NAMES = { ":next", ":prev", ":events", ":deps", ":filter", ":transform", ":params",
  ":fire", ":load", ":reload", ":edit", ":help", ":quit" }

local HELP = {
  event = "event: the current event, {context = {id, source, subject, type, time, ...}, data = ..., raw = JSON text}. Assign to it to try your own.",
  events = "events: all loaded events (an array); :next / :prev move `event` through it.",
  sensor = "sensor: the compiled sensor: sensor.dependencies[i] {name, eventSourceName, eventName, filter, transform}, sensor.triggers[i] {name, type, dependencies, condition, action, params}.",
  session = "session: the herald.testing session: session:feed(event, {explain = true}) -> lines; session:explain_dep(dep, event).",
  path = "path(p [, ev]): the gjson path p read in ev.data (default the current event); nil when missing.\n  path(\"body.user.name\")  path(\"body.items.#.sku\")",
  expr = "expr(e [, fields [, ev]]): a govaluate expression, as a Sensor `exprs` filter evaluates it; fields maps names to gjson paths in the event data ({name = path}, or Argo's [{name=, path=}]).\n  expr(\"total >= 100\", {total = \"body.total\"})",
  render = "render(tpl [, ev]): a Go template (with Sprig) rendered with .Input = ev.data, as a parameter's dataTemplate.\n  render(\"{{ .Input.body.user.name | upper }}\")",
  filter = "filter([dep [, ev]]): how dependency dep judges ev (default: the current event): {dependency, passed, filters = {{kind, index, passed, reason}, ...}}. Without dep, every dependency of the event. :filter prints it.",
  transform = "transform(dep [, ev]): before, after (or nil, err): the event data before and after dep's transform. :transform prints it.",
  params = "params(trigger): the trigger's parameters resolved on the events up to the current one: {events = {dep = id}, lists = {{name, target_before, target_after, params = {{where, source, value, dest, before, after}}}}}. :params prints it.",
  fire = "fire(trigger): the dry-run firing line {trigger, events, template, action} (as `herald test` prints it), or nil, reason when the condition is not met. :fire prints it.",
  deps = "deps([ev]): the dependencies with {name, source, matches = bool, passed = bool|nil}.",
  pp = "pp(v, ...): prints values the way the prompt does.",
  repl = "repl: the REPL's own functions: repl.next(), repl.prev(), repl.load(file), repl.reload(), repl.show(), repl.list_events().",
  gjson = "gjson: GJSON paths over decoded values: gjson.get(value, path), gjson.compile(path) -> getter, gjson.string(v), gjson.bool(v), gjson.number(v), gjson.type(v).",
  govaluate = "govaluate: govaluate.evaluate(expr, params) -> value | nil, err; govaluate.compile(expr) -> {fn, params, source}.",
  template = "template (herald.gotemplate): template.render(text, data) -> text | nil, err; template.compile(text) -> t with t:render(data), t.source.",
  sprig = "sprig: the Sprig template functions as Lua functions (sprig.upper(\"x\"), sprig.b64enc(\"x\") ...).",
  exprlang = "exprlang: expr-lang (EventSource filter.expression): exprlang.evaluate(expr, exprlang.prepare_env(data)).",
  json = "json: lua-cjson: json.encode(v), json.decode(s), json.null.",
  testing = "testing: herald.testing (load_sensor, read_events, encode, describe_action ...).",
}

---------------------------------------------------------------------------------------------
-- The REPL state
---------------------------------------------------------------------------------------------

local Repl = {}
Repl.__index = Repl

local function fail(msg) error(msg, 0) end

--- A new REPL. opts: out = function(text) (default stdout), sensor = path, events = path.
function _M.new(opts)
  opts = opts or {}
  local self = setmetatable({
    out = opts.out or function(s) io.stdout:write(s) end,
    events = {}, cursor = 0, pending = nil, quit = false,
  }, Repl)
  self:make_env()
  -- print() in the sensor's own scripts (filters, transforms) shows at the prompt
  local ok, rt = pcall(require, "herald.rt")
  if ok and rt.on_print then
    rt.on_print(function(sensor, line) self:print(("print (sensor %s): %s"):format(sensor, line)) end)
  end
  return self
end

function Repl:print(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  self.out(concat(parts, "\t") .. "\n")
end

function Repl:current()
  return self.env.event
end

--- The event to work on: ev, else the current one; fails when there is none.
function Repl:event_arg(ev)
  ev = ev or self.env.event
  if type(ev) ~= "table" then fail("no current event (load events with --events FILE or :load FILE)") end
  if type(ev.context) ~= "table" then
    -- a bare data table (`event = {body = ...}`): wrap it so filters can read it; it belongs
    -- to no EventSource, so every dependency is offered it (`any`)
    self.wrapped = self.wrapped or setmetatable({}, { __mode = "k" })
    local w = self.wrapped[ev]
    if not w then
      w = { context = { id = "adhoc", source = "(any)", subject = "(any)", type = "webhook",
                        specversion = "1.0", datacontenttype = "application/json" },
            data = ev, raw = cjson.encode(ev), any = true }
      self.wrapped[ev] = w
    end
    ev = w
  end
  return ev
end

--- Whether dependency d listens to ev (an ad hoc data table: to any).
local function listens(d, ev)
  return ev.any or (d.eventSourceName == ev.context.source and d.eventName == ev.context.subject)
end

function Repl:set_cursor(i)
  self.cursor = i
  self.env.event = self.events[i]
end

function Repl:need_sensor()
  if not self.session then fail("no sensor loaded (herald repl SENSOR.yaml, or :load FILE)") end
  return self.session
end

function Repl:find_dep(name)
  local s = self:need_sensor()
  local names = {}
  for _, d in ipairs(s.sensor.dependencies) do
    if d.name == name then return d end
    names[#names + 1] = d.name
  end
  fail(fmt("no dependency %s (dependencies: %s)", tostring(name), concat(names, ", ")))
end

function Repl:find_trigger(name)
  local s = self:need_sensor()
  local names = {}
  for i, t in ipairs(s.sensor.triggers) do
    if t.name == name then return t, i end
    names[#names + 1] = t.name
  end
  fail(fmt("no trigger %s (triggers: %s)", tostring(name), concat(names, ", ")))
end

--- Loads the Sensor at path; on failure keeps the previous one and fails with the errors.
function Repl:load_sensor(path)
  local s, err = T.load_sensor(path)
  if not s then fail(err) end
  self.sensor_path, self.session = path, s
  self.env.session, self.env.sensor = s, s.sensor
  return s
end

--- Loads events (JSON lines); the cursor goes to the first one.
function Repl:load_events(path)
  local evs, err = T.read_events(path)
  if not evs then fail(err) end
  self.events_path, self.events = path, evs
  self.env.events = evs
  self:set_cursor(#evs > 0 and 1 or 0)
  return evs
end

--- :load FILE: a Sensor when the file is YAML, events otherwise.
function Repl:load(path)
  if type(path) ~= "string" or path == "" then fail("usage: :load FILE") end
  if path:match("%.ya?ml$") then
    local s = self:load_sensor(path)
    return fmt("loaded sensor %s from %s: %d dependencies, %d triggers", s.sensor.name, path,
      #s.sensor.dependencies, #s.sensor.triggers)
  end
  local evs = self:load_events(path)
  return fmt("loaded %d events from %s", #evs, path)
end

function Repl:reload()
  if not self.sensor_path then fail("no sensor file to reload (:load FILE first)") end
  local s = self:load_sensor(self.sensor_path)
  return fmt("reloaded sensor %s from %s: %d dependencies, %d triggers", s.sensor.name,
    self.sensor_path, #s.sensor.dependencies, #s.sensor.triggers)
end

---------------------------------------------------------------------------------------------
-- What the commands compute (also callable from Lua)
---------------------------------------------------------------------------------------------

local function data_get(ev, p)
  if not gjson then fail("gjson is not available") end
  local v, err = gjson.get(ev.data, p)
  if err then fail("path " .. p .. ": " .. err) end
  return v
end

--- deps(ev): every dependency, whether it listens to ev's source/subject, and its verdict.
function Repl:deps(ev)
  local s = self:need_sensor()
  ev = ev or self.env.event
  if type(ev) == "table" then ev = self:event_arg(ev) end
  local out = {}
  for _, d in ipairs(s.sensor.dependencies) do
    local row = { name = d.name, source = d.eventSourceName .. "/" .. d.eventName,
      transform = d.transform ~= nil, filter = d.filter ~= nil }
    if type(ev) == "table" and type(ev.context) == "table" then
      row.matches = listens(d, ev)
      if row.matches then
        local line = s:explain_dep(d, ev)
        row.passed = line.passed
        local reasons = {}
        for _, f in ipairs(line.filters) do
          if not f.passed then reasons[#reasons + 1] = tostring(f.reason) end
        end
        row.reason = #reasons > 0 and concat(reasons, "; ") or nil
      end
    end
    out[#out + 1] = row
  end
  return out
end

--- filter(dep, ev): the explain line of dep on ev; without dep, the lines of every dependency
--- listening to ev.
function Repl:filter(dep_name, ev)
  local s = self:need_sensor()
  ev = self:event_arg(ev)
  if dep_name == nil then
    local lines = {}
    for _, d in ipairs(s.sensor.dependencies) do
      if listens(d, ev) then lines[#lines + 1] = (s:explain_dep(d, ev)) end
    end
    return lines
  end
  local line = s:explain_dep(self:find_dep(dep_name), ev)
  return line
end

--- transform(dep, ev): before, after data (after is nil, err when the transform fails).
function Repl:transform(dep_name, ev)
  local d = self:find_dep(dep_name)
  ev = self:event_arg(ev)
  if not d.transform then return ev.data, ev.data, "no transform" end
  local ok, tev, terr = pcall(d.transform, ev)
  if not ok then return ev.data, nil, tostring(tev) end
  if not tev then return ev.data, nil, tostring(terr) end
  return ev.data, tev.data, nil, tev
end

--- For each dependency a trigger needs, the event it would use: the latest event at or before
--- the cursor that the dependency accepts (transformed), else the first one after the cursor.
--- Returns map dep -> event, map dep -> index, notes.
function Repl:trigger_events(trig)
  local s = self:need_sensor()
  local wanted, order = {}, {}
  local function want(name)
    if name and not wanted[name] then
      wanted[name] = true
      order[#order + 1] = name
    end
  end
  for _, d in ipairs(trig.dependencies or {}) do want(d) end
  for _, list in pairs(trig.params or {}) do
    for _, p in ipairs(list) do want(p.dep) end
  end
  local events, index, notes = {}, {}, {}
  local cur = type(self.env.event) == "table" and self:event_arg(self.env.event) or nil
  local adhoc = cur ~= nil and self.events[self.cursor] ~= self.env.event
  for _, name in ipairs(order) do
    local ok, d = pcall(self.find_dep, self, name)
    if ok then
      local why_not -- the current event listens here but its filters said no
      local function accept(ev, is_current)
        if not listens(d, ev) then return nil end
        local line, tev = s:explain_dep(d, ev)
        if not line.passed and is_current then
          local r = {}
          for _, f in ipairs(line.filters) do if not f.passed then r[#r + 1] = tostring(f.reason) end end
          why_not = #r > 0 and concat(r, "; ") or "filtered out"
        end
        return line.passed and (tev or ev) or nil
      end
      local found
      if adhoc then
        found = accept(cur, true)
        if found then index[name] = "event" end
      elseif cur and self.events[self.cursor] == self.env.event then
        found = accept(cur, true)
        if found then index[name] = self.cursor end
      end
      for i = self.cursor - 1, 1, -1 do
        if found then break end
        found = accept(self.events[i])
        if found then
          index[name] = i
          if why_not then
            notes[#notes + 1] = fmt("%s: the current event (%s) does not pass (%s); using event %d",
              name, tostring(cur.context.id), why_not, i)
          end
        end
      end
      for i = self.cursor + 1, #self.events do
        if found then break end
        found = accept(self.events[i])
        if found then
          index[name] = i
          notes[#notes + 1] = why_not and
            fmt("%s: the current event (%s) does not pass (%s); using event %d", name,
                tostring(cur.context.id), why_not, i)
            or fmt("%s: no event up to the current one passes; using event %d", name, i)
        end
      end
      if found then events[name] = found
      else notes[#notes + 1] = name .. ": no loaded event passes this dependency" end
    end
  end
  return events, index, notes
end

local function event_ids(events)
  local ids = {}
  for dep, ev in pairs(events) do ids[dep] = ev.context.id end
  return ids
end

--- fire(trigger): the firing line `herald test` prints, or nil, why.
function Repl:fire(trig_name)
  local trig = self:find_trigger(trig_name)
  local events, _, notes = self:trigger_events(trig)
  local state = {}
  for _, d in ipairs(trig.dependencies or {}) do state[d] = events[d] end
  local ok, cond = pcall(trig.condition, state)
  if not ok or not cond then
    local missing = {}
    for _, d in ipairs(trig.dependencies or {}) do
      if not events[d] then missing[#missing + 1] = d end
    end
    return nil, fmt("trigger %s would not fire: its condition is not met (no passing event for %s)",
      trig.name, #missing > 0 and concat(missing, ", ") or "?"), notes
  end
  local fire_events = {}
  for d, ev in pairs(state) do fire_events[d] = ev end
  local aok, action, terr = pcall(trig.action, fire_events)
  if not aok or not action then
    return { trigger = trig.name, events = event_ids(fire_events), error = tostring(aok and terr or action) }, nil, notes
  end
  local tok, _, template = pcall(trig.action, fire_events, true)
  return { trigger = trig.name, events = event_ids(fire_events),
    template = tok and template or null, action = T.describe_action(trig, action) }, nil, notes
end

-- trigger types whose type parameters apply to the Kubernetes object (herald.sensor): their
-- module in triggers/<type>/ says `resource`
local registry = require "herald.registry"
local function is_resource(ttype)
  local mod = registry.trigger_module(ttype)
  return mod ~= nil and mod.resource == true
end

--- The spec table at a compiled `where` ("spec.triggers[0].template.http.payload[2]").
local function spec_at(doc, where)
  local node = doc
  for name, idx in where:gmatch("([%w_]+)%[?(%d*)%]?") do
    if type(node) ~= "table" then return nil end
    node = node[name]
    if idx ~= "" then
      if type(node) ~= "table" then return nil end
      node = node[tonumber(idx) + 1]
    end
  end
  return node
end

local function describe_source(spec_param, p)
  local src = type(spec_param) == "table" and spec_param.src or {}
  local parts = { "dependency " .. tostring(p.dep) }
  if src.dataKey then parts[#parts + 1] = "dataKey " .. src.dataKey end
  if src.contextKey then parts[#parts + 1] = "contextKey " .. src.contextKey end
  if src.dataTemplate then parts[#parts + 1] = "dataTemplate " .. src.dataTemplate end
  if src.contextTemplate then parts[#parts + 1] = "contextTemplate " .. src.contextTemplate end
  if src.value ~= nil then parts[#parts + 1] = "value " .. scalar(src.value) end
  if src.useRawData then parts[#parts + 1] = "useRawData" end
  return concat(parts, ", ")
end

--- params(trigger): each parameter list of the trigger applied step by step.
function Repl:params(trig_name)
  local s = self:need_sensor()
  local trig, ti = self:find_trigger(trig_name)
  if not rt then fail("herald.rt is not available") end
  local plist = trig.params
  if plist == nil then fail("this build's compiled triggers do not expose their parameters") end
  local events, index, notes = self:trigger_events(trig)
  local doc = s.obj and s.obj.doc or {}
  local tmpl = spec_at(doc, fmt("spec.triggers[%d].template", ti - 1)) or {}
  local result = { trigger = trig.name, type = trig.type, events = {}, notes = notes, lists = {} }
  for dep, i in pairs(index) do result.events[dep] = { index = i, id = events[dep].context.id } end
  local template = rt.copy(tmpl)
  local steps = {
    { "template", fmt("spec.triggers[%d].parameters (apply to the whole template)", ti - 1), function() return template end,
      function(t) template = t end },
    { "type", fmt("spec.triggers[%d].template.%s.parameters", ti - 1, trig.type), function()
        if is_resource(trig.type) then -- they apply to the Kubernetes object, not the spec
          local object, err = rt.load_resource((template[trig.type] or {}).source)
          if not object then fail("cannot load the trigger's object: " .. tostring(err)) end
          return object
        end
        return template[trig.type] or {}
      end,
      function(t) if not is_resource(trig.type) then template[trig.type] = t end end },
    { "payload", fmt("spec.triggers[%d].template.%s.payload (the body)", ti - 1, trig.type), function() return {} end,
      function() end },
  }
  for _, step in ipairs(steps) do
    local list = plist[step[1]]
    if list and #list > 0 then
      local target = step[3]()
      local entry = { name = step[1], title = step[2], target_before = rt.copy(target), params = {} }
      for _, p in ipairs(list) do
        local sp = spec_at(doc, p.where)
        local dest = type(sp) == "table" and sp.dest or nil
        local row = { where = p.where, source = describe_source(sp, p), dest = dest or "",
          operation = p.operation }
        if events[p.dep] == nil then row.note = "dependency " .. tostring(p.dep) .. " has no event" end
        local ok, v, raw, rerr = pcall(rt.resolve, events, p)
        if ok and rerr then ok, v = false, rerr end -- cannot be resolved: the firing fails
        if not ok then
          row.error = tostring(v)
        else
          row.value = v
          if raw then row.raw = true end
          local get = dest and dest ~= "" and gjson and gjson.compile(dest) or nil
          row.before = get and get(target) or nil
          row.before = rt.copy(row.before)
          if v == nil then
            row.skipped = true
          elseif p.dest then
            target = p.dest(target, v, p.operation) or target
          else
            target = v -- a payload parameter without dest is the whole body
          end
          row.after = get and get(target) or (not p.dest and target or nil)
        end
        entry.params[#entry.params + 1] = row
      end
      step[4](target)
      entry.target_after = target
      result.lists[#result.lists + 1] = entry
    end
  end
  return result
end

---------------------------------------------------------------------------------------------
-- Commands: print what the functions above return
---------------------------------------------------------------------------------------------

function Repl:show(ev)
  ev = ev or self.env.event
  if type(ev) == "table" then ev = self:event_arg(ev) end
  if type(ev) ~= "table" then
    self:print(#self.events == 0 and "no events loaded (--events FILE or :load FILE)" or "no current event")
    return
  end
  local ctx = type(ev.context) == "table" and ev.context or {}
  local pos = self.events[self.cursor] == ev and fmt("event %d/%d", self.cursor, #self.events)
    or (ev.any and "event (ad hoc data, offered to every dependency)" or "event (ad hoc)")
  self:print(fmt("%s: id %s, %s/%s", pos, tostring(ctx.id), tostring(ctx.source), tostring(ctx.subject)))
  self:print(pretty({ context = ev.context, data = ev.data }))
end

function Repl:move(delta)
  if #self.events == 0 then fail("no events loaded (--events FILE or :load FILE)") end
  local i = self.cursor + delta
  if i < 1 then
    self:set_cursor(1)
    self:print("(already at the first event)")
  elseif i > #self.events then
    self:set_cursor(#self.events)
    self:print("(already at the last event)")
  else
    self:set_cursor(i)
  end
  self:show()
end

function Repl:list_events()
  if #self.events == 0 then
    self:print("no events loaded")
    return
  end
  for i, ev in ipairs(self.events) do
    local data = T.encode(ev.data)
    if #data > 60 then data = data:sub(1, 57) .. "..." end
    self:print(fmt("%s %3d  id %-6s %s/%s  %s", i == self.cursor and "*" or " ", i, tostring(ev.context.id),
      ev.context.source, ev.context.subject, data))
  end
end

local function verdict(b) return b and "passed" or "failed" end

local function print_filter_line(self, line, d, ev)
  local note = ""
  if d and ev.context and not ev.any and (d.eventSourceName ~= ev.context.source or d.eventName ~= ev.context.subject) then
    note = fmt(" (note: %s listens to %s/%s, this event is %s/%s)", d.name, d.eventSourceName,
      d.eventName, tostring(ev.context.source), tostring(ev.context.subject))
  end
  self:print(fmt("%s on event %s: %s%s", line.dependency, tostring(line.event), verdict(line.passed), note))
  if #line.filters == 0 then self:print("  (no filters)") end
  for _, f in ipairs(line.filters) do
    self:print(fmt("  %-12s %s  %s", fmt("%s[%s]", f.kind, tostring(f.index)), verdict(f.passed), tostring(f.reason)))
  end
end

function Repl:cmd_filter(arg)
  local ev = self:event_arg()
  if arg == "" then
    local lines = self:filter(nil, ev)
    if #lines == 0 then
      self:print(fmt("no dependency listens to %s/%s", tostring(ev.context.source), tostring(ev.context.subject)))
    end
    for _, line in ipairs(lines) do print_filter_line(self, line, nil, ev) end
    return
  end
  print_filter_line(self, self:filter(arg, ev), self:find_dep(arg), ev)
end

function Repl:cmd_deps()
  local rows = self:deps()
  for _, r in ipairs(rows) do
    local v
    if r.matches == nil then v = ""
    elseif not r.matches then v = "-- other events"
    else v = "current event: " .. verdict(r.passed) .. (r.reason and (" (" .. r.reason .. ")") or "") end
    local extras = {}
    if r.transform then extras[#extras + 1] = "transform" end
    if r.filter then extras[#extras + 1] = "filters" end
    self:print(fmt("  %-20s %-24s %-20s %s", r.name, r.source, #extras > 0 and concat(extras, "+") or "", v))
  end
end

function Repl:cmd_transform(arg)
  if arg == "" then fail("usage: :transform DEP") end
  local before, after, err = self:transform(arg)
  if err == "no transform" then
    self:print(arg .. " has no transform: filters see the event data as it is")
    self:print(pretty(before))
    return
  end
  self:print("before:")
  self:print(pretty(before, ""))
  if after == nil then
    self:print("after: transform failed: " .. tostring(err))
  else
    self:print("after:")
    self:print(pretty(after, ""))
  end
end

local function show_value(v)
  if v == nil then return "(none)" end
  return pretty(v, "      ")
end

function Repl:cmd_params(arg)
  if arg == "" then fail("usage: :params TRIGGER") end
  local r = self:params(arg)
  local evs = {}
  for dep, e in pairs(r.events) do
    evs[#evs + 1] = fmt("%s = %s (id %s)", dep, e.index == "event" and "the current ad-hoc event" or ("event " .. e.index), tostring(e.id))
  end
  sort(evs)
  self:print(fmt("trigger %s (%s), events: %s", r.trigger, r.type, #evs > 0 and concat(evs, ", ") or "none"))
  for _, n in ipairs(r.notes) do self:print("  note: " .. n) end
  if #r.lists == 0 then
    self:print("  no parameters")
    return
  end
  for _, l in ipairs(r.lists) do
    self:print(l.title .. ":")
    for _, p in ipairs(l.params) do
      self:print(fmt("  %s", p.where))
      self:print(fmt("    source: %s", p.source))
      if p.error then
        self:print("    error: " .. p.error)
      else
        self:print(fmt("    value:  %s%s", p.value == nil and "(skipped: the dependency has no event and no value)" or show_value(p.value),
          p.raw and " (raw)" or ""))
        self:print(fmt("    dest:   %s%s", p.dest ~= "" and p.dest or "(the whole body)",
          (p.operation and p.operation ~= "overwrite") and (" (" .. p.operation .. ")") or ""))
        self:print(fmt("    before: %s", show_value(p.before)))
        self:print(fmt("    after:  %s", show_value(p.after)))
      end
    end
    if l.name == "payload" then -- the other targets are whole templates: the rows above say what changed
      self:print(fmt("  body before: %s", pretty(l.target_before, "  ")))
      self:print(fmt("  body after:  %s", pretty(l.target_after, "  ")))
    end
  end
end

function Repl:cmd_fire(arg)
  if arg == "" then fail("usage: :fire TRIGGER") end
  local line, why, notes = self:fire(arg)
  for _, n in ipairs(notes or {}) do self:print("note: " .. n) end
  if not line then
    self:print(why)
    return
  end
  self:print(T.encode(line))
end

function Repl:cmd_edit()
  if not self.sensor_path then fail("no sensor file to edit (:load FILE first)") end
  local editor = os.getenv("VISUAL") or os.getenv("EDITOR") or "vi"
  os.execute(editor .. " '" .. self.sensor_path:gsub("'", "'\\''") .. "'")
  self:print(self:reload())
end

function Repl:help(topic)
  if topic == nil or topic == "" then
    local lines = { "commands:" }
    for _, c in ipairs(COMMANDS) do lines[#lines + 1] = fmt("  %-18s %s", c[1], c[2]) end
    lines[#lines + 1] = "variables and functions (Lua; expressions print their value):"
    lines[#lines + 1] = "  event events sensor session   the current event, all events, the compiled sensor"
    lines[#lines + 1] = "  path(p) expr(e, fields) render(tpl)   gjson, govaluate and Go templates on event.data"
    lines[#lines + 1] = "  filter(dep) transform(dep) params(trigger) fire(trigger) deps()   what the commands print"
    lines[#lines + 1] = "  gjson govaluate template sprig exprlang json testing repl pp"
    lines[#lines + 1] = ":help NAME for one of them. Tab completes commands, names and event paths (in quotes)."
    return concat(lines, "\n")
  end
  topic = topic:gsub("^:", "")
  if HELP[topic] then return HELP[topic] end
  for _, c in ipairs(COMMANDS) do
    if c[1]:match("^:?(%S+)") == topic then return c[1] .. ": " .. c[2] end
  end
  -- a module or a field of one: list what it has
  local v = self:lookup(topic)
  if type(v) == "table" then
    local names = {}
    for k, x in pairs(v) do
      if type(k) == "string" and not k:match("^_") then names[#names + 1] = k .. (type(x) == "function" and "()" or "") end
    end
    sort(names)
    return topic .. ": " .. concat(names, " ")
  elseif type(v) == "function" then
    local base, name = topic:match("^(.-)[.:]([%w_]+)$")
    if base and HELP[base] then return HELP[base] end
    return topic .. " is a function; no help written for it"
  end
  return "no help for " .. topic
end

--- The value of a dotted name in the environment ("gjson.get"), or nil.
function Repl:lookup(name)
  local v = self.env
  for part in name:gmatch("[^.:]+") do
    if type(v) ~= "table" then return nil end
    local ok, x = pcall(function() return v[part] end)
    if not ok then return nil end
    v = x
  end
  return v
end

local function split_cmd(line)
  local cmd, arg = line:match("^(:%S*)%s*(.-)%s*$")
  return cmd, arg
end

--- Runs one command line (":name args" or "."). Fails with a message on a user error.
function Repl:command(line)
  if line == "." then return self:show() end
  local cmd, arg = split_cmd(line)
  if cmd == ":next" or cmd == ":n" then return self:move(1) end
  if cmd == ":prev" or cmd == ":p" then return self:move(-1) end
  if cmd == ":events" then return self:list_events() end
  if cmd == ":deps" then return self:cmd_deps() end
  if cmd == ":filter" then return self:cmd_filter(arg) end
  if cmd == ":transform" then return self:cmd_transform(arg) end
  if cmd == ":params" then return self:cmd_params(arg) end
  if cmd == ":fire" then return self:cmd_fire(arg) end
  if cmd == ":load" then return self:print(self:load(arg)) end
  if cmd == ":reload" then return self:print(self:reload()) end
  if cmd == ":edit" then return self:cmd_edit() end
  if cmd == ":help" or cmd == ":h" then return self:print(self:help(arg)) end
  if cmd == ":quit" or cmd == ":q" or cmd == ":exit" then
    self.quit = true
    return
  end
  fail("unknown command " .. tostring(cmd) .. " (:help lists them)")
end

---------------------------------------------------------------------------------------------
-- The environment code at the prompt runs in
---------------------------------------------------------------------------------------------

function Repl:make_env()
  local r = self
  local env = {}
  env.json, env.gjson, env.govaluate, env.template, env.sprig = cjson, gjson, govaluate, gotemplate, sprig
  env.exprlang, env.testing = exprlang, T
  env.events = self.events
  env.path = function(p, ev) return data_get(r:event_arg(ev), p) end
  env.expr = function(e, fields, ev)
    if not govaluate then fail("govaluate is not available") end
    ev = r:event_arg(ev)
    local params = {}
    if type(fields) == "table" then
      if fields[1] ~= nil then
        for _, f in ipairs(fields) do params[f.name] = data_get(ev, f.path) end
      else
        for name, p in pairs(fields) do params[name] = data_get(ev, p) end
      end
    end
    return govaluate.evaluate(e, params)
  end
  env.render = function(tpl, ev)
    if not gotemplate then fail("Go templates are not available") end
    return gotemplate.render(tpl, { Input = r:event_arg(ev).data })
  end
  env.filter = function(dep, ev) return r:filter(dep, ev) end
  env.transform = function(dep, ev)
    local before, after, err = r:transform(dep, ev)
    if after == nil then return nil, err end
    return before, after
  end
  env.params = function(trig) return r:params(trig) end
  env.fire = function(trig)
    local line, why = r:fire(trig)
    if line then return line end -- one value: the prompt prints no stray nil
    return nil, why
  end
  env.deps = function(ev) return r:deps(ev) end
  env.pp = function(...)
    for i = 1, select("#", ...) do r:print(pretty((select(i, ...)))) end
  end
  env.print = function(...) r:print(...) end
  env.repl = {
    next = function() return r:move(1) end,
    prev = function() return r:move(-1) end,
    load = function(path) return r:load(path) end,
    reload = function() return r:reload() end,
    show = function(ev) return r:show(ev) end,
    list_events = function() return r:list_events() end,
    help = function(topic) return r:help(topic) end,
    command = function(line) return r:command(line) end,
  }
  self.env = setmetatable(env, { __index = _G })
end

---------------------------------------------------------------------------------------------
-- Evaluation
---------------------------------------------------------------------------------------------

local function is_incomplete(err)
  return err ~= nil and err:find("near '<eof>'$") ~= nil
end

local function err_message(err)
  if type(err) == "string" then return err end
  if type(err) == "table" and err.msg then return tostring(err.msg) end
  return tostring(err)
end

local function pack(...) return { n = select("#", ...), ... } end

--- Compiles and runs src in the environment. Returns true, results (packed); or false, err,
--- incomplete (the chunk needs more lines).
function Repl:eval(src)
  local fn, err = loadstring("return " .. src, "=stdin")
  if not fn then
    local err2
    fn, err2 = loadstring(src, "=stdin")
    if not fn then
      if is_incomplete(err2) or is_incomplete(err) then return false, err2, true end
      return false, err2
    end
  end
  setfenv(fn, self.env)
  local res
  if core and core.call_interruptible then
    -- Ctrl-C interrupts a runaway chunk (`while true do end`) and returns to the prompt; hooks
    -- do not run in compiled traces, so what the prompt evaluates runs interpreted
    jit.off(fn, true)
    res = pack(core.call_interruptible(fn))
    if not res[1] then return false, err_message(res[2]) end
  else
    res = pack(xpcall(fn, err_message))
    if not res[1] then return false, res[2] end
  end
  return true, { n = res.n - 1, unpack(res, 2, res.n) }
end

--- Prints results the way the prompt shows them: one value per line.
function Repl:print_results(res)
  for i = 1, res.n do self:print(pretty(res[i])) end
end

--- Handles one input line. Returns "more" when the Lua chunk continues on the next line,
--- else true, or false, err on an error.
function Repl:feed_line(line)
  if self.pending then
    line = self.pending .. "\n" .. line
    self.pending = nil
  else
    local trimmed = line:match("^%s*(.-)%s*$")
    if trimmed == "" then return true end
    if trimmed == "." or trimmed:sub(1, 1) == ":" and not trimmed:match("^::") then
      local ok, err = pcall(self.command, self, trimmed)
      if not ok then return false, err_message(err) end
      return true
    end
  end
  local ok, res, incomplete = self:eval(line)
  if not ok then
    if incomplete then
      self.pending = line
      return "more"
    end
    return false, res
  end
  self:print_results(res)
  return true
end

---------------------------------------------------------------------------------------------
-- Completion
---------------------------------------------------------------------------------------------

local LUA_KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function",
  "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while" }

local function starts(s, prefix) return s:sub(1, #prefix) == prefix end

--- Field paths one level below `parent` ("" or "body.user.") in the data of every event.
function Repl:path_children(parent)
  local seen, out = {}, {}
  local keys = {}
  for k in parent:gmatch("([^.]+)%.") do keys[#keys + 1] = k end
  local function visit(v)
    for _, k in ipairs(keys) do
      if type(v) ~= "table" then return end
      local nk = tonumber(k)
      local x = v[k]
      if x == nil and nk then x = v[nk + 1] end
      v = x
    end
    if type(v) ~= "table" then return end
    if is_array(v) then
      for i = 1, math.min(#v, 10) do
        local s = tostring(i - 1)
        if not seen[s] then seen[s] = true; out[#out + 1] = s end
      end
      if not seen["#"] then seen["#"] = true; out[#out + 1] = "#" end
    else
      for k in pairs(v) do
        if type(k) == "string" and not seen[k] then seen[k] = true; out[#out + 1] = k end
      end
    end
  end
  for _, ev in ipairs(self.events) do visit(ev.data) end
  local cur = self.env.event
  if type(cur) == "table" and self.events[self.cursor] ~= cur then visit(cur.data) end
  return out
end

local function table_keys(v, out, seen)
  seen = seen or {}
  if type(v) ~= "table" or seen[v] then return end
  seen[v] = true
  for k in pairs(v) do
    if type(k) == "string" and k:match("^[%a_][%w_]*$") then out[k] = true end
  end
  local mt = getmetatable(v)
  if type(mt) == "table" and type(mt.__index) == "table" then table_keys(mt.__index, out, seen) end
end

--- The position of an open string before the cursor, and what is typed inside it, or nil.
local function open_string(before)
  local quote_ch, from = nil, nil
  local i = 1
  while i <= #before do
    local c = before:sub(i, i)
    if quote_ch then
      if c == "\\" then i = i + 1
      elseif c == quote_ch then quote_ch = nil end
    elseif c == '"' or c == "'" then
      quote_ch, from = c, i
    end
    i = i + 1
  end
  if quote_ch then return before:sub(from + 1) end
end

--- Candidates replacing `text` (the word before the cursor; libedit breaks words at spaces,
--- quotes, brackets and operators, but not at "." or ":") given the line up to the cursor.
function Repl:complete(text, line)
  local out = {}
  local before = line:sub(1, #line - #text)
  -- `full` is what the candidates must start with; `pre` the part of it typed before `text`
  -- (a name with "-" or "/" spans several libedit words), cut off the returned candidates
  local full, pre = text, ""
  local function add(c)
    if starts(c, full) then out[#out + 1] = c:sub(#pre + 1) end
  end
  local function done()
    sort(out)
    return out
  end
  -- commands and their arguments
  if before:match("^%s*$") and text:sub(1, 1) == ":" then
    for _, c in ipairs(COMMAND_NAMES) do add(c) end
    return done()
  end
  local cmd, argpre = before:match("^%s*(:%a+)%s+(.-)$")
  if cmd then
    pre, full = argpre, argpre .. text
    local s = self.session
    if (cmd == ":filter" or cmd == ":transform") and s then
      for _, d in ipairs(s.sensor.dependencies) do add(d.name) end
    elseif (cmd == ":params" or cmd == ":fire") and s then
      for _, t in ipairs(s.sensor.triggers) do add(t.name) end
    elseif cmd == ":help" then
      for k in pairs(HELP) do add(k) end
      for _, c in ipairs(COMMAND_NAMES) do add(c:sub(2)) end
    elseif cmd == ":load" and core.list_dir then
      local dir = full:match("^(.*/)") or ""
      for _, n in ipairs(core.list_dir(dir == "" and "." or dir) or {}) do
        if not n:match("^%.") or full:match("/%.[^/]*$") or full:match("^%.") then
          local path = dir .. n
          if core.stat and core.stat(path) == "dir" then path = path .. "/" end
          add(path)
        end
      end
    end
    return done()
  end
  -- inside a string: event field paths, one level at a time
  local instr = open_string(before)
  if instr then
    pre, full = instr, instr .. text
    local parent = full:match("^(.*%.)") or ""
    for _, k in ipairs(self:path_children(parent)) do add(parent .. k) end
    return done()
  end
  -- Lua names: globals of the environment, or fields of a table
  local base, sep = text:match("^(.*)([.:])[%w_]*$")
  local names = {}
  if base then
    table_keys(self:lookup(base), names)
  else
    table_keys(self.env, names)
    table_keys(_G, names)
    for _, k in ipairs(LUA_KEYWORDS) do names[k] = true end
  end
  for k in pairs(names) do add(base and (base .. sep .. k) or k) end
  return done()
end

---------------------------------------------------------------------------------------------
-- Running
---------------------------------------------------------------------------------------------

local function history_path()
  local state = os.getenv("XDG_STATE_HOME")
  if not state or state == "" then
    local home = os.getenv("HOME")
    if not home or home == "" then return nil end
    state = home .. "/.local/state"
  end
  return state .. "/herald/history"
end
_M.history_path = history_path

--- Reads lines from a file handle and processes them; stops at the first error.
--- Returns the exit code.
function Repl:run_script(lines_iter, source)
  for line in lines_iter do
    local ok, err = self:feed_line(line)
    io.stdout:flush()
    if ok == false then
      io.stderr:write(fmt("herald repl: %s: %s\n", source, tostring(err)))
      return 1
    end
    if self.quit then return 0 end
  end
  if self.pending then
    local _, err = self:eval(self.pending)
    io.stderr:write(fmt("herald repl: %s: %s\n", source, tostring(err)))
    return 1
  end
  return 0
end

function Repl:interactive()
  local hist = history_path()
  if hist then core.history_load(hist) end
  core.set_completer(function(text, line)
    local ok, res = pcall(self.complete, self, text, line)
    return ok and res or {}
  end)
  local banner = { "herald repl" }
  if self.session then
    banner[#banner + 1] = fmt(": sensor %s (%d dependencies, %d triggers)", self.session.sensor.name,
      #self.session.sensor.dependencies, #self.session.sensor.triggers)
  end
  if #self.events > 0 then banner[#banner + 1] = fmt(", %d events", #self.events) end
  self:print(concat(banner) .. ". :help lists commands, Ctrl-D quits.")
  io.stdout:flush()
  local buffer = {}
  while not self.quit do
    local line = core.readline(self.pending and "... " or "herald> ")
    if line == nil then
      self:print("")
      break
    end
    if line == false then
      self.pending = nil -- Ctrl-C drops the line and any unfinished chunk
      buffer = {}
    else
      if line:match("%S") then buffer[#buffer + 1] = line end
      local ok, err = self:feed_line(line)
      if ok ~= "more" then
        if #buffer > 0 then
          core.history_add(concat(buffer, "\n"))
          -- on disk at once: a crash or a kill keeps what was typed
          if hist and core.history_append then core.history_append(hist) end
        end
        buffer = {}
      end
      if ok == false then self:print("error: " .. tostring(err)) end
    end
    io.stdout:flush()
  end
  if hist then
    local ok, err = core.history_save(hist)
    if not ok then io.stderr:write("herald repl: history not saved: ", tostring(err), "\n") end
  end
  core.set_completer(nil)
  return 0
end

--- Entry point of `herald repl`: returns the exit code.
---@param paths string[] positional arguments (the sensor file, optional)
---@param opts table {events = FILE, eval = CODE, log_level = ...}
---@return integer
function _M.main(paths, opts)
  opts = opts or {}
  local r = _M.new()
  if #paths > 1 then
    io.stderr:write("herald repl: expected at most one Sensor file\n")
    return 2
  end
  local ok, err = pcall(function()
    if paths[1] then r:load_sensor(paths[1]) end
    if opts.events then r:load_events(opts.events) end
  end)
  if not ok then
    io.stderr:write("herald repl: ", err_message(err), "\n")
    return 2
  end
  if opts.eval then
    -- CODE is read like a script: line by line, commands included, chunks continued
    return r:run_script((opts.eval .. "\n"):gmatch("([^\n]*)\n"), "-e")
  end
  local tty = core.isatty and core.isatty(0)
  if not tty then return r:run_script(io.stdin:lines(), "stdin") end
  return r:interactive()
end

_M.Repl = Repl
return _M
