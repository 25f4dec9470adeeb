-- spec/helpers/nats_jwt.lua: NATS operator-mode credentials for specs, made with the openssl
-- command (ed25519): nkeys (base32 with a prefix byte and CRC-16) and JWTs signed by their
-- issuer, as nsc makes them, so a real nats-server can run in operator mode without nsc.
--
--   local J = require "helpers.nats_jwt"
--   local op, acc, user = J.key("operator", dir), J.key("account", dir), J.key("user", dir)
--   local op_jwt = J.jwt(op, op, { type = "operator", version = 2 })
--   ...
local bit = require "bit"
local cjson = require "cjson"
local H = require "helpers.herald"

local _M = {}

local PREFIX = { seed = 18 * 8, operator = 14 * 8, account = 0, user = 20 * 8 }

local function crc16(s) -- XMODEM
  local crc = 0
  for i = 1, #s do
    crc = bit.bxor(crc, bit.lshift(s:byte(i), 8))
    for _ = 1, 8 do
      if bit.band(crc, 0x8000) ~= 0 then crc = bit.band(bit.bxor(bit.lshift(crc, 1), 0x1021), 0xffff)
      else crc = bit.band(bit.lshift(crc, 1), 0xffff) end
    end
  end
  return crc
end

local B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
local function base32(s)
  local out, buffer, bits = {}, 0, 0
  for i = 1, #s do
    buffer = bit.bor(bit.lshift(buffer, 8), s:byte(i))
    bits = bits + 8
    while bits >= 5 do
      local idx = bit.band(bit.rshift(buffer, bits - 5), 31)
      out[#out + 1] = B32:sub(idx + 1, idx + 1)
      bits = bits - 5
    end
    buffer = bit.band(buffer, bit.lshift(1, bits) - 1)
  end
  if bits > 0 then
    local idx = bit.band(bit.lshift(buffer, 5 - bits), 31)
    out[#out + 1] = B32:sub(idx + 1, idx + 1)
  end
  return table.concat(out)
end

local function with_crc(raw)
  local c = crc16(raw)
  return raw .. string.char(bit.band(c, 0xff), bit.rshift(c, 8))
end

local function b64url(s)
  local t = {}
  local A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local k = c and 4 or (b and 3 or 2)
    for j = 1, k do
      local idx = bit.band(bit.rshift(n, (4 - j) * 6), 63)
      t[#t + 1] = A:sub(idx + 1, idx + 1)
    end
  end
  return table.concat(t)
end

local function run(cmd)
  local r = os.execute(cmd .. " 2>/dev/null")
  assert(r == 0 or r == true, cmd)
end

--- A new ed25519 key of `kind` (operator, account, user): {pem=, public=, seed=}.
function _M.key(kind, dir)
  local pem = os.tmpname()
  run(("openssl genpkey -algorithm ed25519 -out %s"):format(pem))
  local der_priv, der_pub = os.tmpname(), os.tmpname()
  run(("openssl pkey -in %s -outform DER -out %s"):format(pem, der_priv))
  run(("openssl pkey -in %s -pubout -outform DER -out %s"):format(pem, der_pub))
  local priv, pub = H.read(der_priv):sub(-32), H.read(der_pub):sub(-32)
  os.remove(der_priv)
  os.remove(der_pub)
  local p = PREFIX[kind]
  local seed_prefix = string.char(bit.bor(PREFIX.seed, bit.rshift(p, 5)), bit.band(bit.lshift(p, 3), 0xff))
  return {
    pem = pem,
    public = base32(with_crc(string.char(p) .. pub)),
    seed = base32(with_crc(seed_prefix .. priv)),
  }
end

--- A JWT for `subject` with the `nats` claims, signed by `issuer`.
function _M.jwt(issuer, subject, nats, name)
  local header = b64url(cjson.encode{ typ = "JWT", alg = "ed25519-nkey" })
  local claims = b64url(cjson.encode{
    jti = ("%08x%08x"):format(math.random(0, 0x7fffffff), math.random(0, 0x7fffffff)),
    iat = os.time(), iss = issuer.public, sub = subject.public, name = name or subject.public:sub(1, 8), nats = nats,
  })
  local msg = os.tmpname()
  H.write(msg, header .. "." .. claims)
  local sig = os.tmpname()
  run(("openssl pkeyutl -sign -inkey %s -rawin -in %s -out %s"):format(issuer.pem, msg, sig))
  local s = H.read(sig)
  os.remove(msg)
  os.remove(sig)
  return header .. "." .. claims .. "." .. b64url(s)
end

--- A credentials file's text: the user JWT and the user's seed.
function _M.creds(user_jwt, user)
  return table.concat({
    "-----BEGIN NATS USER JWT-----", user_jwt, "------END NATS USER JWT------", "",
    "************************* IMPORTANT *************************", "",
    "-----BEGIN USER NKEY SEED-----", user.seed, "------END USER NKEY SEED------", "",
  }, "\n")
end

--- Operator, system account, an account with JetStream and its user: returns the nats-server configuration lines
--- and the user's credentials file text.
function _M.setup(store_dir)
  local op, acc, user, sys = _M.key("operator"), _M.key("account"), _M.key("user"), _M.key("account")
  local op_jwt = _M.jwt(op, op, { type = "operator", version = 2 }, "op")
  local acc_jwt = _M.jwt(op, acc, {
    limits = { subs = -1, data = -1, payload = -1, imports = -1, exports = -1, wildcards = true,
      conn = -1, leaf = -1, mem_storage = -1, disk_storage = -1, streams = -1, consumer = -1 },
    default_permissions = { pub = {}, sub = {} }, type = "account", version = 2,
  }, "acc")
  local sys_jwt = _M.jwt(op, sys, { limits = { subs = -1, data = -1, payload = -1, conn = -1 },
    type = "account", version = 2 }, "SYS")
  local user_jwt = _M.jwt(acc, user, { pub = {}, sub = {}, subs = -1, data = -1, payload = -1,
    type = "user", version = 2 }, "herald")
  local conf = table.concat({
    ("operator: %s"):format(op_jwt),
    "resolver: MEMORY",
    ("system_account: %s"):format(sys.public),
    ("resolver_preload: { %s: %s, %s: %s }"):format(acc.public, acc_jwt, sys.public, sys_jwt),
    ("jetstream: { store_dir: %q }"):format(store_dir),
  }, "\n") .. "\n"
  for _, k in ipairs{ op, acc, user, sys } do os.remove(k.pem) end
  return conf, _M.creds(user_jwt, user)
end

return _M
