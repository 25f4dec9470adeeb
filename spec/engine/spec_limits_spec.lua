-- Bounded spec loading (issue 14, item 8): limits on a file's bytes, on the bytes, documents
-- and YAML nodes of one load, and on triggers and dependencies per Sensor. Each hit is an
-- error at file:line:col naming the limit and how to raise it (--spec-limits NAME=N); a big
-- but legal spec still loads; the 10 MB / 258,457-trigger file that took 56 s and 2 GB is
-- refused at once; alias bombs stay refused.
local H = require "helpers.herald"

local function sensor_text(name, ntriggers, ndeps)
  local t = { ("apiVersion: argoproj.io/v1alpha1\nkind: Sensor\nmetadata: {name: %s}\nspec:\n  dependencies:\n"):format(name) }
  for i = 1, ndeps or 1 do t[#t + 1] = ("    - {name: d%d, eventSourceName: es, eventName: ev}\n"):format(i) end
  t[#t + 1] = "  triggers:\n"
  for i = 1, ntriggers do t[#t + 1] = ("    - template: {name: t%d, log: {}}\n"):format(i) end
  return table.concat(t)
end

local function lint(args)
  local code, out, err = H.run(args, { timeout = 60 })
  return code, out, err
end

describe("spec limits", function()
  local dir
  before_each(function() dir = H.tmpdir() end)

  it("herald --help documents --spec-limits and each limit", function()
    local code, out = H.run{ "--help" }
    assert.equal(0, code)
    assert.truthy(out:find("--spec-limits NAME=N", 1, true), out)
    for _, name in ipairs({ "bytes", "load-bytes", "documents", "nodes", "triggers", "dependencies" }) do
      assert.truthy(out:find(name .. " (", 1, true), name)
    end
  end)

  it("bytes: a file over the limit is refused where the limit is crossed", function()
    local f = H.write(dir .. "/s.yaml", sensor_text("s", 3)) -- 3 triggers: well over 200 bytes
    local code, _, err = lint{ "lint", f, "--spec-limits", "bytes=200" }
    assert.equal(1, code, err)
    -- byte 200 is on line 7 (the dependency line ends at byte ~145)
    local line, col = err:match("s%.yaml:(%d+):(%d+): the file is %d+ bytes, more than 200 %(limit \"bytes\"%); if the spec is meant to be this large, raise the limit with %-%-spec%-limits bytes=N")
    assert.truthy(line, err)
    local text = H.read(f)
    local before = text:sub(1, 200)
    local _, nl = before:gsub("\n", "")
    assert.equal(nl + 1, tonumber(line))
    assert.equal(200 - #before:match("^(.*\n)") + 1, tonumber(col))
  end)

  it("load-bytes: the files of one load together", function()
    H.write(dir .. "/a.yaml", sensor_text("a", 3))
    H.write(dir .. "/b.yaml", sensor_text("b", 3))
    local code, _, err = lint{ "lint", dir, "--spec-limits", "load-bytes=400" }
    assert.equal(1, code, err)
    assert.truthy(err:find("b.yaml:%d+:%d+: this file takes the specs loaded past 400 bytes %(limit \"load%-bytes\"%)"), err)
    assert.falsy(err:find("a.yaml:[^\n]*limit"), err) -- the first file was within the budget
  end)

  it("documents: per load, at the first document over it", function()
    local docs = {}
    for i = 1, 3 do docs[i] = sensor_text("s" .. i, 1) end
    H.write(dir .. "/a.yaml", docs[1] .. "---\n" .. docs[2])
    H.write(dir .. "/b.yaml", docs[3])
    local code, out, err = lint{ "lint", dir, "--spec-limits", "documents=2" }
    assert.equal(1, code, err)
    assert.truthy(err:find("b.yaml:1:1: more than 2 YAML documents in one load", 1, true), err)
    assert.truthy(err:find('(limit "documents"); if the spec is meant to be this large, raise the limit with --spec-limits documents=N', 1, true), err)
    code, out, err = lint{ "lint", dir, "--spec-limits", "documents=3" }
    assert.equal(0, code, err)
    assert.equal("3 object(s) valid\n", out)
    -- one file alone
    H.write(dir .. "/b.yaml", docs[3] .. "---\n" .. docs[3]:gsub("name: s3", "name: s4"))
    code, _, err = lint{ "lint", dir .. "/b.yaml", "--spec-limits", "documents=1" }
    assert.equal(1, code, err)
    assert.truthy(err:find("b.yaml:9:1: more than 1 YAML documents in one load (limit \"documents\")", 1, true), err)
  end)

  it("nodes: per load, at the node that crosses it (aliases count what they expand to)", function()
    local f = H.write(dir .. "/s.yaml", sensor_text("s", 10))
    local code, _, err = lint{ "lint", f, "--spec-limits", "nodes=40" }
    assert.equal(1, code, err)
    local line = err:match("s%.yaml:(%d+):%d+: more than 40 YAML nodes %(scalars, keys, mappings, sequences and what aliases expand to%) in one load %(limit \"nodes\"%); if the spec is meant to be this large, raise the limit with %-%-spec%-limits nodes=N")
    assert.truthy(line, err)
    -- 22 nodes before the first trigger (line 8), then 7 per trigger: node 41 is in the third
    assert.equal(10, tonumber(line))
    code = lint{ "lint", f, "--spec-limits", "nodes=100" }
    assert.equal(0, code)
    -- an alias costs what it expands to
    H.write(f, "apiVersion: argoproj.io/v1alpha1\nkind: Sensor\nmetadata: {name: s}\nspec:\n" ..
      "  dependencies:\n    - &d {name: d1, eventSourceName: es, eventName: ev}\n" ..
      "  triggers:\n    - template: {name: t, log: &l {a: {b: {c: 1}}}}\n" ..
      "x-extra: [*l, *l, *l, *l, *l, *l, *l, *l, *l, *l]\n")
    code, _, err = lint{ "lint", f, "--spec-limits", "nodes=60" }
    assert.equal(1, code, err)
    assert.truthy(err:find("s.yaml:9:%d+: more than 60 YAML nodes"), err)
  end)

  it("triggers and dependencies per Sensor, at the first one over the limit", function()
    local f = H.write(dir .. "/s.yaml", sensor_text("s", 3, 2))
    local code, _, err = lint{ "lint", f, "--spec-limits", "triggers=2" }
    assert.equal(1, code, err)
    assert.truthy(err:find('s.yaml:11:7: spec.triggers[2]: more than 2 triggers in one Sensor (limit "triggers"); if the spec is meant to be this large, raise the limit with --spec-limits triggers=N', 1, true), err)
    code, _, err = lint{ "lint", f, "--spec-limits", "dependencies=1,triggers=3" }
    assert.equal(1, code, err)
    assert.truthy(err:find('s.yaml:7:7: spec.dependencies[1]: more than 1 dependencies in one Sensor (limit "dependencies")', 1, true), err)
    code = lint{ "lint", f, "--spec-limits", "dependencies=2,triggers=3" }
    assert.equal(0, code)
  end)

  it("every command that loads specs honours --spec-limits", function()
    local f = H.write(dir .. "/s.yaml", sensor_text("s", 3))
    H.write(dir .. "/events.jsonl", '{"source":"es","subject":"ev","type":"webhook","data":{}}\n')
    H.write(dir .. "/s_test.yaml", "sensor: s.yaml\ntests: [{name: t, events: [], expect: []}]\n")
    for _, args in ipairs({
      { "compile", f },
      { "test", f, "--events", dir .. "/events.jsonl" },
      { "test", dir },
      { "repl", f, "-e", "print(1)" },
      { "run", f },
    }) do
      args[#args + 1] = "--spec-limits"
      args[#args + 1] = "triggers=2"
      local code, out, err = H.run(args)
      assert.are_not.equal(0, code, args[1])
      assert.truthy((out .. err):find('limit "triggers"', 1, true), args[1] .. ": " .. out .. err)
    end
  end)

  it("refuses a bad --spec-limits value", function()
    local f = H.write(dir .. "/s.yaml", sensor_text("s", 1))
    local code, _, err = lint{ "lint", f, "--spec-limits", "cows=3" }
    assert.equal(2, code)
    assert.truthy(err:find('herald: --spec-limits: unknown limit "cows" (limits: bytes, load-bytes, documents, nodes, triggers, dependencies)', 1, true), err)
    code, _, err = lint{ "lint", f, "--spec-limits", "nodes=lots" }
    assert.equal(2, code)
    assert.truthy(err:find("expected NAME=N", 1, true), err)
  end)

  it("a big but legal spec loads with the defaults (5,000 triggers; 200 documents)", function()
    local docs = {}
    for i = 1, 199 do docs[i] = sensor_text("s" .. i, 1) end
    docs[200] = sensor_text("big", 5000, 50)
    H.write(dir .. "/all.yaml", table.concat(docs, "---\n"))
    local code, out, err = lint{ "lint", dir .. "/all.yaml" }
    assert.equal(0, code, err)
    assert.equal("200 object(s) valid\n", out)
  end)

  it("the 10 MB, 258,457-trigger spec is refused at once (it took 56 s and 2 GB)", function()
    local t = { "apiVersion: argoproj.io/v1alpha1\nkind: Sensor\nmetadata: {name: big}\nspec:\n  dependencies:\n    - {name: d, eventSourceName: es, eventName: ev}\n  triggers:\n" }
    for i = 1, 258457 do t[#t + 1] = ("    - template: {name: t%d, log: {}}\n"):format(i) end
    local f = H.write(dir .. "/big.yaml", table.concat(t))
    t = nil
    local t0 = H.now()
    local code, _, err = lint{ "lint", f }
    local took = H.now() - t0
    assert.equal(1, code, err)
    assert.truthy(err:find('big.yaml:%d+:%d+: the file is 10485786 bytes, more than 4194304 %(limit "bytes"%)'), err)
    assert.truthy(took < 5, ("took %.2f s"):format(took)) -- ~0.1 s of CPU; wall time on a busy machine
    -- past the byte limit, the node limit stops it too, long before the triggers are walked
    t0 = H.now()
    code, _, err = lint{ "lint", f, "--spec-limits", "bytes=20000000" }
    assert.equal(1, code, err)
    assert.truthy(err:find('(limit "nodes")', 1, true), err)
  end)

  it("alias bombs stay refused", function()
    local lines = { "a: &a [x, x, x, x, x, x, x, x, x, x]" }
    local prev = "a"
    for i = 1, 8 do
      local name = "l" .. i
      lines[#lines + 1] = ("%s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]"):format(name, name,
        prev, prev, prev, prev, prev, prev, prev, prev, prev, prev)
      prev = name
    end
    local f = H.write(dir .. "/bomb.yaml", table.concat(lines, "\n") .. "\n")
    local t0 = H.now()
    local code, _, err = lint{ "lint", f, "--spec-limits", "nodes=100000000" }
    assert.equal(1, code, err)
    assert.truthy(err:find("bomb.yaml:%d+:%d+: aliases expand to more than 100000 nodes %(an alias bomb%?%)"), err)
    code, _, err = lint{ "lint", f }
    assert.equal(1, code, err)
    assert.truthy(err:find("bomb.yaml:%d+:%d+: aliases expand to") or err:find('(limit "nodes")', 1, true), err)
    assert.truthy(H.now() - t0 < 10)
  end)
end)
