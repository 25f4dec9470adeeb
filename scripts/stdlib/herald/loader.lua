-- herald/loader.lua: reads Argo Events manifests (files and directories), checks them against
-- herald/schema.lua and Argo's own cross-field rules, and returns the objects with positions.
--
--   paths --(stat/list_dir, sorted)--> files --(read_file)--> text --(yaml_load)--> docs, pos
--     --> per document: apiVersion/kind/metadata, schema walk, cross-field rules
--     --> across documents: duplicate objects, dependencies naming unknown EventSources
--
-- Every message is "file:line:col: field.path: message". Positions: the key for unknown and
-- unsupported fields, the value for bad values, the enclosing mapping for missing fields.
-- Scalars are normalised in place where Argo's Go types would convert them: a number or
-- boolean written where Argo wants a string becomes the exact text the user wrote
-- (`port: 12000` -> "12000").

local schema = require "herald.schema"
local registry = require "herald.registry"

local _M = {}

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local floor, min = math.floor, math.min
local concat, sort = table.concat, table.sort
local unpack = unpack or table.unpack
local fmt = string.format

local SPEC_EXTENSIONS = { yaml = true, yml = true, json = true }

---------------------------------------------------------------------------------------------
-- Limits: what one load may read. Defaults far above real use (Kubernetes refuses an object
-- over 1.5 MiB; real Sensors have tens of triggers), low enough that a generated 10 MB file
-- is refused in milliseconds instead of taking a minute and gigabytes. Each hit is an error
-- at file:line:col naming the limit; `herald ... --spec-limits NAME=N,...` raises them.
---------------------------------------------------------------------------------------------

_M.DEFAULT_LIMITS = {
  bytes = 4 * 1024 * 1024,          -- per file
  ["load-bytes"] = 64 * 1024 * 1024, -- all files of one load
  documents = 1000,                 -- YAML documents in one load
  nodes = 1000000,                  -- YAML nodes (scalars, keys, mappings, sequences, alias
                                    -- expansions) in one load
  triggers = 10000,                 -- triggers in one Sensor
  dependencies = 10000,             -- dependencies in one Sensor
}
_M.LIMIT_NAMES = { "bytes", "load-bytes", "documents", "nodes", "triggers", "dependencies" }

local limits = {}
for k, v in pairs(_M.DEFAULT_LIMITS) do limits[k] = v end

--- Parses "name=N,name=N" (the --spec-limits value) into a table, or nil, message.
function _M.parse_limits(text)
  local out = {}
  for item in tostring(text):gmatch("[^,]+") do
    local name, n = item:match("^%s*([%w-]+)%s*=%s*(%d+)%s*$")
    n = tonumber(n)
    if not name then return nil, fmt("expected NAME=N[,NAME=N...], got \"%s\"", item) end
    if not _M.DEFAULT_LIMITS[name] then
      return nil, fmt("unknown limit \"%s\" (limits: %s)", name, concat(_M.LIMIT_NAMES, ", "))
    end
    if n < 1 then return nil, fmt("limit %s must be at least 1", name) end
    out[name] = n
  end
  return out
end

--- Sets the limits of every later load (names not given keep their defaults); returns them.
function _M.set_limits(t)
  limits = {}
  for k, v in pairs(_M.DEFAULT_LIMITS) do limits[k] = (t and t[k]) or v end
  return limits
end

--- The limits in force.
function _M.limits() return limits end

-- What a message about limit `name` adds: how to raise it.
local function limit_hint(name)
  return fmt("; if the spec is meant to be this large, raise the limit with --spec-limits %s=N", name)
end
_M.limit_hint = limit_hint

-- 1-based line and column of byte offset `off` (0-based) in text.
local function offset_position(text, off)
  local before = text:sub(1, off)
  local _, lines = before:gsub("\n", "")
  local last = before:match(".*\n()") or 1
  return lines + 1, off - last + 2
end

---------------------------------------------------------------------------------------------
-- Messages and positions
---------------------------------------------------------------------------------------------

--- Formats one message: "file:line:col: path: msg" (parts that are nil are left out).
---@param file string
---@param line integer|nil
---@param col integer|nil
---@param path string|nil field path such as spec.triggers[0].template.http.url
---@param msg string
---@return string
function _M.format_error(file, line, col, path, msg)
  local where = file or "<input>"
  if line then
    where = where .. ":" .. line .. ":" .. (col or 1)
  end
  if path and path ~= "" then
    return where .. ": " .. path .. ": " .. msg
  end
  return where .. ": " .. msg
end

--- Text from a spec for a message: on one line, control characters shown as escapes (a name
--- with a newline must not split the message, nor a terminal escape reach the terminal).
function _M.show(s)
  return (tostring(s):gsub("%c", function(c)
    return ({ ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" })[c] or ("\\x%02X"):format(c:byte())
  end))
end

local CONTROL_NAMES = { ["\n"] = "a newline", ["\r"] = "a carriage return", ["\t"] = "a tab",
  ["\0"] = "a NUL byte", ["\127"] = "DEL" }

--- nil when name holds no control character, else the message saying which and where.
function _M.name_problem(name)
  local at = name:find("%c")
  if not at then return nil end
  local c = name:sub(at, at)
  return fmt("a name must not contain control characters: %s at byte %d of \"%s\"",
    CONTROL_NAMES[c] or fmt("control character 0x%02X", c:byte()), at, _M.show(name))
end

--- Position of a field in a loaded document. With key: where the key (or sequence item)
--- starts; without: where the table itself starts. Returns line, col, or nil.
---@param doc_pos table the `pos` of a loaded object
---@param tbl table a table inside the object's document
---@param key string|integer|nil
function _M.position(doc_pos, tbl, key)
  local p = doc_pos and doc_pos[tbl]
  if not p then return nil end
  if key == nil then return p.line, p.col end
  if p.keys then
    local k = p.keys[key]
    if k then return k.line, k.col end
  elseif p.items then
    local it = p.items[key]
    if it then return it.line, it.col end
  end
  return p.line, p.col
end

--- Position of a field's value (falls back to the key, then the table).
function _M.value_position(doc_pos, tbl, key)
  local p = doc_pos and doc_pos[tbl]
  if not p then return nil end
  if key ~= nil and p.keys then
    local k = p.keys[key]
    if k then return k.vline or k.line, k.vcol or k.col end
  end
  return _M.position(doc_pos, tbl, key)
end

--- The exact text of a plain scalar that YAML typed as a number or boolean (nil otherwise).
function _M.scalar_text(doc_pos, tbl, key)
  local p = doc_pos and doc_pos[tbl]
  if not p then return nil end
  local r = p.keys and p.keys[key] or p.items and p.items[key]
  return r and r.text
end

--- A ready message about a field of a loaded object, for checks done after loading
--- (e.g. the sensor compiler rejecting a regexp): use value = true to point at the value.
---@param obj table an entry of result.objects
function _M.error_at(obj, tbl, key, path, msg, value)
  local line, col
  if value then
    line, col = _M.value_position(obj.pos, tbl, key)
  else
    line, col = _M.position(obj.pos, tbl, key)
  end
  return _M.format_error(obj.file, line, col, path, msg)
end

---------------------------------------------------------------------------------------------
-- Small helpers
---------------------------------------------------------------------------------------------

-- What a value is, in YAML words.
local function what_is(v, pos)
  local t = type(v)
  if v == nil or t == "userdata" then return "null" end
  if t == "table" then
    local p = pos[v]
    if p then return p.items and "sequence" or "mapping" end
    return (next(v) == 1 or #v > 0) and "sequence" or "mapping"
  end
  if t == "boolean" then return "boolean" end
  return t
end

local EXPECTED = {
  string = "string", int = "integer", number = "number", bool = "boolean", object = "mapping",
  map = "mapping", array = "sequence", port = "port number (a string such as \"12000\")",
  int_or_string = "integer or duration string", amount = "number",
}

local function child_path(base, name)
  if type(name) == "number" then return base .. "[" .. name .. "]" end
  if name:match("^[%w_%-]+$") then
    if base == "" then return name end
    return base .. "." .. name
  end
  return base .. fmt("[%q]", name)
end

-- Damerau-Levenshtein distance (optimal string alignment), for "did you mean".
local function distance(a, b)
  local la, lb = #a, #b
  if la == 0 then return lb end
  if lb == 0 then return la end
  local d = {}
  for i = 0, la do d[i] = { [0] = i } end
  for j = 0, lb do d[0][j] = j end
  for i = 1, la do
    local ai = a:byte(i)
    for j = 1, lb do
      local cost = ai == b:byte(j) and 0 or 1
      local v = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and ai == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        v = min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[la][lb]
end

--- The closest of candidates to name (case-insensitive), or nil when nothing is close.
---@param name string
---@param candidates string[]
function _M.suggest(name, candidates)
  local lname = name:lower()
  local best, best_d
  for _, c in ipairs(candidates) do
    local d = distance(lname, c:lower())
    if not best_d or d < best_d or (d == best_d and c < best) then best, best_d = c, d end
  end
  if not best then return nil end
  local limit = #name <= 3 and 1 or (#name <= 6 and 2 or 3)
  if best_d <= limit then return best end
  return nil
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  sort(ks)
  return ks
end

-- Keys of a mapping in source order (including keys whose value is null).
local function keys_in_order(pos, tbl)
  local p = pos[tbl]
  if p and p.order then return p.order end
  local ks = {}
  for k in pairs(tbl) do ks[#ks + 1] = tostring(k) end
  sort(ks)
  return ks
end

-- Does the mapping tbl have key k (even with a null value)?
local function has_key(pos, tbl, k)
  if tbl[k] ~= nil then return true end
  local p = pos[tbl]
  return p and p.keys and p.keys[k] ~= nil or false
end

local function list(xs, sep)
  return concat(xs, sep or ", ")
end

---------------------------------------------------------------------------------------------
-- The schema walk
---------------------------------------------------------------------------------------------

-- ctx: {file, pos, errors, warnings, notes}
local function err_key(ctx, tbl, key, path, msg)
  local line, col = _M.position(ctx.pos, tbl, key)
  ctx.errors[#ctx.errors + 1] = _M.format_error(ctx.file, line, col, path, msg)
end

local function err_value(ctx, tbl, key, path, msg)
  local line, col = _M.value_position(ctx.pos, tbl, key)
  ctx.errors[#ctx.errors + 1] = _M.format_error(ctx.file, line, col, path, msg)
end

local function err_table(ctx, tbl, path, msg)
  local line, col = _M.position(ctx.pos, tbl)
  ctx.errors[#ctx.errors + 1] = _M.format_error(ctx.file, line, col, path, msg)
end

local function unsupported_what(s, name)
  if type(s.supported) == "string" then return s.supported end
  return s.what or s.doc or name
end

local function is_supported(s)
  return s.supported == nil or s.supported == true
end

local validate -- forward

local function warn_key(ctx, tbl, key, path, msg)
  local line, col = _M.position(ctx.pos, tbl, key)
  ctx.warnings[#ctx.warnings + 1] = _M.format_error(ctx.file, line, col, path, msg)
end

-- Go's JSON decoding matches field names case-insensitively, so Argo Events reads `openwhisk`
-- as openWhisk and `verifycert` as verifyCert. Such a key is renamed to the real field (in the
-- document and its positions) with a warning; --strict makes it an error. A key whose real
-- spelling is also present is left alone (it is reported as an unknown field).
local function fold_case(ctx, fields, v, path)
  local p = ctx.pos[v]
  local order = p and p.order
  if not order or not p.keys then return end
  local lower -- lower-cased field name -> field name (false when two fields fold together)
  for i, k in ipairs(order) do
    if type(k) == "string" and not fields[k] then
      if not lower then
        lower = {}
        for name, fs in pairs(fields) do
          if not fs.retired then
            local l = name:lower()
            lower[l] = lower[l] == nil and name or false
          end
        end
      end
      local real = lower[k:lower()]
      if real and not has_key(ctx.pos, v, real) then
        warn_key(ctx, v, k, child_path(path, k), fmt("field names are case-sensitive: this is %s " ..
          "(Argo Events reads it because Go's JSON decoding ignores case); write %s", real, real))
        v[real], v[k] = v[k], nil
        p.keys[real], p.keys[k] = p.keys[k], nil
        order[i] = real
      end
    end
  end
end

-- A GroupVersionResource (`group`, `version`, `resource` of a k8s or argoWorkflow trigger, from
-- Argo before v1.0) against the inline object's apiVersion and kind: a disagreement is an error
-- naming both positions. The lower-case kind, plus "s" / "es", or "y" -> "ies", is the resource.
local function plural_matches(resource, kind)
  local r, k = resource:lower(), kind:lower()
  if r == k or r == k .. "s" or r == k .. "es" then return true end
  return k:sub(-1) == "y" and r == k:sub(1, -2) .. "ies"
end

local function check_gvr(ctx, v, gvr, path)
  local src = type(v.source) == "table" and v.source or nil
  local obj = src and type(src.resource) == "table" and src.resource or nil
  if not obj then return end
  local api, kind = obj.apiVersion, obj.kind
  local function at(key)
    local line, col = _M.value_position(ctx.pos, obj, key)
    return fmt("%s:%d:%d", ctx.file, line or 1, col or 1)
  end
  if type(api) == "string" and (gvr.group ~= nil or gvr.version ~= nil) then
    local og, ov = api:match("^(.*)/([^/]*)$")
    if not og then og, ov = "", api end -- "v1": the core group
    for _, f in ipairs({ "group", "version" }) do
      local want = gvr[f]
      if want ~= nil and tostring(want) ~= (f == "group" and og or ov) then
        err_value(ctx, v, f, child_path(path, f), fmt('%s "%s" does not match the object\'s apiVersion "%s" at %s (its %s is "%s")',
          f, tostring(want), api, at("apiVersion"), f, f == "group" and og or ov))
      end
    end
  end
  if type(kind) == "string" and gvr.resource ~= nil and not plural_matches(tostring(gvr.resource), kind) then
    err_value(ctx, v, "resource", child_path(path, "resource"), fmt('resource "%s" does not match the object\'s kind "%s" at %s',
      tostring(gvr.resource), kind, at("kind")))
  end
end

-- A field Argo Events once had and now ignores: a warning naming what replaced it, and the value
-- dropped (or moved to fs.moved_to when that is not set). Returns the value for the caller.
local function retire(ctx, fields, fs, v, k, kp, path)
  local val = v[k]
  local instead = fs.retired:gsub("spec%.triggers%[N%]", path:match("^(spec%.triggers%[%d+%])") or "spec.triggers[N]")
  local msg
  if fs.gvr then
    msg = fmt("no longer needed: Argo Events ignores it and takes the resource from %s (Herald checks that they agree); remove it", instead)
  else
    msg = fmt("no longer part of Argo Events, which ignores it: %s", instead)
  end
  v[k] = nil
  local to = fs.moved_to
  if to then
    local p = ctx.pos[v]
    if not has_key(ctx.pos, v, to) and val ~= nil then
      v[to] = val
      if p and p.keys then p.keys[to] = p.keys[k] end
      msg = msg .. fmt("; Herald uses its value as %s", to)
      validate(ctx, fields[to], v, to, child_path(path, to))
    else
      msg = msg .. fmt("; ignored, as %s is set", to)
    end
  elseif not fs.gvr then
    msg = msg .. "; ignored"
  end
  warn_key(ctx, v, k, kp, msg)
  return val
end

local function check_enum(ctx, s, v, parent, key, path)
  if not s.enum then return end
  for _, e in ipairs(s.enum) do
    if v == e then return end
  end
  local msg = "must be one of " .. list(s.enum) .. " (got \"" .. tostring(v) .. "\")"
  for _, e in ipairs(s.enum) do
    if tostring(v):lower() == e:lower() then
      msg = msg .. "; did you mean " .. e .. "?"
      break
    end
  end
  err_value(ctx, parent, key, path, msg)
end

local function validate_object(ctx, s, v, path)
  local fields = s.fields
  local names -- sorted field names, built on first unknown key
  local suggested = {} -- names offered as "did you mean": no "needs one of" for those
  local gvr -- group/version/resource given (k8s, argoWorkflow)
  fold_case(ctx, fields, v, path)
  for _, k in ipairs(keys_in_order(ctx.pos, v)) do
    local fs = fields[k]
    local kp = child_path(path, k)
    if fs and fs.retired then
      local val = retire(ctx, fields, fs, v, k, kp, path)
      if fs.gvr and val ~= nil then
        gvr = gvr or {}
        gvr[k] = val
        v[k] = val -- kept for the check below, dropped after it
      end
    elseif not fs then
      names = names or sorted_keys(fields)
      local hint = _M.suggest(k, names)
      if hint then
        suggested[hint] = true
        err_key(ctx, v, k, kp, "unknown field; did you mean " .. hint .. "?" ..
                (hint:lower() == k:lower() and " (field names are case-sensitive)" or ""))
      else
        err_key(ctx, v, k, kp, "unknown field")
      end
    elseif fs.not_built then -- a type whose folder is left out of this build (herald.registry)
      err_key(ctx, v, k, kp, fs.not_built)
    elseif not is_supported(fs) then
      local val = v[k]
      if val ~= nil and not (fs.default ~= nil and val == fs.default) then
        err_key(ctx, v, k, kp, "not supported by Herald yet (" .. unsupported_what(fs, k) .. ")")
      end
    else
      if fs.deployment then
        local line, col = _M.position(ctx.pos, v, k)
        ctx.notes[#ctx.notes + 1] = _M.format_error(ctx.file, line, col, kp,
          "deployment setting, ignored when Herald runs locally")
      end
      if v[k] ~= nil then
        validate(ctx, fs, v, k, kp)
      elseif fs.required then
        err_key(ctx, v, k, kp, "required")
      end
    end
  end
  if gvr then
    check_gvr(ctx, v, gvr, path)
    for k in pairs(gvr) do v[k] = nil end
  end
  -- missing required fields, in a stable order
  for _, name in ipairs(sorted_keys(fields)) do
    local fs = fields[name]
    if fs.required and is_supported(fs) and not has_key(ctx.pos, v, name) then
      err_table(ctx, v, child_path(path, name), "required")
    end
  end
  if s.exactly_one_of or s.at_least_one_of then
    local set = {}
    for _, name in ipairs(s.exactly_one_of or s.at_least_one_of) do
      if v[name] ~= nil then set[#set + 1] = name end
    end
    local typo = false
    for name in pairs(suggested) do
      for _, c in ipairs(s.exactly_one_of or s.at_least_one_of) do typo = typo or c == name end
    end
    if #set == 0 and not typo then
      err_table(ctx, v, path, "needs one of " .. list(s.exactly_one_of or s.at_least_one_of))
    elseif s.exactly_one_of and #set > 1 then
      -- point at the later of the conflicting keys
      local last, last_line = set[1], -1
      for _, name in ipairs(set) do
        local line = _M.position(ctx.pos, v, name) or 0
        if line > last_line then last, last_line = name, line end
      end
      err_key(ctx, v, last, child_path(path, last),
              "only one of " .. list(set, " and ") .. " may be set")
    end
  end
end

-- Validates parent[key] against s; may replace parent[key] with its normalised form.
function validate(ctx, s, parent, key, path)
  local v = parent[key]
  local kind = s.kind
  local got = what_is(v, ctx.pos)
  if kind == "any" then return end
  if kind == "string" then
    if type(v) == "number" or type(v) == "boolean" then
      v = _M.scalar_text(ctx.pos, parent, key) or tostring(v)
      parent[key] = v
    elseif type(v) ~= "string" then
      return err_value(ctx, parent, key, path, "expected string, got " .. got)
    end
    if v == "" and s.required then
      return err_value(ctx, parent, key, path, "must not be empty")
    end
    if s.prefix and v:sub(1, #s.prefix) ~= s.prefix then
      return err_value(ctx, parent, key, path, "must start with \"" .. s.prefix .. "\" (got \"" .. v .. "\")")
    end
    if s.name then
      local msg = _M.name_problem(v)
      if msg then return err_value(ctx, parent, key, path, msg) end
    end
    if s.check then -- a value check the engine owns (cron, duration, time zone ...)
      local msg = s.check(v, parent)
      if msg then return err_value(ctx, parent, key, path, msg) end
    end
    return check_enum(ctx, s, v, parent, key, path)
  elseif kind == "port" then
    if type(v) == "number" then
      v = _M.scalar_text(ctx.pos, parent, key) or tostring(v)
      parent[key] = v
    elseif type(v) ~= "string" then
      return err_value(ctx, parent, key, path, "expected " .. EXPECTED.port .. ", got " .. got)
    end
    local n = v:match("^%d+$") and tonumber(v)
    if not n or n < 1 or n > 65535 then
      return err_value(ctx, parent, key, path, "must be a port number from 1 to 65535 (got \"" .. v .. "\")")
    end
    return
  elseif kind == "int" or kind == "number" then
    if type(v) ~= "number" then
      return err_value(ctx, parent, key, path, "expected " .. EXPECTED[kind] .. ", got " .. got)
    end
    if kind == "int" and (v ~= floor(v) or v ~= v or v == math.huge or v == -math.huge) then
      return err_value(ctx, parent, key, path, "expected integer, got " .. tostring(_M.scalar_text(ctx.pos, parent, key) or v))
    end
    if s.min and v < s.min then
      return err_value(ctx, parent, key, path, "must be at least " .. s.min .. " (got " .. tostring(v) .. ")")
    end
    if s.max and v > s.max then
      return err_value(ctx, parent, key, path, "must be at most " .. s.max .. " (got " .. tostring(v) .. ")")
    end
    if s.check then
      local msg = s.check(v, parent)
      if msg then return err_value(ctx, parent, key, path, msg) end
    end
    return
  elseif kind == "bool" then
    if type(v) ~= "boolean" then
      return err_value(ctx, parent, key, path, "expected boolean (true or false), got " .. got)
    end
    return
  elseif kind == "int_or_string" then
    if type(v) == "number" and v == floor(v) then return end
    if type(v) == "string" and v ~= "" then return end
    return err_value(ctx, parent, key, path, "expected " .. EXPECTED[kind] .. ", got " .. got)
  elseif kind == "amount" then
    if type(v) == "number" or (type(v) == "string" and tonumber(v)) then return end
    return err_value(ctx, parent, key, path, "expected a number, got " .. got)
  elseif kind == "object" or kind == "map" then
    if got ~= "mapping" then
      return err_value(ctx, parent, key, path, "expected mapping, got " .. got)
    end
    if kind == "object" then return validate_object(ctx, s, v, path) end
    for _, k in ipairs(keys_in_order(ctx.pos, v)) do
      local kp = child_path(path, k)
      if v[k] == nil then
        err_value(ctx, v, k, kp, "expected " .. (EXPECTED[s.of.kind] or s.of.kind) .. ", got null")
      else
        validate(ctx, s.of, v, k, kp)
      end
    end
    return
  elseif kind == "array" then
    if got ~= "sequence" then
      return err_value(ctx, parent, key, path, "expected sequence, got " .. got)
    end
    if #v == 0 and s.required then
      return err_value(ctx, parent, key, path, "must not be empty")
    end
    for i = 1, #v do
      local ip = child_path(path, i - 1)
      if type(v[i]) == "userdata" then
        err_key(ctx, v, i, ip, "expected " .. (EXPECTED[s.of.kind] or s.of.kind) .. ", got null")
      else
        validate(ctx, s.of, v, i, ip)
        if s.nonempty_items and v[i] == "" then
          err_key(ctx, v, i, ip, "must not be empty")
        end
      end
    end
    if s.check then -- on the whole list: message[, the index of the element at fault]
      local msg, at = s.check(v, parent)
      if msg and at and v[at] ~= nil then
        err_key(ctx, v, at, child_path(path, at - 1), msg)
      elseif msg then
        err_value(ctx, parent, key, path, msg)
      end
    end
    return
  end
  error("herald.schema: unknown kind " .. tostring(kind) .. " at " .. path)
end

--- Checks a document that is not a Kubernetes object (a *_test.yaml file, say) against a
--- schema node built with herald.schema's constructors (schema.lib). Returns the error
--- messages (file:line:col: path: message) and the warnings.
function _M.check_document(file, pos, s, doc)
  local ctx = { file = file, pos = pos, errors = {}, warnings = {}, notes = {}, infos = {},
                configmaps = {} }
  validate(ctx, s, { doc }, 1, "")
  return ctx.errors, ctx.warnings
end

---------------------------------------------------------------------------------------------
-- Argo's cross-field rules
---------------------------------------------------------------------------------------------

--- Parses a trigger `conditions` expression (names joined by &&, || and parentheses).
--- Returns the list of {name=, col=} it references, or nil, message.
---@param expr string
function _M.parse_conditions(expr)
  local toks, i, n = {}, 1, #expr
  while i <= n do
    local c = expr:sub(i, i)
    if c:match("%s") then
      i = i + 1
    elseif c == "(" or c == ")" then
      toks[#toks + 1] = { t = c, col = i }
      i = i + 1
    elseif expr:sub(i, i + 1) == "&&" or expr:sub(i, i + 1) == "||" then
      toks[#toks + 1] = { t = expr:sub(i, i + 1), col = i }
      i = i + 2
    elseif c == "&" or c == "|" then
      return nil, fmt("'%s' at column %d: use %s%s", c, i, c, c)
    else
      local j = i
      while j <= n and not expr:sub(j, j):match("[%s()&|]") do j = j + 1 end
      local name = expr:sub(i, j - 1)
      if not name:match("^[%w_%-%.]+$") then
        return nil, fmt("unexpected \"%s\" at column %d (only dependency names, &&, || and parentheses are allowed)", name, i)
      end
      toks[#toks + 1] = { t = "name", v = name, col = i }
      i = j
    end
  end
  local p, names = 1, {}
  local parse_or
  local function describe(tk) return tk and ("'" .. (tk.v or tk.t) .. "' at column " .. tk.col) or "the end" end
  local function parse_atom()
    local tk = toks[p]
    if tk and tk.t == "name" then
      names[#names + 1] = { name = tk.v, col = tk.col }
      p = p + 1
      return true
    elseif tk and tk.t == "(" then
      p = p + 1
      local ok, e = parse_or()
      if not ok then return nil, e end
      if not toks[p] or toks[p].t ~= ")" then
        return nil, "missing ')' for the '(' at column " .. tk.col
      end
      p = p + 1
      return true
    end
    return nil, "expected a dependency name, found " .. describe(tk)
  end
  local function parse_and()
    local ok, e = parse_atom()
    if not ok then return nil, e end
    while toks[p] and toks[p].t == "&&" do
      p = p + 1
      ok, e = parse_atom()
      if not ok then return nil, e end
    end
    return true
  end
  function parse_or()
    local ok, e = parse_and()
    if not ok then return nil, e end
    while toks[p] and toks[p].t == "||" do
      p = p + 1
      ok, e = parse_and()
      if not ok then return nil, e end
    end
    return true
  end
  if #toks == 0 then return nil, "empty expression" end
  local ok, e = parse_or()
  if not ok then return nil, e end
  if toks[p] then return nil, "unexpected " .. describe(toks[p]) end
  return names
end

-- What a source type's `lint` hook (herald.sources.<type>) may use: it checks or completes the
-- EventSource before validation (e.g. the webhook's port from spec.service.ports).
local function lint_helpers()
  return { what_is = what_is, keys_in_order = keys_in_order, has_key = has_key, list = list,
    err_table = err_table, show = _M.show, value_position = _M.value_position,
    format_error = _M.format_error }
end

local function check_event_source(ctx, doc)
  local spec = doc.spec
  if type(spec) ~= "table" then return end
  for _, e in ipairs(registry.sources) do
    local mod = registry.module(e)
    if mod and mod.lint then mod.lint(ctx, spec, lint_helpers()) end
  end
  local fields = schema.event_source_spec.fields
  local seen, n_sources, aa, ap = {}, 0, nil, nil
  for _, t in ipairs(keys_in_order(ctx.pos, spec)) do
    local fs = fields[t]
    local m = spec[t]
    if fs and fs.source_type and type(m) == "table" and what_is(m, ctx.pos) == "mapping" then
      if fs.active_active then aa = aa or t else ap = ap or t end
      for _, ev in ipairs(keys_in_order(ctx.pos, m)) do
        n_sources = n_sources + 1
        local path = "spec." .. t .. "." .. _M.show(ev)
        local bad = _M.name_problem(ev)
        if bad then
          err_key(ctx, m, ev, path, bad)
        elseif seen[ev] then
          err_key(ctx, m, ev, path, fmt("event name \"%s\" is already used by %s (event names must be unique across all types in one EventSource)", _M.show(ev), seen[ev]))
        else
          seen[ev] = path
        end
      end
    end
  end
  if n_sources == 0 then
    err_table(ctx, spec, "spec", "no events defined (add a source type such as spec.webhook or spec.calendar)")
  end
  if aa and ap and is_supported(fields[aa]) and is_supported(fields[ap]) then
    -- Herald runs this fine; Argo's validator refuses it, so say so without failing.
    local line, col = _M.position(ctx.pos, spec, ap)
    ctx.warnings[#ctx.warnings + 1] = _M.format_error(ctx.file, line, col, "spec." .. ap,
      fmt("Argo Events refuses spec.%s and spec.%s in one EventSource (it runs %s sources on every replica and %s sources on one elected leader); put them in separate EventSources to stay portable", aa, ap, aa, ap))
  end
end

local function check_sensor(ctx, doc)
  local spec = doc.spec
  if type(spec) ~= "table" then return end
  local deps, dep_list = {}, {}
  if type(spec.dependencies) == "table" then
    for i, d in ipairs(spec.dependencies) do
      if type(d) == "table" and type(d.name) == "string" and d.name ~= "" then
        local path = "spec.dependencies[" .. (i - 1) .. "].name"
        if deps[d.name] then
          err_value(ctx, d, "name", path, fmt("duplicate dependency name \"%s\" (also %s)", _M.show(d.name), deps[d.name]))
        else
          deps[d.name] = "spec.dependencies[" .. (i - 1) .. "]"
          dep_list[#dep_list + 1] = d.name
        end
      end
    end
  end
  local function check_params(list_, base)
    if type(list_) ~= "table" then return end
    for j, prm in ipairs(list_) do
      local src = type(prm) == "table" and prm.src
      if type(src) == "table" and type(src.dependencyName) == "string" and src.dependencyName ~= ""
         and not deps[src.dependencyName] then
        local line, col = _M.value_position(ctx.pos, src, "dependencyName")
        local hint = _M.suggest(src.dependencyName, dep_list)
        ctx.warnings[#ctx.warnings + 1] = _M.format_error(ctx.file, line, col,
          base .. "[" .. (j - 1) .. "].src.dependencyName",
          fmt("no dependency named \"%s\"%s (the parameter will only use its value)",
              _M.show(src.dependencyName), hint and ("; did you mean " .. hint .. "?") or ""))
      end
    end
  end
  if type(spec.triggers) ~= "table" then return end
  local names = {}
  for i, tr in ipairs(spec.triggers) do
    local base = "spec.triggers[" .. (i - 1) .. "]"
    local tpl = type(tr) == "table" and tr.template
    if type(tpl) == "table" then
      if type(tpl.name) == "string" and tpl.name ~= "" then
        if names[tpl.name] then
          err_value(ctx, tpl, "name", base .. ".template.name",
                    fmt("duplicate trigger name \"%s\" (also %s)", _M.show(tpl.name), names[tpl.name]))
        else
          names[tpl.name] = base
        end
      end
      local cond = tpl.conditions
      if type(cond) == "string" and cond:match("%S") then
        local path = base .. ".template.conditions"
        local refs, e = _M.parse_conditions(cond)
        if not refs then
          err_value(ctx, tpl, "conditions", path, "invalid expression: " .. e)
        else
          -- Argo matches names with every "-" made "_" on both sides; the later of two
          -- dependencies that meet that way wins (herald.sensor.condition_names)
          local norm, collide = {}, {}
          for _, dn in ipairs(dep_list) do
            local k = dn:gsub("%-", "_")
            if norm[k] then collide[k] = { norm[k], dn } end
            norm[k] = dn
          end
          for _, r in ipairs(refs) do
            local k = r.name:gsub("%-", "_")
            if collide[k] then
              local line, col = _M.value_position(ctx.pos, tpl, "conditions")
              ctx.warnings[#ctx.warnings + 1] = _M.format_error(ctx.file, line, col, path,
                fmt("\"%s\" means dependency \"%s\": Argo matches names with \"-\" as \"_\", and \"%s\" and \"%s\" meet that way (the later one wins)",
                  r.name, collide[k][2], collide[k][1], collide[k][2]))
            end
            if not norm[k] then
              local hint = _M.suggest(r.name, dep_list)
              err_value(ctx, tpl, "conditions", path, fmt("unknown dependency \"%s\"%s (defined: %s)",
                r.name, hint and ("; did you mean " .. hint .. "?") or "", list(dep_list)))
            end
          end
        end
      end
      if type(tpl.http) == "table" then
        check_params(tpl.http.payload, base .. ".template.http.payload")
        check_params(tpl.http.parameters, base .. ".template.http.parameters")
      end
    end
    if type(tr) == "table" then check_params(tr.parameters, base .. ".parameters") end
  end
end

local CHECKS = { EventSource = check_event_source, Sensor = check_sensor }

---------------------------------------------------------------------------------------------
-- Documents
---------------------------------------------------------------------------------------------

local K8S_NAME_MSG = "must be a valid Kubernetes name: lower-case letters, digits, '-' and '.', " ..
                     "starting and ending with a letter or digit, at most 253 characters"

local function valid_k8s_name(s)
  if #s == 0 or #s > 253 then return false end
  for label in (s .. "."):gmatch("([^.]*)%.") do
    if not label:match("^[a-z0-9]$") and not label:match("^[a-z0-9][a-z0-9%-]*[a-z0-9]$") then
      return false
    end
  end
  return true
end

-- Another Kubernetes object beside the specs (Argo's examples keep a ServiceAccount, a Role,
-- a ConfigMap, a Pod, a WorkflowTemplate ... in the same file): skipped with one info line. A
-- ConfigMap's data is kept: it serves the source.configmap of k8s and argoWorkflow triggers
-- (see resolve_configmaps), as the cluster would.
local function other_object(ctx, doc)
  local md = type(doc.metadata) == "table" and doc.metadata or {}
  local name = type(md.name) == "string" and md.name or nil
  local line, col = _M.position(ctx.pos, doc)
  local what = fmt("%s%s", _M.show(doc.kind), name and (" \"" .. _M.show(name) .. "\"") or "")
  if doc.kind == "ConfigMap" and doc.apiVersion == "v1" and name then
    local data = {}
    if type(doc.data) == "table" then
      for k, v in pairs(doc.data) do
        if type(k) == "string" then
          data[k] = (type(v) == "number" or type(v) == "boolean") and (_M.scalar_text(ctx.pos, doc.data, k) or tostring(v)) or v
        end
      end
    end
    ctx.configmaps[#ctx.configmaps + 1] = { name = name, data = data, file = ctx.file, line = line, col = col,
      namespace = type(md.namespace) == "string" and md.namespace ~= "" and md.namespace or nil }
    ctx.infos[#ctx.infos + 1] = _M.format_error(ctx.file, line, col, nil,
      fmt("%s: not run by Herald; its data serves the source.configmap of k8s and argoWorkflow triggers", what))
  else
    ctx.infos[#ctx.infos + 1] = _M.format_error(ctx.file, line, col, nil,
      fmt("%s (%s): skipped; Herald runs %s", what, _M.show(tostring(doc.apiVersion)), list(schema.KINDS)))
  end
  return nil
end

-- Validates one document; returns an object entry (or nil when it is not a usable object).
local function load_document(ctx, doc, index)
  local pos = ctx.pos
  if type(doc) ~= "table" or what_is(doc, pos) ~= "mapping" then
    local d = pos.documents and pos.documents[index]
    ctx.errors[#ctx.errors + 1] = _M.format_error(ctx.file, d and d.line, d and d.col, nil,
      "expected a Kubernetes object (a mapping with apiVersion, kind, metadata and spec), got " .. what_is(doc, pos))
    return nil
  end
  local kind = doc.kind
  if type(kind) == "string" and not schema.kinds[kind] and
     (doc.apiVersion ~= schema.API_VERSION or not _M.suggest(kind, schema.KINDS)) then
    return other_object(ctx, doc)
  end
  if doc.apiVersion == nil then
    err_table(ctx, doc, "apiVersion", "required (argoproj.io/v1alpha1)")
  elseif doc.apiVersion ~= schema.API_VERSION then
    err_value(ctx, doc, "apiVersion", "apiVersion",
              fmt("must be %s (got \"%s\")", schema.API_VERSION, tostring(doc.apiVersion)))
  end
  if kind == nil then
    err_table(ctx, doc, "kind", "required (one of " .. list(schema.KINDS) .. ")")
    return nil
  end
  local s = schema.kinds[kind]
  if not s then
    local hint = type(kind) == "string" and _M.suggest(kind, schema.KINDS)
    err_value(ctx, doc, "kind", "kind", fmt("unknown kind \"%s\"%s; Herald loads %s", tostring(kind),
      hint and (" (did you mean " .. hint .. "?)") or "", list(schema.KINDS)))
    return nil
  end
  if kind == "Sensor" and type(doc.spec) == "table" then
    for _, what in ipairs({ "triggers", "dependencies" }) do
      local list, max = doc.spec[what], limits[what]
      if type(list) == "table" and #list > max then
        -- said once, at the first one too many; the rest of the document is not walked
        err_key(ctx, list, max + 1, fmt("spec.%s[%d]", what, max),
          fmt("more than %d %s in one Sensor (limit \"%s\")%s", max, what, what, limit_hint(what)))
        return nil
      end
    end
  end
  validate(ctx, s, { doc }, 1, "")
  local md = doc.metadata
  local name = type(md) == "table" and md.name
  if type(name) == "string" and name ~= "" and not valid_k8s_name(name) then
    err_value(ctx, md, "name", "metadata.name", K8S_NAME_MSG .. " (got \"" .. _M.show(name) .. "\")")
  end
  if CHECKS[kind] then CHECKS[kind](ctx, doc) end
  if type(name) ~= "string" or name == "" then return nil end
  local ns = type(md.namespace) == "string" and md.namespace ~= "" and md.namespace or nil
  local line, col = _M.position(pos, doc)
  return { kind = kind, name = name, namespace = ns, file = ctx.file, doc = doc, pos = pos,
           line = line, col = col, index = index }
end

---------------------------------------------------------------------------------------------
-- Files
---------------------------------------------------------------------------------------------

-- The size of a file in bytes (nil when it cannot be opened).
local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local n = f:seek("end")
  f:close()
  return n
end

-- The first n bytes of a file.
local function file_prefix(path, n)
  local f = io.open(path, "rb")
  if not f then return "" end
  local t = f:read(n) or ""
  f:close()
  return t
end

local function default_io()
  local core = require "herald.core"
  return { read_file = core.read_file, stat = core.stat, list_dir = core.list_dir,
           yaml_load = core.yaml_load, size = file_size, prefix = file_prefix }
end

local function join(dir, name)
  if dir:sub(-1) == "/" then return dir .. name end
  return dir .. "/" .. name
end

-- Appends spec files under dir (recursive, sorted, dot-entries skipped) to out.
local function walk(fs, dir, out, errors)
  local entries, e = fs.list_dir(dir)
  if not entries then
    errors[#errors + 1] = dir .. ": cannot list directory: " .. tostring(e)
    return
  end
  entries = { unpack(entries) }
  sort(entries)
  for _, name in ipairs(entries) do
    if name:sub(1, 1) ~= "." then
      local p = join(dir, name)
      local kind = fs.stat(p)
      if kind == "dir" then
        walk(fs, p, out, errors)
      elseif kind == "file" then
        local ext = name:match("%.([^.]+)$")
        -- *_test.yaml files beside the specs are sensor tests (herald test), not specs
        if ext and SPEC_EXTENSIONS[ext:lower()] and not name:match("_test%.ya?ml$") then out[#out + 1] = p end
      end
    end
  end
end

-- The source.configmap of k8s and argoWorkflow triggers (also in a dlqTrigger), served from
-- the ConfigMaps loaded beside the Sensors: the key's text becomes source.inline, as if the
-- cluster had given it. A ConfigMap not loaded is read at run time from $HERALD_CONFIG_DIR.
local function resolve_configmaps(result)
  if #result.configmaps == 0 then return end
  for _, o in ipairs(result.objects) do
    local spec = o.kind == "Sensor" and type(o.doc.spec) == "table" and o.doc.spec
    local triggers = spec and type(spec.triggers) == "table" and spec.triggers or {}
    local function one(tr, base)
      local tpl = type(tr) == "table" and type(tr.template) == "table" and tr.template
      if not tpl then return end
      for _, e in ipairs(registry.triggers) do -- the types whose source is a Kubernetes object
        local t = e.name
        local mod = registry.module(e)
        local src = mod and mod.resource and type(tpl[t]) == "table" and type(tpl[t].source) == "table" and tpl[t].source
        local sel = src and type(src.configmap) == "table" and src.configmap
        if sel and type(sel.name) == "string" then
          local cm
          for _, c in ipairs(result.configmaps) do
            if c.name == sel.name and (c.namespace == nil or o.namespace == nil or c.namespace == o.namespace) then cm = c end
          end
          if cm then
            local path = fmt("%s.template.%s.source.configmap", base, t)
            local text = cm.data[tostring(sel.key)]
            if type(text) == "string" then
              src.inline, src.configmap = text, nil
              local line, col = _M.position(o.pos, src, "configmap")
              result.notes[#result.notes + 1] = _M.format_error(o.file, line, col, path,
                fmt("served from ConfigMap \"%s\" at %s:%d:%d", cm.name, cm.file, cm.line or 1, cm.col or 1))
            elseif sel.optional ~= true then
              local keys = sorted_keys(cm.data)
              local line, col = _M.value_position(o.pos, sel, "key")
              result.errors[#result.errors + 1] = _M.format_error(o.file, line, col, path .. ".key",
                fmt("ConfigMap \"%s\" (%s:%d:%d) has no key \"%s\"%s", cm.name, cm.file, cm.line or 1, cm.col or 1,
                  _M.show(tostring(sel.key)), #keys > 0 and (" (keys: " .. list(keys) .. ")") or " (it has no data)"))
            end
          end
        end
      end
    end
    for i, tr in ipairs(triggers) do
      local base = "spec.triggers[" .. (i - 1) .. "]"
      one(tr, base)
      if type(tr) == "table" then one(tr.dlqTrigger, base .. ".dlqTrigger") end
    end
  end
end

local function object_key(o)
  return o.kind .. "\0" .. (o.namespace or "") .. "\0" .. o.name
end

--- Loads and checks every spec under paths.
---@param paths string[] files and/or directories
---@param io_funcs table|nil {read_file, stat, list_dir, yaml_load}; default: herald.core
---@return table result {objects = {...}, errors = {...}, warnings = {...}, notes = {...}}
function _M.load(paths, io_funcs)
  if type(paths) == "string" then paths = { paths } end
  local fs = io_funcs or default_io()
  local result = { objects = {}, errors = {}, warnings = {}, notes = {}, infos = {}, configmaps = {} }
  local files = {}
  for _, p in ipairs(paths) do
    local kind = fs.stat(p)
    if kind == "dir" then
      local found = {}
      walk(fs, p, found, result.errors)
      if #found == 0 then
        result.warnings[#result.warnings + 1] = p .. ": no *.yaml, *.yml or *.json files found"
      end
      for _, f in ipairs(found) do files[#files + 1] = f end
    elseif kind == "file" then
      files[#files + 1] = p
    elseif kind then
      result.errors[#result.errors + 1] = p .. ": not a regular file or directory"
    else
      result.errors[#result.errors + 1] = p .. ": no such file or directory"
    end
  end

  -- the per-load budgets, spent file after file
  local left = { ["load-bytes"] = limits["load-bytes"], documents = limits.documents, nodes = limits.nodes }
  for _, file in ipairs(files) do
    -- a file over the limit is not read whole: the error points where the limit is crossed
    local size = fs.size and fs.size(file)
    local max_bytes = min(limits.bytes, left["load-bytes"])
    local over = size and size > max_bytes and (max_bytes == limits.bytes and "bytes" or "load-bytes")
    local text, e
    if over then
      local line, col = offset_position(fs.prefix(file, max_bytes), max_bytes)
      result.errors[#result.errors + 1] = _M.format_error(file, line, col, nil, over == "bytes"
        and fmt("the file is %d bytes, more than %d (limit \"bytes\")%s", size, max_bytes, limit_hint("bytes"))
        or fmt("this file takes the specs loaded past %d bytes (limit \"load-bytes\")%s", limits["load-bytes"], limit_hint("load-bytes")))
      if over == "load-bytes" then break end
    else
      text, e = fs.read_file(file)
      if not text then result.errors[#result.errors + 1] = file .. ": cannot read: " .. tostring(e) end
    end
    if text then
      left["load-bytes"] = left["load-bytes"] - #text
      local docs, pos, limit = fs.yaml_load(text, file,
        { bytes = max_bytes, documents = left.documents, nodes = left.nodes,
          documents_limit = limits.documents, nodes_limit = limits.nodes })
      if not docs then
        if limit == "bytes" and max_bytes < limits.bytes then limit = "load-bytes" end
        result.errors[#result.errors + 1] = limit and (pos .. limit_hint(limit)) or pos
        -- once a per-load budget is spent, the files after it are not read
        if limit == "documents" or limit == "nodes" or limit == "load-bytes" then break end
      else
        left.documents = left.documents - #(pos.documents or docs)
        left.nodes = left.nodes - (pos.nodes or 0)
        local ctx = { file = file, pos = pos, errors = result.errors, warnings = result.warnings,
                      notes = result.notes, infos = result.infos, configmaps = result.configmaps }
        for i, doc in ipairs(docs) do
          local obj = load_document(ctx, doc, i)
          if obj then result.objects[#result.objects + 1] = obj end
        end
      end
    end
  end

  -- duplicates, then dependencies that no loaded EventSource defines
  local seen, kept = {}, {}
  for _, o in ipairs(result.objects) do
    local k = object_key(o)
    local first = seen[k]
    if first then
      local md = o.doc.metadata
      local line, col = _M.value_position(o.pos, md, "name")
      result.errors[#result.errors + 1] = _M.format_error(o.file, line, col, "metadata.name",
        fmt("%s \"%s\" is already defined at %s:%d:%d", o.kind, o.name, first.file, first.line or 1, first.col or 1))
    else
      seen[k] = o
      kept[#kept + 1] = o
    end
  end
  result.objects = kept
  resolve_configmaps(result)
  local events = {} -- [es name] = {[event] = true}, plus namespaces
  for _, o in ipairs(kept) do
    if o.kind == "EventSource" and type(o.doc.spec) == "table" then
      local ev = events[o.name] or {}
      events[o.name] = ev
      for t, fs_ in pairs(schema.event_source_spec.fields) do
        local m = o.doc.spec[t]
        if fs_.source_type and type(m) == "table" then
          for name in pairs(m) do ev[name] = ev[name] or {} ev[name][o.namespace or ""] = true end
        end
      end
    end
  end
  for _, o in ipairs(kept) do
    if o.kind == "Sensor" and type(o.doc.spec) == "table" and type(o.doc.spec.dependencies) == "table" then
      for i, d in ipairs(o.doc.spec.dependencies) do
        if type(d) == "table" and type(d.eventSourceName) == "string" and type(d.eventName) == "string" then
          local nss = events[d.eventSourceName] and events[d.eventSourceName][d.eventName]
          local found = false
          if nss then
            found = nss[o.namespace or ""] or o.namespace == nil or nss[""] or false
          end
          if not found then
            local line, col = _M.position(o.pos, d)
            result.warnings[#result.warnings + 1] = _M.format_error(o.file, line, col,
              "spec.dependencies[" .. (i - 1) .. "]",
              fmt("no loaded EventSource \"%s\" defines event \"%s\" (it may run elsewhere)",
                  _M.show(d.eventSourceName), _M.show(d.eventName)))
          end
        end
      end
    end
  end
  return result
end

return _M
