-- End-to-end: webhook event -> Sensor with a slack trigger -> a local chat.postMessage
-- stand-in (spec/helpers/slack_api.lua), pointed at with HERALD_SLACK_API_URL.
local H = require "helpers.herald"
local cjson = require "cjson"

local TOKEN = "xoxb-herald-test-token"

local function start_api()
  local dir = H.tmpdir()
  local out = dir .. "/requests.jsonl"
  H.write(out, "")
  local port = H.free_port()
  local proc = H.spawn("luajit", { H.source_dir .. "/spec/helpers/slack_api.lua", "--port",
    tostring(port), "--out", out, "--token", TOKEN })
  proc:wait_for("listening", { stream = "stdout" })
  local api = { port = port, url = "http://127.0.0.1:" .. port .. "/api", proc = proc }
  function api.requests()
    local t = {}
    for line in (H.read(out) or ""):gmatch("[^\n]+") do t[#t + 1] = cjson.decode(line) end
    return t
  end
  function api.wait(n)
    return H.wait_until(function()
      local r = api.requests()
      return #r >= n and r
    end, 5, function() return n .. " requests at the Slack API, have " .. #api.requests() end)
  end
  return api
end

local function run(api, body, token)
  local sdir = H.tmpdir()
  os.execute("mkdir -p " .. sdir .. "/slack")
  H.write(sdir .. "/slack/token", (token or TOKEN) .. "\n")
  local dir = H.tmpdir()
  local port = H.free_port()
  H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
  H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } },
    triggers = { { name = "notify", body = body } } })
  local p = H.start({ "run", dir, "--secrets-dir", sdir }, { env = { HERALD_SLACK_API_URL = api.url } })
  p:wait_for("herald started")
  return p, port
end

local function metric(p, name)
  return H.metrics(p)[name .. '{sensor_name="s",trigger_name="notify"}'] or 0
end

local function wait_outcomes(p, n)
  return H.wait_until(function()
    return metric(p, "argo_events_action_triggered_total") + metric(p, "argo_events_action_failed_total") >= n
  end, 5, function() return n .. " outcomes\n" .. p:describe() end)
end

describe("slack trigger", function()
  it("posts the message from a parameter to the channel without '#', with the bearer token", function()
    local api = start_api()
    local p, port = run(api, [[
        slack:
          slackToken: {name: slack, key: token}
          channel: "#alerts"
          message: placeholder
          attachments: '[{"color":"good","text":"attached"}]'
          blocks: '[{"type":"section","text":{"type":"mrkdwn","text":"*hi*"}}]'
          sender:
            username: herald-bot
            icon: ":robot_face:"
      parameters:
        - src: {dependencyName: d, dataKey: body.text}
          dest: slack.message
]])
    assert.equal(200, (H.post_json(port, "/hook", '{"text":"deploy finished: \\"v1.2\\""}')))
    local r = api.wait(1)[1]
    assert.equal("POST", r.method)
    assert.equal("/api/chat.postMessage", r.path)
    assert.equal("Bearer " .. TOKEN, r.headers["authorization"])
    assert.truthy(r.headers["content-type"]:find("application/json", 1, true))
    assert.same({
      channel = "alerts",
      text = 'deploy finished: "v1.2"',
      attachments = { { color = "good", text = "attached" } },
      blocks = { { type = "section", text = { type = "mrkdwn", text = "*hi*" } } },
      username = "herald-bot",
      icon_emoji = ":robot_face:",
    }, cjson.decode(r.body))
    wait_outcomes(p, 1)
    assert.equal(1, metric(p, "argo_events_action_triggered_total"))
    p:kill()
    api.proc:kill()
  end)

  it("applies the slack trigger's own parameters (Argo ignores them)", function()
    local api = start_api()
    local p, port = run(api, [[
        slack:
          slackToken: {name: slack, key: token}
          channel: general
          message: static
          sender:
            icon: https://example.com/icon.png
          parameters:
            - src: {dependencyName: d, dataKey: body.channel}
              dest: channel
            - src: {dependencyName: d, dataKey: body.text}
              dest: message
]])
    H.post_json(port, "/hook", '{"channel":"#ops","text":"from the event"}')
    local r = api.wait(1)[1]
    assert.same({ channel = "ops", text = "from the event", icon_url = "https://example.com/icon.png" },
      cjson.decode(r.body))
    p:kill()
    api.proc:kill()
  end)

  it("threads messages with the same aggregation key under the first one", function()
    local api = start_api()
    local p, port = run(api, [[
        slack:
          slackToken: {name: slack, key: token}
          channel: builds
          message: placeholder
          thread:
            messageAggregationKey: placeholder
            broadcastMessageToChannel: true
      parameters:
        - src: {dependencyName: d, dataKey: body.text}
          dest: slack.message
        - src: {dependencyName: d, dataKey: body.build}
          dest: slack.thread.messageAggregationKey
]])
    H.post_json(port, "/hook", '{"text":"build 7 started","build":"b7"}')
    api.wait(1)
    wait_outcomes(p, 1)
    H.post_json(port, "/hook", '{"text":"build 7 passed","build":"b7"}')
    H.post_json(port, "/hook", '{"text":"build 8 started","build":"b8"}')
    local reqs = api.wait(3)
    local first, reply = cjson.decode(reqs[1].body), nil
    assert.is_nil(first.thread_ts)
    for i = 2, 3 do
      local b = cjson.decode(reqs[i].body)
      if b.text == "build 7 passed" then reply = b
      else assert.is_nil(b.thread_ts) end
    end
    assert.equal("1.000100", reply.thread_ts)
    assert.is_true(reply.reply_broadcast)
    p:kill()
    api.proc:kill()
  end)

  it("fails with Slack's error when ok is false, and on rate limits and server errors", function()
    local api = start_api()
    local p, port = run(api, [[
        slack:
          slackToken: {name: slack, key: token}
          channel: placeholder
          message: hi
      parameters:
        - src: {dependencyName: d, dataKey: body.channel}
          dest: slack.channel
]])
    for _, ch in ipairs{ "nowhere", "ratelimited", "down" } do
      H.post_json(port, "/hook", ('{"channel":"%s"}'):format(ch))
    end
    api.wait(3)
    wait_outcomes(p, 3)
    assert.equal(3, metric(p, "argo_events_action_failed_total"))
    assert.equal(0, metric(p, "argo_events_action_triggered_total"))
    local err = p:output("stderr")
    assert.truthy(err:find("slack chat.postMessage: channel_not_found", 1, true))
    assert.truthy(err:find("slack chat.postMessage: status 429", 1, true))
    assert.truthy(err:find("slack chat.postMessage: status 503", 1, true))
    p:kill()
    api.proc:kill()
  end)

  it("reports invalid_auth for a wrong token", function()
    local api = start_api()
    local p, port = run(api, [[
        slack:
          slackToken: {name: slack, key: token}
          channel: general
          message: hi
]], "xoxb-wrong")
    H.post_json(port, "/hook", '{}')
    api.wait(1)
    wait_outcomes(p, 1)
    assert.equal(1, metric(p, "argo_events_action_failed_total"))
    assert.truthy(p:output("stderr"):find("slack chat.postMessage: invalid_auth", 1, true))
    p:kill()
    api.proc:kill()
  end)
end)
