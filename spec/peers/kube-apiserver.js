#!/usr/bin/env node
// spec/peers/kube-apiserver.js: a small in-memory Kubernetes API server for tests (Node 20, no
// npm dependencies). No cluster exists on the test machine and none of the npm packages fakes
// the API server, so this one follows the REST conventions Herald and kubectl rely on:
//
//   discovery   /api, /api/v1, /apis, /apis/<group>/<version>, /version, /openapi/v2|v3
//   CRUD        namespaced and cluster-scoped resources, any registered kind served the same way
//   metadata    uid, resourceVersion (one global counter), creationTimestamp, generation,
//               generateName; namespaces must exist (default, kube-system, kube-public do)
//   errors      Status objects in the Kubernetes shape: 404 NotFound, 409 AlreadyExists and
//               Conflict (stale resourceVersion), 422 Invalid (names, labels), 400, 401, 403
//   list        labelSelector (=, ==, !=, in, notin, exists, !exists), fieldSelector on
//               metadata.name / metadata.namespace
//   patch       application/merge-patch+json, application/json-patch+json (RFC 6902),
//               strategic-merge and apply (JSON bodies) treated as merge patches
//   watch       ?watch=true: chunked JSON lines {"type":"ADDED|MODIFIED|DELETED","object":...}
//               from a resourceVersion (history kept) or with synthetic ADDED for what exists;
//               a version older than the history kept: an ERROR line with a 410 Expired Status
//               (as the real server does); allowWatchBookmarks=true: a BOOKMARK line carrying
//               the current resourceVersion every --bookmark-ms (default 60000) and when the
//               watch's timeoutSeconds ends it
//   test hooks  (no auth, never in a real server) POST /_fake/break-watches drops every watch
//               connection (as a network cut); POST /_fake/compact forgets the history, so a
//               watch from any older version gets 410; GET /_fake/watches counts them
//   status      the /status subresource for kinds that have it (spec writes keep status)
//   auth        --token T (bearer) and/or client certificates (--tls-cert/--tls-key/--client-ca)
//
// Usage: node kube-apiserver.js --port 0 [--token T] [--tls-cert f --tls-key f [--client-ca f]]
//        [--tls-dir D]  (generates D/{ca,server,client}.{crt,key} with openssl and serves https
//                        with client-certificate auth; kubectl sends tokens only over https)
//        [--forbid verb:plural]... [--resource group/version/Kind/plural[/cluster]]...
// Prints "listening on <url>" once ready; binds 127.0.0.1 only. Not emulated: admission,
// RBAC (beyond --forbid), garbage collection, finalizers, defaulting, strategic-merge list keys.
"use strict";
const http = require("http");
const https = require("https");
const fs = require("fs");
const crypto = require("crypto");

// ---- command line ----
const opts = { port: 0, token: null, forbid: [], resources: [], bookmarkMs: 60000 };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i], v = process.argv[i + 1];
  switch (a) {
    case "--port": opts.port = Number(v); i++; break;
    case "--token": opts.token = v; i++; break;
    case "--tls-cert": opts.cert = v; i++; break;
    case "--tls-key": opts.key = v; i++; break;
    case "--client-ca": opts.clientCA = v; i++; break;
    case "--tls-dir": opts.tlsDir = v; i++; break;
    case "--forbid": opts.forbid.push(v); i++; break;
    case "--resource": opts.resources.push(v); i++; break;
    case "--bookmark-ms": opts.bookmarkMs = Number(v); i++; break;
    default: console.error("unknown option " + a); process.exit(2);
  }
}

// ---- resource types ----
const ALL = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
const types = []; // {group, version, kind, plural, singular, namespaced, shortNames, status}
function register(group, version, kind, plural, namespaced, shortNames, status) {
  const t = { group, version, kind, plural, singular: kind.toLowerCase(), namespaced,
    shortNames: shortNames || [], status: !!status };
  types.push(t);
  return t;
}
const NS = true, CLUSTER = false;
register("", "v1", "Namespace", "namespaces", CLUSTER, ["ns"], true);
register("", "v1", "Node", "nodes", CLUSTER, ["no"], true);
register("", "v1", "ConfigMap", "configmaps", NS, ["cm"]);
register("", "v1", "Secret", "secrets", NS);
register("", "v1", "Pod", "pods", NS, ["po"], true);
register("", "v1", "Service", "services", NS, ["svc"], true);
register("", "v1", "ServiceAccount", "serviceaccounts", NS, ["sa"]);
register("", "v1", "Event", "events", NS, ["ev"]);
register("apps", "v1", "Deployment", "deployments", NS, ["deploy"], true);
register("apps", "v1", "StatefulSet", "statefulsets", NS, ["sts"], true);
register("apps", "v1", "DaemonSet", "daemonsets", NS, ["ds"], true);
register("batch", "v1", "Job", "jobs", NS, [], true);
register("batch", "v1", "CronJob", "cronjobs", NS, ["cj"], true);
register("coordination.k8s.io", "v1", "Lease", "leases", NS);
register("rbac.authorization.k8s.io", "v1", "Role", "roles", NS);
register("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", NS);
register("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", CLUSTER);
register("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", CLUSTER);
register("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", CLUSTER, ["crd"], true);
// Argo Workflows' CRDs have no status subresource; Argo Events' do.
register("argoproj.io", "v1alpha1", "Workflow", "workflows", NS, ["wf"]);
register("argoproj.io", "v1alpha1", "WorkflowTemplate", "workflowtemplates", NS, ["wftmpl"]);
register("argoproj.io", "v1alpha1", "ClusterWorkflowTemplate", "clusterworkflowtemplates", CLUSTER, ["clusterwftmpl", "cwftmpl"]);
register("argoproj.io", "v1alpha1", "CronWorkflow", "cronworkflows", NS, ["cwf", "cronwf"]);
register("argoproj.io", "v1alpha1", "Sensor", "sensors", NS, ["sn"], true);
register("argoproj.io", "v1alpha1", "EventSource", "eventsources", NS, ["es"], true);
register("argoproj.io", "v1alpha1", "EventBus", "eventbus", NS, ["eb"], true);
for (const r of opts.resources) {
  const [group, version, kind, plural, scope] = r.split("/");
  register(group, version, kind, plural, scope !== "cluster", [], true);
}

const gv = (t) => (t.group ? t.group + "/" + t.version : t.version);
const qualified = (t) => (t.group ? t.plural + "." + t.group : t.plural);
function findType(group, version, plural) {
  return types.find((t) => t.group === group && t.version === version && t.plural === plural);
}

// ---- storage ----
let rv = 1000;
const store = new Map(); // typeKey -> Map("ns/name" -> object)
const history = []; // {rv, t, type, object, old}
const HISTORY_MAX = 10000;
const watchers = new Set();
let compactedTo = 0; // POST /_fake/compact: watches from versions below this get 410
const tkey = (t) => t.group + "/" + t.plural;
function bucket(t) {
  let b = store.get(tkey(t));
  if (!b) store.set(tkey(t), (b = new Map()));
  return b;
}
const okey = (ns, name) => (ns || "") + "/" + name;
const clone = (o) => JSON.parse(JSON.stringify(o));
const now = () => new Date().toISOString().replace(/\.\d+Z$/, "Z");
const nsType = types[0];
for (const n of ["default", "kube-system", "kube-public"]) {
  bucket(nsType).set(okey("", n), { apiVersion: "v1", kind: "Namespace", metadata: { name: n,
    uid: crypto.randomUUID(), resourceVersion: String(++rv), creationTimestamp: now() },
    spec: { finalizers: ["kubernetes"] }, status: { phase: "Active" } });
}

function record(type, t, object, old) {
  const ev = { rv: Number(object.metadata.resourceVersion), type, t, object: clone(object), old };
  history.push(ev);
  if (history.length > HISTORY_MAX) history.shift();
  for (const w of watchers) w.send(ev);
}

// ---- Status objects ----
function status(code, reason, message, details) {
  const s = { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, code };
  if (details) s.details = details;
  return s;
}
class ApiError extends Error {
  constructor(st) { super(st.message); this.st = st; }
}
const notFound = (t, name) => new ApiError(status(404, "NotFound", `${qualified(t)} "${name}" not found`,
  { name, group: t.group || undefined, kind: t.plural }));
const badRequest = (msg) => new ApiError(status(400, "BadRequest", msg));
function invalid(t, name, causes) {
  const msg = `${t.kind}${t.group ? "." + t.group : ""} "${name}" is invalid: ` +
    causes.map((c) => `${c.field}: ${c.message}`).join(", ");
  return new ApiError(status(422, "Invalid", msg, { name, group: t.group || undefined, kind: t.kind,
    causes: causes.map((c) => ({ reason: c.reason || "FieldValueInvalid", message: c.message, field: c.field })) }));
}

// ---- validation ----
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
function validate(t, obj) {
  const md = obj.metadata, causes = [];
  const name = md.name;
  if (typeof name !== "string" || name === "") {
    causes.push({ field: "metadata.name", reason: "FieldValueRequired", message: "Required value: name or generateName is required" });
  } else if (name.length > 253 || !DNS1123_SUBDOMAIN.test(name)) {
    causes.push({ field: "metadata.name", message: `Invalid value: "${name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')` });
  }
  for (const [k, v] of Object.entries(md.labels || {})) {
    if (typeof v !== "string") throw badRequest(`json: cannot unmarshal ${typeof v} into Go struct field ObjectMeta.metadata.labels of type string`);
    const keyName = k.includes("/") ? k.slice(k.indexOf("/") + 1) : k;
    if (!LABEL_NAME.test(keyName) || keyName.length > 63) causes.push({ field: "metadata.labels", message: `Invalid value: "${k}": name part must consist of alphanumeric characters, '-', '_' or '.'` });
    if (v.length > 63 || !LABEL_VALUE.test(v)) causes.push({ field: "metadata.labels", message: `Invalid value: "${v}": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character` });
  }
  if (t.kind === "ConfigMap" && obj.data) {
    for (const [k, v] of Object.entries(obj.data)) {
      if (typeof v !== "string") throw badRequest(`json: cannot unmarshal ${typeof v} into Go struct field ConfigMap.data of type string`);
      if (!/^[-._a-zA-Z0-9]+$/.test(k)) causes.push({ field: `data[${k}]`, message: `Invalid value: "${k}": a valid config key must consist of alphanumeric characters, '-', '_' or '.'` });
    }
  }
  if (causes.length) throw invalid(t, name || "", causes);
}

// ---- selectors ----
function splitTop(s) {
  const out = [];
  let depth = 0, cur = "";
  for (const c of s) {
    if (c === "(") depth++;
    if (c === ")") depth--;
    if (c === "," && depth === 0) { out.push(cur); cur = ""; } else cur += c;
  }
  if (cur.trim() !== "") out.push(cur);
  return out.map((x) => x.trim()).filter((x) => x !== "");
}
function parseLabelSelector(s) {
  if (!s) return () => true;
  const reqs = splitTop(s).map((r) => {
    let m;
    if ((m = r.match(/^(\S+)\s+(in|notin)\s*\(([^)]*)\)$/))) {
      const vals = m[3].split(",").map((x) => x.trim());
      return m[2] === "in" ? (l) => l[m[1]] !== undefined && vals.includes(l[m[1]])
        : (l) => l[m[1]] === undefined || !vals.includes(l[m[1]]);
    }
    if ((m = r.match(/^([^!=<>\s]+)\s*([<>])\s*(-?\d+)$/))) {
      const n = Number(m[3]);
      return m[2] === ">" ? (l) => l[m[1]] !== undefined && /^-?\d+$/.test(l[m[1]]) && Number(l[m[1]]) > n
        : (l) => l[m[1]] !== undefined && /^-?\d+$/.test(l[m[1]]) && Number(l[m[1]]) < n;
    }
    if ((m = r.match(/^([^!=\s]+)\s*!=\s*(\S*)$/))) return (l) => l[m[1]] !== m[2];
    if ((m = r.match(/^([^!=\s]+)\s*==?\s*(\S*)$/))) return (l) => l[m[1]] === m[2];
    if ((m = r.match(/^!\s*(\S+)$/))) return (l) => l[m[1]] === undefined;
    if ((m = r.match(/^(\S+)$/))) return (l) => l[m[1]] !== undefined;
    throw badRequest(`unable to parse requirement: ${r}`);
  });
  return (obj) => { const l = (obj.metadata && obj.metadata.labels) || {}; return reqs.every((f) => f(l)); };
}
function parseFieldSelector(s) {
  if (!s) return () => true;
  const reqs = splitTop(s).map((r) => {
    const m = r.match(/^([^!=]+?)\s*(!=|==|=)\s*(.*)$/);
    if (!m) throw badRequest(`invalid selector: '${s}'; can't understand '${r}'`);
    const get = (o) => m[1].split(".").reduce((x, k) => (x == null ? undefined : x[k]), o);
    return m[2] === "!=" ? (o) => String(get(o) ?? "") !== m[3] : (o) => String(get(o) ?? "") === m[3];
  });
  return (obj) => reqs.every((f) => f(obj));
}

// ---- patches ----
function mergePatch(target, patch) {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return clone(patch);
  if (target === null || typeof target !== "object" || Array.isArray(target)) target = {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete target[k];
    else target[k] = mergePatch(target[k], v);
  }
  return target;
}
function pointer(path) {
  if (path === "") return [];
  if (path[0] !== "/") throw new Error(`invalid JSON pointer ${path}`);
  return path.slice(1).split("/").map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
}
function jsonPatch(doc, ops) {
  if (!Array.isArray(ops)) throw badRequest("json patch must be an array of operations");
  const walk = (parts, create) => {
    let cur = doc;
    for (let i = 0; i < parts.length - 1; i++) {
      const k = Array.isArray(cur) ? Number(parts[i]) : parts[i];
      if (cur[k] === undefined || cur[k] === null) {
        if (!create) throw new Error(`doc is missing path: "/${parts.join("/")}"`);
        throw new Error(`doc is missing path: "/${parts.slice(0, i + 1).join("/")}": missing value`);
      }
      cur = cur[k];
    }
    return cur;
  };
  const get = (parts) => {
    let cur = doc;
    for (const p of parts) {
      if (cur === null || typeof cur !== "object" || !(Array.isArray(cur) ? Number(p) < cur.length : p in cur))
        throw new Error(`unable to get nonexistent key "${p}": missing value`);
      cur = cur[Array.isArray(cur) ? Number(p) : p];
    }
    return cur;
  };
  const remove = (parts) => {
    const parent = walk(parts), last = parts[parts.length - 1];
    if (Array.isArray(parent)) {
      const i = Number(last);
      if (!(i >= 0 && i < parent.length)) throw new Error(`unable to remove nonexistent key "${last}": missing value`);
      return parent.splice(i, 1)[0];
    }
    if (!(last in parent)) throw new Error(`unable to remove nonexistent key "${last}": missing value`);
    const v = parent[last];
    delete parent[last];
    return v;
  };
  const add = (parts, value) => {
    if (parts.length === 0) { doc = value; return; }
    const parent = walk(parts, true), last = parts[parts.length - 1];
    if (Array.isArray(parent)) {
      const i = last === "-" ? parent.length : Number(last);
      if (!(i >= 0 && i <= parent.length)) throw new Error(`add operation index out of bounds: ${last}`);
      parent.splice(i, 0, value);
    } else parent[last] = value;
  };
  for (const op of ops) {
    const parts = pointer(op.path || "");
    switch (op.op) {
      case "add": add(parts, clone(op.value)); break;
      case "remove": remove(parts); break;
      case "replace": get(parts); if (parts.length === 0) doc = clone(op.value); else { const p = walk(parts), l = parts[parts.length - 1]; p[Array.isArray(p) ? Number(l) : l] = clone(op.value); } break;
      case "move": { const v = remove(pointer(op.from)); add(parts, v); break; }
      case "copy": add(parts, clone(get(pointer(op.from)))); break;
      case "test": if (JSON.stringify(get(parts)) !== JSON.stringify(op.value)) throw new Error(`testing value /${parts.join("/")} failed: test failed`); break;
      default: throw new Error(`Unexpected kind: ${op.op}`);
    }
  }
  return doc;
}

// ---- discovery ----
function groups() {
  const m = new Map();
  for (const t of types) if (t.group) {
    if (!m.has(t.group)) m.set(t.group, new Set());
    m.get(t.group).add(t.version);
  }
  return [...m].map(([name, vs]) => {
    const versions = [...vs].map((v) => ({ groupVersion: name + "/" + v, version: v }));
    return { name, versions, preferredVersion: versions[0] };
  });
}
function resourceList(group, version) {
  const ts = types.filter((t) => t.group === group && t.version === version);
  if (!ts.length) return null;
  const resources = [];
  for (const t of ts) {
    const r = { name: t.plural, singularName: t.singular, namespaced: t.namespaced, kind: t.kind, verbs: ALL };
    if (t.shortNames.length) r.shortNames = t.shortNames;
    resources.push(r);
    if (t.status) resources.push({ name: t.plural + "/status", singularName: "", namespaced: t.namespaced, kind: t.kind, verbs: ["get", "patch", "update"] });
  }
  return { kind: "APIResourceList", apiVersion: "v1", groupVersion: group ? group + "/" + version : version, resources };
}

// ---- HTTP plumbing ----
function send(res, code, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(code, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body),
    "Cache-Control": "no-cache, private" });
  res.end(body);
}
function readBody(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    req.on("data", (c) => parts.push(c));
    req.on("end", () => resolve(Buffer.concat(parts).toString("utf8")));
    req.on("error", reject);
  });
}
function parseJSON(text) {
  try { return JSON.parse(text); } catch (e) { throw badRequest(`the object provided is unrecognized (must be valid JSON): ${e.message}`); }
}

function authenticate(req) {
  if (opts.clientCA && req.socket.authorized) {
    const cert = req.socket.getPeerCertificate();
    return { user: (cert && cert.subject && cert.subject.CN) || "client-cert" };
  }
  const h = req.headers.authorization || "";
  if (opts.token && h === "Bearer " + opts.token) return { user: "token-user" };
  if (!opts.token && !opts.clientCA) return { user: "anonymous" };
  return null;
}
function authorize(verb, t, ns, user) {
  for (const f of opts.forbid) {
    const [v, plural] = f.split(":");
    if ((v === "*" || v === verb) && (plural === "*" || plural === t.plural)) {
      const where = ns ? ` in the namespace "${ns}"` : " at the cluster scope";
      throw new ApiError(status(403, "Forbidden", `${qualified(t)} is forbidden: User "${user}" cannot ${verb} resource "${t.plural}" in API group "${t.group}"${where}`,
        { group: t.group || undefined, kind: t.plural }));
    }
  }
}

function namespaceExists(ns) {
  return bucket(nsType).has(okey("", ns));
}

function genName(prefix) {
  const alphabet = "bcdfghjklmnpqrstvwxz2456789";
  let s = "";
  for (let i = 0; i < 5; i++) s += alphabet[crypto.randomInt(alphabet.length)];
  return prefix + s;
}

const specOf = (o) => { const c = { ...o }; delete c.metadata; delete c.status; return JSON.stringify(c); };

// ---- handlers ----
function doCreate(t, ns, body, q) {
  const obj = parseJSON(body);
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) throw badRequest("the object provided is not an object");
  if (obj.kind && obj.kind !== t.kind) throw badRequest(`the kind of the provided object (${obj.kind}) does not match the resource ${t.plural} (${t.kind})`);
  if (obj.apiVersion && obj.apiVersion !== gv(t)) throw badRequest(`the API version in the data (${obj.apiVersion}) does not match the expected API version (${gv(t)})`);
  obj.apiVersion = gv(t);
  obj.kind = t.kind;
  const md = (obj.metadata = obj.metadata && typeof obj.metadata === "object" ? obj.metadata : {});
  if (t.namespaced) {
    if (md.namespace && md.namespace !== ns) throw badRequest("the namespace of the provided object does not match the namespace sent on the request");
    md.namespace = ns;
    if (!namespaceExists(ns)) throw new ApiError(status(404, "NotFound", `namespaces "${ns}" not found`, { name: ns, kind: "namespaces" }));
  } else delete md.namespace;
  if (!md.name && md.generateName) md.name = genName(md.generateName);
  validate(t, obj);
  const b = bucket(t), k = okey(md.namespace, md.name);
  if (b.has(k)) throw new ApiError(status(409, "AlreadyExists", `${qualified(t)} "${md.name}" already exists`, { name: md.name, group: t.group || undefined, kind: t.plural }));
  if (md.resourceVersion) throw badRequest("resourceVersion should not be set on objects to be created");
  md.uid = crypto.randomUUID();
  md.creationTimestamp = now();
  md.generation = 1;
  if (t.status && t.kind !== "Namespace") delete obj.status;
  if (t.kind === "Namespace") obj.status = { phase: "Active" };
  if (q.get("dryRun") === "All") return obj;
  md.resourceVersion = String(++rv);
  b.set(k, obj);
  if (t.kind === "CustomResourceDefinition") registerCRD(obj);
  record("ADDED", t, obj);
  return clone(obj);
}

function registerCRD(crd) {
  const s = crd.spec || {}, n = s.names || {};
  for (const v of s.versions || []) {
    if (!v.served || findType(s.group, v.name, n.plural)) continue;
    register(s.group, v.name, n.kind, n.plural, s.scope !== "Cluster", n.shortNames, !!(v.subresources && v.subresources.status));
  }
}

function getObj(t, ns, name) {
  const o = bucket(t).get(okey(t.namespaced ? ns : "", name));
  if (!o) throw notFound(t, name);
  return o;
}

// Replaces the stored object with `next` (already merged), checking resourceVersion.
function doReplace(t, ns, name, next, q, sub) {
  const b = bucket(t), k = okey(t.namespaced ? ns : "", name);
  const old = b.get(k);
  if (!old) throw notFound(t, name);
  if (next === null || typeof next !== "object" || Array.isArray(next)) throw badRequest("the object provided is not an object");
  const md = (next.metadata = next.metadata && typeof next.metadata === "object" ? next.metadata : {});
  if (next.kind && next.kind !== t.kind) throw badRequest(`the kind of the provided object (${next.kind}) does not match the resource ${t.plural} (${t.kind})`);
  if (md.name !== undefined && md.name !== name) throw badRequest(`the name of the object (${md.name}) does not match the name on the URL (${name})`);
  if (t.namespaced && md.namespace && md.namespace !== ns) throw badRequest("the namespace of the provided object does not match the namespace sent on the request");
  if (md.resourceVersion !== undefined && md.resourceVersion !== "" && md.resourceVersion !== old.metadata.resourceVersion) {
    throw new ApiError(status(409, "Conflict", `Operation cannot be fulfilled on ${qualified(t)} "${name}": the object has been modified; please apply your changes to the latest version and try again`,
      { name, group: t.group || undefined, kind: t.plural }));
  }
  next.apiVersion = gv(t);
  next.kind = t.kind;
  md.name = name;
  if (t.namespaced) md.namespace = ns; else delete md.namespace;
  validate(t, next);
  // what the server owns
  md.uid = old.metadata.uid;
  md.creationTimestamp = old.metadata.creationTimestamp;
  if (sub === "status") {
    const keep = clone(old);
    keep.status = next.status;
    next = keep;
  } else if (t.status) {
    if (old.status === undefined) delete next.status; else next.status = clone(old.status);
  }
  next.metadata.generation = (old.metadata.generation || 1) + (specOf(next) !== specOf(old) ? 1 : 0);
  if (q.get("dryRun") === "All") return next;
  next.metadata.resourceVersion = String(++rv);
  b.set(k, next);
  record("MODIFIED", t, next, old);
  return clone(next);
}

function doDelete(t, ns, name, q) {
  const b = bucket(t), k = okey(t.namespaced ? ns : "", name);
  const old = b.get(k);
  if (!old) throw notFound(t, name);
  if (q.get("dryRun") === "All") return old;
  b.delete(k);
  const gone = clone(old);
  gone.metadata.resourceVersion = String(++rv);
  if (t.kind === "Namespace") {
    for (const tt of types) if (tt.namespaced) for (const [kk, o] of bucket(tt)) if (o.metadata.namespace === name) {
      bucket(tt).delete(kk);
      const g = clone(o);
      g.metadata.resourceVersion = String(++rv);
      record("DELETED", tt, g);
    }
  }
  record("DELETED", t, gone);
  return gone;
}

function listObjs(t, ns, q) {
  const ls = parseLabelSelector(q.get("labelSelector"));
  const fs_ = parseFieldSelector(q.get("fieldSelector"));
  const items = [];
  for (const o of bucket(t).values()) {
    if (t.namespaced && ns && o.metadata.namespace !== ns) continue;
    if (ls(o) && fs_(o)) items.push(clone(o));
  }
  items.sort((a, b) => okey(a.metadata.namespace, a.metadata.name).localeCompare(okey(b.metadata.namespace, b.metadata.name)));
  return { kind: t.kind + "List", apiVersion: gv(t), metadata: { resourceVersion: String(rv) }, items };
}

function startWatch(req, res, t, ns, q) {
  const ls = parseLabelSelector(q.get("labelSelector"));
  const fs_ = parseFieldSelector(q.get("fieldSelector"));
  const match = (o) => o && (!t.namespaced || !ns || o.metadata.namespace === ns) && ls(o) && fs_(o);
  const from = q.get("resourceVersion");
  res.writeHead(200, { "Content-Type": "application/json", "Transfer-Encoding": "chunked", "Cache-Control": "no-cache, private" });
  const write = (type, object) => res.write(JSON.stringify({ type, object }) + "\n");
  const w = {
    send(ev) {
      if (ev.t !== t) return;
      const now_ = match(ev.object), before = ev.old ? match(ev.old) : false;
      if (ev.type === "MODIFIED") {
        if (now_ && before) write("MODIFIED", ev.object);
        else if (now_) write("ADDED", ev.object);
        else if (before) write("DELETED", ev.object);
      } else if (now_) write(ev.type, ev.object);
    },
  };
  if (!from || from === "0") {
    for (const o of listObjs(t, ns, q).items) write("ADDED", o);
  } else {
    const n = Number(from);
    const oldest = Math.max(compactedTo, history.length ? history[0].rv - 1 : 0);
    if (n < oldest) {
      write("ERROR", status(410, "Expired", `too old resource version: ${from} (${oldest})`));
      res.end();
      return;
    }
    for (const ev of history) if (ev.rv > n) w.send(ev);
  }
  w.res = res;
  watchers.add(w);
  const timeout = Number(q.get("timeoutSeconds") || 0);
  const bookmarks = q.get("allowWatchBookmarks") === "true";
  const bookmark = () => write("BOOKMARK", { kind: t.kind, apiVersion: gv(t), metadata: { resourceVersion: String(rv) } });
  let timer = null, ticker = null;
  const end = () => { watchers.delete(w); if (timer) clearTimeout(timer); if (ticker) clearInterval(ticker); };
  if (bookmarks && opts.bookmarkMs > 0) ticker = setInterval(bookmark, opts.bookmarkMs);
  if (timeout > 0) timer = setTimeout(() => { if (bookmarks) bookmark(); end(); res.end(); }, timeout * 1000);
  req.on("close", end);
  res.on("close", end);
}

// Parses /api/v1/..., /apis/g/v/... into {t, ns, name, sub}; null when not a resource path.
function route(parts) {
  let group, version, rest;
  if (parts[0] === "api" && parts.length >= 3) { group = ""; version = parts[1]; rest = parts.slice(2); }
  else if (parts[0] === "apis" && parts.length >= 4) { group = parts[1]; version = parts[2]; rest = parts.slice(3); }
  else return null;
  let ns = null;
  if (rest[0] === "namespaces" && rest.length >= 3) { ns = rest[1]; rest = rest.slice(2); }
  const t = findType(group, version, rest[0]);
  if (!t) return { missing: true };
  if (ns !== null && !t.namespaced) return { missing: true };
  return { t, ns, name: rest[1], sub: rest[2], extra: rest.length > 3 };
}

async function handle(req, res) {
  const url = new URL(req.url, "http://x");
  const q = url.searchParams;
  const path = url.pathname.replace(/\/+$/, "") || "/";
  if (["/healthz", "/livez", "/readyz"].includes(path)) { res.writeHead(200, { "Content-Type": "text/plain" }); res.end("ok"); return; }
  if (path === "/_fake/break-watches" && req.method === "POST") {
    const n = watchers.size;
    for (const w of [...watchers]) { watchers.delete(w); w.res.destroy(); }
    return send(res, 200, { broken: n });
  }
  if (path === "/_fake/compact" && req.method === "POST") {
    compactedTo = rv;
    history.length = 0;
    return send(res, 200, { compactedTo });
  }
  if (path === "/_fake/watches") return send(res, 200, { watches: watchers.size, resourceVersion: String(rv) });
  const who = authenticate(req);
  if (!who) return send(res, 401, status(401, "Unauthorized", "Unauthorized"));
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const method = req.method;
  if (method === "GET") {
    if (path === "/version") return send(res, 200, { major: "1", minor: "32", gitVersion: "v1.32.0-herald-fake", gitCommit: "0", gitTreeState: "clean", buildDate: "2025-01-01T00:00:00Z", goVersion: "go1.23", compiler: "gc", platform: "linux/amd64" });
    if (path === "/api") return send(res, 200, { kind: "APIVersions", versions: ["v1"], serverAddressByClientCIDRs: [{ clientCIDR: "0.0.0.0/0", serverAddress: req.headers.host || "127.0.0.1" }] });
    if (path === "/apis") return send(res, 200, { kind: "APIGroupList", apiVersion: "v1", groups: groups() });
    if (path === "/openapi/v2") {
      // kubectl asks for the protobuf form and parses it as such: an empty body is an empty
      // (valid) OpenAPI document, so client-side validation finds no schema and lets it be
      if ((req.headers.accept || "").includes("protobuf")) {
        res.writeHead(200, { "Content-Type": "application/com.github.proto-openapi.spec.v2.v1.0+protobuf", "Content-Length": 0 });
        return res.end();
      }
      return send(res, 200, { swagger: "2.0", info: { title: "Kubernetes", version: "v1.32.0" }, paths: {}, definitions: {} });
    }
    if ((parts[0] === "api" && parts.length === 2) || (parts[0] === "apis" && parts.length === 3)) {
      const rl = parts[0] === "api" ? resourceList("", parts[1]) : resourceList(parts[1], parts[2]);
      if (rl) return send(res, 200, rl);
    }
    if (parts[0] === "apis" && parts.length === 2) {
      const g = groups().find((x) => x.name === parts[1]);
      if (g) return send(res, 200, { kind: "APIGroup", apiVersion: "v1", ...g });
    }
  }
  const r = route(parts);
  if (!r || r.missing || r.extra || (r.sub && (r.sub !== "status" || !r.t.status))) {
    return send(res, 404, status(404, "NotFound", "the server could not find the requested resource", { causes: [{ reason: "UnexpectedServerResponse", message: "404 page not found" }] }));
  }
  const { t, name, sub } = r;
  const ns = t.namespaced ? r.ns : null;
  const body = method === "GET" || method === "DELETE" ? "" : await readBody(req);
  if (!name) {
    if (method === "GET") {
      const verb = q.get("watch") === "true" || q.get("watch") === "1" ? "watch" : "list";
      authorize(verb, t, ns, who.user);
      if (verb === "watch") return startWatch(req, res, t, ns, q);
      return send(res, 200, listObjs(t, ns, q));
    }
    if (method === "POST") {
      if (t.namespaced && !ns) return send(res, 405, status(405, "MethodNotAllowed", `the server does not allow this method on the requested resource`));
      authorize("create", t, ns, who.user);
      return send(res, 201, doCreate(t, ns, body, q));
    }
    if (method === "DELETE") {
      authorize("deletecollection", t, ns, who.user);
      const list = listObjs(t, ns, q);
      for (const o of list.items) doDelete(t, o.metadata.namespace, o.metadata.name, q);
      return send(res, 200, list);
    }
    return send(res, 405, status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource"));
  }
  if (t.namespaced && !ns) return send(res, 404, status(404, "NotFound", "the server could not find the requested resource"));
  switch (method) {
    case "GET":
      authorize("get", t, ns, who.user);
      return send(res, 200, clone(getObj(t, ns, name)));
    case "PUT":
      authorize("update", t, ns, who.user);
      return send(res, 200, doReplace(t, ns, name, parseJSON(body), q, sub));
    case "PATCH": {
      authorize("patch", t, ns, who.user);
      const ctype = (req.headers["content-type"] || "").split(";")[0].trim();
      const patch = parseJSON(body);
      let cur = bucket(t).get(okey(ns || "", name));
      if (!cur) {
        if (ctype === "application/apply-patch+yaml") return send(res, 201, doCreate(t, ns, body, q));
        throw notFound(t, name);
      }
      cur = clone(cur);
      let next;
      if (ctype === "application/json-patch+json") {
        try { next = jsonPatch(cur, patch); } catch (e) {
          if (e instanceof ApiError) throw e;
          throw new ApiError(status(422, "Invalid", `${t.kind} "${name}" is invalid: ${e.message}`, { name, kind: t.kind }));
        }
      } else if (["application/merge-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"].includes(ctype)) {
        if (patch === null || typeof patch !== "object" || Array.isArray(patch)) throw badRequest("a merge patch must be a JSON object");
        next = mergePatch(cur, patch);
      } else {
        return send(res, 415, status(415, "UnsupportedMediaType", `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json`));
      }
      // a patch sets resourceVersion only to make itself conditional
      const prv = patch && patch.metadata && patch.metadata.resourceVersion;
      if (!prv && next && next.metadata) next.metadata.resourceVersion = undefined;
      return send(res, 200, doReplace(t, ns, name, next, q, sub));
    }
    case "DELETE":
      authorize("delete", t, ns, who.user);
      return send(res, 200, doDelete(t, ns, name, q));
    default:
      return send(res, 405, status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource"));
  }
}

function onRequest(req, res) {
  handle(req, res).catch((e) => {
    if (res.headersSent) { res.end(); return; }
    if (e instanceof ApiError) return send(res, e.st.code, e.st);
    console.error(e);
    send(res, 500, status(500, "InternalError", String(e && e.message)));
  });
}

// --tls-dir: a CA, a server certificate for 127.0.0.1 and a client certificate, made with the
// openssl CLI (Node cannot create X.509 certificates by itself).
if (opts.tlsDir) {
  const { execFileSync } = require("child_process");
  const d = opts.tlsDir, run = (...a) => execFileSync("openssl", a, { stdio: ["ignore", "ignore", "pipe"] });
  fs.mkdirSync(d, { recursive: true });
  if (!fs.existsSync(d + "/server.crt")) {
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fake-kube-ca",
      "-keyout", d + "/ca.key", "-out", d + "/ca.crt");
    fs.writeFileSync(d + "/server.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", d + "/server.key", "-out", d + "/server.csr");
    run("x509", "-req", "-in", d + "/server.csr", "-CA", d + "/ca.crt", "-CAkey", d + "/ca.key", "-CAcreateserial",
      "-days", "2", "-extfile", d + "/server.ext", "-out", d + "/server.crt");
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=herald-client/O=system:masters", "-keyout", d + "/client.key", "-out", d + "/client.csr");
    run("x509", "-req", "-in", d + "/client.csr", "-CA", d + "/ca.crt", "-CAkey", d + "/ca.key", "-CAcreateserial",
      "-days", "2", "-out", d + "/client.crt");
  }
  opts.cert = opts.cert || d + "/server.crt";
  opts.key = opts.key || d + "/server.key";
  opts.clientCA = opts.clientCA || d + "/ca.crt";
}

let server;
if (opts.cert) {
  const tlsOpts = { cert: fs.readFileSync(opts.cert), key: fs.readFileSync(opts.key) };
  if (opts.clientCA) Object.assign(tlsOpts, { ca: fs.readFileSync(opts.clientCA), requestCert: true, rejectUnauthorized: false });
  server = https.createServer(tlsOpts, onRequest);
} else {
  server = http.createServer(onRequest);
}
server.keepAliveTimeout = 30000;
server.listen(opts.port, "127.0.0.1", () => {
  const { port } = server.address();
  console.log(`listening on ${opts.cert ? "https" : "http"}://127.0.0.1:${port}`);
});
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
