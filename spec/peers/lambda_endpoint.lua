-- spec/peers/lambda_endpoint.lua: a local AWS Lambda + STS + S3 GetObject endpoint for specs that VERIFIES
-- the SigV4 signature of every request before answering (an implementation of its own, with
-- SHA-256/HMAC from libcrypto through the LuaJIT FFI, so the trigger's signer is checked
-- against a second reading of the algorithm).
--
--   luajit spec/peers/lambda_endpoint.lua --port N --out FILE --key AKID:SECRET [--key ...]
--                                         [--object BUCKET/KEY=FILE ...]
--
-- Lambda: POST /2015-03-31/functions/<name>/invocations. The function name picks the answer:
--   fail-unhandled  200 + X-Amz-Function-Error: Unhandled   throttled  429 TooManyRequests
--   broken          500 ServiceException                    missing    404 ResourceNotFound
--   anything else   200 (RequestResponse, echoes the payload) | 202 (Event) | 204 (DryRun)
-- STS: POST / with Action=AssumeRole issues temporary credentials (ASIA..., with a session
-- token) that are then accepted, and only with their token.
-- S3: GET /<bucket>/<key> (path style) answers the --object file, 404 NoSuchKey otherwise; the
-- signature is checked with S3's rules (path signed as sent, payload hash from
-- x-amz-content-sha256, which must be signed); a bad one gets 403 SignatureDoesNotMatch.
-- A bad or missing signature gets 403 InvalidSignatureException. Every request is recorded as a
-- JSON line: {"api":"lambda"|"sts", "verified":bool, "error":..., "access_key":...,
-- "session_token":..., "function":..., "invocation_type":..., "payload":..., "role_arn":...}.
-- Prints "listening <port>" on stdout once it accepts connections.
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/../helpers/?.lua;" .. package.path
local stub = require "http_stub"
local cjson = require "cjson"
local ffi = require "ffi"

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len, const unsigned char *d,
                    size_t n, unsigned char *md, unsigned int *md_len);
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
]]
local crypto = ffi.load("crypto")

local function tohex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function sha256(s)
  local md = ffi.new("unsigned char[32]")
  crypto.SHA256(s, #s, md)
  return ffi.string(md, 32)
end

local function hmac(key, msg)
  local md = ffi.new("unsigned char[32]")
  local len = ffi.new("unsigned int[1]", 32)
  crypto.HMAC(crypto.EVP_sha256(), key, #key, msg, #msg, md, len)
  return ffi.string(md, 32)
end

local opts = { port = 0, keys = {}, objects = {} }
do
  local i = 1
  while i <= #arg do
    local k, v = arg[i], arg[i + 1]
    if k == "--port" then opts.port = tonumber(v)
    elseif k == "--out" then opts.out = v
    elseif k == "--key" then
      local ak, sk = v:match("^([^:]+):(.+)$")
      opts.keys[ak] = { secret = sk }
    elseif k == "--object" then
      local name, file = v:match("^([^=]+)=(.+)$")
      local f = assert(io.open(file, "rb"))
      opts.objects[name] = f:read("*a")
      f:close()
    else
      io.stderr:write("lambda_endpoint: unknown option " .. tostring(k) .. "\n")
      os.exit(2)
    end
    i = i + 2
  end
end

local out = assert(io.open(assert(opts.out, "--out FILE is required"), "ab"))

-- SigV4, read from AWS's "Create a signed AWS API request" steps ---------------------------

local function encode(s, keep_slash)
  return (s:gsub("[^%w%-%._~" .. (keep_slash and "/" or "") .. "]", function(c)
    return ("%%%02X"):format(c:byte())
  end))
end

local function decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function canonical_query(q)
  if not q or q == "" then return "" end
  local items = {}
  for part in q:gmatch("[^&]+") do
    local k, v = part:match("^([^=]*)=?(.*)$")
    items[#items + 1] = { encode(decode(k)), encode(decode(v)) }
  end
  table.sort(items, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
  local parts = {}
  for i, kv in ipairs(items) do parts[i] = kv[1] .. "=" .. kv[2] end
  return table.concat(parts, "&")
end

-- Returns true, or false and why.
local function verify(req, service, s3)
  local auth = req.headers["authorization"]
  if not auth then return false, "no Authorization header" end
  local ak, date8, region, svc, signed, sig = auth:match(
    "^AWS4%-HMAC%-SHA256 Credential=([^/]+)/(%d+)/([^/]+)/([^/]+)/aws4_request, SignedHeaders=([^,]+), Signature=(%x+)$")
  if not ak then return false, "malformed Authorization: " .. auth end
  if svc ~= service then return false, "credential scope service " .. svc .. ", expected " .. service end
  local key = opts.keys[ak]
  if not key then return false, "unknown access key " .. ak end
  if key.token and req.headers["x-amz-security-token"] ~= key.token then
    return false, "temporary credentials without their session token"
  end
  local amz_date = req.headers["x-amz-date"]
  if not amz_date or amz_date:sub(1, 8) ~= date8 then return false, "X-Amz-Date missing or not matching the scope" end
  local lines = {}
  local has = {}
  for name in signed:gmatch("[^;]+") do
    local v = req.headers[name]
    if not v then return false, "signed header " .. name .. " missing" end
    v = v:gsub("^%s+", ""):gsub("%s+$", ""):gsub("%s+", " ")
    lines[#lines + 1] = name .. ":" .. v .. "\n"
    has[name] = true
  end
  if not has.host or not has["x-amz-date"] then return false, "host and x-amz-date must be signed" end
  if req.headers["x-amz-security-token"] and not has["x-amz-security-token"] then
    return false, "x-amz-security-token not signed"
  end
  local path, query = req.path:match("^([^?]*)%??(.*)$")
  local payload_hash = tohex(sha256(req.body))
  if s3 then
    payload_hash = req.headers["x-amz-content-sha256"]
    if not payload_hash or not has["x-amz-content-sha256"] then return false, "x-amz-content-sha256 missing or not signed" end
    if payload_hash ~= "UNSIGNED-PAYLOAD" and payload_hash ~= tohex(sha256(req.body)) then
      return false, "x-amz-content-sha256 does not match the body"
    end
  end
  local creq = table.concat({ req.method, s3 and path or encode(path, true), canonical_query(query),
    table.concat(lines), signed, payload_hash }, "\n")
  local scope = table.concat({ date8, region, svc, "aws4_request" }, "/")
  local sts = table.concat({ "AWS4-HMAC-SHA256", amz_date, scope, tohex(sha256(creq)) }, "\n")
  local k = hmac("AWS4" .. key.secret, date8)
  k = hmac(k, region)
  k = hmac(k, svc)
  k = hmac(k, "aws4_request")
  local want = tohex(hmac(k, sts))
  if want ~= sig then return false, "signature mismatch; canonical request was:\n" .. creq end
  return true, nil, ak
end

-- Handlers ---------------------------------------------------------------------------------

local issued = 0

local function respond(status, headers, body)
  return { status = status, headers = headers or {}, body = body or "" }
end

local function aws_error(status, etype, msg)
  return respond(status, { ["Content-Type"] = "application/json", ["X-Amzn-ErrorType"] = etype },
    cjson.encode({ Type = "User", message = msg }))
end

local function s3_error(status, code)
  return respond(status, { ["Content-Type"] = "application/xml" },
    ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>%s</Code></Error>"):format(code))
end

local function handle_s3(req)
  local ok, err = verify(req, "s3", true)
  local bucket, key = req.path:match("^/([^/?]+)/([^?]+)")
  local rec = { api = "s3", method = req.method, path = req.path, verified = ok, error = err,
    access_key = (req.headers["authorization"] or ""):match("Credential=([^/]+)") }
  out:write(cjson.encode(rec), "\n")
  out:flush()
  if not ok then return s3_error(403, "SignatureDoesNotMatch") end
  local body = bucket and opts.objects[decode(bucket) .. "/" .. decode(key)]
  if not body then return s3_error(404, "NoSuchKey") end
  return respond(200, { ["Content-Type"] = "application/octet-stream" }, body)
end

local function handle(req)
  if req.method == "GET" then return handle_s3(req) end
  local rec = { method = req.method, path = req.path, access_key = nil }
  local fn = req.path:match("^/2015%-03%-31/functions/([^/]+)/invocations$")
  local service = fn and "lambda" or "sts"
  rec.api = service
  local ok, err, ak = verify(req, service)
  rec.verified = ok
  rec.error = err
  rec.access_key = (req.headers["authorization"] or ""):match("Credential=([^/]+)")
  rec.session_token = req.headers["x-amz-security-token"]
  local resp
  if fn then
    rec["function"] = decode(fn)
    rec.invocation_type = req.headers["x-amz-invocation-type"] or "RequestResponse"
    rec.payload = req.body
  else
    local form = {}
    for part in req.body:gmatch("[^&]+") do
      local k, v = part:match("^([^=]*)=?(.*)$")
      form[decode(k)] = decode((v:gsub("+", " ")))
    end
    rec.action = form.Action
    rec.role_arn = form.RoleArn
  end
  if not ok then
    resp = aws_error(403, "InvalidSignatureException", "The request signature we calculated does not match the signature you provided. " .. tostring(err))
  elseif not fn then
    if rec.action ~= "AssumeRole" then
      resp = respond(400, { ["Content-Type"] = "text/xml" }, "<ErrorResponse><Error><Code>InvalidAction</Code><Message>unknown action</Message></Error></ErrorResponse>")
    else
      issued = issued + 1
      local nak = ("ASIATEMP%08d"):format(issued)
      local nsk = "temp-secret-" .. issued
      local tok = "token/" .. issued .. "+&more"
      opts.keys[nak] = { secret = nsk, token = tok }
      rec.issued = nak
      local exp = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 3600)
      resp = respond(200, { ["Content-Type"] = "text/xml" }, ([[
<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser><Arn>%s/herald</Arn><AssumedRoleId>AROA:herald</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <AccessKeyId>%s</AccessKeyId>
      <SecretAccessKey>%s</SecretAccessKey>
      <SessionToken>%s</SessionToken>
      <Expiration>%s</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>r-%d</RequestId></ResponseMetadata>
</AssumeRoleResponse>]]):format(rec.role_arn or "", nak, nsk, tok:gsub("&", "&amp;"), exp, issued))
    end
  elseif rec["function"] == "fail-unhandled" then
    resp = respond(200, { ["Content-Type"] = "application/json", ["X-Amz-Function-Error"] = "Unhandled" },
      cjson.encode({ errorMessage = "boom", errorType = "Error" }))
  elseif rec["function"] == "throttled" then
    resp = aws_error(429, "TooManyRequestsException", "Rate exceeded")
  elseif rec["function"] == "broken" then
    resp = aws_error(500, "ServiceException", "internal failure")
  elseif rec["function"] == "missing" then
    resp = aws_error(404, "ResourceNotFoundException", "Function not found: " .. rec["function"])
  elseif rec.invocation_type == "Event" then
    resp = respond(202)
  elseif rec.invocation_type == "DryRun" then
    resp = respond(204)
  else
    resp = respond(200, { ["Content-Type"] = "application/json", ["X-Amz-Executed-Version"] = "$LATEST" }, req.body)
  end
  out:write(cjson.encode(rec), "\n")
  out:flush()
  return resp
end

-- HTTP/1.1 (keep-alive) on one select loop: spec/helpers/http_stub.lua. Repeated headers are
-- joined with "," as SigV4's canonical form does.
stub.serve(opts.port, handle, ",")
