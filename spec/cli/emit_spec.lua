-- herald emit: injecting an event into a running engine through its admin endpoint.
local H = require "helpers.herald"

describe("herald emit", function()
  local dir, port, p
  setup(function()
    dir = H.tmpdir()
    port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port, extra = [[
      filter:
        expression: "body.ok == true"
]] })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    p = H.start{ "run", dir }
    p:wait_for("herald started")
  end)
  teardown(function() p:kill() end)

  local function emit(args)
    local full = { "emit", "--admin-addr", "127.0.0.1:" .. p.admin_port }
    for _, a in ipairs(args) do full[#full + 1] = a end
    return H.run(full)
  end

  it("reaches the trigger as if the EventSource had produced the event", function()
    local code, out, err = emit{ "--admin-token-file", p.admin_token_file,
      "--source", "es", "--event", "ev", "--data", '{"body":{"ok":true,"n":7}}' }
    assert.equal(0, code, err)
    assert.equal("success\n", out)
    local f = H.wait_firings(p, 1)[1]
    assert.equal(7, f.events.d.data.body.n)
    assert.equal("es", f.events.d.source)
    assert.equal("webhook", f.events.d.type)
  end)

  it("goes through the source's filter, like a real event", function()
    local code = emit{ "--admin-token-file", p.admin_token_file,
      "--source", "es", "--event", "ev", "--data", '{"body":{"ok":false}}' }
    assert.equal(0, code)
    H.wait_until(function()
      return H.metrics(p)['herald_events_source_filtered_total{eventsource_name="es",event_name="ev"}'] == 1
    end, 5, "filtered")
    assert.equal(1, #H.firings(p))
  end)

  it("reads data from a file with @", function()
    local f = H.write(dir .. "/data.json", '{"body":{"ok":true,"n":8}}')
    local code = emit{ "--admin-token-file", p.admin_token_file, "--source", "es", "--event", "ev", "--data", "@" .. f }
    assert.equal(0, code)
    H.wait_firings(p, 2)
  end)

  it("is refused without the token, and with a wrong one", function()
    local wrong = H.write(dir .. "/wrong-token", "0123456789abcdef0123456789abcdef")
    local code, _, err = emit{ "--admin-token-file", wrong, "--source", "es", "--event", "ev", "--data", "{}" }
    assert.equal(1, code)
    assert.matches("401", err)
    local status = H.http{ port = p.admin_port, method = "POST", path = "/emit?source=es&event=ev", body = "{}" }
    assert.equal(401, status)
    code, _, err = emit{ "--admin-token-file", dir .. "/missing", "--source", "es", "--event", "ev", "--data", "{}" }
    assert.equal(2, code)
    assert.matches("cannot read the admin token", err)
  end)

  it("says which source does not exist, and rejects data that is not JSON", function()
    local code, _, err = emit{ "--admin-token-file", p.admin_token_file, "--source", "nope", "--event", "ev", "--data", "{}" }
    assert.equal(1, code)
    assert.matches("404 no EventSource nope with event ev runs in this engine", err)
    code, _, err = emit{ "--admin-token-file", p.admin_token_file, "--source", "es", "--event", "ev", "--data", "{nope" }
    assert.equal(2, code)
    assert.matches("not JSON", err)
    -- the engine still serves
    assert.equal(200, (H.post_json(port, "/hook", '{"ok":true}')))
  end)

  it("creates the token file with mode 0600 when it is missing", function()
    local mode = io.popen("stat -c %a " .. p.admin_token_file):read("*l")
    assert.equal("600", mode)
    assert.equal(64, #H.read(p.admin_token_file))
  end)
end)
