-- spec/helpers/sshd_peer.lua: OpenSSH's sshd as an SFTP server for specs, on 127.0.0.1 with its
-- own host key, configuration and authorized keys in a temp directory (nothing of the machine's
-- own sshd is read or changed).
--
--   local S = require "helpers.sshd_peer"
--   if not S.available() then pending(S.why()) end
--   local srv = S.start()          -- srv.port, srv.user, srv.password, srv.key (private key text),
--                                  -- srv.pubkey (its public line), srv.known_hosts (a line for it)
--   srv:stop(); srv:restart()      -- the same port, host key and users
--
-- Password logins need a local user with a password: the helper makes one (heraldsftp) with
-- useradd and chpasswd when it runs as root and the user is missing, and keeps it afterwards.
local H = require "helpers.herald"

local S = {}
S.SSHD = "/usr/sbin/sshd"
S.USER = "heraldsftp"
S.PASSWORD = "herald-sftp-pass-1"

local function sh(cmd)
  local r = os.execute(cmd .. " >/dev/null 2>&1")
  return r == 0 or r == true
end

local function is_root()
  local f = io.popen("id -u")
  local u = f:read("*l")
  f:close()
  return u == "0"
end

local why
function S.available()
  if not sh("test -x " .. S.SSHD) then why = "openssh-server (" .. S.SSHD .. ") not installed"; return false end
  if not sh("command -v ssh-keygen") then why = "ssh-keygen not installed"; return false end
  if not is_root() then why = "sshd needs root to log users in"; return false end
  if not sh("id " .. S.USER) then
    if not sh("useradd -M -d /tmp -s /bin/sh " .. S.USER) then why = "cannot create the test user"; return false end
  end
  if not sh(("echo '%s:%s' | chpasswd"):format(S.USER, S.PASSWORD)) then why = "cannot set the test user's password"; return false end
  return true
end
function S.why() return why end

local Srv = {}
Srv.__index = Srv

function S.start()
  local dir = H.tmpdir()
  os.execute("chmod 755 " .. dir)
  assert(sh(("ssh-keygen -q -t ed25519 -N '' -f %s/host_key"):format(dir)))
  assert(sh(("ssh-keygen -q -t ed25519 -N '' -f %s/user_key"):format(dir)))
  local pub = H.read(dir .. "/user_key.pub")
  H.write(dir .. "/authorized_keys", pub)
  os.execute("chmod 644 " .. dir .. "/authorized_keys")
  os.execute("mkdir -p /run/sshd && chmod 755 /run/sshd")
  local port = H.free_port()
  H.write(dir .. "/sshd_config", table.concat({
    "ListenAddress 127.0.0.1",
    "HostKey " .. dir .. "/host_key",
    "PidFile " .. dir .. "/sshd.pid",
    "AuthorizedKeysFile " .. dir .. "/authorized_keys",
    "PasswordAuthentication yes",
    "KbdInteractiveAuthentication no",
    "PubkeyAuthentication yes",
    "PermitRootLogin no",
    "UsePAM no",
    "StrictModes no",
    "AllowUsers " .. S.USER,
    "Subsystem sftp internal-sftp",
    "LogLevel INFO",
  }, "\n") .. "\n")
  local host_pub = H.read(dir .. "/host_key.pub"):match("^(%S+ %S+)")
  local srv = setmetatable({ dir = dir, port = port, user = S.USER, password = S.PASSWORD,
    key = H.read(dir .. "/user_key"), pubkey = pub,
    known_hosts = ("[127.0.0.1]:%d %s\n"):format(port, host_pub) }, Srv)
  srv:restart()
  return srv
end

function Srv:restart()
  self.proc = H.spawn(S.SSHD, { "-D", "-e", "-f", self.dir .. "/sshd_config", "-p", tostring(self.port) })
  H.wait_port(self.port, 10)
end

--- Stops sshd and the connections it serves (its per-connection children, by parent id), as a
--- restart of the machine's sshd would cut them.
function Srv:stop()
  if self.proc then
    os.execute("pkill -TERM -P " .. self.proc.pid .. " >/dev/null 2>&1")
    self.proc:stop()
  end
  self.proc = nil
end

--- A directory the test user can read, with files the spec makes as root.
function Srv:dir_for_files()
  local d = H.tmpdir()
  os.execute("chmod 755 " .. d)
  return d
end

return S
