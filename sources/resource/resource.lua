-- sources/resource/resource.lua: the resource event source's Lua half: Argo's
-- ResourceEventSource (schema). The C (resource.c) lists and watches the collection through
-- lib/kube (watch.c); informer.lua keeps the cache and turns each change into Argo's event data
-- {type, body, oldBody, group, version, resource[, metadata]}.
local _M = {}

_M.what = "Kubernetes resource event source"
-- not active_active: Argo runs it on the elected leader only (an "AP" type)

-- The label operations Argo hands to Kubernetes' labels.NewRequirement, and how many values each
-- takes (Argo splits `value` on commas for in and notin).
local LABEL_OPS = { ["="] = 1, ["=="] = 1, ["!="] = 1, ["in"] = "+", notin = "+", exists = 0, ["!"] = 0,
                    gt = 1, lt = 1 }
_M.LABEL_OPS = LABEL_OPS

-- Kubernetes' label name and value: alphanumeric at both ends, '-', '_' or '.' inside
local function label_word(s)
  return s:match("^[%w][%w%-_%.]*$") ~= nil and s:match("[%w]$") ~= nil
end

-- The checks labels.NewRequirement makes, so a selector the API server would refuse is a load
-- error with its place instead of a list that fails for ever.
local function check_label(sel)
  local key, op, value = sel.key, sel.operation or "", sel.value or ""
  if op == "" then op = "=" end
  local n = LABEL_OPS[op]
  if not n then
    return "unknown label operation " .. op .. " (=, ==, !=, in, notin, exists, !, gt, lt)"
  end
  local name = key:match("/(.*)$") or key
  if #name > 63 or not label_word(name) then
    return "invalid label key " .. key .. ": a name of at most 63 alphanumeric characters, '-', '_' or '.', with an optional DNS prefix and '/'"
  end
  if n == 0 and value ~= "" then return "operation " .. op .. " takes no value" end
  if n == 1 and (op == "gt" or op == "lt") and not value:match("^%-?%d+$") then
    return "operation " .. op .. " takes an integer value"
  end
  local vals = {}
  if n == "+" then
    for v in (value .. ","):gmatch("([^,]*),") do vals[#vals + 1] = v end
  elseif n == 1 then
    vals[1] = value
  end
  for _, v in ipairs(vals) do
    if #v > 63 or (v ~= "" and not label_word(v)) then
      return "invalid label value " .. v .. ": at most 63 alphanumeric characters, '-', '_' or '.'"
    end
  end
end

local function check_field(sel, S)
  local op = sel.operation or ""
  if op ~= "" and op ~= "=" and op ~= "==" and op ~= "!=" then
    return "unknown field operation " .. op .. " (=, == or !=)"
  end
  if S.core and sel.value then
    local _, err = S.core.regex_compile(sel.value)
    if err then return "invalid regular expression in value: " .. err end
  end
end

function _M.schema(S)
  local str, bool, object, array = S.str, S.bool, S.object, S.array
  local function selector(what, check)
    return array(object({
      key = str { required = true, doc = what == "label" and "label key" or "gjson path into the object, e.g. spec.serviceAccountName" },
      operation = str { doc = what == "label" and "=, ==, !=, in, notin, exists, !, gt or lt (default =)" or "=, == or != (default =)" },
      value = str { doc = what == "label" and "value; comma-separated for in and notin" or "a regular expression (RE2) the field's string must match" },
    }), { doc = what .. " selectors (all must hold)",
      check = function(list)
        for i, sel in ipairs(list) do
          if type(sel) == "table" and type(sel.key) == "string" then
            local err = check(sel, S)
            if err then return err, i end
          end
        end
      end })
  end
  return object({
    namespace = str { doc = "namespace to watch (empty: all namespaces)" },
    group = str { default = "", doc = "API group (empty: the core group)" },
    version = str { required = true, doc = "API version, e.g. v1" },
    resource = str { required = true, doc = "resource (plural), e.g. pods, deployments" },
    eventTypes = array(str { enum = { "ADD", "UPDATE", "DELETE" } }, { required = true,
      doc = "the changes that fire: ADD, UPDATE, DELETE" }),
    filter = object({
      prefix = str { doc = "the object's name must start with it" },
      labels = selector("label", check_label),
      fields = selector("field", check_field),
      createdBy = str { doc = "RFC 3339 time: objects created after it are ignored",
        check = S.engine_check(function(v)
          if not S.core.parse_time(v) then return "not an RFC 3339 time (e.g. 2024-01-02T15:04:05Z)" end
        end) },
      afterStart = bool { doc = "only changes that happened after the source started" },
    }, { doc = "which objects and changes fire" }),
    metadata = S.es_metadata(),
  })
end

return _M
