-- spec/helpers/redis_peer.lua: a real redis-server on 127.0.0.1 for the redis and redisStream
-- source specs, and a small client (redis-cli).
--
--   local R = require "helpers.redis_peer"
--   if not R.available() then pending("redis-server is not installed") end
--   local srv = R.start{ args = {"--requirepass", "pw"}, cli = {"-a", "pw"} }
--   srv.cmd("PUBLISH", "FOO", "hello")   -- -> the reply text (redis-cli --no-raw off: raw)
--   srv.pipe({{"XADD", "s", "*", "k", "v"}, ...})  -- many commands in one redis-cli run
--   srv.restart()                      -- stopped and started again on the same port
--   srv.stop()
--
-- Started as the reference says: no persistence (--save '' --appendonly no), loopback only.
local H = require "helpers.herald"

local _M = {}

local function have(cmd)
  return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == 0
end

function _M.available()
  return have("redis-server") and have("redis-cli")
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Writes a CA, and a server (and client) certificate signed by it, for 127.0.0.1, into dir.
--- Returns {ca=, cert=, key=, client_cert=, client_key=} paths, or nil when openssl fails.
function _M.make_certs(dir)
  local script = ([[
set -e
cd %s
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=herald-test-ca -keyout ca.key -out ca.crt
printf 'subjectAltName=IP:127.0.0.1\n' > san.ext
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.crt
openssl req -newkey rsa:2048 -nodes -subj /CN=herald-client -keyout client.key -out client.csr
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out client.crt
]]):format(shell_quote(dir))
  if os.execute("(" .. script .. ") >/dev/null 2>&1") ~= 0 then return nil end
  return { ca = dir .. "/ca.crt", cert = dir .. "/server.crt", key = dir .. "/server.key",
           client_cert = dir .. "/client.crt", client_key = dir .. "/client.key" }
end

--- Starts redis-server. opts: args (more server arguments), cli (redis-cli arguments that
--- every command needs, e.g. {"--user", "u", "--pass", "p"}), tls (certs from make_certs:
--- the port is then a TLS port and the client uses TLS).
function _M.start(opts)
  opts = opts or {}
  local port = H.free_port()
  local dir = H.tmpdir()
  local argv = { "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir }
  local cli = { "redis-cli", "-h", "127.0.0.1", "-p", tostring(port) }
  if opts.tls then
    for _, a in ipairs{ "--port", "0", "--tls-port", tostring(port), "--tls-cert-file", opts.tls.cert,
                        "--tls-key-file", opts.tls.key, "--tls-ca-cert-file", opts.tls.ca } do
      argv[#argv + 1] = a
    end
    for _, a in ipairs{ "--tls", "--cacert", opts.tls.ca, "--cert", opts.tls.client_cert,
                        "--key", opts.tls.client_key } do
      cli[#cli + 1] = a
    end
  else
    argv[#argv + 1], argv[#argv + 2] = "--port", tostring(port)
  end
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  for _, a in ipairs(opts.cli or {}) do cli[#cli + 1] = a end
  local quoted = {}
  for i, a in ipairs(cli) do quoted[i] = shell_quote(a) end
  local cli_line = table.concat(quoted, " ") .. " --no-auth-warning"

  local srv = { port = port, addr = "127.0.0.1:" .. port }
  local function launch()
    srv.proc = H.spawn("redis-server", argv)
    srv.proc:wait_for("Ready to accept connections", { stream = "stdout", timeout = 10 })
  end
  launch()

  --- Runs one command; returns redis-cli's output (raw), trailing newline removed.
  function srv.cmd(...)
    local args = { ... }
    for i, a in ipairs(args) do args[i] = shell_quote(a) end
    local f = io.popen(cli_line .. " " .. table.concat(args, " ") .. " 2>&1")
    local out = f:read("*a")
    f:close()
    return (out:gsub("\n$", ""))
  end

  --- Runs many commands through one redis-cli (RESP written to its stdin by a file).
  function srv.pipe(cmds)
    local path = H.tmpdir() .. "/cmds.txt"
    local lines = {}
    for i, c in ipairs(cmds) do
      local q = {}
      for j, a in ipairs(c) do q[j] = '"' .. tostring(a):gsub('[\\"]', "\\%0") .. '"' end
      lines[i] = table.concat(q, " ")
    end
    H.write(path, table.concat(lines, "\n") .. "\n")
    local f = io.popen(cli_line .. " < " .. shell_quote(path) .. " 2>&1")
    local out = f:read("*a")
    f:close()
    return out
  end

  function srv.stop()
    if srv.proc then srv.proc:stop() end
  end

  function srv.restart()
    srv.proc:stop()
    launch()
  end

  return srv
end

return _M
