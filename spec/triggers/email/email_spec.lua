-- End-to-end: webhook event -> Sensor with an email trigger -> a local SMTP server
-- (spec/helpers/smtp_sink.lua) recording MAIL FROM, RCPT TO and DATA.
local H = require "helpers.herald"
local cjson = require "cjson"

local function start_sink(extra)
  local dir = H.tmpdir()
  local out = dir .. "/mail.jsonl"
  H.write(out, "")
  local port = H.free_port()
  local args = { H.source_dir .. "/spec/helpers/smtp_sink.lua", "--port", tostring(port), "--out", out }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local proc = H.spawn("luajit", args)
  proc:wait_for("listening", { stream = "stdout" })
  local sink = { port = port, proc = proc }
  function sink.records()
    local t = {}
    for line in (H.read(out) or ""):gmatch("[^\n]+") do t[#t + 1] = cjson.decode(line) end
    return t
  end
  function sink.wait(n)
    return H.wait_until(function()
      local r = sink.records()
      return #r >= n and r
    end, 5, function() return n .. " records at the SMTP sink, have " .. #sink.records() end)
  end
  return sink
end

local function run(body)
  local sdir = H.tmpdir()
  os.execute("mkdir -p " .. sdir .. "/smtp")
  H.write(sdir .. "/smtp/password", "s3cret pass\n")
  local dir = H.tmpdir()
  local port = H.free_port()
  H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
  H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } },
    triggers = { { name = "mail", body = body } } })
  local p = H.start({ "run", dir, "--secrets-dir", sdir })
  p:wait_for("herald started")
  return p, port
end

local function metric(p, name)
  return H.metrics(p)[name .. '{sensor_name="s",trigger_name="mail"}'] or 0
end

local function wait_outcomes(p, n)
  return H.wait_until(function()
    return metric(p, "argo_events_action_triggered_total") + metric(p, "argo_events_action_failed_total") >= n
  end, 5, function() return n .. " outcomes\n" .. p:describe() end)
end

local function by_rcpt(recs)
  local t = {}
  for _, r in ipairs(recs) do
    if r.rcpt_to then t[r.rcpt_to[1]] = r end
  end
  return t
end

describe("email trigger", function()
  it("sends one message per recipient, with subject and body from parameters, authenticated", function()
    local sink = start_sink()
    local p, port = run(([[
        email:
          host: 127.0.0.1
          port: %d
          username: herald
          smtpPassword: {name: smtp, key: password}
          from: Herald <herald@example.com>
          to: [ops@example.com]
          subject: placeholder
          body: placeholder
          parameters:
            - src: {dependencyName: d, dataKey: body.text}
              dest: body
      parameters:
        - src: {dependencyName: d, dataKey: body.title}
          dest: email.subject
        - src: {dependencyName: d, dataKey: body.owner}
          dest: email.to.-1
]]):format(sink.port))
    assert.equal(200, (H.post_json(port, "/hook",
      '{"title":"Build failed","text":"line one\\n.dot line\\nline three","owner":"dev@example.org"}')))
    local recs = by_rcpt(sink.wait(2))
    local ops, dev = recs["<ops@example.com>"], recs["<dev@example.org>"]
    assert.truthy(ops and dev)
    for addr, r in pairs{ ["ops@example.com"] = ops, ["dev@example.org"] = dev } do
      assert.equal("<herald@example.com>", r.mail_from)
      assert.same({ "<" .. addr .. ">" }, r.rcpt_to)
      assert.equal("herald", r.auth_user)
      assert.equal("s3cret pass", r.auth_password)
      assert.truthy(r.data:find("\r\nSubject: Build failed\r\n", 1, true))
      assert.truthy(r.data:find("\r\nTo: " .. addr .. "\r\n", 1, true))
      assert.truthy(r.data:find("From: Herald <herald@example.com>\r\n", 1, true))
      assert.truthy(r.data:find("\r\n\r\nline one\r\n.dot line\r\nline three\r\n$"))
    end
    wait_outcomes(p, 1)
    assert.equal(1, metric(p, "argo_events_action_triggered_total"))
    p:kill()
    sink.proc:kill()
  end)

  it("encodes a non-ASCII subject", function()
    local sink = start_sink()
    local p, port = run(([[
        email:
          host: 127.0.0.1
          port: %d
          from: herald@example.com
          to: [a@example.com]
          subject: "Déploiement réussi"
          body: ok
]]):format(sink.port))
    H.post_json(port, "/hook", '{}')
    local r = sink.wait(1)[1]
    assert.is_nil(r.auth_user)
    assert.truthy(r.data:find("Subject: =?UTF-8?B?RMOpcGxvaWVtZW50IHLDqXVzc2k=?=\r\n", 1, true))
    p:kill()
    sink.proc:kill()
  end)

  it("fails when the server rejects a recipient, and the other recipients still get theirs", function()
    local sink = start_sink{ "--reject-rcpt", "nobody@example.com" }
    local p, port = run(([[
        email:
          host: 127.0.0.1
          port: %d
          from: herald@example.com
          to: [nobody@example.com, ops@example.com]
          subject: s
          body: b
]]):format(sink.port))
    H.post_json(port, "/hook", '{}')
    local recs = sink.wait(2)
    local got = by_rcpt(recs)
    assert.truthy(got["<ops@example.com>"])
    wait_outcomes(p, 1)
    assert.equal(1, metric(p, "argo_events_action_failed_total"))
    assert.truthy(p:output("stderr"):find("sending to nobody@example.com:", 1, true))
    assert.truthy(p:output("stderr"):find("last reply 550", 1, true))
    p:kill()
    sink.proc:kill()
  end)

  it("counts an unreachable server as a failure", function()
    -- a port that is bound but not listening: connections are refused, and no other peer
    -- can take it while the test runs
    local dead = assert(require("socket").tcp())
    assert(dead:bind("127.0.0.1", 0))
    local _, dead_port = dead:getsockname()
    local p, port = run(([[
        email:
          host: 127.0.0.1
          port: %d
          from: herald@example.com
          to: [ops@example.com]
          subject: s
          body: b
]]):format(dead_port))
    H.post_json(port, "/hook", '{}')
    wait_outcomes(p, 1)
    assert.equal(1, metric(p, "argo_events_action_failed_total"))
    assert.truthy(p:output("stderr"):find("sending to ops@example.com:", 1, true))
    p:kill()
    dead:close()
  end)

  it("refuses an invalid recipient address without sending anything", function()
    local sink = start_sink()
    local p, port = run(([[
        email:
          host: 127.0.0.1
          port: %d
          from: herald@example.com
          to: [ops@example.com]
          subject: s
          body: b
      parameters:
        - src: {dependencyName: d, dataKey: body.to}
          dest: email.to.0
]]):format(sink.port))
    H.post_json(port, "/hook", '{"to":"not-an-address"}')
    wait_outcomes(p, 1)
    assert.equal(1, metric(p, "argo_events_action_failed_total"))
    assert.truthy(p:output("stderr"):find("not-an-address is not a valid email address", 1, true))
    assert.equal(0, #sink.records())
    p:kill()
    sink.proc:kill()
  end)
end)
