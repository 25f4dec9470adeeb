-- spec/helpers/azurite_peer.lua: azurite's queue service (npm, spec/peers/npm) for the
-- azureQueueStorage specs and bench/run-source-azure.sh, on 127.0.0.1, with a small client that
-- signs its requests with Shared Key (HMAC-SHA256 from libcrypto through the FFI) the way
-- Azure's SDKs do.
--
--   local A = require "helpers.azurite_peer"
--   local az = A.start(H)                -- nil, why when node or azurite is missing
--   az.connection_string                 -- for a connectionString secret
--   az.create_queue("q") ; az.put("q", {"text", ...}) ; az.count("q") ; az.get("q", n)
--   az.stop() ; az.launch()              -- the same port and --location: messages survive
--
-- Run as a script it prints the connection string of a running azurite on a port (bench):
--   luajit spec/helpers/azurite_peer.lua put PORT QUEUE N SIZE   (N messages of SIZE bytes)
local ffi = require "ffi"
local mime = require "mime"

local _M = {}

_M.ACCOUNT = "devstoreaccount1"
-- azurite's (and the Azure storage emulator's) published development account key
_M.KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len, const unsigned char *d,
                    size_t n, unsigned char *md, unsigned int *md_len);
]]
local crypto
local function hmac_sha256(key, msg)
  crypto = crypto or ffi.load("crypto")
  local out = ffi.new("unsigned char[32]")
  local n = ffi.new("unsigned int[1]", 32)
  crypto.HMAC(crypto.EVP_sha256(), key, #key, msg, #msg, out, n)
  return ffi.string(out, 32)
end

local function url_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function xml_escape(s)
  return (s:gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&apos;" }))
end

--- The Authorization header for a request (Shared Key, version 2015-02-21 and later).
function _M.shared_key(method, path, query, headers, body_len)
  local ms = {}
  for k, v in pairs(headers) do
    if k:lower():match("^x%-ms%-") then ms[#ms + 1] = k:lower() .. ":" .. v end
  end
  table.sort(ms)
  local params = {}
  for kv in (query or ""):gmatch("[^&]+") do
    local k, v = kv:match("^([^=]*)=?(.*)$")
    params[#params + 1] = k:lower() .. ":" .. url_decode(v)
  end
  table.sort(params)
  local sts = table.concat({ method, "", "", body_len > 0 and tostring(body_len) or "", "",
    headers["Content-Type"] or "", "", "", "", "", "", "" }, "\n") .. "\n" ..
    table.concat(ms, "\n") .. "\n/" .. _M.ACCOUNT .. path ..
    (#params > 0 and "\n" .. table.concat(params, "\n") or "")
  return "SharedKey " .. _M.ACCOUNT .. ":" .. (mime.b64(hmac_sha256((mime.unb64(_M.KEY)), sts)))
end

--- A client of the queue service at port (signing every request).
function _M.client(H, port)
  local c = { port = port }
  c.connection_string = ("DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;QueueEndpoint=http://127.0.0.1:%d/%s;")
    :format(_M.ACCOUNT, _M.KEY, port, _M.ACCOUNT)
  function c.api(method, path, query, body)
    body = body or ""
    path = "/" .. _M.ACCOUNT .. path
    local headers = { ["x-ms-date"] = os.date("!%a, %d %b %Y %H:%M:%S GMT"), ["x-ms-version"] = "2018-03-28" }
    if #body > 0 then headers["Content-Type"] = "application/xml" end
    headers.Authorization = _M.shared_key(method, path, query, headers, #body)
    return H.http { port = port, method = method, path = path .. (query and "?" .. query or ""), body = body,
                    headers = headers, timeout = 10, conn = c.conn, keepalive = c.conn ~= nil }
  end
  --- An account SAS (queue service, every permission, until 2030) and a connection string
  --- that uses it instead of the key.
  function c.sas_connection_string()
    local sv, sp, ss, srt, se, spr = "2018-03-28", "rwdlacup", "q", "sco", "2030-01-01T00:00:00Z", "https,http"
    local sts = table.concat({ _M.ACCOUNT, sp, ss, srt, "", se, "", spr, sv, "" }, "\n")
    local sig = mime.b64(hmac_sha256((mime.unb64(_M.KEY)), sts))
    local enc = function(v) return (v:gsub("[^%w%-%._~]", function(ch) return ("%%%02X"):format(ch:byte()) end)) end
    local sas = ("sv=%s&ss=%s&srt=%s&sp=%s&se=%s&spr=%s&sig=%s"):format(sv, ss, srt, sp, enc(se), enc(spr), enc(sig))
    return ("QueueEndpoint=http://127.0.0.1:%d/%s;SharedAccessSignature=%s"):format(port, _M.ACCOUNT, sas)
  end
  function c.create_queue(q) return c.api("PUT", "/" .. q) end
  function c.delete_queue(q) return c.api("DELETE", "/" .. q) end
  --- Puts each text as a message; returns the number accepted (201).
  function c.put(q, texts)
    local ok = 0
    c.conn = H.connect(port, 10)
    for _, t in ipairs(texts) do
      local st = c.api("POST", "/" .. q .. "/messages", nil,
                       "<QueueMessage><MessageText>" .. xml_escape(t) .. "</MessageText></QueueMessage>")
      if st == 201 then ok = ok + 1 end
    end
    c.conn:close()
    c.conn = nil
    return ok
  end
  --- The approximate number of messages in q (visible or not).
  function c.count(q)
    local st, h = c.api("GET", "/" .. q, "comp=metadata")
    if st ~= 200 then return nil, st end
    for k, v in pairs(h or {}) do
      if k:lower() == "x-ms-approximate-messages-count" then return tonumber(v) end
    end
  end
  --- Receives up to n messages (making them invisible for vis seconds): {id, pop, text}[].
  function c.get(q, n, vis)
    local st, _, body = c.api("GET", "/" .. q .. "/messages", ("numofmessages=%d&visibilitytimeout=%d"):format(n or 32, vis or 30))
    local out = {}
    for m in (body or ""):gmatch("<QueueMessage>(.-)</QueueMessage>") do
      out[#out + 1] = { id = m:match("<MessageId>(.-)</MessageId>"), pop = m:match("<PopReceipt>(.-)</PopReceipt>"),
                        text = m:match("<MessageText>(.-)</MessageText>") }
    end
    return out, st
  end
  return c
end

local BIN = "/spec/peers/npm/node_modules/azurite/dist/src/queue/main.js"

--- Starts azurite's queue service on a free port with a fresh --location; returns a handle, or
--- nil and why.
function _M.start(H)
  H = H or require "helpers.herald"
  local main = H.source_dir .. BIN
  local f = io.open(main)
  if not f then return nil, "azurite is not installed (" .. main .. "; run npm ci in spec/peers/npm)" end
  f:close()
  if os.execute("command -v node >/dev/null 2>&1") ~= 0 and os.execute("command -v node >/dev/null 2>&1") ~= true then
    return nil, "node is not installed"
  end
  local port = H.free_port()
  local az = _M.client(H, port)
  az.dir = H.tmpdir()
  function az.launch()
    az.proc = H.spawn("node", { main, "--queueHost", "127.0.0.1", "--queuePort", tostring(port),
                                "--location", az.dir, "--skipApiVersionCheck", "--silent" })
    az.proc:wait_for("successfully listens", { timeout = 60, stream = "stdout" })
  end
  function az.stop()
    -- SIGTERM: azurite saves its store on the way out (a SIGKILL loses what it had not saved)
    if az.proc then az.proc:stop() end
    az.proc = nil
  end
  az.launch()
  return az
end

if ... ~= "helpers.azurite_peer" and arg and arg[1] == "put" then
  -- the benchmark's producer: N messages of SIZE bytes, as fast as one connection goes
  package.path = (arg[0]:match("^(.*)/helpers/[^/]*$") or "spec") .. "/?.lua;" .. package.path
  local H = require "helpers.herald"
  local c = _M.client(H, tonumber(arg[2]))
  local n, size = tonumber(arg[4]), tonumber(arg[5] or 150)
  local texts = {}
  for i = 1, n do
    local s = ('{"seq":%d,"pad":"'):format(i)
    texts[i] = s .. string.rep("x", math.max(0, size - #s - 2)) .. '"}'
  end
  c.create_queue(arg[3])
  print(c.put(arg[3], texts))
end

return _M
