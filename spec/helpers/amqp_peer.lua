-- spec/helpers/amqp_peer.lua: a RabbitMQ node for specs (Debian rabbitmq-server 3.10), on
-- 127.0.0.1 only (AMQP, distribution and epmd), in a fresh directory owned by the rabbitmq user
-- (as root the start script runs the node as that user); publishing through amqp-publish
-- (amqp-tools). It takes seconds to start: start one per spec file.
--
--   local A = require "helpers.amqp_peer"
--   local r = A.start()                      -- r.port, r.url (guest on 127.0.0.1)
--   r:publish_lines("ex", "key", {"a", "b"}, {persistent = true})
--   r:ctl("add_user", "alice", "pw") ; r:restart() ; r:stop()
local H = require "helpers.herald"

local _M = {}

local function have(cmd)
  return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == 0
end

--- nil, or why the broker cannot run here.
function _M.missing()
  if not have("rabbitmq-server") then return "rabbitmq-server is not installed (scripts/install-deps.sh test)" end
  if not have("amqp-publish") then return "amqp-publish is not installed (amqp-tools)" end
end

local Node = {}
Node.__index = Node

function Node:env()
  local d = self.dir
  return ("ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=%d RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 " ..
          "RABBITMQ_NODE_PORT=%d RABBITMQ_DIST_PORT=%d RABBITMQ_NODENAME=%s " ..
          "RABBITMQ_MNESIA_BASE=%s/mnesia RABBITMQ_LOG_BASE=%s/log RABBITMQ_FEATURE_FLAGS_FILE=%s/ff " ..
          "RABBITMQ_ENABLED_PLUGINS_FILE=%s/plugins RABBITMQ_PID_FILE=%s/pid " ..
          "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'")
    :format(self.epmd_port, self.port, self.dist_port, self.node, d, d, d, d, d)
end

function Node:launch()
  os.execute(("cd '%s' && %s rabbitmq-server > '%s/server.out' 2>&1 &"):format(self.dir, self:env(), self.dir))
  H.wait_port(self.port, 60)
  -- the port opens before the node has its users and vhost: wait until a publish goes through
  H.wait_until(function()
    return os.execute(("amqp-publish -u '%s' -e '' -r herald.ping -b x >/dev/null 2>&1"):format(self.url)) == 0
  end, 30, "rabbitmq accepts a publish")
end

--- Starts a node; returns it once it takes publishes.
function _M.start()
  local n = setmetatable({ dir = H.tmpdir(), port = H.free_port(), dist_port = H.free_port(),
                           epmd_port = H.free_port() }, Node)
  n.node = "herald" .. n.port .. "@localhost"
  n.url = "amqp://guest:guest@127.0.0.1:" .. n.port
  os.execute(("chown rabbitmq: '%s' 2>/dev/null; chmod 755 '%s'"):format(n.dir, n.dir))
  H.write(n.dir .. "/plugins", "[].\n")
  os.execute(("chown rabbitmq: '%s/plugins'"):format(n.dir))
  n:launch()
  return n
end

--- rabbitmqctl against this node; true when it exited 0.
function Node:ctl(...)
  local args = {}
  for _, a in ipairs({ ... }) do args[#args + 1] = "'" .. a .. "'" end
  local r = os.execute(("cd '%s' && %s rabbitmqctl -n %s %s >> '%s/ctl.out' 2>&1"):format(
    self.dir, self:env(), self.node, table.concat(args, " "), self.dir))
  return r == 0 or r == true
end

--- Stops the node (its durable queues and persistent messages stay in its directory).
function Node:stop()
  self:ctl("stop")
  H.wait_until(function()
    local c = require("socket").tcp()
    c:settimeout(0.2)
    local ok = c:connect("127.0.0.1", self.port)
    c:close()
    return not ok
  end, 30, "rabbitmq stopped")
end

--- Stops it and ends its epmd (the end of a spec file).
function Node:shutdown()
  local pid = (H.read(self.dir .. "/pid") or ""):match("%d+")
  self:stop()
  if pid then -- epmd refuses to end while the node is still registered
    H.wait_until(function() return os.execute("kill -0 " .. pid .. " 2>/dev/null") ~= 0 end, 30, "rabbitmq exited")
  end
  os.execute(("ERL_EPMD_PORT=%d epmd -kill >/dev/null 2>&1"):format(self.epmd_port))
end

function Node:restart()
  self:stop()
  self:launch()
end

--- Publishes each string of list as one message (amqp-publish -l, one connection); o:
--- {persistent = true, content_type =, url =}. True when amqp-publish exited 0.
function Node:publish_lines(exchange, key, list, o)
  o = o or {}
  local f = H.tmpdir() .. "/lines"
  H.write(f, table.concat(list, "\n") .. "\n")
  local cmd = ("amqp-publish -u '%s' -e '%s' -r '%s' -l%s%s < '%s' 2>> '%s/pub.err'"):format(
    o.url or self.url, exchange, key, o.persistent and " -p" or "",
    o.content_type and (" -C '" .. o.content_type .. "'") or "", f, self.dir)
  local r = os.execute(cmd)
  return r == 0 or r == true
end

--- Publishes one message with -b; extra: a string of more amqp-publish options.
function Node:publish(exchange, key, body, extra)
  local r = os.execute(("amqp-publish -u '%s' -e '%s' -r '%s' %s -b '%s' 2>> '%s/pub.err'"):format(
    self.url, exchange, key, extra or "", body, self.dir))
  return r == 0 or r == true
end

return _M
