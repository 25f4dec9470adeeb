-- sources/file/file.lua: the file event source's Lua half (the C is file.c): Argo's
-- FileEventSource. A directory is watched with inotify (or polled every 100 ms with `polling`),
-- and each change of a file whose relative path is `path` (or matches `pathRegexp`) and whose
-- operation is `eventType` becomes an event {name, op, metadata} as Argo sends it.
local _M = {}

_M.what = "file event source"
-- not active_active: Argo runs it on the elected leader only (an "AP" type)

local OPS = { CREATE = true, WRITE = true, REMOVE = true, RENAME = true, CHMOD = true }
_M.OPS = OPS

-- Argo's WatchPathConfig.Validate, with the place of each mistake; shared with the sftp source.
function _M.watch_path_config(S, what)
  local str, object = S.str, S.object
  return object({
    directory = str { required = true, doc = "the directory to watch (an absolute path)",
      check = function(v)
        if v:sub(1, 1) ~= "/" then return "directory must be an absolute file path" end
      end },
    path = str { doc = "the file to watch, relative to directory (Argo compares it with the event's path less the directory, as written)",
      check = function(v, parent)
        if v:sub(1, 1) == "/" then return "path must be a relative file path" end
        if type(parent.pathRegexp) == "string" and parent.pathRegexp ~= "" then
          return "path and pathRegexp cannot be specified together"
        end
      end },
    pathRegexp = str { doc = "a regular expression (RE2 syntax) the relative path must match",
      check = S.engine_check(function(v)
        local _, err = S.core.regex_compile(v)
        if err then return "invalid pathRegexp: " .. err end
      end) },
  }, { required = true, at_least_one_of = { "path", "pathRegexp" },
       doc = what .. ": the directory, and the file (path) or files (pathRegexp) in it" })
end

function _M.schema(S)
  local str, bool, object = S.str, S.bool, S.object
  return object({
    eventType = str { required = true, doc = "the operation that fires: CREATE, WRITE, REMOVE, RENAME or CHMOD (compared as written, as Argo does)",
      check = function(v)
        if not OPS[v] then return "eventType must be one of CREATE, WRITE, REMOVE, RENAME, CHMOD (an operation nothing reports never fires)" end
      end },
    watchPathConfig = _M.watch_path_config(S, "what to watch"),
    polling = bool { default = false, doc = "poll the directory every 100 ms instead of inotify (for file systems without inotify: NFS, some container mounts)" },
    metadata = S.es_metadata(),
    filter = S.es_filter(),
  })
end

return _M
