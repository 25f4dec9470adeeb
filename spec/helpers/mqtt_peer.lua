-- spec/helpers/mqtt_peer.lua: a mosquitto broker for specs, on 127.0.0.1 only (a config file
-- with `listener P 127.0.0.1`: `mosquitto -p` would bind every interface), with persistence
-- (QoS 1 sessions survive a broker restart), optionally a password file and a TLS listener whose
-- certificates are made here with openssl; and publishing through mosquitto_pub.
--
--   local M = require "helpers.mqtt_peer"
--   local b = M.start { users = { alice = "secret" }, tls = true }
--   b:publish("a/b", "hello", { qos = 1 })      -- or b:publish_lines("a/b", {...})
--   b:restart() ; b:stop()
local H = require "helpers.herald"

local _M = {}

local function have(cmd)
  return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == 0
end

--- nil, or why the broker cannot run here.
function _M.missing()
  if not have("mosquitto") then return "mosquitto is not installed (scripts/install-deps.sh test)" end
  if not have("mosquitto_pub") then return "mosquitto_pub is not installed (mosquitto-clients)" end
end

local function sh(cmd)
  local ok = os.execute(cmd)
  assert(ok == 0 or ok == true, "failed: " .. cmd)
end

-- A CA and a server certificate for 127.0.0.1 / localhost, in dir.
local function make_certs(dir)
  sh(("cd '%s' && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=herald-test-ca " ..
      "-keyout ca.key -out ca.crt >/dev/null 2>&1"):format(dir))
  H.write(dir .. "/san.cnf", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
  sh(("cd '%s' && openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key " ..
      "-out server.csr >/dev/null 2>&1 && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key " ..
      "-CAcreateserial -days 2 -extfile san.cnf -out server.crt >/dev/null 2>&1"):format(dir))
  return { ca = dir .. "/ca.crt", cert = dir .. "/server.crt", key = dir .. "/server.key" }
end

local Broker = {}
Broker.__index = Broker

local function write_conf(b)
  local lines = {
    "user root", -- started as root: keep it, so the files made here stay readable
    "persistence true",
    "persistence_location " .. b.dir .. "/",
    "autosave_interval 1",
    "max_queued_messages 0", -- no cap on a persistent session's queue while Herald is away
    "max_inflight_messages " .. tostring(b.opts.max_inflight or 1000),
    "log_dest file " .. b.dir .. "/mosquitto.log",
    "per_listener_settings false",
    "listener " .. b.port .. " 127.0.0.1",
  }
  if b.opts.users then
    local pw = b.dir .. "/passwd"
    H.write(pw, "")
    for u, p in pairs(b.opts.users) do sh(("mosquitto_passwd -b '%s' '%s' '%s'"):format(pw, u, p)) end
    lines[#lines + 1] = "allow_anonymous false"
    lines[#lines + 1] = "password_file " .. pw
  else
    lines[#lines + 1] = "allow_anonymous true"
  end
  if b.tls_port then
    lines[#lines + 1] = "listener " .. b.tls_port .. " 127.0.0.1"
    lines[#lines + 1] = "cafile " .. b.certs.ca
    lines[#lines + 1] = "certfile " .. b.certs.cert
    lines[#lines + 1] = "keyfile " .. b.certs.key
  end
  H.write(b.dir .. "/mosquitto.conf", table.concat(lines, "\n") .. "\n")
end

function Broker:launch()
  self.proc = H.spawn("mosquitto", { "-c", self.dir .. "/mosquitto.conf" })
  H.wait_port(self.port, 10)
  if self.tls_port then H.wait_port(self.tls_port, 10) end
end

--- Starts a broker. opts: users = {name = password} (then anonymous is refused), tls = true
--- (a second listener with TLS; b.certs has the paths), max_inflight (default 1000).
function _M.start(opts)
  local b = setmetatable({ opts = opts or {}, dir = H.tmpdir(), port = H.free_port() }, Broker)
  if b.opts.tls then
    b.tls_port = H.free_port()
    b.certs = make_certs(b.dir)
  end
  write_conf(b)
  b:launch()
  b.url = "tcp://127.0.0.1:" .. b.port
  return b
end

function Broker:stop()
  if self.proc then self.proc:stop() end
end

--- Stops it (SIGTERM: it saves its sessions) and starts it again on the same ports.
function Broker:restart()
  self:stop()
  self:launch()
end

local function pub_args(self, topic, o)
  o = o or {}
  local a = { "mosquitto_pub", "-h", "127.0.0.1", "-p", tostring(o.port or self.port),
              "-t", "'" .. topic .. "'", "-q", tostring(o.qos or 1) }
  if o.user then a[#a + 1] = ("-u '%s' -P '%s'"):format(o.user, o.password) end
  if o.cafile then a[#a + 1] = "--cafile '" .. o.cafile .. "'" end
  return table.concat(a, " ")
end

--- Publishes one message (mosquitto_pub -m); true when mosquitto_pub exited 0.
function Broker:publish(topic, payload, o)
  local f = H.tmpdir() .. "/msg"
  H.write(f, payload)
  local r = os.execute(pub_args(self, topic, o) .. " -f '" .. f .. "' 2>>" .. self.dir .. "/pub.err")
  return r == 0 or r == true
end

--- Publishes each string of `list` as one message over one connection (mosquitto_pub -l);
--- true when every one was accepted (QoS 1: PUBACKed) and mosquitto_pub exited 0.
function Broker:publish_lines(topic, list, o)
  local f = H.tmpdir() .. "/lines"
  H.write(f, table.concat(list, "\n") .. "\n")
  local r = os.execute(pub_args(self, topic, o) .. " -l < '" .. f .. "' 2>>" .. self.dir .. "/pub.err")
  return r == 0 or r == true
end

return _M
