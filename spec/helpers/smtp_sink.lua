-- spec/helpers/smtp_sink.lua: a local SMTP server for specs (the far end of email triggers).
--
--   luajit spec/helpers/smtp_sink.lua --port N --out FILE [--reject-rcpt ADDR ...]
--
-- Speaks enough ESMTP for libcurl (EHLO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT) to many
-- connections at once from one socket.select loop, without TLS (no STARTTLS offered). Each
-- accepted message is appended to FILE as one JSON line {"helo":, "auth_user":,
-- "auth_password":, "mail_from":, "rcpt_to":[...], "data":} (data with dot-stuffing undone);
-- each refused recipient as {"rejected_rcpt":}. RCPT TO a --reject-rcpt address gets
-- "550 5.1.1 no such user". Prints "listening <port>" on stdout once it accepts connections.
local socket = require "socket"
local cjson = require "cjson"
local mime = require "mime"

local opts = { port = 0, reject = {} }
do
  local i = 1
  while i <= #arg do
    local k, v = arg[i], arg[i + 1]
    if k == "--port" then opts.port = tonumber(v)
    elseif k == "--out" then opts.out = v
    elseif k == "--reject-rcpt" then opts.reject[v:lower()] = true
    else
      io.stderr:write("smtp_sink: unknown option " .. tostring(k) .. "\n")
      os.exit(2)
    end
    i = i + 2
  end
end
local out = assert(io.open(assert(opts.out, "--out FILE is required"), "ab"))

local function record(t)
  out:write(cjson.encode(t), "\n")
  out:flush()
end

local function new_session()
  return { buf = "", out = "", rcpt = {}, mode = "cmd" }
end

local function reply(st, line) st.out = st.out .. line .. "\r\n" end

local function auth_plain(st, b64)
  local raw = mime.unb64(b64) or ""
  local _, user, pass = raw:match("^([^%z]*)%z([^%z]*)%z(.*)$")
  st.auth_user, st.auth_password = user, pass
  reply(st, "235 2.7.0 Authentication successful")
end

local function command(st, line)
  local verb, rest = line:match("^(%a+)%s*(.*)$")
  verb = (verb or ""):upper()
  if st.mode == "auth" then
    st.mode = "cmd"
    return auth_plain(st, line)
  end
  if verb == "EHLO" then
    st.helo = rest
    st.out = st.out .. "250-sink\r\n250-AUTH PLAIN\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"
  elseif verb == "HELO" then
    st.helo = rest
    reply(st, "250 sink")
  elseif verb == "AUTH" then
    local mech, arg = rest:match("^(%S+)%s*(.*)$")
    if (mech or ""):upper() ~= "PLAIN" then return reply(st, "504 5.5.4 mechanism not supported") end
    if arg ~= "" then auth_plain(st, arg) else st.mode = "auth"; reply(st, "334 ") end
  elseif verb == "MAIL" then
    st.mail_from = rest:match("^[Ff][Rr][Oo][Mm]:%s*(<[^>]*>)") or rest
    st.rcpt = {}
    reply(st, "250 2.1.0 Ok")
  elseif verb == "RCPT" then
    local addr = rest:match("^[Tt][Oo]:%s*(<[^>]*>)") or rest
    if opts.reject[addr:lower():gsub("[<>]", "")] then
      record({ rejected_rcpt = addr })
      reply(st, "550 5.1.1 no such user")
    else
      st.rcpt[#st.rcpt + 1] = addr
      reply(st, "250 2.1.5 Ok")
    end
  elseif verb == "DATA" then
    if #st.rcpt == 0 then return reply(st, "554 5.5.1 no valid recipients") end
    st.mode = "data"
    st.data = {}
    reply(st, "354 End data with <CR><LF>.<CR><LF>")
  elseif verb == "RSET" then
    st.rcpt, st.mail_from = {}, nil
    reply(st, "250 2.0.0 Ok")
  elseif verb == "NOOP" then
    reply(st, "250 2.0.0 Ok")
  elseif verb == "QUIT" then
    reply(st, "221 2.0.0 Bye")
    st.close_after = true
  else
    reply(st, "502 5.5.2 command not recognized")
  end
end

local function feed(st)
  while true do
    local e = st.buf:find("\r\n", 1, true)
    if not e then return end
    local line = st.buf:sub(1, e - 1)
    st.buf = st.buf:sub(e + 2)
    if st.mode == "data" then
      if line == "." then
        st.mode = "cmd"
        record({ helo = st.helo, auth_user = st.auth_user, auth_password = st.auth_password,
          mail_from = st.mail_from, rcpt_to = st.rcpt, data = table.concat(st.data, "\r\n") .. "\r\n" })
        st.rcpt = {}
        reply(st, "250 2.0.0 Ok: queued")
      else
        if line:sub(1, 1) == "." then line = line:sub(2) end
        st.data[#st.data + 1] = line
      end
    else
      command(st, line)
    end
  end
end

local server = assert(socket.bind("127.0.0.1", opts.port))
server:settimeout(0)
local _, bound_port = server:getsockname()
io.stdout:write("listening ", bound_port, "\n")
io.stdout:flush()

local conns = {}
while true do
  local readers, writers = { server }, {}
  for c, st in pairs(conns) do
    readers[#readers + 1] = c
    if st.out ~= "" then writers[#writers + 1] = c end
  end
  local readable, writable = socket.select(readers, writers, 1)
  for _, c in ipairs(readable) do
    if c == server then
      local nc = server:accept()
      if nc then
        nc:settimeout(0)
        local st = new_session()
        reply(st, "220 sink ESMTP")
        conns[nc] = st
      end
    elseif conns[c] then
      local st = conns[c]
      local data, err, partial = c:receive(65536)
      data = data or partial
      if data and #data > 0 then
        st.buf = st.buf .. data
        feed(st)
      end
      if err == "closed" then
        conns[c] = nil
        c:close()
      end
    end
  end
  for c, st in pairs(conns) do
    if st.out ~= "" then
      local sent, err, last = c:send(st.out)
      st.out = st.out:sub((sent or last or 0) + 1)
      if err == "closed" or (st.out == "" and st.close_after) then
        conns[c] = nil
        c:close()
      end
    end
  end
end
