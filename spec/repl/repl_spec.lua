-- `herald repl`, driven as a user would: the interactive prompt in a real terminal (tmux on a
-- private socket, one session per test), and the scripted modes (-e CODE, a script on stdin).
-- Every wait polls the screen (or the process) for a pattern up to a deadline.
local H = require "helpers.herald"
local unistd = require "posix.unistd"

local SOCKET = "herald-spec-" .. unistd.getpid()

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function abs(path)
  if path:sub(1, 1) == "/" then return path end
  return unistd.getcwd() .. "/" .. path
end

local BIN = abs(H.bin)

local function tmux(args)
  local p = io.popen("tmux -L " .. SOCKET .. " " .. args .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return out
end

-- A sensor with a data filter, a jq transform, and an HTTP trigger with parameters.
local SENSOR = [[
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: shop-sensor
spec:
  dependencies:
    - name: large-order
      eventSourceName: shop
      eventName: order
      filters:
        data:
          - path: body.total
            type: number
            comparator: ">="
            value: ["%s"]
    - name: shout
      eventSourceName: shop
      eventName: order
      transform:
        jq: "{body: {who: (.body.user.name | ascii_upcase), total: .body.total}}"
    - name: payment-ok
      eventSourceName: shop
      eventName: payment
      filters:
        data:
          - path: body.status
            type: string
            value: ["^succeeded$"]
  triggers:
    - template:
        name: ship
        conditions: "large-order && payment-ok"
        http:
          url: http://127.0.0.1:9/ship
          payload:
            - src: {dependencyName: large-order, dataKey: body.user.name}
              dest: user
            - src: {dependencyName: large-order, dataKey: body.total, useRawData: true}
              dest: amount
            - src: {dependencyName: payment-ok, dataTemplate: "{{ .Input.body.status | upper }}"}
              dest: payment.status
      parameters:
        - src: {dependencyName: large-order, dataKey: body.id}
          dest: http.url
          operation: append
]]

local EVENTS = [[
{"source":"shop","subject":"order","id":"o1","data":{"body":{"id":"o-1","total":250,"user":{"name":"ada","tier":"gold"}}}}
{"source":"shop","subject":"order","id":"o2","data":{"body":{"id":"o-2","total":50,"user":{"name":"bob"}}}}
{"source":"shop","subject":"payment","id":"p1","data":{"body":{"order":"o-1","status":"succeeded"}}}
]]

local function fixture(threshold)
  local dir = H.tmpdir()
  H.write(dir .. "/sensor.yaml", SENSOR:format(threshold or "100"))
  H.write(dir .. "/events.jsonl", EVENTS)
  return dir
end

-- Terminal sessions -------------------------------------------------------------------------

local Screen = {}
Screen.__index = Screen
local nsessions = 0
local server_started = false

local function ensure_server()
  if server_started then return end
  -- a session that outlives the tests' sessions, so the server (and its options) stays up
  tmux("new-session -d -s keep -x 80 -y 10 'exec cat'")
  tmux("set-option -g remain-on-exit on")
  server_started = true
end

--- Starts `herald repl ARGS...` in a new 200x50 terminal. opts.env: extra environment.
local function start(args, opts)
  ensure_server()
  opts = opts or {}
  nsessions = nsessions + 1
  local self = setmetatable({ name = "r" .. nsessions, mark = 0 }, Screen)
  local state = opts.state or H.tmpdir()
  self.state = state
  local env = { "TERM=xterm", "HOME=" .. state, "XDG_STATE_HOME=" .. state }
  for k, v in pairs(opts.env or {}) do env[#env + 1] = k .. "=" .. v end
  -- sh ignores SIGINT (Ctrl-C reaches the whole foreground group) and prints herald's exit
  -- status, which stays on the screen (remain-on-exit): tmux's own pane_dead_status races
  local cmd = { "trap '' INT; env" }
  for _, e in ipairs(env) do cmd[#cmd + 1] = shq(e) end
  cmd[#cmd + 1] = shq(BIN)
  cmd[#cmd + 1] = "repl"
  for _, a in ipairs(args) do cmd[#cmd + 1] = shq(a) end
  cmd[#cmd + 1] = '; echo "[herald exited with status $?]"'
  local out = tmux(("new-session -d -s %s -x 200 -y 50 -c %s %s"):format(self.name,
    shq(opts.cwd or H.tmpdir()), shq(table.concat(cmd, " "))))
  assert(out == "", out)
  self:wait("herald> ")
  return self
end

--- The terminal's lines (scrollback included, wrapped lines joined), trailing blanks dropped.
function Screen:lines()
  local text = tmux(("capture-pane -p -J -S - -t %s"):format(self.name))
  local lines = {}
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
  while #lines > 0 and lines[#lines]:match("^%s*$") do lines[#lines] = nil end
  return lines
end

function Screen:text(from)
  local lines = self:lines()
  return table.concat(lines, "\n", math.max(1, from or 1))
end

--- Waits until pattern (plain text unless opts.pattern) appears at or after the mark; returns
--- the matching line.
function Screen:wait(pattern, opts)
  opts = opts or {}
  return H.wait_until(function()
    local lines = self:lines()
    for i = math.max(1, self.mark), #lines do
      if lines[i]:find(pattern, 1, not opts.pattern) then return lines[i] end
    end
  end, opts.timeout or 5, function()
    return ("%q on the screen:\n%s"):format(pattern, self:text())
  end)
end

--- Marks the current last line: later waits only look from there on.
function Screen:set_mark()
  self.mark = #self:lines()
end

--- Waits for a fresh, empty prompt below the mark (the program is ready for the next line).
function Screen:wait_prompt()
  return H.wait_until(function()
    local lines = self:lines()
    return #lines > self.mark and lines[#lines] == "herald> "
  end, 5, function() return "a fresh prompt on the screen:\n" .. self:text() end)
end

--- Types text literally (no key names), then presses the given keys (Enter, Tab, C-c ...).
function Screen:type(text, ...)
  self:set_mark()
  if text and text ~= "" then tmux(("send-keys -t %s -l %s"):format(self.name, shq(text))) end
  for _, k in ipairs({ ... }) do tmux(("send-keys -t %s %s"):format(self.name, k)) end
end

--- Types a line and Enter, then waits for `expect` in what follows.
function Screen:run(line, expect, opts)
  self:type(line, "Enter")
  return self:wait(expect, opts)
end

--- The exit status once the program in the terminal has exited, else nil.
function Screen:exit_status()
  for _, l in ipairs(self:lines()) do
    local st = l:match("^%[herald exited with status (%d+)%]$")
    if st then return tonumber(st) end
  end
end

function Screen:kill()
  tmux("kill-session -t " .. self.name)
end

teardown(function()
  if not server_started then return end
  local path = tmux("display-message -p -t keep '#{socket_path}'"):match("[^\n]+")
  tmux("kill-server")
  if path and path:find(SOCKET, 1, true) then os.remove(path) end -- tmux leaves the socket file
end)

-- The prompt ---------------------------------------------------------------------------------

describe("herald repl (interactive)", function()
  local dir, s
  before_each(function()
    dir = fixture()
    s = start({ dir .. "/sensor.yaml", "--events", dir .. "/events.jsonl" })
  end)
  after_each(function()
    if s then s:kill() end
  end)

  it("shows the current event with `.` and steps with :next / :prev", function()
    s:wait("sensor shop-sensor (3 dependencies, 1 triggers), 3 events")
    s:run(".", "event 1/3: id o1, shop/order")
    s:wait('"total": 250')
    s:run(":next", "event 2/3: id o2, shop/order")
    s:wait('"name": "bob"')
    s:run(":prev", "event 1/3: id o1, shop/order")
    s:run(":events", "*   1  id o1")
    s:wait("    3  id p1     shop/payment")
  end)

  it("prints expressions without `=` and continues incomplete input", function()
    s:run("1 + 1", "^2$", { pattern = true })
    s:run('path("body.user.name")', '"ada"')
    s:run('expr("total >= 100 && tier == \\"gold\\"", {total = "body.total", tier = "body.user.tier"})', "^true$", { pattern = true })
    s:run('render("{{ .Input.body.user.name | upper }}")', '"ADA"')
    s:type("function double(x)", "Enter")
    s:wait("... ")
    s:type("return x * 2", "Enter")
    s:type("end", "Enter")
    s:wait("herald> ")
    s:run("double(21)", "^42$", { pattern = true })
    s:run("nosuch()", "error: stdin:1: attempt to call global 'nosuch'")
  end)

  it(":deps and :filter give each filter's verdict with the reason", function()
    s:run(":next", "event 2/3")
    s:run(":deps", "large-order          shop/order")
    s:wait("current event: failed (body.total: got 50, want >= 100)")
    s:wait("payment-ok           shop/payment")
    s:run(":filter large-order", "large-order on event o2: failed")
    s:wait("data[0]      failed  body.total: got 50, want >= 100")
    -- the same verdict from Lua, as a table
    s:run('filter("large-order").filters[1].reason', '"body.total: got 50, want >= 100"')
    s:run(":filter nope", "error: no dependency nope (dependencies: large-order, shout, payment-ok)")
  end)

  it(":transform shows before and after", function()
    s:run(":transform shout", "before:")
    s:wait('"body": {"id": "o-1", "total": 250, "user": {"name": "ada", "tier": "gold"}}')
    s:wait('after:')
    s:wait('{"body": {"total": 250, "who": "ADA"}}')
  end)

  it(":params shows each parameter's source, value and destination before/after", function()
    s:run(":params ship", "trigger ship (http), events: large-order = event 1 (id o1), payment-ok = event 3 (id p1)")
    s:wait("source: dependency large-order, dataKey body.id")
    s:wait('before: "http://127.0.0.1:9/ship"')
    s:wait('after:  "http://127.0.0.1:9/shipo-1"')
    s:wait('source: dependency payment-ok, dataTemplate {{ .Input.body.status | upper }}')
    s:wait('value:  "SUCCEEDED"')
    s:wait("dest:   payment.status")
    s:wait("body before: {}")
    s:wait('body after:  {"amount": 250, "payment": {"status": "SUCCEEDED"}, "user": "ada"}')
  end)

  it(":fire prints the dry-run action as `herald test` does", function()
    s:run(":fire ship", '"action":{"body":{"amount":250,"payment":{"status":"SUCCEEDED"},"user":"ada"}')
    s:wait('"events":{"large-order":"o1","payment-ok":"p1"}')
    s:wait('"url":"http:\\?/\\?/127%.0%.0%.1:9\\?/shipo%-1"', { pattern = true }) -- "/" escaped or not
    s:run('fire("ship").action.body.user', '"ada"')
  end)

  it(":reload re-reads the edited sensor", function()
    s:run(":next", "event 2/3")
    s:run(":filter large-order", "large-order on event o2: failed")
    H.write(dir .. "/sensor.yaml", SENSOR:format("10"))
    s:run(":reload", "reloaded sensor shop-sensor from")
    s:run(":filter large-order", "large-order on event o2: passed")
    s:wait("data[0]      passed  matched")
  end)

  it("completes event field paths, names and commands with Tab", function()
    s:type('path("body.us', "Tab")
    s:wait('herald> path("body.user')
    s:type('.na', "Tab")
    s:wait('herald> path("body.user.name')
    s:type('")', "Enter")
    s:wait('"ada"')
    s:type("gjson.com", "Tab")
    s:wait("herald> gjson.compile")
    s:type("", "C-c")
    s:wait_prompt()
    s:type(":tra", "Tab")
    s:wait("herald> :transform")
    s:type(" sh", "Tab")
    s:wait("herald> :transform shout")
    s:type("", "Enter")
    s:wait('{"body": {"total": 250, "who": "ADA"}}')
    -- names with "-" and file paths span several libedit words
    s:type(":filter large-o", "Tab")
    s:wait("herald> :filter large-order")
    s:type("", "Enter")
    s:wait("large-order on event o1: passed")
    s:type(":load " .. dir .. "/even", "Tab")
    s:wait("herald> :load " .. dir .. "/events.jsonl")
    s:type("", "Enter")
    s:wait("loaded 3 events from")
  end)

  it("Ctrl-C cancels the line; Ctrl-D quits and saves the history", function()
    s:type("error('this line must not run')", "C-c")
    s:wait("herald> error('this line must not run')^C")
    s:wait_prompt()
    s:run("'after ctrl-c'", '"after ctrl-c"')
    assert.falsy(s:text():find("error: ", 1, true))
    -- Ctrl-C also drops an unfinished multi-line chunk
    s:type("for i = 1, 3 do", "Enter")
    s:wait("... ")
    s:type("", "C-c")
    s:wait_prompt()
    s:run("40 + 2", "^42$", { pattern = true })
    s:wait_prompt()
    s:type("", "C-d")
    local status = H.wait_until(function() return s:exit_status() end, 5,
      function() return "the REPL to exit\n" .. s:text() end)
    assert.equal(0, status)
    local hist = H.read(s.state .. "/herald/history")
    assert.truthy(hist, "history file under XDG_STATE_HOME")
    assert.truthy(hist:find("40\\040+\\0402", 1, true) or hist:find("40 + 2", 1, true), hist)
    assert.falsy(hist:find("must not run", 1, true))
  end)

  it("Ctrl-C interrupts running Lua and returns to the prompt; history is on disk per line", function()
    s:run("x = 'kept'", "herald> ")
    -- on disk before the session ends (a crash or kill -9 keeps it)
    H.wait_until(function()
      local h = H.read(s.state .. "/herald/history")
      return h and (h:find("x\\040=\\040'kept'", 1, true) or h:find("x = 'kept'", 1, true))
    end, 5, function() return "the line in the history file" end)
    s:type("while true do end", "Enter")
    s:set_mark()
    -- the loop runs until Ctrl-C; then an error and a fresh prompt, the session intact
    H.wait_until(function() return s:lines()[#s:lines()] ~= "herald> " end, 2)
    s:type("", "C-c")
    s:wait("interrupted (Ctrl-C)")
    s:wait_prompt()
    s:run("x", '"kept"')
    assert.is_nil(s:exit_status())
  end)

  it("an ad hoc `event = {...}` works with `.`, :filter, :deps and :fire, and fire() prints one value", function()
    s:run("event = {body = {total = 500, user = {name = 'zed'}}}", "herald> ")
    s:run(".", "event (ad hoc data, offered to every dependency)")
    s:wait('"total": 500')
    s:run(":filter large-order", "large-order on event adhoc: passed")
    s:run(":fire ship", '"events":{"large-order":"adhoc","payment-ok":"p1"}')
    s:set_mark()
    s:type("fire('ship').trigger", "Enter")
    s:wait('"ship"')
    s:wait_prompt()
    assert.falsy(s:text(s.mark):find("\nnil\n", 1, true))
    -- an event the filters reject: :fire says it used another one
    s:run(":next", "event 2/3")
    s:run(":fire ship", "note: large-order: the current event (o2) does not pass (body.total: got 50, want >= 100); using event 1")
  end)

  it(":edit opens $EDITOR on the sensor, then reloads it", function()
    s:kill()
    local editor = H.write(dir .. "/editor.sh", "#!/bin/sh\nsed -i 's/\"100\"/\"10\"/' \"$1\"\n")
    os.execute("chmod +x " .. shq(editor))
    s = start({ dir .. "/sensor.yaml", "--events", dir .. "/events.jsonl" }, { env = { EDITOR = editor, VISUAL = editor } })
    s:run(":next", "event 2/3")
    s:run(":filter large-order", "failed")
    s:run(":edit", "reloaded sensor shop-sensor")
    s:run(":filter large-order", "large-order on event o2: passed")
  end)

  it(":load reads events and sensors; :help explains", function()
    local other = H.tmpdir()
    H.write(other .. "/more.jsonl", '{"source":"shop","subject":"payment","id":"p9","data":{"body":{"status":"declined"}}}\n')
    s:run(":load " .. other .. "/more.jsonl", "loaded 1 events from")
    s:run(":filter payment-ok", "payment-ok on event p9: failed")
    s:run(":help", ":filter [DEP]")
    s:run(":help path", 'path(p [, ev]): the gjson path p read in ev.data')
  end)
end)

-- Scripted modes -----------------------------------------------------------------------------

--- Runs `herald repl ARGS` with `input` on stdin; returns code, stdout, stderr.
local function run_stdin(args, input)
  local dir = H.tmpdir()
  H.write(dir .. "/in", input)
  local cmd = { shq(BIN), "repl" }
  for _, a in ipairs(args) do cmd[#cmd + 1] = shq(a) end
  local p = io.popen(("%s < %s > %s 2> %s; echo $?"):format(table.concat(cmd, " "), shq(dir .. "/in"),
    shq(dir .. "/out"), shq(dir .. "/err")))
  local code = tonumber(p:read("*a"):match("%d+"))
  p:close()
  return code, H.read(dir .. "/out"), H.read(dir .. "/err")
end

describe("herald repl (scripted)", function()
  local dir
  before_each(function() dir = fixture() end)

  it("-e prints the value of an expression", function()
    local code, out, err = H.run{ "repl", dir .. "/sensor.yaml", "--events", dir .. "/events.jsonl", "-e", 'path("body.total")' }
    assert.equal(0, code, err)
    assert.equal("250\n", out)
  end)

  it("shows print() from the sensor's scripts", function()
    local d = H.tmpdir()
    H.write(d .. "/s.yaml", [[
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: p
spec:
  dependencies:
    - name: d
      eventSourceName: shop
      eventName: order
      filters:
        script: |
          print("total", event.body.total)
          return true
  triggers:
    - template:
        name: t
        log: {}
]])
    H.write(d .. "/ev.jsonl", '{"source":"shop","subject":"order","id":"x","data":{"body":{"total":7}}}\n')
    local code, out, err = H.run{ "repl", d .. "/s.yaml", "--events", d .. "/ev.jsonl", "-e", ":filter d" }
    assert.equal(0, code, err)
    assert.truthy(out:find("print (sensor p): total\t7", 1, true), out)
  end)

  it("-e runs commands and multi-line chunks", function()
    local code, out, err = H.run{ "repl", dir .. "/sensor.yaml", "--events", dir .. "/events.jsonl", "-e",
      ":next\n:filter large-order\nfor i = 1, 2 do\n  print('i=' .. i)\nend\n:fire ship" }
    assert.equal(0, code, err)
    assert.truthy(out:find("event 2/3: id o2", 1, true), out)
    assert.truthy(out:find("data[0]      failed  body.total: got 50, want >= 100", 1, true), out)
    assert.truthy(out:find("i=1\ni=2\n", 1, true), out)
    assert.truthy(out:find('"trigger":"ship"', 1, true), out)
  end)

  it("-e reports an error on stderr with exit code 1", function()
    local code, out, err = H.run{ "repl", dir .. "/sensor.yaml", "-e", "nosuch()" }
    assert.equal(1, code)
    assert.equal("", out)
    assert.truthy(err:find("attempt to call global 'nosuch'", 1, true), err)
    code, _, err = H.run{ "repl", dir .. "/sensor.yaml", "-e", ":fire nope" }
    assert.equal(1, code)
    assert.truthy(err:find("no trigger nope (triggers: ship)", 1, true), err)
  end)

  it("a bad sensor file is reported with exit code 2", function()
    local code, _, err = H.run{ "repl", dir .. "/missing.yaml" }
    assert.equal(2, code)
    assert.truthy(err:find("missing.yaml", 1, true), err)
  end)

  it("runs a script on stdin when stdin is not a terminal", function()
    local code, out, err = run_stdin({ dir .. "/sensor.yaml", "--events", dir .. "/events.jsonl" },
      'print(path("body.total"))\n:next\npath("body.user.name")\nfilter("large-order").passed\n:transform shout\n')
    assert.equal(0, code, err)
    assert.equal("", err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal("250", lines[1])
    assert.truthy(out:find('\n"bob"\nfalse\n', 1, true), out)
    assert.truthy(out:find('{"body": {"total": 50, "who": "BOB"}}', 1, true), out)
  end)

  it("a script on stdin stops at the first error with exit code 1", function()
    local code, out, err = run_stdin({ dir .. "/sensor.yaml" }, "print('one')\nerror('boom')\nprint('two')\n")
    assert.equal(1, code)
    assert.equal("one\n", out)
    assert.truthy(err:find("boom", 1, true), err)
    code, _, err = run_stdin({}, "for i = 1, 2 do\n")
    assert.equal(1, code)
    assert.truthy(err:find("'end' expected", 1, true), err)
  end)
end)
