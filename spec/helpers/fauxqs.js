// spec/helpers/fauxqs.js: the AWS peer of the sqs, sns and S3-notification specs and of
// bench/run-source-sqs.sh, on 127.0.0.1 only.
//
//   node spec/helpers/fauxqs.js [--port N] [--aux-port N] [--tls-dir DIR]
//
// Starts fauxqs (npm, spec/peers/npm: SQS, SNS, S3) through its library entry, buildApp, on
// 127.0.0.1 (its CLI binds every interface, so it is never used), and beside it an "aux" HTTP
// server on 127.0.0.1 for what fauxqs does not do:
//   POST /control/stop, /control/start  stop fauxqs and start it again on the same port with the
//                                       same stores (messages survive: an outage, not a reset)
//   GET  /control/keys                  the access key ids fauxqs saw in Authorization headers,
//                                       by service ({"sqs": {"AKIA...": n}})
//   GET  /control/log                   the STS and IMDS calls made here
//   POST /sts/                          STS AssumeRole (signed) and AssumeRoleWithWebIdentity:
//                                       temporary keys ASIA<n>, expiring after ?ttl= seconds
//                                       (set with POST /control/sts-ttl?s=N; default 3600)
//   /latest/...                         EC2 instance metadata (IMDSv2): token, role, keys
// With --tls-dir DIR (holding cert.pem and key.pem) an HTTPS server on 127.0.0.1 also serves
// the files of DIR under /files/ (the SNS signing certificate) and GET /confirm?... (an SNS
// SubscribeURL: each call is recorded in /control/log).
// Prints one JSON line {"port": fauxqs, "aux": aux[, "tls": https]} on stdout when listening.
"use strict";
const http = require("node:http");
const https = require("node:https");
const fs = require("node:fs");
const path = require("node:path");
const { pathToFileURL } = require("node:url");
const { register } = require("node:module");

// fauxqs 2.x imports node:sqlite (its optional persistence) at load; Node 20 has none. Nothing
// here uses persistence, so the import resolves to a stub that refuses to be constructed.
const stub = "data:text/javascript,export class DatabaseSync { constructor() { throw new Error('node:sqlite is not available'); } }";
register("data:text/javascript," + encodeURIComponent(
  `export async function resolve(s, c, next) { if (s === "node:sqlite") return { url: ${JSON.stringify(stub)}, shortCircuit: true }; return next(s, c); }`));

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};

const npm = path.resolve(__dirname, "../peers/npm/node_modules/fauxqs/dist");
const keys = {};
const log = [];
let stsTtl = 3600;
let stsCount = 0;

function credential(auth) {
  const m = /Credential=([^/]+)\/[^/]+\/[^/]+\/([^/]+)\//.exec(auth || "");
  return m ? { key: m[1], service: m[2] } : null;
}

async function main() {
  const { buildApp } = await import(pathToFileURL(path.join(npm, "app.js")).href);
  const { SqsStore } = await import(pathToFileURL(path.join(npm, "sqs/sqsStore.js")).href);
  const { SnsStore } = await import(pathToFileURL(path.join(npm, "sns/snsStore.js")).href);
  const { S3Store } = await import(pathToFileURL(path.join(npm, "s3/s3Store.js")).href);
  const stores = { sqsStore: new SqsStore(), snsStore: new SnsStore(), s3Store: new S3Store() };
  let port = Number(opt("--port", 0));
  let app = null;

  async function start() {
    app = buildApp({ logger: false, stores });
    app.addHook("onRequest", async (req) => {
      const c = credential(req.headers.authorization);
      if (c) {
        keys[c.service] = keys[c.service] || {};
        keys[c.service][c.key] = (keys[c.service][c.key] || 0) + 1;
      }
    });
    await app.listen({ host: "127.0.0.1", port });
    port = app.server.address().port;
  }
  async function stop() {
    if (!app) return;
    const a = app;
    app = null;
    const closing = a.close();
    a.server.closeAllConnections(); // long polls in flight end now, as when a server dies
    await closing;
  }
  await start();

  const sts = (body, auth) => {
    const p = new URLSearchParams(body);
    const action = p.get("Action");
    stsCount++;
    const entry = { what: "sts", action, role: p.get("RoleArn"), session: p.get("RoleSessionName") };
    if (action === "AssumeRole") {
      const c = credential(auth);
      if (!c) return [403, "<ErrorResponse><Error><Code>MissingAuthenticationToken</Code><Message>not signed</Message></Error></ErrorResponse>"];
      entry.signedBy = c.key;
    } else if (action === "AssumeRoleWithWebIdentity") {
      entry.token = p.get("WebIdentityToken");
    } else {
      return [400, `<ErrorResponse><Error><Code>InvalidAction</Code><Message>${action}</Message></Error></ErrorResponse>`];
    }
    log.push(entry);
    const exp = new Date(Date.now() + stsTtl * 1000).toISOString().replace(/\.\d+Z$/, "Z");
    const r = action === "AssumeRole" ? "AssumeRole" : "AssumeRoleWithWebIdentity";
    return [200, `<${r}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><${r}Result><Credentials>` +
      `<AccessKeyId>ASIA${stsCount}</AccessKeyId><SecretAccessKey>secret${stsCount}</SecretAccessKey>` +
      `<SessionToken>token${stsCount}&amp;x</SessionToken><Expiration>${exp}</Expiration></Credentials></${r}Result></${r}Response>`];
  };

  const aux = http.createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", async () => {
      const u = new URL(req.url, "http://x");
      const send = (status, text, type) => {
        res.writeHead(status, { "content-type": type || "text/plain" });
        res.end(text);
      };
      try {
        if (u.pathname === "/control/stop") { await stop(); return send(200, "stopped"); }
        if (u.pathname === "/control/start") { await start(); return send(200, "started"); }
        if (u.pathname === "/control/keys") return send(200, JSON.stringify(keys), "application/json");
        if (u.pathname === "/control/log") return send(200, JSON.stringify(log), "application/json");
        if (u.pathname === "/control/sts-ttl") { stsTtl = Number(u.searchParams.get("s")); return send(200, "ok"); }
        if (u.pathname === "/sts/" || u.pathname === "/sts") {
          const [st, xml] = sts(body, req.headers.authorization);
          return send(st, xml, "text/xml");
        }
        if (u.pathname === "/latest/api/token" && req.method === "PUT") {
          log.push({ what: "imds", step: "token", ttl: req.headers["x-aws-ec2-metadata-token-ttl-seconds"] });
          return send(200, "imds-token-1");
        }
        if (u.pathname.startsWith("/latest/meta-data/iam/security-credentials/")) {
          if (req.headers["x-aws-ec2-metadata-token"] !== "imds-token-1") return send(401, "");
          const role = u.pathname.slice("/latest/meta-data/iam/security-credentials/".length);
          log.push({ what: "imds", step: role ? "creds" : "role" });
          if (!role) return send(200, "herald-node-role\n");
          const exp = new Date(Date.now() + stsTtl * 1000).toISOString().replace(/\.\d+Z$/, "Z");
          return send(200, JSON.stringify({ Code: "Success", Type: "AWS-HMAC", AccessKeyId: "ASIAIMDS",
            SecretAccessKey: "imds-secret", Token: "imds-token", Expiration: exp }), "application/json");
        }
        send(404, "not found");
      } catch (e) {
        send(500, String(e));
      }
    });
  });
  await new Promise((ok) => aux.listen(Number(opt("--aux-port", 0)), "127.0.0.1", ok));
  const out = { port, aux: aux.address().port };

  const tlsDir = opt("--tls-dir", null);
  if (tlsDir) {
    const tls = https.createServer({ cert: fs.readFileSync(path.join(tlsDir, "cert.pem")),
      key: fs.readFileSync(path.join(tlsDir, "key.pem")) }, (req, res) => {
      const u = new URL(req.url, "https://x");
      if (u.pathname.startsWith("/files/")) {
        const f = path.join(tlsDir, path.basename(u.pathname));
        log.push({ what: "https", path: u.pathname });
        if (!fs.existsSync(f)) { res.writeHead(404); return res.end(); }
        res.writeHead(200, { "content-type": "application/x-pem-file" });
        return res.end(fs.readFileSync(f));
      }
      if (u.pathname === "/confirm") {
        log.push({ what: "confirm", query: Object.fromEntries(u.searchParams) });
        res.writeHead(200, { "content-type": "text/xml" });
        return res.end("<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>" +
          (u.searchParams.get("TopicArn") || "arn") + ":sub-1</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>");
      }
      res.writeHead(404);
      res.end();
    });
    await new Promise((ok) => tls.listen(0, "127.0.0.1", ok));
    out.tls = tls.address().port;
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  const bye = async () => { await stop(); process.exit(0); };
  process.on("SIGTERM", bye);
  process.on("SIGINT", bye);
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + "\n");
  process.exit(1);
});
