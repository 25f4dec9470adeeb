-- spec/helpers/minio_fake.lua: a stand-in for MinIO's ListenBucketNotification API, written from
-- MinIO's documentation (no MinIO server is packaged for Debian 12), for the minio specs.
--
--   luajit spec/helpers/minio_fake.lua --port N --access AK --secret SK [--bucket B ...]
--
-- GET /BUCKET?events=E&events=E2&ping=S&prefix=P&suffix=X
--   the listen: the request's SigV4 Authorization is checked in full (AWS4-HMAC-SHA256,
--   Credential=AK/date/region/s3/aws4_request, SignedHeaders including host, x-amz-date and
--   x-amz-content-sha256, the signature recomputed with SK): 403 SignatureDoesNotMatch /
--   InvalidAccessKeyId otherwise, 404 NoSuchBucket for an unknown bucket. A good one is answered
--   200 with a chunked body that never ends: a blank keep-alive line at once and every second,
--   and one line {"Records":[record]} per object event matching the listen's events (with *
--   wildcards), prefix and suffix, as MinIO writes them.
-- POST /control/put?bucket=B&key=K&event=E[&n=N]   N object events (default 1; event default
--                                                 s3:ObjectCreated:Put), sent to every listener
--                                                 that matches; answers the number of lines sent
-- POST /control/close                             ends every open stream (a clean end)
-- GET  /control/log                               the listens seen: JSON lines {path, query,
--                                                 auth_ok, why, region, events, prefix, suffix}
-- Prints "listening <port>" on stdout once it accepts connections.
local socket = require "socket"
local ffi = require "ffi"
local cjson = require "cjson"

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len, const unsigned char *d,
                    size_t n, unsigned char *md, unsigned int *md_len);
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
]]
local crypto = ffi.load("crypto")

local function hmac(key, msg)
  local out = ffi.new("unsigned char[32]")
  local n = ffi.new("unsigned int[1]", 32)
  crypto.HMAC(crypto.EVP_sha256(), key, #key, msg, #msg, out, n)
  return ffi.string(out, 32)
end
local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end
local function sha256_hex(s)
  local out = ffi.new("unsigned char[32]")
  crypto.SHA256(s, #s, out)
  return hex(ffi.string(out, 32))
end
local function url_decode(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
local function aws_encode(s)
  return (s:gsub("[^A-Za-z0-9%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local opts = { port = 0, bucket = {} }
do
  local i = 1
  while i <= #arg do
    local k, v = arg[i]:gsub("^%-%-", ""), arg[i + 1]
    if k == "bucket" then opts.bucket[#opts.bucket + 1] = v else opts[k] = v end
    i = i + 2
  end
end
if #opts.bucket == 0 then opts.bucket = { "images" } end
local buckets = {}
for _, b in ipairs(opts.bucket) do buckets[b] = true end

local srv = assert(socket.bind("127.0.0.1", tonumber(opts.port)))
srv:settimeout(0)
io.stdout:write("listening ", select(2, srv:getsockname()), "\n")
io.stdout:flush()

local log = {}
local clients = {} -- socket -> {buf=, stream=listen or nil}
local seq = 0

--- Checks a listen's SigV4 Authorization; returns ok, why, region.
local function check_auth(method, path, query, headers)
  local auth = headers.authorization or ""
  local cred, signed, sig = auth:match("^AWS4%-HMAC%-SHA256 Credential=([^,]+), ?SignedHeaders=([^,]+), ?Signature=(%x+)$")
  if not cred then return false, "Authorization is not AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=..." end
  local ak, date8, region, service, term = cred:match("^([^/]+)/(%d%d%d%d%d%d%d%d)/([^/]+)/([^/]+)/([^/]+)$")
  if not ak then return false, "bad Credential scope " .. cred end
  if ak ~= opts.access then return false, "InvalidAccessKeyId" end
  if service ~= "s3" or term ~= "aws4_request" then return false, "scope is not s3/aws4_request" end
  if #sig ~= 64 then return false, "signature is not 64 hex digits" end
  local amz_date = headers["x-amz-date"] or ""
  if amz_date:sub(1, 8) ~= date8 then return false, "x-amz-date does not match the scope's date" end
  local have = {}
  for h in signed:gmatch("[^;]+") do have[h] = true end
  for _, need in ipairs({ "host", "x-amz-date", "x-amz-content-sha256" }) do
    if not have[need] then return false, "SignedHeaders lacks " .. need end
  end
  local params = {}
  for kv in query:gmatch("[^&]+") do
    local k, v = kv:match("^([^=]*)=?(.*)$")
    params[#params + 1] = { aws_encode(url_decode(k)), aws_encode(url_decode(v)) }
  end
  table.sort(params, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  local cq = {}
  for i, p in ipairs(params) do cq[i] = p[1] .. "=" .. p[2] end
  local ch = {}
  for h in signed:gmatch("[^;]+") do ch[#ch + 1] = h .. ":" .. (headers[h] or ""):gsub("^%s+", ""):gsub("%s+$", "") end
  local creq = table.concat({ method, path, table.concat(cq, "&"), table.concat(ch, "\n") .. "\n", signed,
                              headers["x-amz-content-sha256"] or "" }, "\n")
  local sts = table.concat({ "AWS4-HMAC-SHA256", amz_date, ("%s/%s/s3/aws4_request"):format(date8, region), sha256_hex(creq) }, "\n")
  local k = hmac(hmac(hmac(hmac("AWS4" .. opts.secret, date8), region), "s3"), "aws4_request")
  if hex(hmac(k, sts)) ~= sig then return false, "SignatureDoesNotMatch", region end
  return true, nil, region
end

-- clients read with a zero timeout; a write may wait (a listener slow to read)
local function send(c, data)
  c:settimeout(5)
  local ok, err = c:send(data)
  c:settimeout(0)
  return ok, err
end

local function send_chunk(c, data)
  return send(c, ("%x\r\n%s\r\n"):format(#data, data))
end

local function xml_error(code, msg)
  return ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message></Error>'):format(code, msg)
end

local function respond(c, status, body, ctype)
  send(c, ("HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s")
    :format(status, ctype or "application/xml", #body, body))
end

local function matches(pattern, name)
  if pattern == name then return true end
  local p = "^" .. pattern:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"):gsub("%*", ".*") .. "$"
  return name:match(p) ~= nil
end

local function record(bucket, key, ev)
  seq = seq + 1
  return {
    eventVersion = "2.0", eventSource = "minio:s3", awsRegion = "",
    eventTime = os.date("!%Y-%m-%dT%H:%M:%S") .. ".000Z", eventName = ev,
    userIdentity = { principalId = opts.access },
    requestParameters = { principalId = opts.access, region = "", sourceIPAddress = "127.0.0.1" },
    responseElements = { ["x-amz-id-2"] = "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
                         ["x-amz-request-id"] = ("17%014X"):format(seq),
                         ["x-minio-deployment-id"] = "3a2bd0f8-0000-4000-8000-000000000001",
                         ["x-minio-origin-endpoint"] = "http://127.0.0.1:9000" },
    s3 = { s3SchemaVersion = "1.0", configurationId = "Config",
           bucket = { name = bucket, ownerIdentity = { principalId = opts.access }, arn = "arn:aws:s3:::" .. bucket },
           object = { key = key, size = 5, eTag = "5d41402abc4b2a76b9719d911017c592", contentType = "text/plain",
                      userMetadata = { ["content-type"] = "text/plain" }, sequencer = ("17%014X"):format(seq) } },
    source = { host = "127.0.0.1", port = "", userAgent = "MinIO (linux; amd64) minio-go/v7.0.70" },
  }
end

local function handle(c, st, method, target, headers)
  local path, query = target:match("^([^?]*)%??(.*)$")
  local q = {}
  for kv in query:gmatch("[^&]+") do
    local k, v = kv:match("^([^=]*)=?(.*)$")
    k, v = url_decode(k), url_decode(v)
    if k == "events" then q.events = q.events or {} table.insert(q.events, v) else q[k] = v end
  end
  if path == "/control/put" then
    local n, sent = tonumber(q.n or 1), 0
    for i = 1, n do
      local key = n > 1 and (q.key .. i) or q.key
      local ev = q.event or "s3:ObjectCreated:Put"
      for oc, ost in pairs(clients) do
        local l = ost.stream
        if l and l.bucket == (q.bucket or "images") and key:sub(1, #l.prefix) == l.prefix
           and (l.suffix == "" or key:sub(-#l.suffix) == l.suffix) then
          local ok = #l.events == 0
          for _, p in ipairs(l.events) do ok = ok or matches(p, ev) end
          if ok then
            send_chunk(oc, cjson.encode({ Records = { record(l.bucket, key, ev) } }) .. "\n")
            sent = sent + 1
          end
        end
      end
    end
    respond(c, 200, tostring(sent), "text/plain")
    return "close"
  elseif path == "/control/close" then
    local n = 0
    for oc, ost in pairs(clients) do
      if ost.stream then
        send(oc, "0\r\n\r\n")
        oc:close()
        clients[oc] = nil
        n = n + 1
      end
    end
    respond(c, 200, tostring(n), "text/plain")
    return "close"
  elseif path == "/control/log" then
    local lines = {}
    for i, r in ipairs(log) do lines[i] = cjson.encode(r) end
    respond(c, 200, table.concat(lines, "\n"), "application/json")
    return "close"
  end
  local bucket = path:match("^/([^/]+)$")
  local ok, why, region = check_auth(method, path, query, headers)
  local entry = { path = path, query = query, auth_ok = ok, why = why, region = region, events = q.events or {},
                  prefix = q.prefix, suffix = q.suffix, ping = q.ping, host = headers.host }
  log[#log + 1] = entry
  if method ~= "GET" or not bucket or q.ping == nil and q.events == nil and q.prefix == nil then
    respond(c, 400, xml_error("InvalidRequest", "only ListenBucketNotification is served here"))
    return "close"
  end
  if not ok then
    local code = why == "InvalidAccessKeyId" and "InvalidAccessKeyId" or "SignatureDoesNotMatch"
    respond(c, 403, xml_error(code, "The request signature we calculated does not match the signature you provided."))
    return "close"
  end
  if not buckets[bucket] then
    respond(c, 404, xml_error("NoSuchBucket", "The specified bucket does not exist"))
    return "close"
  end
  st.stream = { bucket = bucket, events = q.events or {}, prefix = q.prefix or "", suffix = q.suffix or "" }
  send(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nServer: MinIO\r\n\r\n")
  send_chunk(c, "\n") -- MinIO writes a keep-alive at once, so clients see the headers
  return "stream"
end

local last_ping = socket.gettime()
while true do
  local socks = { srv }
  for c in pairs(clients) do socks[#socks + 1] = c end
  local readable = socket.select(socks, nil, 0.2)
  for _, s in ipairs(readable) do
    if s == srv then
      local c = srv:accept()
      if c then
        c:settimeout(0)
        clients[c] = { buf = "" }
      end
    else
      local st = clients[s]
      local data, err, partial = s:receive(4096)
      data = data or partial
      if err == "closed" and (not data or data == "") then
        s:close()
        clients[s] = nil
      elseif st and data and not st.stream then
        st.buf = st.buf .. data
        local head_end = st.buf:find("\r\n\r\n", 1, true)
        if head_end then
          local head = st.buf:sub(1, head_end - 1)
          local method, target = head:match("^(%S+) (%S+)")
          local headers = {}
          for l in head:gmatch("[^\r\n]+") do
            local k, v = l:match("^([^:]+):%s*(.*)$")
            if k then headers[k:lower()] = v end
          end
          if handle(s, st, method, target, headers) == "close" then
            s:close()
            clients[s] = nil
          end
        end
      end
    end
  end
  if socket.gettime() - last_ping >= 1 then
    last_ping = socket.gettime()
    for c, st in pairs(clients) do
      if st.stream then send_chunk(c, "\n") end
    end
  end
end
