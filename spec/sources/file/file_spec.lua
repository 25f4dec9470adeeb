-- spec/sources/file/file_spec.lua: the file event source (sources/file/): each operation with
-- inotify (name as fsnotify gives it: the directory + "/" + the file), pathRegexp, polling
-- (name: the base name, as Argo's polling watcher), and the schema's checks.
local H = require "helpers.herald"

local OPS = { "CREATE", "WRITE", "REMOVE", "RENAME", "CHMOD" }

-- An EventSource with one event per operation (named after it, lower case) on dir, and a Sensor
-- with one log trigger per event.
local function spec(dir, watch, polling)
  local lines = { "apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: es\nspec:\n  file:\n" }
  local deps, triggers = {}, {}
  for _, op in ipairs(OPS) do
    local ev = op:lower()
    lines[#lines + 1] = ("    %s:\n      eventType: %s\n      watchPathConfig:\n        directory: %s/\n%s%s"):format(
      ev, op, dir, watch, polling and "      polling: true\n" or "")
    deps[#deps + 1] = { name = ev, es = "es", event = ev }
    triggers[#triggers + 1] = { name = ev, conditions = ev }
  end
  return table.concat(lines) .. "---\n" .. H.sensor { name = "s", deps = deps, triggers = triggers }
end

-- the firings of dependency dep: the data of each
local function of(p, dep)
  local t = {}
  for _, f in ipairs(H.firings(p)) do
    if f.events[dep] then t[#t + 1] = f.events[dep].data end
  end
  return t
end

local function wait_of(p, dep, n)
  return H.wait_until(function() local t = of(p, dep); return #t >= n and t end, 10,
    function() return n .. " " .. dep .. " firings\n" .. p:describe() end)
end

local function run(cfg, dir)
  local d = H.tmpdir()
  H.write(d .. "/file.yaml", cfg)
  local p = H.start { "run", d, "--log-level", "debug" }
  p:wait_for(dir:sub(1, 20), { timeout = 5 }) -- "watching directory ..." or "polling directory ..."
  return p
end

describe("file source", function()
  it("inotify: CREATE, WRITE, CHMOD, RENAME and REMOVE of the file at path, {name, op, metadata} as Argo", function()
    local dir = H.tmpdir()
    local p = run(spec(dir, "        path: f.txt\n      metadata:\n        k: v\n"), dir)
    H.write(dir .. "/f.txt", "hello")       -- CREATE, WRITE
    local c = wait_of(p, "create", 1)
    assert.same({ name = dir .. "/f.txt", op = 1, metadata = { k = "v" } }, c[1])
    assert.equal(2, wait_of(p, "write", 1)[1].op)
    os.execute("chmod 600 " .. dir .. "/f.txt") -- CHMOD
    assert.equal(16, wait_of(p, "chmod", 1)[1].op)
    os.rename(dir .. "/f.txt", dir .. "/g.txt") -- RENAME of f.txt (g.txt's CREATE is not watched)
    local r = wait_of(p, "rename", 1)
    assert.same({ name = dir .. "/f.txt", op = 8, metadata = { k = "v" } }, r[1])
    H.write(dir .. "/f.txt", "")           -- CREATE again
    wait_of(p, "create", 2)
    os.remove(dir .. "/f.txt")              -- REMOVE
    assert.equal(4, wait_of(p, "remove", 1)[1].op)
    H.write(dir .. "/other.txt", "x")       -- not the path: nothing
    os.remove(dir .. "/g.txt")
    assert.equal(0, p:stop())
    assert.equal(2, #of(p, "create"))
    assert.equal(1, #of(p, "rename"))
    assert.equal(1, #of(p, "remove"))
    assert.equal(1, #of(p, "chmod"))
  end)

  it("pathRegexp matches the path relative to the directory", function()
    local dir = H.tmpdir()
    local p = run(spec(dir, "        pathRegexp: '^data-[0-9]+\\.csv$'\n"), dir)
    H.write(dir .. "/data-1.csv", "")
    H.write(dir .. "/data-x.csv", "")
    H.write(dir .. "/old-data-2.csv", "")
    H.write(dir .. "/data-22.csv", "")
    local c = wait_of(p, "create", 2)
    assert.equal(dir .. "/data-1.csv", c[1].name)
    assert.equal(dir .. "/data-22.csv", c[2].name)
    assert.equal(0, p:stop())
    assert.equal(2, #of(p, "create"))
  end)

  it("polling: the listing compared every 100 ms; name is the base name", function()
    local dir = H.tmpdir()
    H.write(dir .. "/there.csv", "x") -- the baseline: no event
    local p = run(spec(dir, "        pathRegexp: '\\.csv$'\n", true), dir)
    p:wait_for("first listing of") -- the baseline: changes after it fire
    H.write(dir .. "/a.csv", "1")
    assert.same({ name = "a.csv", op = 1, metadata = require("cjson").null }, wait_of(p, "create", 1)[1])
    H.write(dir .. "/there.csv", "changed")
    assert.equal("there.csv", wait_of(p, "write", 1)[1].name)
    os.execute("chmod 600 " .. dir .. "/there.csv")
    assert.equal("there.csv", wait_of(p, "chmod", 1)[1].name)
    os.rename(dir .. "/a.csv", dir .. "/b.csv")
    assert.equal(8, wait_of(p, "rename", 1)[1].op)
    os.remove(dir .. "/b.csv")
    assert.equal("b.csv", wait_of(p, "remove", 1)[1].name)
    assert.equal(0, p:stop())
    assert.equal(1, #of(p, "create")) -- the rename was one RENAME, not a REMOVE and a CREATE
    assert.equal(1, #of(p, "remove"))
  end)

  it("lint: Argo's watchPathConfig rules and the operation names", function()
    local d = H.tmpdir()
    H.write(d .. "/bad.yaml", [[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: es
spec:
  file:
    a:
      eventType: MODIFY
      watchPathConfig:
        directory: relative/dir
        path: /abs
    b:
      eventType: CREATE
      watchPathConfig:
        directory: /tmp
    c:
      eventType: CREATE
      watchPathConfig:
        directory: /tmp
        pathRegexp: "(["
]])
    local code, out, err = H.run { "lint", d .. "/bad.yaml" }
    local text = out .. err
    assert.equal(1, code, text)
    assert.matches("spec%.file%.a%.eventType: eventType must be one of", text)
    assert.matches("spec%.file%.a%.watchPathConfig%.directory: directory must be an absolute file path", text)
    assert.matches("spec%.file%.a%.watchPathConfig%.path: path must be a relative file path", text)
    assert.matches("spec%.file%.b%.watchPathConfig", text)
    assert.matches("spec%.file%.c%.watchPathConfig%.pathRegexp: invalid pathRegexp", text)
  end)
  it("examples/file lints clean, its sensor test passes, and it fires", function()
    local ex = H.source_dir .. "/examples/file"
    local code, out, err = H.run { "lint", "--strict", ex }
    assert.equal(0, code, err)
    assert.matches("^2 object%(s%) valid", out)
    code, out = H.run { "test", ex }
    assert.equal(0, code, out)
    assert.matches("1 passed, 0 failed", out)
    -- live: the example with its directory moved to a temp one
    local dir = H.tmpdir()
    local d = H.tmpdir()
    H.write(d .. "/file.yaml", (H.read(ex .. "/file.yaml"):gsub("/tmp/herald%-file%-example/", dir .. "/")))
    local p = H.start { "run", d }
    p:wait_for("watching directory")
    H.write(dir .. "/sales.csv", "a,b")
    local f = H.wait_firings(p, 1, 10)
    assert.same({ name = dir .. "/sales.csv", op = 1, metadata = { pipeline = "sales" } }, f[1].events.csv.data)
    assert.equal(0, p:stop())
  end)
end)
