-- sources/resource/informer.lua (module herald.sources.resource.informer): the resource event
-- source's cache and filters, called by resource.c for each list answer and each watch line.
--
-- It plays client-go's informer as Argo's source uses it: a list replaces the cache (new
-- objects ADD, known ones UPDATE, vanished ones DELETE), each watch line changes it (ADDED,
-- MODIFIED, DELETED; BOOKMARK only moves the resourceVersion on; ERROR 410 says re-list), an
-- UPDATE whose resourceVersion did not change is dropped, and then Argo's passFilters (prefix,
-- afterStart, createdBy, fields) decides. Labels are the server's job (the labelSelector of
-- the list and the watch). Each event is Argo's ResourceEventData as JSON text.
local _M = {}

local json = require "herald.json"
local gjson = require "herald.gjson"
local core = require "herald.core"

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local concat, sort, fmt, byte = table.concat, table.sort, string.format, string.byte
local null = json.null

local function urlenc(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return fmt("%%%02X", byte(c)) end))
end

-- Kubernetes' labels.Requirement.String, requirements sorted by key as labels.NewSelector does.
local function label_selector(labels)
  local reqs = {}
  for _, sel in ipairs(labels or {}) do
    local op, v = sel.operation or "", sel.value or ""
    if op == "" then op = "=" end
    local vals = {}
    for x in (v .. ","):gmatch("([^,]*),") do vals[#vals + 1] = x end
    sort(vals)
    local s
    if op == "exists" then s = sel.key
    elseif op == "!" then s = "!" .. sel.key
    elseif op == "in" or op == "notin" then s = sel.key .. " " .. op .. " (" .. concat(vals, ",") .. ")"
    elseif op == "gt" then s = sel.key .. ">" .. v
    elseif op == "lt" then s = sel.key .. "<" .. v
    else s = sel.key .. op .. v end
    reqs[#reqs + 1] = { key = sel.key, s = s }
  end
  sort(reqs, function(a, b) return a.key < b.key end)
  local out = {}
  for i, r in ipairs(reqs) do out[i] = r.s end
  return concat(out, ",")
end
_M.label_selector = label_selector

--- A new informer for the validated spec table cfg; start_s: the source's start (seconds since
--- the epoch). Returns the state, the collection path and the URL query (or nil).
function _M.new(cfg, start_s)
  local group, version, resource = cfg.group or "", cfg.version, cfg.resource
  local path = group == "" and ("/api/" .. version) or ("/apis/" .. group .. "/" .. version)
  if cfg.namespace and cfg.namespace ~= "" then path = path .. "/namespaces/" .. urlenc(cfg.namespace) end
  path = path .. "/" .. resource
  local f = cfg.filter or {}
  local query
  local sel = label_selector(f.labels)
  if sel ~= "" then query = "labelSelector=" .. urlenc(sel) end
  local want = {}
  for _, t in ipairs(cfg.eventTypes or {}) do want[t] = true end
  local fields = {}
  for i, s in ipairs(f.fields or {}) do
    local re, err = core.regex_compile(s.value or "")
    fields[i] = { key = s.key, op = s.operation or "", re = re, err = err }
  end
  local meta
  if type(cfg.metadata) == "table" and next(cfg.metadata) ~= nil then meta = json.encode(cfg.metadata) end
  local st = {
    objs = {}, -- "namespace/name" -> { rv = , json = }
    want = want,
    filter = cfg.filter and {
      prefix = f.prefix ~= "" and f.prefix or nil,
      after_start = f.afterStart and start_s or nil,
      created_by = f.createdBy and f.createdBy ~= "" and core.parse_time(f.createdBy) or nil,
      fields = #fields > 0 and fields or nil,
    } or nil,
    tail = fmt(',"group":%s,"version":%s,"resource":%s%s}', json.encode(group), json.encode(version),
               json.encode(resource), meta and (',"metadata":' .. meta) or ""),
    count = 0,
  }
  return st, path, query
end

local function key_of(obj)
  local md = type(obj) == "table" and obj.metadata
  if type(md) ~= "table" or type(md.name) ~= "string" then return nil end
  return (type(md.namespace) == "string" and md.namespace or "") .. "/" .. md.name
end

local function ts(v)
  return type(v) == "string" and core.parse_time(v) or nil
end

-- Argo's getEventTime: when the change happened, as the object tells it.
local function event_time(obj, typ)
  local md = obj.metadata
  local created = ts(md.creationTimestamp) or 0
  if typ == "DELETE" then return ts(md.deletionTimestamp) or core.now() end
  if typ == "UPDATE" then
    local t = created
    if type(md.managedFields) == "table" then
      for _, m in ipairs(md.managedFields) do
        local mt = type(m) == "table" and m.operation == "Update" and ts(m.time)
        if mt and mt > t then t = mt end
      end
    end
    return t
  end
  return created
end

-- Argo's passFilters on the new object.
local function pass(st, obj, typ)
  local f = st.filter
  if not f then return true end
  local md = obj.metadata
  if f.prefix and (type(md.name) ~= "string" or md.name:sub(1, #f.prefix) ~= f.prefix) then return false end
  if f.after_start and event_time(obj, typ) < f.after_start then return false end
  if f.created_by and (ts(md.creationTimestamp) or 0) > f.created_by then return false end
  if f.fields then
    for _, s in ipairs(f.fields) do
      local v = gjson.get(obj, s.key)
      if v == nil or not s.re then return false end
      -- Go's gjson Result.Str: the text of a string, "" for any other type
      local str = type(v) == "string" and v or ""
      local m = s.re:find(str)
      -- Argo takes only =, == and != (an empty operation fails there: Herald reads it as =,
      -- the default its documentation states)
      if s.op == "!=" then
        if m then return false end
      elseif not m then
        return false
      end
    end
  end
  return true
end

local function event(st, out, typ, obj, obj_json, old_json)
  if not st.want[typ] or not pass(st, obj, typ) then return end
  out[#out + 1] = concat({ '{"type":"', typ, '","body":', obj_json, ',"oldBody":', old_json or "null", st.tail })
end

-- One object seen (from a list or an ADDED/MODIFIED line).
local function upsert(st, out, obj)
  local key = key_of(obj)
  if not key then return end
  local rv = obj.metadata.resourceVersion
  local old = st.objs[key]
  local j = json.encode(obj)
  if old then
    old.seen = true
    if old.rv == rv then return end -- the informer's resync: Argo drops equal versions
    local old_json = old.json
    old.rv, old.json = rv, j
    event(st, out, "UPDATE", obj, j, old_json)
  else
    st.objs[key] = { rv = rv, json = j, seen = true }
    st.count = st.count + 1
    event(st, out, "ADD", obj, j, nil)
  end
end

local function remove(st, out, obj, key)
  local old = st.objs[key]
  if not old then return end
  st.objs[key] = nil
  st.count = st.count - 1
  event(st, out, "DELETE", obj, obj and json.encode(obj) or old.json, nil)
end

--- A list answer: replaces the cache. Returns the events (JSON texts) and the list's
--- resourceVersion, or nil, err.
function _M.list(st, body)
  local v = json.try_decode(body)
  if type(v) ~= "table" or type(v.items) ~= "table" then return nil, "not a list" end
  local out = {}
  for _, o in pairs(st.objs) do o.seen = false end
  for _, obj in ipairs(v.items) do
    if type(obj) == "table" then
      -- list items carry no apiVersion/kind; the informer's objects (and Argo's bodies) do
      if obj.apiVersion == nil and type(v.apiVersion) == "string" then obj.apiVersion = v.apiVersion end
      if obj.kind == nil and type(v.kind) == "string" then obj.kind = v.kind:gsub("List$", "") end
      upsert(st, out, obj)
    end
  end
  -- what the list no longer has was deleted meanwhile: DELETE with the last state known
  for key, o in pairs(st.objs) do
    if not o.seen then
      local last = json.try_decode(o.json)
      if type(last) == "table" then remove(st, out, last, key)
      else st.objs[key] = nil; st.count = st.count - 1 end
    end
  end
  local rv = type(v.metadata) == "table" and v.metadata.resourceVersion or nil
  return out, rv and tostring(rv) or nil
end

--- One watch line. Returns the events, the resourceVersion it moves to (or nil), and "ok",
--- "gone" (410: list again) or "bad".
function _M.line(st, text)
  local v = json.try_decode(text)
  if type(v) ~= "table" or type(v.type) ~= "string" or type(v.object) ~= "table" then
    return nil, nil, "bad", "not a watch event: " .. text:sub(1, 200)
  end
  local typ, obj = v.type, v.object
  if typ == "ERROR" then
    if obj.code == 410 then return nil, nil, "gone" end
    return nil, nil, "bad", "watch error: " .. tostring(obj.message or obj.reason or obj.code)
  end
  local md = type(obj.metadata) == "table" and obj.metadata or {}
  local rv = md.resourceVersion ~= nil and md.resourceVersion ~= null and tostring(md.resourceVersion) or nil
  local out = {}
  if typ == "ADDED" or typ == "MODIFIED" then
    upsert(st, out, obj)
  elseif typ == "DELETED" then
    local key = key_of(obj)
    if key then remove(st, out, obj, key) end
  elseif typ ~= "BOOKMARK" then
    return nil, nil, "bad", "unknown watch event type " .. typ
  end
  return out, rv, "ok"
end

return _M
