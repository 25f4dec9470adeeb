-- herald/main.lua: the command line. C hands over argv; this decides what to do and returns
-- (exit_code, run_loop). `herald run` builds everything and asks C to run the loop.
local core = require "herald.core"

local _M = {}

local VERSION = "0.1.0"

local COMPONENT_PORTS -- below, with cmd_component

local COMMANDS_HELP = [[

usage: herald <command> [options] [PATH...]

commands:
  run PATH...        run every EventSource and Sensor found in PATH (files or folders)
                     on the embedded bus
  eventsource PATH... --bus nats://HOST:PORT
                     run only the EventSources found in PATH, publishing to the JetStream bus
  sensor PATH... --bus nats://HOST:PORT
                     run only the Sensors found in PATH, consuming from the JetStream bus
  lint PATH...       validate EventSource, Sensor and EventBus files; exit 1 on any error
  compile FILE       print the Lua a Sensor compiles to
  test SENSOR --events EVENTS.jsonl|- [--explain] [--expect FILE] [--update]
                     run a sensor on events in dry run: print one JSON line per firing
  test PATH... [--explain] [--junit FILE]
                     run the *_test.yaml sensor tests in PATH (files or folders)
  emit --source ES --event NAME --data JSON|@FILE [--admin-addr A] [--admin-token-file F]
                     hand an event to a running `herald run`, as if the EventSource made it
  tap [--source ES] [--sensor S] [--trigger T] [--sample N] [--format text|json]
                     watch a running engine live: events, verdicts, firings, outcomes
  repl [SENSOR] [--events EVENTS.jsonl] [-e CODE]
                     an interactive Lua prompt with the sensor and events loaded
  lua FILE [ARG...]  run a Lua file with Herald's stdlib (for scripting and benchmarks)
  version            print the version
  help [COMMAND]     this text, or one command's (also: herald COMMAND --help)
]]

-- Option groups, each shown by the commands that take it (herald help CMD) and all together
-- by herald --help.
local OPTIONS = {
  run = [[
  --log-level L            debug | info | warn | error (default info, or env LOG_LEVEL)
  --log-format F           json (one object a line, the default) | text (for a terminal)
  --watch                  reload when a spec file under PATH changes (as SIGHUP does:
                           a bad edit keeps the running version; unchanged sensors keep
                           their dependency state)
  --dry-run                fire every trigger as herald test renders it: print the action
                           (the Kubernetes object, the HTTP request...) as a JSON line on
                           stdout instead of doing it; no cluster or target is needed
  --secrets-dir DIR        where secrets are mounted: DIR/<secret>/<key>
                           (default /argo-events/secrets)
  --listen-host HOST       address webhook servers bind (default 127.0.0.1)
  --metrics-addr HOST:PORT Prometheus /metrics (default 127.0.0.1:7777; herald sensor:
                           127.0.0.1:7779, so both halves run on one host; "off" disables)
  --admin-addr HOST:PORT   admin endpoint for herald emit (default 127.0.0.1:7778; herald
                           sensor: 127.0.0.1:7780; "off")
  --admin-token-file FILE  its bearer token (default $XDG_STATE_HOME/herald/admin-token,
                           created with a random token when missing)
  --bus-capacity N         events the embedded bus holds at once (default 16384)
  --bus URL                nats://HOST:PORT: use NATS JetStream (stream "default", as Argo
                           Events) instead of the embedded bus
  --cleanup                (sensor) delete the sensors' dependency state bucket and bus
                           consumers instead of running them, then exit
  --drain-timeout MS       how long SIGINT/SIGTERM waits for in-flight work (default 10000);
                           at 80% of it, unfinished actions go to their dlqTrigger, the rest
                           is kept (--bus-dir, JetStream) or written to the spill file, which
                           the next start replays; exit code 3 says something was left
  --max-message-bytes N    event sources drop (and ack upstream) messages larger than this,
                           counted and logged (default 1048576)
  --bus-dir DIR            keep the embedded bus's events on disk in DIR: an event answered
                           200 survives a crash (kill -9) and is delivered after the restart
  --state-dir DIR          where the spill file goes: DIR/spill.jsonl (default --bus-dir, else
                           $XDG_STATE_HOME/herald/spill-<hash of the PATHs>.jsonl)
  --http-header-timeout MS webhook limits: all of a request's header block (default 10000)
  --http-body-deadline MS  all of its body (default 60000; more for a declared body
                           that needs longer at 64 KiB/s); a request missing either gets 408
  --http-body-timeout MS   longest pause between body reads (default 10000)
  --http-idle-timeout MS   idle keep-alive connection (default 60000)
  --http-max-connections N connections per port (default 10000)
  --http-max-client-connections N
                           of those, how many one client address (IPv6: /64) may hold
                           (default a quarter of --http-max-connections)
]],
  lint = [[
  --strict                 treat warnings as errors
]],
  test = [[
  --events FILE|-          the CloudEvents to feed, one JSON object a line (- : stdin)
  --explain                also print each dependency's verdict with every filter's reason
                           (with test files: as "# explain:" lines under each test)
  --expect FILE            compare the output with FILE; a difference exits 1 with a
                           key-level diff
  --update                 write the output to the --expect FILE instead of comparing
  --junit FILE             (test files) also write a JUnit XML report for CI
  --watch                  run again each time a file under the paths (or --events) changes
  A script or transform that raised, ran out of budget or could not build its action is
  an error: "error: ..." on stderr, an {"error": ...} line in the output, and exit 1
  unless the --expect FILE (or the test's `errors:`) expects it. print() in scripts goes
  to stderr as "print (sensor NAME): ...".
]],
  emit = [[
  --source ES              the EventSource name; --event NAME: the event name
  --data JSON|@FILE        the event data
  --admin-addr HOST:PORT   the running engine's admin endpoint (default 127.0.0.1:7778)
  --admin-token-file FILE  its bearer token (default $XDG_STATE_HOME/herald/admin-token)
]],
  tap = [[
  --source ES, --sensor S, --trigger T
                           only the records of that EventSource, Sensor or trigger
  --kind K[,K...]          event | verdict | firing | outcome (default all)
  --sample N               one event in N (chosen by event id: its verdicts, firings and
                           outcome come with it)
  --format text|json       a readable line, or the JSON record (default: text on a
                           terminal, else json)
  --count N                stop after N records
  --admin-addr HOST:PORT   the running engine's admin endpoint (default 127.0.0.1:7778)
  --admin-token-file FILE  its bearer token (default $XDG_STATE_HOME/herald/admin-token)
  The engine keeps the last 8192 records while a tap is attached; a reader that falls behind
  is told how many it missed, and never slows the engine.
]],
  repl = [[
  --events FILE            CloudEvents (JSON lines) to load as `events`
  -e CODE                  run CODE and exit instead of prompting
]],
  limits = [[
  --spec-limits NAME=N[,NAME=N...]
                           raise what one load of specs may hold; a spec past a limit is
                           refused at file:line:col naming it. Limits (defaults):
                           bytes (4194304 per file), load-bytes (67108864 in all),
                           documents (1000), nodes (1000000 YAML nodes in all),
                           triggers (10000 per Sensor), dependencies (10000 per Sensor)
]],
}

-- What each command is and which option groups it takes.
local COMMAND_HELP = {
  run = { "run PATH... [options]", "Runs every EventSource and Sensor found in PATH (files or folders) on the embedded bus (or the JetStream bus with --bus).", { "run", "limits" } },
  eventsource = { "eventsource PATH... --bus nats://HOST:PORT [options]", "Runs only the EventSources found in PATH, publishing to the JetStream bus.", { "run", "limits" } },
  sensor = { "sensor PATH... --bus nats://HOST:PORT [options]", "Runs only the Sensors found in PATH, consuming from the JetStream bus.", { "run", "limits" } },
  lint = { "lint PATH... [--strict]", "Validates EventSource, Sensor and EventBus files and compiles every Sensor; exit 1 on any error.", { "lint", "limits" } },
  compile = { "compile FILE", "Prints the Lua a Sensor compiles to.", { "limits" } },
  test = { "test SENSOR --events FILE|- [--explain] [--expect FILE] [--update]\n       herald test PATH... [--explain] [--junit FILE]", "Runs a sensor on events in dry run (one JSON line per firing), or the *_test.yaml sensor tests under PATH.", { "test", "limits" } },
  emit = { "emit --source ES --event NAME --data JSON|@FILE [options]", "Hands an event to a running `herald run`, as if the EventSource made it.", { "emit" } },
  tap = { "tap [--source ES] [--sensor S] [--trigger T] [--kind K,...] [--sample N] [--format text|json]", "Attaches to a running engine and prints, live, the events leaving each source, each dependency's verdict with every filter's reason, the firings with their rendered action, and each action's outcome.", { "tap" } },
  repl = { "repl [SENSOR] [--events FILE] [-e CODE]", "An interactive Lua prompt with the sensor and events loaded (docs/repl.md).", { "repl", "limits" } },
  lua = { "lua FILE [ARG...]", "Runs a Lua file with Herald's stdlib (for scripting and benchmarks).", {} },
  version = { "version", "Prints the version.", {} },
  help = { "help [COMMAND]", "Prints the help, or one command's.", {} },
  man = { "man", "Prints the man page herald(1) (roff), made from this help.", {} },
  completion = { "completion bash|zsh|fish", "Prints a shell completion script for herald.", {} },
}
local COMMAND_NAMES = { "run", "eventsource", "sensor", "lint", "compile", "test", "emit", "tap", "repl", "lua",
  "version", "help", "man", "completion" }

local OPTION_TITLES = { run = "options (run, eventsource, sensor)", lint = "options (lint)",
  test = "options (test)", emit = "options (emit)", tap = "options (tap)", repl = "options (repl)",
  limits = "options (run, eventsource, sensor, lint, compile, test, repl)" }

local USAGE = COMMANDS_HELP .. "\n"
for _, g in ipairs({ "run", "lint", "test", "emit", "tap", "repl", "limits" }) do
  USAGE = USAGE .. OPTION_TITLES[g] .. ":\n" .. OPTIONS[g]
end

--- One command's help: its usage, what it does, and its options.
local function command_help(cmd)
  local h = COMMAND_HELP[cmd]
  local out = { "usage: herald " .. h[1], "", h[2] }
  for _, g in ipairs(h[3]) do
    out[#out + 1] = ""
    out[#out + 1] = OPTION_TITLES[g] .. ":"
    out[#out + 1] = (OPTIONS[g]:gsub("\n$", ""))
  end
  return table.concat(out, "\n") .. "\n"
end

local VALUE_FLAGS = {
  ["--log-level"] = "log_level", ["--log-format"] = "log_format", ["--secrets-dir"] = "secrets_dir", ["--listen-host"] = "listen_host",
  ["--metrics-addr"] = "metrics_addr", ["--bus-capacity"] = "bus_capacity", ["--bus"] = "bus",
  ["--drain-timeout"] = "drain_timeout", ["--http-header-timeout"] = "http_header_timeout",
  ["--http-body-timeout"] = "http_body_timeout", ["--http-idle-timeout"] = "http_idle_timeout",
  ["--http-body-deadline"] = "http_body_deadline", ["--http-max-connections"] = "http_max_connections",
  ["--http-max-client-connections"] = "http_max_client_connections",
  ["--events"] = "events", ["--expect"] = "expect", ["-e"] = "eval",
  ["--admin-addr"] = "admin_addr", ["--admin-token-file"] = "admin_token_file",
  ["--source"] = "source", ["--event"] = "event", ["--data"] = "data",
  ["--spec-limits"] = "spec_limits",
  ["--bus-dir"] = "bus_dir", ["--state-dir"] = "state_dir",
  ["--max-message-bytes"] = "max_message_bytes", ["--junit"] = "junit",
  ["--sensor"] = "sensor", ["--trigger"] = "trigger", ["--sample"] = "sample", ["--kind"] = "kind",
  ["--format"] = "format", ["--count"] = "count",
}
local NUMBER_OPTS = { bus_capacity = true, drain_timeout = true, http_header_timeout = true,
  http_body_timeout = true, http_idle_timeout = true, http_body_deadline = true,
  http_max_connections = true, http_max_client_connections = true, max_message_bytes = true }
local BOOL_FLAGS = { ["--strict"] = "strict", ["--help"] = "help", ["-h"] = "help", ["--explain"] = "explain",
  ["--cleanup"] = "cleanup", ["--dry-run"] = "dry_run", ["--update"] = "update", ["--watch"] = "watch" }

local function eprint(...)
  io.stderr:write(table.concat({ ... }, ""), "\n")
end

--- Parses argv into (command, paths, opts) or nil, err.
local function parse(argv)
  local cmd = argv[1]
  local paths, opts = {}, {}
  local i = 2
  while i <= #argv do
    local a = argv[i]
    local key = a:match("^(%-%-[%w-]+)=")
    local inline = key and a:sub(#key + 2)
    key = key or a
    if VALUE_FLAGS[key] then
      local v = inline
      if not v then
        i = i + 1
        v = argv[i]
      end
      if not v then return nil, a .. ": missing value" end
      local name = VALUE_FLAGS[key]
      if NUMBER_OPTS[name] then
        local n = tonumber(v)
        if not n or n < 0 then return nil, a .. ": expected a non-negative number, got " .. v end
        v = n
      end
      opts[name] = v
    elseif BOOL_FLAGS[a] then
      opts[BOOL_FLAGS[a]] = true
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      local names = {}
      for k in pairs(VALUE_FLAGS) do names[#names + 1] = k end
      for k in pairs(BOOL_FLAGS) do names[#names + 1] = k end
      table.sort(names)
      local hint = require("herald.loader").suggest(key, names)
      return nil, "unknown option " .. a .. (hint and ("; did you mean " .. hint .. "?") or "")
    else
      paths[#paths + 1] = a
    end
    i = i + 1
  end
  return cmd, paths, opts
end

local function load(paths)
  local loader = require "herald.loader"
  return loader.load(paths)
end

-- "file:line:col: rest" -> "file:line:col: LABEL: rest" (or "LABEL: msg" without a position),
-- so a warning or an info line is told apart from an error at a glance.
local function labelled(msg, label)
  local out, n = msg:gsub("^(.-:%d+:%d+: )", "%1" .. label .. ": ", 1)
  if n == 0 then out = label .. ": " .. msg end
  return out
end

local function cmd_lint(paths, opts)
  if #paths == 0 then
    eprint("herald lint: no PATH given")
    return 2
  end
  local result = load(paths)
  if #result.errors == 0 then
    -- valid specs must also compile: paths, expressions, templates, regexes, scripts, jq
    local compiler = require "herald.sensor"
    local loader = require "herald.loader"
    for _, obj in ipairs(result.objects) do
      if obj.kind == "Sensor" then
        local _, err = compiler.compile(obj, { locate = function(tbl, key) return loader.position(obj.pos, tbl, key) end })
        if err then result.errors[#result.errors + 1] = err end
      end
    end
  end
  for _, e in ipairs(result.errors) do eprint(e) end
  for _, w in ipairs(result.warnings) do eprint(labelled(w, "warning")) end
  for _, n in ipairs(result.infos or {}) do eprint(labelled(n, "info")) end
  local nerr = #result.errors + (opts.strict and #result.warnings or 0)
  if nerr > 0 then return 1 end
  io.stdout:write(("%d object(s) valid\n"):format(#result.objects))
  return 0
end

local function cmd_compile(paths)
  if #paths ~= 1 then
    eprint("herald compile: expected one Sensor file")
    return 2
  end
  local result = load(paths)
  for _, e in ipairs(result.errors) do eprint(e) end
  if #result.errors > 0 then return 1 end
  local compiler = require "herald.sensor"
  local loader = require "herald.loader"
  local n = 0
  for _, obj in ipairs(result.objects) do
    if obj.kind == "Sensor" then
      local compiled, err = compiler.compile(obj, { locate = function(tbl, key) return loader.position(obj.pos, tbl, key) end })
      if not compiled then
        eprint(err)
        return 1
      end
      io.stdout:write(compiled.source, "\n")
      n = n + 1
    end
  end
  if n == 0 then
    eprint("herald compile: no Sensor in ", paths[1])
    return 1
  end
  return 0
end

--- herald test SENSOR --events FILE: prints the lines; exit 0, 1 on an --expect mismatch or
--- an error no --expect file expected, 2 on a bad spec or event file.
local function cmd_test_events(paths, opts)
  local T = require "herald.testing"
  local session, err = T.load_sensor(paths[1])
  if not session then
    eprint(err)
    return 2
  end
  local events, eerr = T.read_events(opts.events)
  if not events then
    eprint("error: herald test: ", eerr)
    return 2
  end
  -- print() in the sensor's scripts: on stderr, beside the output, never mixed into it
  require("herald.rt").on_print(function(sensor, line)
    eprint(("print (sensor %s): %s"):format(sensor, line))
  end)
  local lines, nerrors = {}, 0
  for _, ev in ipairs(events) do
    for _, line in ipairs(session:feed(ev, { explain = opts.explain })) do
      lines[#lines + 1] = line
      if opts.update ~= true then io.stdout:write(T.encode(line), "\n") end
      if line.error then
        nerrors = nerrors + 1
        eprint(("error: event %s, %s: %s"):format(tostring(line.event or (line.events and "(firing)") or "?"),
          line.dependency and ("dependency " .. line.dependency) or ("trigger " .. tostring(line.trigger)),
          tostring(line.error)))
      end
    end
  end
  if opts.update then
    if not opts.expect then
      eprint("error: herald test: --update writes the --expect FILE: give one")
      return 2
    end
    local f, ferr = io.open(opts.expect, "wb")
    if not f then
      eprint("error: herald test: ", ferr)
      return 2
    end
    for _, line in ipairs(lines) do f:write(T.encode(line), "\n") end
    f:close()
    eprint(("herald test: wrote %d line(s) to %s"):format(#lines, opts.expect))
    return 0
  end
  if opts.expect then
    local expected = {}
    local f, ferr = io.open(opts.expect, "rb")
    if not f then
      eprint("error: herald test: ", ferr)
      return 2
    end
    local cjson = require "cjson"
    local n = 0
    for line in f:lines() do
      n = n + 1
      if line:match("%S") then
        local ok, v = pcall(cjson.decode, line)
        if not ok then
          f:close()
          eprint(("error: herald test: %s:%d: not JSON"):format(opts.expect, n))
          return 2
        end
        expected[#expected + 1] = v
      end
    end
    f:close()
    local d = T.diff(expected, lines)
    if d ~= "" then
      eprint("herald test: output differs from ", opts.expect, " (--update rewrites it):")
      eprint(d)
      return 1
    end
    return 0 -- errors the expected output lists are expected
  end
  return nerrors > 0 and 1 or 0
end

--- herald test PATH...: runs *_test.yaml files.
local function cmd_test_files(paths, opts)
  if opts.expect or opts.update then
    eprint("error: herald test: --expect and --update go with --events (a *_test.yaml holds its own expectations)")
    return 2
  end
  local suite = require "herald.test_files"
  return suite.run(paths, io.stdout, eprint, { explain = opts.explain, junit = opts.junit })
end

local spec_signature -- below, with herald run --watch

local function cmd_test(paths, opts)
  if #paths == 0 then
    eprint("herald test: expected a Sensor file with --events, or test files/folders")
    return 2
  end
  jit.on() -- tests feed events: the per-event code is hot
  local function once()
    if opts.events then return cmd_test_events(paths, opts) end
    return cmd_test_files(paths, opts)
  end
  if not opts.watch then return once() end
  -- --watch: run, then again each time a file under the paths (or the events file) changes;
  -- until interrupted
  local watched = { unpack(paths) }
  if opts.events and opts.events ~= "-" then watched[#watched + 1] = opts.events end
  while true do
    local code = once()
    io.stdout:write(("-- herald test: exit %d; watching %s for changes (Ctrl-C ends)\n"):format(
      code, table.concat(watched, " ")))
    io.stdout:flush()
    local last = spec_signature(watched)
    repeat core.sleep(300) until spec_signature(watched) ~= last
  end
end

--- herald emit: POSTs the data to a running engine's admin endpoint.
local function cmd_emit(_, opts)
  if not opts.source or not opts.event or not opts.data then
    eprint("herald emit: --source ES, --event NAME and --data JSON|@FILE are required")
    return 2
  end
  local data = opts.data
  if data:sub(1, 1) == "@" then
    local text, err = core.read_file(data:sub(2))
    if not text then
      eprint("herald emit: ", err)
      return 2
    end
    data = text
  end
  local ok = pcall(require("cjson").decode, data)
  if not ok then
    eprint("herald emit: --data is not JSON")
    return 2
  end
  local token_path = core.admin_token_path(opts.admin_token_file)
  local token = core.read_file(token_path)
  if not token then
    eprint("herald emit: cannot read the admin token from ", token_path,
      " (is `herald run` running here, with the same --admin-token-file?)")
    return 2
  end
  token = token:gsub("%s+$", "")
  local function q(s) return (s:gsub("[^%w%-_.~]", function(c) return ("%%%02X"):format(c:byte()) end)) end
  local url = ("http://%s/emit?source=%s&event=%s"):format(opts.admin_addr or "127.0.0.1:7778", q(opts.source), q(opts.event))
  local addr = opts.admin_addr or "127.0.0.1:7778"
  local status, body = core.http_post(url, data, token, 10)
  if not status then
    eprint(("error: herald emit: cannot reach the admin endpoint at %s: %s (is `herald run` running, with --admin-addr %s?)"):format(
      addr, body, addr))
    return 1
  end
  if status ~= 200 then
    eprint(("error: herald emit: %s answered %d %s"):format(addr, status, (body or ""):gsub("%s+$", "")))
    return 1
  end
  io.stdout:write(body)
  return 0
end

--- One tap record as a line for a person.
local function tap_text(r)
  local function s(v) return v == nil and "" or tostring(v) end
  local t = s(r.ts):match("T([%d:.]+)") or ""
  t = t:sub(1, 12)
  if r.kind == "event" then
    return ("%s event   %s/%s id=%s %s"):format(t, s(r.eventSourceName), s(r.eventName), s(r.eventID),
      r.data ~= nil and require("herald.testing").encode(r.data) or ("(" .. s(r.dataBytes) .. " bytes)"))
  elseif r.kind == "verdict" then
    local why = ""
    if not r.passed then
      local parts = {}
      for _, f in ipairs(r.filters or {}) do
        if not f.passed then parts[#parts + 1] = ("%s[%s]: %s"):format(s(f.kind), s(f.index), s(f.reason)) end
      end
      why = ": " .. (#parts > 0 and table.concat(parts, "; ") or s(r.reason))
    end
    return ("%s verdict %s/%s event=%s %s%s"):format(t, s(r.sensorName), s(r.dependencyName), s(r.eventID),
      r.passed and "passed" or (r.error and "error" or "discarded"), why)
  elseif r.kind == "firing" then
    local ids = {}
    for d, id in pairs(r.events or {}) do ids[#ids + 1] = d .. "=" .. s(id) end
    table.sort(ids)
    return ("%s firing  %s/%s events=%s action=%s"):format(t, s(r.sensorName), s(r.triggerName),
      table.concat(ids, ","), r.action ~= nil and require("herald.testing").encode(r.action) or "?")
  elseif r.kind == "outcome" then
    return ("%s outcome %s/%s %s (attempt %s of %s, %.1f ms)%s%s"):format(t, s(r.sensorName), s(r.triggerName),
      s(r.status), s(r.attempt), s(r.attempts), tonumber(r.durationMs) or 0,
      r.reason and (": " .. s(r.reason)) or "", r.deadLettered and " -> dlqTrigger" or "")
  end
  return require("herald.testing").encode(r)
end

--- herald tap: attach to a running engine and print what happens, live.
local function cmd_tap(_, opts)
  local token_path = core.admin_token_path(opts.admin_token_file)
  local token = core.read_file(token_path)
  local addr = opts.admin_addr or "127.0.0.1:7778"
  if not token then
    eprint("error: herald tap: cannot read the admin token from ", token_path,
      " (is `herald run` running here, with the same --admin-token-file?)")
    return 2
  end
  token = token:gsub("%s+$", "")
  local fmt_ = opts.format or (core.isatty and core.isatty(1) and "text" or "json")
  if fmt_ ~= "json" and fmt_ ~= "text" then
    eprint("error: herald tap: --format: expected json or text, got ", fmt_)
    return 2
  end
  local function q(v) return (tostring(v):gsub("[^%w%-_.~,]", function(c) return ("%%%02X"):format(c:byte()) end)) end
  local filters = ""
  for _, k in ipairs({ "source", "sensor", "trigger", "sample", "kind" }) do
    if opts[k] then filters = filters .. "&" .. k .. "=" .. q(opts[k]) end
  end
  local cjson = require "cjson"
  local after = nil -- the first request asks only where the engine is: a tap starts at now
  local limit = tonumber(opts.count) -- stop after this many records (scripts, tests)
  local seen = 0
  while true do
    local url = after and ("http://%s/tap?after=%d%s"):format(addr, after, filters)
      or ("http://%s/tap?after=0&kind=none"):format(addr)
    local status, body = core.http_get(url, token, 5)
    if not status then
      eprint(("error: herald tap: cannot reach the admin endpoint at %s: %s"):format(addr, body))
      return 1
    end
    if status ~= 200 then
      eprint(("error: herald tap: %s answered %d %s"):format(addr, status, (body or ""):gsub("%s+$", "")))
      return 1
    end
    for line in body:gmatch("[^\n]+") do
      local ok, r = pcall(cjson.decode, line)
      if ok and r.kind == "cursor" then
        if not after then eprint(("tap: attached to %s (Ctrl-C ends)"):format(addr)) end
        if after and r.dropped and r.dropped > 0 then
          eprint(("tap: %d record(s) dropped: this reader fell behind (filter, or --sample N)"):format(r.dropped))
        end
        after = r.next
      elseif ok and after and not (limit and seen >= limit) then
        io.stdout:write(fmt_ == "text" and tap_text(r) or line, "\n")
        seen = seen + 1
      end
    end
    io.stdout:flush()
    if limit and seen >= limit then return 0 end
  end
end

--- kind: nil (run everything), "EventSource" or "Sensor" (component mode, see cmd_component).
--- The EventBus the loaded EventSources and Sensors name (their eventBusName, default
--- "default"), when that EventBus (JetStream, managed or exotic) is among the specs.
local function bus_from_specs(objects)
  local wanted = {}
  for _, obj in ipairs(objects) do
    if obj.kind ~= "EventBus" then
      local spec = type(obj.doc.spec) == "table" and obj.doc.spec or {}
      wanted[spec.eventBusName or "default"] = true
    end
  end
  for _, obj in ipairs(objects) do
    if obj.kind == "EventBus" and wanted[obj.name] then
      local spec = obj.doc.spec
      if spec.jetstreamExotic or spec.jetstream or spec.nats then return obj end
    end
  end
end

--- Builds the objects and starts the engine: 0, true (run the loop), or 1 after saying why.
--- Once built, the specs, positions and generated sources are garbage and are collected before
--- starting, so a caller passes `objects` in a tail call and keeps no reference to them.
local enable_reload
local reload_with -- set by cmd_run: turns on reloading once the engine has started

local function build_and_start(name, objects)
  local t, n = core.now(), #objects
  local engine = require "herald.engine"
  local ok, err = engine.build(objects)
  core.log("debug", "herald", ("built %d object(s) in %.1f ms"):format(n, (core.now() - t) * 1e3))
  if not ok then
    eprint(err)
    eprint(("herald %s: nothing started"):format(name))
    return 1
  end
  if engine.dry_run then
    core.log("info", "herald", "dry run: triggers print the action they would take on stdout and do nothing")
  end
  local notice = engine.cluster_notice() -- once, at start, rather than an error per event
  if notice then core.log("warn", "herald", notice) end
  core.log("debug", "herald", ("Lua heap before collect: %d KB"):format(collectgarbage("count")))
  objects = nil -- dropped for the collection below
  collectgarbage()
  core.log("debug", "herald", ("Lua heap after start-up: %d KB"):format(collectgarbage("count")))
  jit.on() -- from here on the code that runs is the per-event code
  local started, serr = core.start()
  if not started then
    eprint(("herald %s: failed to start: "):format(name), serr)
    return 1
  end
  if reload_with then reload_with() end
  return 0, true
end

-- The spec files under paths with their modification times and sizes, as one string: what
-- herald run --watch compares to notice an edit.
function spec_signature(paths)
  local parts = {}
  local function walk(p)
    local kind, mtime, size = core.stat(p)
    if kind == "dir" then
      local names = core.list_dir(p) or {}
      table.sort(names)
      for _, n in ipairs(names) do
        if n:sub(1, 1) ~= "." then walk((p:gsub("/+$", "")) .. "/" .. n) end
      end
    elseif kind == "file" and (p:match("%.ya?ml$") or p:match("%.json$") or p:match("%.jsonl$")) then
      parts[#parts + 1] = ("%s %.9f %d"):format(p, mtime or 0, size or 0)
    end
  end
  for _, p in ipairs(paths) do walk(p) end
  return table.concat(parts, "\n")
end

--- Reloading a running `herald run` (SIGHUP, --watch): load and validate PATHs again; a bad
--- edit keeps the running version and says why; else the engine swaps what changed.
function enable_reload(name, paths, kind, watch)
  local function reload()
    local t0 = core.now()
    local result = load(paths)
    if #result.errors > 0 then
      for _, e in ipairs(result.errors) do core.log("error", "herald", "reload: " .. e) end
      core.log("error", "herald", ("reload: %d error(s); keeping the running version"):format(#result.errors))
      return
    end
    local objects = {}
    for _, obj in ipairs(result.objects) do
      if not kind or obj.kind == kind then objects[#objects + 1] = obj end
    end
    local engine = require "herald.engine"
    if #engine.leases(objects) > 0 and core.bus_kind() == "jetstream" then
      core.log("error", "herald", "reload: objects with replicas > 1 (leader election) cannot be reloaded in place; restart instead")
      return
    end
    local n, err, partial = engine.reload(objects)
    if not n then
      core.log("error", "herald", "reload: " .. tostring(err))
      n = partial
      if not n then return end
    end
    core.log("info", "herald", ("reloaded in %.1f ms: %d unchanged, %d changed, %d added, %d removed"):format(
      (core.now() - t0) * 1e3, n.kept, n.changed, n.added, n.removed),
      { unchanged = n.kept, changed = n.changed, added = n.added, removed = n.removed })
  end
  core.on_reload(reload)
  if watch then
    local last = spec_signature(paths)
    core.every(500, function()
      local now = spec_signature(paths)
      if now ~= last then
        last = now
        core.log("info", "herald", "a spec file changed, reloading")
        reload()
      end
    end)
  end
end

--- Replicas > 1 on JetStream: this process builds and starts its objects only once it holds
--- their leases (herald/engine.lua `leases`, engine/leader.c); until then it stands by.
local function elect_then_run(name, objects, leases)
  local engine = require "herald.engine"
  local ok, err = engine.check(objects)
  if not ok then
    eprint(err)
    eprint(("herald %s: nothing started"):format(name))
    return 1
  end
  local lease_ms = 5000 -- Argo's LEADER_ELECTION_LEASE_DURATION default, which it also reads
  local d = os.getenv("LEADER_ELECTION_LEASE_DURATION")
  if d and d ~= "" then
    local ns, derr = core.duration_check(d)
    if not ns or ns < 1e9 then
      eprint(("herald %s: LEADER_ELECTION_LEASE_DURATION=%s: %s"):format(name, d, derr or "at least 1s"))
      return 2
    end
    lease_ms = ns / 1e6
  end
  local started, serr = core.leader_elect(leases, lease_ms, function()
    local code = build_and_start(name, objects)
    if code ~= 0 then core.shutdown(code) end
  end)
  if not started then
    eprint(("herald %s: leader election: %s"):format(name, tostring(serr)))
    return 1
  end
  return 0, true
end

local function cmd_run(paths, opts, kind)
  local name = kind and (kind == "Sensor" and "sensor" or "eventsource") or "run"
  if #paths == 0 then
    eprint(("herald %s: no PATH given (try: herald %s examples/quickstart/)"):format(name, name))
    return 2
  end
  opts.log_level = opts.log_level or os.getenv("LOG_LEVEL")
  opts.spill_file = require("herald.engine").spill_file(paths, opts)
  require("herald.engine").dry_run = opts.dry_run == true
  core.configure(opts)
  local t0 = core.now()
  local result = load(paths)
  local t1 = core.now()
  for _, e in ipairs(result.errors) do eprint(e) end
  for _, w in ipairs(result.warnings) do core.log("warn", "herald", w) end
  for _, n in ipairs(result.notes or {}) do core.log("debug", "herald", n) end
  for _, n in ipairs(result.infos or {}) do core.log("info", "herald", n) end
  if #result.errors > 0 then
    eprint(("herald %s: %d error(s); nothing started"):format(name, #result.errors))
    return 1
  end
  if not opts.bus then -- an EventBus among the specs (jetstreamExotic) selects the bus
    local bus_obj = bus_from_specs(result.objects)
    if bus_obj then
      local url, bus_options, berr, notice = require("herald.eventbus").select(bus_obj, kind ~= nil)
      if berr then
        local line, col = require("herald.loader").position(bus_obj.pos, berr.tbl, berr.key)
        eprint(("%s:%d:%d: spec.%s: %s"):format(bus_obj.file, line or 0, col or 0, berr.where, berr.msg))
        eprint(("herald %s: 1 error(s); nothing started"):format(name))
        return 1
      elseif url then
        if notice then core.log("info", "herald", notice) end
        opts.bus = url
        core.configure{ bus = url, bus_options = bus_options }
        core.log("info", "herald", ("EventBus %s: JetStream at %s"):format(bus_obj.name, (url:gsub("//[^/@]*@", "//"))))
      else
        core.log("info", "herald", bus_options) -- why the embedded bus
      end
    end
  end
  if kind and (not opts.bus or opts.bus == "embedded") then
    eprint(("herald %s: --bus nats://HOST:PORT (or a JetStream EventBus among the "
      .. "specs) is required: on the embedded (in-process) bus EventSources and Sensors in "
      .. "different processes never meet (use `herald run` to run both in one process)"):format(name))
    return 2
  end
  if kind then -- component mode: only the objects of that kind (EventBus objects are ignored too)
    local kept = {}
    for _, obj in ipairs(result.objects) do
      if obj.kind == kind then kept[#kept + 1] = obj end
    end
    if #kept == 0 then
      eprint(("herald %s: no %s found in %s"):format(name, kind, table.concat(paths, " ")))
      return 1
    end
    result.objects = kept
  end
  local engine = require "herald.engine"
  local leases = engine.leases(result.objects)
  if #leases > 0 and core.bus_kind() == "jetstream" then
    return elect_then_run(name, result.objects, leases)
  end
  core.log("debug", "herald", ("loaded %d object(s) in %.1f ms"):format(#result.objects, (t1 - t0) * 1e3))
  reload_with = function() enable_reload(name, paths, kind, opts.watch) end
  return build_and_start(name, result.objects) -- a tail call: `result` is garbage once built
end

--- herald sensor PATH... --bus URL --cleanup: deletes each Sensor's state bucket and its durable
--- consumers on the bus (what a deleted Sensor leaves behind), then exits.
local function cmd_cleanup(paths, opts)
  opts.log_level = opts.log_level or os.getenv("LOG_LEVEL")
  core.configure(opts)
  local result = load(paths)
  for _, e in ipairs(result.errors) do eprint(e) end
  if #result.errors > 0 then return 1 end
  local sensors = {}
  for _, obj in ipairs(result.objects) do
    if obj.kind == "Sensor" then sensors[#sensors + 1] = obj end
  end
  if #sensors == 0 then
    eprint(("herald sensor: no Sensor found in %s"):format(table.concat(paths, " ")))
    return 1
  end
  local engine = require "herald.engine"
  local subs = {} -- the subscriptions (durable consumers) of each sensor, before deleting any
  for i, obj in ipairs(sensors) do
    local names, lerr = engine.subscription_names(obj)
    if not names then
      eprint(lerr)
      return 1
    end
    subs[i] = names
  end
  local left, code = #sensors, 0
  for i, obj in ipairs(sensors) do
    local ok, err = core.bus_cleanup(obj.name, subs[i], function(done, cerr)
      if done then
        core.log("info", "herald", ("sensor %s: state and consumers deleted"):format(obj.name))
      else
        eprint(("herald sensor --cleanup: sensor %s: %s"):format(obj.name, tostring(cerr)))
        code = 1
      end
      left = left - 1
      if left == 0 then core.shutdown(code) end
    end)
    if not ok then
      eprint(("herald sensor --cleanup: %s"):format(tostring(err)))
      return 1
    end
  end
  return 0, true
end

-- Default metrics and admin addresses of the component modes (README, --help).
COMPONENT_PORTS = {
  eventsource = { metrics = "127.0.0.1:7777", admin = "127.0.0.1:7778" },
  sensor = { metrics = "127.0.0.1:7779", admin = "127.0.0.1:7780" },
}

--- herald eventsource|sensor PATH... --bus URL: one half of a deployment, the other half in
--- another process; they meet only on a shared bus.
local function cmd_component(cmd, paths, opts)
  if opts.cleanup and (not opts.bus or opts.bus == "embedded") then
    eprint("herald sensor --cleanup: --bus nats://HOST:PORT is required")
    return 2
  end
  if opts.cleanup and cmd == "sensor" then return cmd_cleanup(paths, opts) end
  -- the two halves on one host must not want the same ports: eventsource keeps run's
  -- 7777/7778, sensor takes the next two
  local d = COMPONENT_PORTS[cmd]
  opts.metrics_addr = opts.metrics_addr or d.metrics
  opts.admin_addr = opts.admin_addr or d.admin
  return cmd_run(paths, opts, cmd == "sensor" and "Sensor" or "EventSource")
end

--- The command line's own description, for the man page and shell completions
--- (herald/cli_docs.lua): one source of truth with --help.
function _M.cli()
  local flags = {}
  for k in pairs(VALUE_FLAGS) do flags[#flags + 1] = { name = k, value = true } end
  for k in pairs(BOOL_FLAGS) do flags[#flags + 1] = { name = k } end
  table.sort(flags, function(a, b) return a.name < b.name end)
  return { version = VERSION, commands = COMMAND_NAMES, command_help = COMMAND_HELP,
           options = OPTIONS, option_titles = OPTION_TITLES, commands_text = COMMANDS_HELP,
           flags = flags }
end

--- Entry point: returns exit_code, run_loop.
function _M.main(argv)
  -- Start-up runs interpreted: loading specs and compiling sensors is run-once code, and each
  -- trace LuaJIT compiles costs two mprotect calls (~100 us each on a VM), more than such code
  -- gains. The commands that then run hot loops (serving events, herald test, lua, the REPL)
  -- turn the JIT back on (jit.on() below). bench/RESULTS.md, "Start-up and idle cost".
  jit.off()
  if #argv == 0 then
    io.stderr:write(USAGE)
    return 2
  end
  local cmd, paths, opts = parse(argv)
  if not cmd then
    eprint("error: herald ", argv[1] or "", ": ", paths)
    return 2
  end
  if cmd == "help" or cmd == "--help" or cmd == "-h" then
    local topic = paths[1]
    if topic == nil then
      io.stdout:write(USAGE)
      return 0
    end
    if not COMMAND_HELP[topic] then
      local hint = require("herald.loader").suggest(topic, COMMAND_NAMES)
      eprint("error: herald help: unknown command ", topic, hint and ("; did you mean " .. hint .. "?") or "")
      return 2
    end
    io.stdout:write(command_help(topic))
    return 0
  end
  if opts.help then
    io.stdout:write(COMMAND_HELP[cmd] and command_help(cmd) or USAGE)
    return 0
  end
  local log_format = opts.log_format or os.getenv("HERALD_LOG_FORMAT")
  if log_format and not core.log_format(log_format) then
    eprint("error: herald: --log-format: expected json or text, got ", log_format)
    return 2
  end
  if opts.spec_limits then -- every load below (run, lint, test, the REPL ...) uses them
    local loader = require "herald.loader"
    local lim, lerr = loader.parse_limits(opts.spec_limits)
    if not lim then
      eprint("herald: --spec-limits: ", lerr)
      return 2
    end
    loader.set_limits(lim)
  end
  if cmd == "run" then return cmd_run(paths, opts) end
  if cmd == "eventsource" or cmd == "sensor" then return cmd_component(cmd, paths, opts) end
  if cmd == "lint" then return cmd_lint(paths, opts) end
  if cmd == "compile" then return cmd_compile(paths) end
  if cmd == "test" then return cmd_test(paths, opts) end
  if cmd == "emit" then return cmd_emit(paths, opts) end
  if cmd == "tap" then return cmd_tap(paths, opts) end
  if cmd == "repl" then
    jit.on()
    return require("herald.repl").main(paths, opts)
  end
  if cmd == "lua" then
    jit.on() -- scripts and benchmarks get LuaJIT as usual
    local fn, err = loadfile(paths[1] or "")
    if not fn then
      eprint("herald lua: ", err or "no FILE given")
      return 2
    end
    _G.arg = { [0] = paths[1], select(2, unpack(paths)) }
    local ok, res = pcall(fn, select(2, unpack(paths)))
    if not ok then
      eprint(res)
      return 1
    end
    return type(res) == "number" and res or 0
  end
  if cmd == "man" or cmd == "completion" then -- for packagers (cmake --install runs them)
    local docs = require "herald.cli_docs"
    local text, err = docs[cmd](_M.cli(), paths[1])
    if not text then
      eprint("error: herald ", cmd, ": ", err)
      return 2
    end
    io.stdout:write(text)
    return 0
  end
  if cmd == "version" or cmd == "--version" then
    io.stdout:write("herald ", VERSION, "\n")
    return 0
  end
  local hint = require("herald.loader").suggest(cmd, COMMAND_NAMES)
  eprint("error: herald: unknown command ", cmd, hint and ("; did you mean " .. hint .. "?") or "",
    " (herald help lists the commands)")
  return 2
end

return _M
