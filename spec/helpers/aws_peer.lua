-- spec/helpers/aws_peer.lua: runs spec/helpers/fauxqs.js (fauxqs on 127.0.0.1 plus a fake STS,
-- instance metadata and an HTTPS file server) for the sqs, sns and S3-notification specs.
--
--   local A = require "helpers.aws_peer"
--   local aws = A.start()                 -- once per spec file (setup), aws.stop() in teardown
--   aws.create_queue("q1", {VisibilityTimeout = "2"})
--   aws.send("q1", "hello", {color = "red"})
--   aws.counts("q1")  -> visible, in flight
--   aws.stop_emulator(); aws.start_emulator()   -- an outage; the queues and messages survive
--
-- SQS calls use its JSON protocol unsigned (fauxqs accepts any credentials); SNS its Query API.
local H = require "helpers.herald"
local cjson = require "cjson"

local _M = {}

_M.available = (function()
  local ok = os.execute("node --version >/dev/null 2>&1")
  local f = io.open(H.source_dir .. "/spec/peers/npm/node_modules/fauxqs/package.json")
  if f then f:close() end
  return (ok == 0 or ok == true) and f ~= nil
end)()

local function json_call(port, target, body)
  local status, _, rbody = H.http { port = port, method = "POST", path = "/", body = cjson.encode(body),
    headers = { ["X-Amz-Target"] = "AmazonSQS." .. target, ["Content-Type"] = "application/x-amz-json-1.0" } }
  assert(status == 200, ("%s: %s %s"):format(target, tostring(status), tostring(rbody)))
  return cjson.decode(rbody)
end

local function form(t)
  local parts = {}
  for k, v in pairs(t) do
    parts[#parts + 1] = k .. "=" .. tostring(v):gsub("[^%w%-_%.~]", function(c) return ("%%%02X"):format(c:byte()) end)
  end
  return table.concat(parts, "&")
end

--- opts: {tls_dir = DIR with cert.pem/key.pem (an HTTPS file server too)}
function _M.start(opts)
  opts = opts or {}
  local args = { H.source_dir .. "/spec/helpers/fauxqs.js" }
  if opts.tls_dir then args[#args + 1], args[#args + 2] = "--tls-dir", opts.tls_dir end
  local proc = H.spawn("node", args)
  local line = proc:wait_for("\"aux\"", { stream = "stdout", timeout = 20 })
  local info = cjson.decode(line)
  local aws = { proc = proc, port = info.port, aux = info.aux, tls = info.tls,
    endpoint = "http://127.0.0.1:" .. info.port, aux_url = "http://127.0.0.1:" .. info.aux }

  function aws.queue_url(name) return ("http://127.0.0.1:%d/000000000000/%s"):format(aws.port, name) end

  function aws.sqs(target, body) return json_call(aws.port, target, body) end

  function aws.create_queue(name, attrs)
    return aws.sqs("CreateQueue", { QueueName = name, Attributes = attrs })
  end

  --- attrs: {name = "string value"} (String attributes)
  function aws.send(queue, body, attrs)
    local ma
    if attrs then
      ma = {}
      for k, v in pairs(attrs) do ma[k] = { DataType = "String", StringValue = v } end
    end
    return aws.sqs("SendMessage", { QueueUrl = aws.queue_url(queue), MessageBody = body, MessageAttributes = ma }).MessageId
  end

  --- Sends the bodies 10 a call; returns their MessageIds.
  function aws.send_batch(queue, bodies)
    local ids = {}
    for i = 1, #bodies, 10 do
      local entries = {}
      for j = i, math.min(i + 9, #bodies) do entries[#entries + 1] = { Id = "e" .. j, MessageBody = bodies[j] } end
      local r = aws.sqs("SendMessageBatch", { QueueUrl = aws.queue_url(queue), Entries = entries })
      for _, s in ipairs(r.Successful or {}) do ids[#ids + 1] = s.MessageId end
    end
    return ids
  end

  --- visible, not visible (received, not deleted)
  function aws.counts(queue)
    local r = aws.sqs("GetQueueAttributes", { QueueUrl = aws.queue_url(queue),
      AttributeNames = { "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible" } })
    return tonumber(r.Attributes.ApproximateNumberOfMessages), tonumber(r.Attributes.ApproximateNumberOfMessagesNotVisible)
  end

  --- SNS Query API call; returns the XML answer.
  function aws.sns(params)
    local status, _, body = H.http { port = aws.port, method = "POST", path = "/", body = form(params),
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } }
    assert(status == 200, ("SNS %s: %s %s"):format(params.Action, tostring(status), tostring(body)))
    return body
  end

  local function control(path, method)
    local status, _, body = H.http { port = aws.aux, method = method or "POST", path = path, timeout = 20 }
    assert(status == 200, path .. ": " .. tostring(status) .. " " .. tostring(body))
    return body
  end
  function aws.stop_emulator() control("/control/stop") end
  function aws.start_emulator() control("/control/start") end
  function aws.keys() return cjson.decode(control("/control/keys", "GET")) end
  function aws.log() return cjson.decode(control("/control/log", "GET")) end
  function aws.sts_ttl(s) control("/control/sts-ttl?s=" .. s) end
  function aws.stop() proc:stop() end
  return aws
end

return _M
