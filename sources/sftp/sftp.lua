-- sources/sftp/sftp.lua: the sftp event source's Lua half (the C is sftp.c): Argo's
-- SFTPEventSource. A directory on an SFTP server is listed every pollIntervalDuration; a file
-- that appeared or changed (size or modification time) is CREATE, one that went away REMOVE,
-- as Argo compares listings. Data {name, op, metadata} as the file source's.
local _M = {}

_M.what = "SFTP event source"
-- not active_active: Argo runs it on the elected leader only (an "AP" type)

function _M.schema(S)
  local str, bool, object, secret = S.str, S.bool, S.object, S.secret
  local file = require "herald.sources.file"
  return object({
    eventType = str { required = true, doc = "the operation that fires: CREATE (a new or changed file) or REMOVE; WRITE, RENAME and CHMOD are accepted as Argo does but an SFTP listing never reports them",
      check = function(v)
        if not file.OPS[v] then return "eventType must be one of CREATE, WRITE, REMOVE, RENAME, CHMOD" end
      end },
    watchPathConfig = file.watch_path_config(S, "what to watch on the server"),
    address = secret { required = true, doc = "secret holding host:port of the SFTP server" },
    username = secret { required = true, doc = "secret holding the user name" },
    password = secret { doc = "secret holding the password (when there is no sshKeySecret)" },
    sshKeySecret = secret { doc = "secret holding the private key (OpenSSH or PEM); a public key line in it is also accepted as the server's host key, as Argo does" },
    pollIntervalDuration = str { default = "10s", doc = "Go duration between listings",
      check = S.engine_check(function(v)
        local ns, err = S.core.duration_check(v)
        if not ns then return "invalid pollIntervalDuration: " .. err end
        if ns < 1e8 then return "pollIntervalDuration must be at least 100ms" end
      end) },
    knownHostsSecret = secret { doc = "Herald extension: secret holding known_hosts lines; the server's host key must be there (or be the public key in sshKeySecret)" },
    insecureIgnoreHostKey = bool { default = false, doc = "Herald extension: accept any host key (Argo's behaviour with a password); otherwise an unknown key is refused" },
    metadata = S.es_metadata(),
    filter = S.es_filter(),
  }, { at_least_one_of = { "password", "sshKeySecret" } })
end

return _M
