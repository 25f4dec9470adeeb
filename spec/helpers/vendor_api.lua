-- spec/helpers/vendor_api.lua: one stand-in for the hook APIs of the vendors Herald's webhook
-- sources register with, written from their public documentation, for specs:
--
--   luajit spec/helpers/vendor_api.lua --port N --token T [--app-id ID] [--fail N]
--
--   GitHub   (docs.github.com/rest/repos/webhooks, /rest/orgs/webhooks, /rest/apps/apps):
--            GET|POST /repos/{owner}/{repo}/hooks, PATCH|DELETE .../hooks/{id}, the same under
--            /orgs/{org}; "Authorization: token T" (or Bearer) else 401 Bad credentials;
--            POST /app/installations/{id}/access_tokens with "Authorization: Bearer <JWT>"
--            (RS256 header, iss = --app-id) -> 201 {"token": "ghs_installation", ...}, a token
--            the hook calls then accept too. A /api/v3 prefix (GitHub Enterprise) is ignored.
--   GitLab   (docs.gitlab.com/ee/api/projects.html#hooks, groups.html#hooks):
--            GET|POST /api/v4/projects/{id}/hooks, PUT|DELETE .../hooks/{hook_id}, the same
--            under /api/v4/groups/{id}; "PRIVATE-TOKEN: T" else 401.
--   Stripe   (stripe.com/docs/api/webhook_endpoints): GET|POST /v1/webhook_endpoints (form
--            body: url, enabled_events[]), DELETE /v1/webhook_endpoints/{id};
--            "Authorization: Bearer T" else 401; the created endpoint carries its `secret`.
--   Bitbucket Cloud (developer.atlassian.com/cloud/bitbucket/rest/api-group-repositories,
--            "webhooks"): GET|POST /2.0/repositories/{workspace}/{slug}/hooks (list: a page
--            {"values": [...], "pagelen", "size", "page"}), GET|PUT|DELETE .../hooks/{uid} (the
--            uid "{...}", braces escaped or not); "Authorization: Bearer T" or "Basic
--            base64(user:T)" (user as --user when given) else 401.
--   Gerrit webhooks plugin (gerrit.googlesource.com/plugins/webhooks, rest-api-config.md):
--            GET /a/config/server/webhooks~projects/{project}/remotes/ -> {name: config},
--            GET|PUT|DELETE .../remotes/{name}/ (PUT answers 201 with the config); answers
--            carry Gerrit's ")]}'" XSSI prefix; "Authorization: Basic base64(user:T)" else 401.
--   StorageGRID tenant API (docs.netapp.com StorageGRID "tenant management API", /api/v3/org;
--            the /api/v3 prefix is optional here, as for GitHub):
--            GET|POST /api/v3/org/endpoints ({"data": [endpoint, ...]}; POST takes displayName,
--            endpointURI, endpointURN, authType, insecureTLS and answers 201 {"data": endpoint}),
--            DELETE /api/v3/org/endpoints/{id}, GET|PUT /api/v3/org/containers/{bucket}/notification
--            ({"notification": "<NotificationConfiguration>...XML"}); "Authorization: Bearer T"
--            else 401 {"code":401,"message":{"text":...}}.
--
--   GET /_state -> {"hooks": {"<collection path>": [hook, ...]}, "calls": [{method, path}]}
--   --fail N: the first N hook calls answer 500 (to see registration retried).
-- Prints "listening <port>" once it accepts connections.
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local cjson = require "cjson"
local stub = require "http_stub"

local opts = { port = 0, fail = 0 }
do
  local i = 1
  while i <= #arg do
    local k, v = arg[i], arg[i + 1]
    if k == "--port" then opts.port = tonumber(v)
    elseif k == "--token" then opts.token = v
    elseif k == "--app-id" then opts.app_id = v
    elseif k == "--fail" then opts.fail = tonumber(v)
    elseif k == "--user" then opts.user = v
    else
      io.stderr:write("vendor_api: unknown option " .. tostring(k) .. "\n")
      os.exit(2)
    end
    i = i + 2
  end
end

local hooks, calls, next_id = {}, {}, 1
local app_token = "ghs_installation"

local function json(status, v) return status, cjson.encode(v) end

local function b64url_decode(s)
  s = s:gsub("-", "+"):gsub("_", "/")
  local mime = require "mime"
  return (mime.unb64(s .. string.rep("=", (4 - #s % 4) % 4)))
end

local function urldecode(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function form(body)
  local t = {}
  for pair in (body or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k, v = urldecode(k), urldecode(v)
    if k:sub(-2) == "[]" then
      k = k:sub(1, -3)
      t[k] = t[k] or {}
      table.insert(t[k], v)
    else
      t[k] = v
    end
  end
  return t
end

local function find(coll, id)
  for i, h in ipairs(hooks[coll] or {}) do
    if tostring(h.id) == tostring(id) then return i, h end
  end
end

local function github(req, path)
  local auth = req.headers["authorization"] or ""
  local inst = path:match("^/app/installations/(%d+)/access_tokens$")
  if inst then
    local jwt = auth:match("^Bearer (.+)$") or ""
    local h, c, s = jwt:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    local ok, hdr = pcall(cjson.decode, h and b64url_decode(h) or "")
    local ok2, claims = pcall(cjson.decode, c and b64url_decode(c) or "")
    if not (ok and ok2 and s and hdr.alg == "RS256" and tostring(claims.iss) == opts.app_id
            and claims.exp > claims.iat) then
      return json(401, { message = "A JSON web token could not be decoded" })
    end
    return json(201, { token = app_token, expires_at = "2099-01-01T00:00:00Z" })
  end
  local tok = auth:match("^token (.+)$") or auth:match("^Bearer (.+)$")
  if tok ~= opts.token and tok ~= app_token then return json(401, { message = "Bad credentials" }) end
  local coll, id = path:match("^(/repos/[^/]+/[^/]+/hooks)/?(%d*)$")
  if not coll then coll, id = path:match("^(/orgs/[^/]+/hooks)/?(%d*)$") end
  if not coll then return json(404, { message = "Not Found" }) end
  hooks[coll] = hooks[coll] or {}
  if id == "" and req.method == "GET" then return json(200, hooks[coll]) end
  if id == "" and req.method == "POST" then
    local b = cjson.decode(req.body)
    local h = { id = next_id, name = b.name or "web", active = b.active ~= false, events = b.events or { "push" },
      config = b.config or {}, type = coll:match("^/orgs") and "Organization" or "Repository" }
    if h.config.secret then h.config.secret = "********" end -- GitHub never shows it back
    next_id = next_id + 1
    table.insert(hooks[coll], h)
    return json(201, h)
  end
  local i, h = find(coll, id)
  if not h then return json(404, { message = "Not Found" }) end
  if req.method == "PATCH" then
    local b = cjson.decode(req.body)
    if b.events then h.events = b.events end
    if b.active ~= nil then h.active = b.active end
    if b.config then h.config = b.config; if h.config.secret then h.config.secret = "********" end end
    return json(200, h)
  elseif req.method == "DELETE" then
    table.remove(hooks[coll], i)
    return 204, ""
  end
  return json(405, { message = "Method Not Allowed" })
end

local function gitlab(req, path)
  if req.headers["private-token"] ~= opts.token then return json(401, { message = "401 Unauthorized" }) end
  local coll, id = path:match("^(/api/v4/projects/[^/]+/hooks)/?(%d*)$")
  if not coll then coll, id = path:match("^(/api/v4/groups/[^/]+/hooks)/?(%d*)$") end
  if not coll then return json(404, { message = "404 Not Found" }) end
  hooks[coll] = hooks[coll] or {}
  if id == "" and req.method == "GET" then return json(200, hooks[coll]) end
  if id == "" and req.method == "POST" then
    local h = cjson.decode(req.body)
    h.id = next_id
    h.token = nil -- GitLab never shows the secret token back
    next_id = next_id + 1
    table.insert(hooks[coll], h)
    return json(201, h)
  end
  local i, h = find(coll, id)
  if not h then return json(404, { message = "404 Not found" }) end
  if req.method == "PUT" then
    local b = cjson.decode(req.body)
    for k, v in pairs(b) do if k ~= "token" then h[k] = v end end
    return json(200, h)
  elseif req.method == "DELETE" then
    table.remove(hooks[coll], i)
    return 204, ""
  end
  return json(405, { message = "405 Method Not Allowed" })
end

local function stripe(req, path)
  local auth = req.headers["authorization"] or ""
  if auth ~= "Bearer " .. tostring(opts.token) then
    return json(401, { error = { message = "Invalid API Key provided", type = "invalid_request_error" } })
  end
  local coll = "/v1/webhook_endpoints"
  hooks[coll] = hooks[coll] or {}
  local id = path:match("^/v1/webhook_endpoints/?(.*)$")
  if id == "" and req.method == "GET" then
    return json(200, { object = "list", url = coll, has_more = false, data = hooks[coll] })
  end
  if id == "" and req.method == "POST" then
    local f = form(req.body)
    if not f.url then return json(400, { error = { message = "Missing required param: url." } }) end
    local h = { id = "we_" .. next_id, object = "webhook_endpoint", url = f.url,
      enabled_events = f.enabled_events or { "*" }, status = "enabled" }
    next_id = next_id + 1
    table.insert(hooks[coll], h)
    local shown = {}
    for k, v in pairs(h) do shown[k] = v end
    shown.secret = "whsec_test_" .. h.id -- only the create answer shows the secret
    return json(200, shown)
  end
  local i, h = find(coll, id)
  if not h then return json(404, { error = { message = "No such webhook endpoint" } }) end
  if req.method == "DELETE" then
    table.remove(hooks[coll], i)
    return json(200, { id = h.id, object = "webhook_endpoint", deleted = true })
  end
  return json(405, { error = { message = "Method Not Allowed" } })
end

local function basic_ok(auth)
  local b = auth:match("^Basic (.+)$")
  if not b then return false end
  local mime = require "mime"
  local u, p = ((mime.unb64(b)) or ""):match("^([^:]*):(.*)$")
  return u ~= nil and u ~= "" and p == opts.token and (opts.user == nil or u == opts.user)
end

local function bitbucket(req, path)
  local auth = req.headers["authorization"] or ""
  if auth ~= "Bearer " .. tostring(opts.token) and not basic_ok(auth) then
    return json(401, { type = "error", error = { message = "Unauthorized" } })
  end
  local coll, id = path:match("^(/2%.0/repositories/[^/]+/[^/]+/hooks)/?([^/]*)$")
  if not coll then return json(404, { type = "error", error = { message = "Resource not found" } }) end
  id = urldecode(id)
  hooks[coll] = hooks[coll] or {}
  if id == "" and req.method == "GET" then
    return json(200, { pagelen = 100, size = #hooks[coll], page = 1, values = hooks[coll] })
  end
  if id == "" and req.method == "POST" then
    local b = cjson.decode(req.body)
    if type(b.url) ~= "string" or type(b.events) ~= "table" or #b.events == 0 then
      return json(400, { type = "error", error = { message = "Bad request", fields = { events = { "required" } } } })
    end
    local h = { uuid = ("{00000000-0000-4000-8000-%012d}"):format(next_id), type = "webhook_subscription",
      url = b.url, description = b.description or "", active = b.active ~= false, events = b.events,
      subject_type = "repository", subject = { type = "repository", full_name = coll:match("^/2%.0/repositories/(.+)/hooks$") } }
    next_id = next_id + 1
    table.insert(hooks[coll], h)
    return json(201, h)
  end
  local i, h
  for k, x in ipairs(hooks[coll]) do if x.uuid == id then i, h = k, x end end
  if not h then return json(404, { type = "error", error = { message = "Resource not found" } }) end
  if req.method == "GET" then return json(200, h) end
  if req.method == "PUT" then
    local b = cjson.decode(req.body)
    for _, k in ipairs{ "url", "description", "active", "events" } do if b[k] ~= nil then h[k] = b[k] end end
    return json(200, h)
  elseif req.method == "DELETE" then
    table.remove(hooks[coll], i)
    return 204, ""
  end
  return json(405, { type = "error", error = { message = "Method not allowed" } })
end

local XSSI = ")]}'\n"

local function gerrit(req, path)
  if not basic_ok(req.headers["authorization"] or "") then return 401, "Unauthorized" end
  local proj, name = path:match("^/a/config/server/webhooks~projects/([^/]+)/remotes/?([^/]*)/?$")
  if not proj then return 404, "Not found" end
  local coll = "/a/config/server/webhooks~projects/" .. proj .. "/remotes"
  name = urldecode(name)
  hooks[coll] = hooks[coll] or {}
  local remotes = hooks[coll]
  if name == "" and req.method == "GET" then
    local out = setmetatable({}, { __jsontype = "object" })
    for _, r in ipairs(remotes) do out[r.name] = r.config end
    return 200, XSSI .. (next(out) and cjson.encode(out) or "{}")
  end
  if name == "" then return 405, "Method not allowed" end
  local i, r
  for k, x in ipairs(remotes) do if x.name == name then i, r = k, x end end
  if req.method == "GET" then
    if not r then return 404, "Not found" end
    return 200, XSSI .. cjson.encode(r.config)
  elseif req.method == "PUT" then
    local b = cjson.decode(req.body)
    if type(b.url) ~= "string" or b.url == "" then return 400, "url is required" end
    if r then r.config = b else table.insert(remotes, { name = name, config = b }) end
    return 201, XSSI .. cjson.encode(b)
  elseif req.method == "DELETE" then
    if not r then return 404, "Not found" end
    table.remove(remotes, i)
    return 204, ""
  end
  return 405, "Method not allowed"
end

local function sgerr(code, text) return json(code, { code = code, status = "error", message = { text = text } }) end

local function storagegrid(req, path)
  if (req.headers["authorization"] or "") ~= "Bearer " .. tostring(opts.token) then
    return sgerr(401, "Unauthorized")
  end
  local ecoll = "/org/endpoints"
  hooks[ecoll] = hooks[ecoll] or {}
  local eid = path:match("^/org/endpoints/?(.*)$")
  if eid == "" and req.method == "GET" then return json(200, { status = "success", apiVersion = "3.0", data = hooks[ecoll] }) end
  if eid == "" and req.method == "POST" then
    local b = cjson.decode(req.body)
    if type(b.endpointURN) ~= "string" or type(b.endpointURI) ~= "string" then return sgerr(422, "endpointURI and endpointURN are required") end
    for _, e in ipairs(hooks[ecoll]) do
      if e.endpointURN == b.endpointURN then return sgerr(422, "endpoint URN already exists") end
    end
    local e = { id = ("%08d-0000-4000-8000-000000000000"):format(next_id), displayName = b.displayName,
      endpointURI = b.endpointURI, endpointURN = b.endpointURN, authType = b.authType, insecureTLS = b.insecureTLS }
    next_id = next_id + 1
    table.insert(hooks[ecoll], e)
    return json(201, { status = "success", apiVersion = "3.0", data = e })
  end
  if eid and req.method == "DELETE" then
    for k, e in ipairs(hooks[ecoll]) do
      if e.id == eid then table.remove(hooks[ecoll], k); return 204, "" end
    end
    return sgerr(404, "endpoint not found")
  end
  local bucket = path:match("^/org/containers/([^/]+)/notification$")
  if bucket then
    local coll = path
    if req.method == "GET" then
      return json(200, { status = "success", apiVersion = "3.0", data = { notification = hooks[coll] or "" } })
    elseif req.method == "PUT" then
      local b = cjson.decode(req.body)
      if type(b.notification) ~= "string" then return sgerr(422, "notification is required") end
      hooks[coll] = b.notification
      return json(200, { status = "success", apiVersion = "3.0", data = { notification = b.notification } })
    end
  end
  return sgerr(404, "not found")
end

local function answer(req)
  local path = req.path:gsub("%?.*$", "")
  if path == "/_state" then return json(200, { hooks = hooks, calls = calls }) end
  calls[#calls + 1] = { method = req.method, path = req.path }
  if opts.fail > 0 then
    opts.fail = opts.fail - 1
    return json(500, { message = "Server Error" })
  end
  path = path:gsub("^/api/v3", "")
  if path:match("^/api/v4/") then return gitlab(req, path) end
  if path:match("^/v1/webhook_endpoints") then return stripe(req, path) end
  if path:match("^/2%.0/repositories/") then return bitbucket(req, path) end
  if path:match("^/a/config/server/webhooks~projects/") then return gerrit(req, path) end
  if path:match("^/org/") then return storagegrid(req, path) end
  return github(req, path)
end

stub.serve(opts.port, function(req)
  local ok, status, body = pcall(answer, req)
  if not ok then status, body = 400, cjson.encode({ message = tostring(status) }) end
  return { status = status, body = body,
    headers = { ["Content-Type"] = "application/json; charset=utf-8" } }
end)
