-- HTTP trigger options: secureHeaders, dynamicHeaders, basicAuth, host, and TLS with a CA and
-- a client certificate (mutual TLS against a Node.js HTTPS server).
local H = require "helpers.herald"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"

local function mime64(s)
  return (io.popen("printf '%s' '" .. s .. "' | base64"):read("*l"))
end

describe("http trigger", function()
  it("sends secure headers, dynamic headers, basic auth and a virtual host", function()
    local sink = sink_client.start{}
    local dir = H.tmpdir()
    local secrets = dir .. "/secrets"
    os.execute(("mkdir -p %s/api %s/creds"):format(secrets, secrets))
    H.write(secrets .. "/api/token", "Bearer s3cr3t\n")
    H.write(secrets .. "/creds/user", "ada")
    H.write(secrets .. "/creds/pass", "lovelace")
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = { { name = "call", body = ([[
        http:
          url: http://127.0.0.1:%d/x
          host: api.example.test
          headers: {X-Static: one}
          secureHeaders:
            - name: Authorization-Token
              valueFrom: {secretKeyRef: {name: api, key: token}}
          dynamicHeaders:
            - src: {dependencyName: d, dataKey: body.request_id}
              dest: X-Request-Id
          basicAuth:
            username: {name: creds, key: user}
            password: {name: creds, key: pass}
]]):format(sink.port) } } })
    local p = H.start{ "run", dir, "--secrets-dir", secrets }
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(port, "/hook", '{"request_id":"r-77"}')))
    local r = sink.wait_requests(1, 5)[1]
    assert.equal("one", r.headers["x-static"])
    assert.equal("Bearer s3cr3t", r.headers["authorization-token"])
    assert.equal("r-77", r.headers["x-request-id"])
    assert.equal("api.example.test", r.headers["host"])
    assert.equal("Basic " .. mime64("ada:lovelace"), r.headers["authorization"])
    p:kill()
    sink.stop()
  end)

  it("refuses to start when a secret it names is missing", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = H.free_port() })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = { { name = "call", body = [[
        http:
          url: http://127.0.0.1:9/x
          secureHeaders:
            - name: X-Token
              valueFrom: {secretKeyRef: {name: nope, key: token}}
]] } } })
    local code, _, err = H.run{ "run", dir, "--secrets-dir", dir, "--metrics-addr", "off" }
    assert.equal(1, code)
    assert.matches("secret nope/token cannot be read", err)
  end)

  it("speaks mutual TLS with the CA and client certificate from secrets", function()
    if os.execute("command -v openssl >/dev/null && command -v node >/dev/null") ~= 0 then
      pending("openssl or node is not installed")
      return
    end
    local dir = H.tmpdir()
    local s = dir .. "/secrets"
    os.execute(("mkdir -p %s/tls"):format(s))
    local sh = ([[
cd %s && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.crt 2>/dev/null &&
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout srv.key -out srv.csr 2>/dev/null &&
openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -copy_extensions copy -out srv.crt 2>/dev/null &&
openssl req -newkey rsa:2048 -nodes -subj /CN=herald -keyout cli.key -out cli.csr 2>/dev/null &&
openssl x509 -req -in cli.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out cli.crt 2>/dev/null &&
cp ca.crt %s/tls/ca && cp cli.crt %s/tls/cert && cp cli.key %s/tls/key]]):format(dir, s, s, s)
    assert.equal(0, (os.execute(sh)))
    local tport = H.free_port()
    local out = dir .. "/tls-requests.jsonl"
    H.write(dir .. "/server.js", ([[
const fs = require('fs'), https = require('https');
https.createServer({ key: fs.readFileSync('%s/srv.key'), cert: fs.readFileSync('%s/srv.crt'),
  ca: fs.readFileSync('%s/ca.crt'), requestCert: true, rejectUnauthorized: true }, (q, r) => {
  let b = ''; q.on('data', c => b += c); q.on('end', () => {
    fs.appendFileSync('%s', JSON.stringify({ cn: q.socket.getPeerCertificate().subject.CN, body: b }) + '\n');
    r.end('ok'); });
}).listen(%d, '127.0.0.1', () => console.log('listening'));
]]):format(dir, dir, dir, out, tport))
    local srv = H.spawn("node", { dir .. "/server.js" })
    srv:wait_for("listening", { stream = "stdout" })
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = { { name = "call", body = ([[
        http:
          url: https://127.0.0.1:%d/x
          tls:
            caCertSecret: {name: tls, key: ca}
            clientCertSecret: {name: tls, key: cert}
            clientKeySecret: {name: tls, key: key}
          payload:
            - src: {dependencyName: d, dataKey: body.n, useRawData: true}
              dest: n
]]):format(tport) } } })
    local p = H.start{ "run", dir, "--secrets-dir", s }
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(port, "/hook", '{"n":5}')))
    local line = H.wait_until(function() local t = H.read(out) return t and t:match("[^\n]+") end, 10, "the TLS request")
    local r = cjson.decode(line)
    assert.equal("herald", r.cn)
    assert.same({ n = 5 }, cjson.decode(r.body))
    p:kill()
    srv:kill()
  end)
end)
