-- spec/sources/sqs/s3_notifications_spec.lua: S3 event notifications the ways AWS delivers
-- them, with examples/s3-notifications run against fauxqs: an S3 event record in an SQS
-- message, the same record published to an SNS topic that fans out to an SQS queue (fauxqs
-- wraps it in the SNS envelope), and posted to the sns source as SNS's HTTP delivery does. The
-- sensor filters on Records.0.s3.object.key, unwrapping the envelope's Message with jq.
-- fauxqs has no S3 bucket notifications, so the spec writes the records itself, in the format
-- AWS documents (event structure version 2.1).
local H = require "helpers.herald"
local A = require "helpers.aws_peer"
local cjson = require "cjson"

local function record(key)
  return cjson.encode { Records = { {
    eventVersion = "2.1", eventSource = "aws:s3", awsRegion = "us-east-1",
    eventTime = "2026-12-03T20:00:00.000Z", eventName = "ObjectCreated:Put",
    userIdentity = { principalId = "AWS:AIDAEXAMPLE" },
    s3 = { s3SchemaVersion = "1.0", configurationId = "images",
      bucket = { name = "photos", arn = "arn:aws:s3:::photos", ownerIdentity = { principalId = "A3EXAMPLE" } },
      object = { key = key, size = 1024, eTag = "d41d8cd98f00b204e9800998ecf8427e", sequencer = "0055AED6DCD90281E5" } },
  } } }
end

describe("S3 notifications via SQS and SNS", function()
  local aws
  setup(function() if A.available then aws = A.start() end end)
  teardown(function() if aws then aws.stop() end end)

  it("examples/s3-notifications fires for uploads/*.jpg by SQS, by SNS to SQS and by SNS over HTTP, and not for other keys", function()
    if not aws then return pending("node or fauxqs (spec/peers/npm) missing") end
    aws.create_queue("bucket-events")
    aws.create_queue("bucket-fanout")
    local topic = aws.sns({ Action = "CreateTopic", Name = "bucket-events" }):match("<TopicArn>(.-)</TopicArn>")
    aws.sns { Action = "Subscribe", TopicArn = topic, Protocol = "sqs",
      Endpoint = "arn:aws:sqs:us-east-1:000000000000:bucket-fanout" }

    local port = H.free_port()
    local text = H.read(H.source_dir .. "/examples/s3-notifications/s3-notifications.yaml")
    text = text:gsub('port: "12000"', ('port: "%d"'):format(port))
      :gsub("url: https://events%.example%.com", "url: http://127.0.0.1:" .. port)
      :gsub("arn:aws:sns:us%-east%-1:123456789012:bucket%-events", topic)
      :gsub("validateSignature: true", "validateSignature: false") -- signatures: sns_spec
    local dir = H.tmpdir()
    H.write(dir .. "/s3.yaml", text)
    local p = H.start({ "run", dir }, { env = { AWS_ENDPOINT_URL = aws.endpoint,
      AWS_ACCESS_KEY_ID = "AKIAS3", AWS_SECRET_ACCESS_KEY = "x" } })
    p:wait_for("subscribed http://127.0.0.1:" .. port .. "/s3", { timeout = 10 })

    aws.send("bucket-events", record("logs/app.txt"))
    aws.send("bucket-events", record("uploads/cat.jpg"))
    aws.sns { Action = "Publish", TopicArn = topic, Subject = "Amazon S3 Notification", Message = record("tmp/dog.jpg") }
    aws.sns { Action = "Publish", TopicArn = topic, Subject = "Amazon S3 Notification", Message = record("uploads/dog.jpg") }
    for _, key in ipairs { "uploads/bird.txt", "uploads/bird.jpg" } do
      local st = H.http { port = port, method = "POST", path = "/s3", body = cjson.encode {
        Type = "Notification", MessageId = "n-" .. key, TopicArn = topic, Subject = "Amazon S3 Notification",
        Message = record(key), Timestamp = "2026-12-03T20:00:00.000Z" },
        headers = { ["Content-Type"] = "text/plain; charset=UTF-8", ["x-amz-sns-message-type"] = "Notification" } }
      assert.equal(200, st)
    end

    local f = H.wait_firings(p, 3, 15)
    local keys = {}
    for _, v in ipairs(f) do
      for dep, ev in pairs(v.events) do
        local b = ev.data.body
        local rec = dep == "via-sqs" and b or b.Message -- unwrapped by the jq transform
        keys[dep] = rec.Records[1].s3.object.key
      end
    end
    assert.same({ ["via-sqs"] = "uploads/cat.jpg", ["via-sns-to-sqs"] = "uploads/dog.jpg",
      ["via-sns"] = "uploads/bird.jpg" }, keys)
    -- the other three came and were filtered out: every queue drained
    H.wait_until(function()
      local a, b = aws.counts("bucket-events")
      local c, d = aws.counts("bucket-fanout")
      return a + b + c + d == 0
    end, 10, "queues drained")
    assert.equal(0, p:stop())
    assert.equal(3, #H.firings(p))
  end)
end)
