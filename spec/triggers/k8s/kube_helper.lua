-- spec/triggers/k8s/kube_helper.lua: the fake Kubernetes API server (spec/peers/kube-apiserver.js)
-- for specs: start it on 127.0.0.1 over https (its own CA, a server and a client certificate),
-- write kubeconfigs for it, call its REST API with curl and drive kubectl against it.
--
--   local K = require "triggers.k8s.kube_helper"
--   local srv = K.start()                 -- waits for "listening on"
--   local kc = srv:kubeconfig{namespace = "team"}
--   local st, obj = srv:api("GET", "/api/v1/namespaces/default/configmaps/x")
local H = require "helpers.herald"
local cjson = require "cjson"

local K = {}
K.SERVER = H.source_dir .. "/spec/peers/kube-apiserver.js"
K.TOKEN = "herald-test-token"

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
K.quote = sh_quote

local function ok_cmd(cmd)
  local r = os.execute(cmd .. " >/dev/null 2>&1")
  return r == 0 or r == true
end

function K.has_node() return ok_cmd("command -v node") end
function K.has_kubectl() return ok_cmd("command -v kubectl") end
function K.has_tools() return K.has_node() and ok_cmd("command -v openssl") and ok_cmd("command -v curl") end

local Srv = {}
Srv.__index = Srv

--- Starts the fake API server. opts: {token=, args={extra CLI args}}.
function K.start(opts)
  opts = opts or {}
  local dir = H.tmpdir()
  local port = H.free_port()
  local args = { K.SERVER, "--port", tostring(port), "--token", opts.token or K.TOKEN, "--tls-dir", dir .. "/tls" }
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  local p = H.spawn("node", args)
  p:wait_for("listening on", { stream = "stdout", timeout = 20 })
  return setmetatable({ proc = p, port = port, url = "https://127.0.0.1:" .. port, dir = dir,
    tls = dir .. "/tls", token = opts.token or K.TOKEN }, Srv)
end

--- Writes a kubeconfig; returns its path. opts: {namespace=, auth = "token" | "cert" | "cert-data",
--- token=, server=, insecure=bool}.
function Srv:kubeconfig(opts)
  opts = opts or {}
  local auth = opts.auth or "token"
  local user
  if auth == "token" then
    user = ("    token: %s\n"):format(opts.token or self.token)
  elseif auth == "cert" then
    user = ("    client-certificate: %s\n    client-key: %s\n"):format(self.tls .. "/client.crt", self.tls .. "/client.key")
  else
    local b64 = function(path)
      local f = io.popen("base64 -w0 " .. sh_quote(path))
      local s = f:read("*a")
      f:close()
      return s
    end
    user = ("    client-certificate-data: %s\n    client-key-data: %s\n"):format(
      b64(self.tls .. "/client.crt"), b64(self.tls .. "/client.key"))
  end
  local cluster = opts.insecure and "    insecure-skip-tls-verify: true\n"
    or ("    certificate-authority: %s\n"):format(self.tls .. "/ca.crt")
  local text = table.concat{
    "apiVersion: v1\nkind: Config\ncurrent-context: test\n",
    "clusters:\n- name: fake\n  cluster:\n    server: ", opts.server or self.url, "\n", cluster,
    "users:\n- name: u\n  user:\n", user,
    "contexts:\n- name: test\n  context:\n    cluster: fake\n    user: u\n",
    opts.namespace and ("    namespace: " .. opts.namespace .. "\n") or "",
  }
  return H.write(H.tmpdir() .. "/kubeconfig", text)
end

--- Calls the REST API with curl (client certificate). Returns status, decoded body (or the raw
--- text when it is not JSON).
function Srv:api(method, path, body, ctype)
  local dir = H.tmpdir()
  local cmd = { "curl -s -o", sh_quote(dir .. "/out"), "-w '%{http_code}'", "-X", method,
    "--cacert", sh_quote(self.tls .. "/ca.crt"), "--cert", sh_quote(self.tls .. "/client.crt"),
    "--key", sh_quote(self.tls .. "/client.key") }
  if body then
    H.write(dir .. "/in", type(body) == "table" and cjson.encode(body) or body)
    cmd[#cmd + 1] = "-H " .. sh_quote("Content-Type: " .. (ctype or "application/json"))
    cmd[#cmd + 1] = "--data-binary @" .. sh_quote(dir .. "/in")
  end
  cmd[#cmd + 1] = sh_quote(self.url .. path)
  local f = io.popen(table.concat(cmd, " "))
  local code = tonumber(f:read("*a"))
  f:close()
  local text = H.read(dir .. "/out") or ""
  local ok, v = pcall(cjson.decode, text)
  return code, ok and v or text
end

--- GET path: the object, or nil and the status.
function Srv:get(path)
  local st, v = self:api("GET", path)
  if st == 200 then return v end
  return nil, st
end

--- Creates an object (a Lua table) at collection path; asserts 201; returns the created object.
function Srv:create(path, obj)
  local st, v = self:api("POST", path, obj)
  assert(st == 201, ("create %s: %s %s"):format(path, tostring(st), cjson.encode(v)))
  return v
end

--- Runs kubectl against the server with the token; returns success, output.
function Srv:kubectl(args)
  local cmd = ("kubectl --server=%s --token=%s --certificate-authority=%s %s 2>&1"):format(
    sh_quote(self.url), sh_quote(self.token), sh_quote(self.tls .. "/ca.crt"), args)
  local f = io.popen(cmd .. "; echo \"rc=$?\"")
  local out = f:read("*a")
  f:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return rc == 0, (out:gsub("rc=%d+%s*$", ""))
end

-- Herald with a webhook EventSource and one Sensor ------------------------------------------

--- Starts herald with a webhook EventSource on a free port (endpoint /hook) and a Sensor "s"
--- whose triggers are `triggers` ({name=, body=, extra=}, as H.sensor takes them), with env
--- KUBECONFIG = kubeconfig. Returns the process and the webhook port.
function K.herald(kubeconfig, triggers, opts)
  opts = opts or {}
  local dir = H.tmpdir()
  local port = H.free_port()
  H.write(dir .. "/es.yaml", H.webhook_es{ name = "es", event = "ev", port = port })
  H.write(dir .. "/sensor.yaml", H.sensor{ name = opts.sensor or "s", deps = { { name = "d" } }, triggers = triggers })
  local env = { KUBECONFIG = kubeconfig }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local argv = { "run", dir, "--log-level", "debug" }
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  local p = H.start(argv, { env = env })
  H.wait_until(function()
    if p:exited() then error("herald exited early\n" .. p:describe(), 0) end
    local socket = require "socket"
    local c = socket.tcp()
    c:settimeout(0.2)
    local ok = c:connect("127.0.0.1", port)
    c:close()
    return ok
  end, 10, function() return "webhook port\n" .. p:describe() end)
  return p, port
end

--- POSTs a JSON event to the webhook; asserts 200.
function K.post(port, body)
  local st = H.post_json(port, "/hook", type(body) == "table" and cjson.encode(body) or body)
  assert(st == 200, "webhook answered " .. tostring(st))
end

--- Waits until the trigger's success (or failure) counter reaches n; returns the metrics.
function K.wait_metric(p, which, trigger, n, sensor)
  local key = ('argo_events_action_%s_total{sensor_name="%s",trigger_name="%s"}'):format(which, sensor or "s", trigger)
  return H.wait_until(function()
    local m = H.metrics(p)
    return (m[key] or 0) >= n and m
  end, 10, function() return ("%s >= %d\n%s"):format(key, n, p:describe()) end), key
end

return K
