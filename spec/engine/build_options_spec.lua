-- spec/engine/build_options_spec.lua: per-type build options (cmake/plugins.cmake). A spec that
-- needs a source or trigger type left out of the build gets a load error naming the option.
--
-- The default build has every type whose library is found; the minimal half runs against a
-- build configured with -DHERALD_MINIMAL=ON (webhook, calendar, log and http only), found at
-- $HERALD_MINIMAL_BIN or <source>/build-minimal/herald or <source>/build-registry-min/herald,
-- and is pending when there is none (building one takes a minute: not part of the suite).
local H = require "helpers.herald"
local stat = require "posix.sys.stat"

local function minimal_bin()
  local c = { os.getenv("HERALD_MINIMAL_BIN"), H.source_dir .. "/build-minimal/herald",
              H.source_dir .. "/build-registry-min/herald" }
  for _, p in ipairs(c) do
    if p and p ~= "" and stat.stat(p) then return p end
  end
end

local KAFKA = H.sensor { name = "to-kafka", deps = { { name = "dep" } }, triggers = { {
  name = "send", body = "        kafka:\n          url: localhost:9092\n          topic: t\n"
    .. "          payload:\n            - src: { dependencyName: dep, dataKey: a }\n              dest: a\n" } } }

local K8S = H.sensor { name = "to-k8s", deps = { { name = "dep" } }, triggers = { {
  name = "create", body = "        k8s:\n          operation: create\n          source:\n            resource:\n"
    .. "              apiVersion: v1\n              kind: ConfigMap\n              metadata: { name: x }\n" } } }

describe("build options", function()
  it("the default build runs every type it has a folder for: a kafka sensor is valid", function()
    local dir = H.tmpdir()
    H.write(dir .. "/kafka.yaml", KAFKA)
    local code, out, err = H.run { "lint", dir .. "/kafka.yaml" }
    assert.equal(0, code, err)
    assert.matches("1 object%(s%) valid", out .. err)
  end)

  it("a minimal build names the option for a trigger type it leaves out, and runs the rest", function()
    local bin = minimal_bin()
    if not bin then
      pending("no -DHERALD_MINIMAL=ON build (set HERALD_MINIMAL_BIN or build build-minimal)")
      return
    end
    local dir = H.tmpdir()
    H.write(dir .. "/kafka.yaml", KAFKA)
    H.write(dir .. "/k8s.yaml", K8S)
    local code, out, err = H.run({ "lint", dir .. "/kafka.yaml" }, { bin = bin })
    assert.equal(1, code)
    assert.matches("kafka%.yaml:%d+:%d+: spec%.triggers%[0%]%.template%.kafka: the kafka trigger is not in this build "
      .. "%(configure with %-DHERALD_TRIGGER_KAFKA=ON%)", out .. err)
    code, out, err = H.run({ "lint", dir .. "/k8s.yaml" }, { bin = bin })
    assert.equal(1, code)
    assert.matches("spec%.triggers%[0%]%.template%.k8s: the k8s trigger is not in this build "
      .. "%(configure with %-DHERALD_TRIGGER_K8S=ON%)", out .. err)
    -- what it has still works: the quickstart's webhook -> log sensor under herald test
    local ex = H.source_dir .. "/examples/quickstart/"
    code, out, err = H.run({ "test", ex .. "webhook-sensor.yaml", "--events", ex .. "events.jsonl",
      "--expect", ex .. "expected.jsonl" }, { bin = bin })
    assert.equal(0, code, err)
    assert.matches('"trigger":"log%-trigger"', out)
  end)
end)
