-- spec/fuzz/fuzz_spec.lua: the libFuzzer targets in fuzz/ still build (clang, ASan+UBSan) and
-- each one runs for 3 seconds over its seed corpus without a crash, so they stay usable for
-- the long runs of docs/fuzzing.md. Only what the targets need is compiled (fuzz/CMakeLists.txt),
-- in a build dir of its own next to the binary under test.
local H = require "helpers.herald"

local TARGETS = { "http_request", "yaml_load", "gjson_path", "sjson_path", "govaluate",
                  "exprlang", "gotemplate", "cron", "cloudevent" }

-- Runs a shell command; returns ok, its output (stdout and stderr).
local function sh(cmd)
  local p = io.popen("(" .. cmd .. ") 2>&1; echo \"exit:$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("exit:(%d+)%s*$"))
  return code == 0, out:gsub("exit:%d+%s*$", "")
end

local function tail(s, n)
  return s:sub(-(n or 3000))
end

describe("fuzz targets", function()
  local have_clang = sh("command -v clang")
  local dir = H.bin:match("^(.*)/[^/]+$") .. "/fuzz-smoke"
  local built, build_out

  setup(function()
    if not have_clang then return end
    local src = H.source_dir
    built, build_out = sh(("cmake -S '%s' -B '%s' -DCMAKE_C_COMPILER=clang -DHERALD_FUZZ=ON " ..
      "-DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && " ..
      "cmake --build '%s' --target fuzz_targets -j2 && " ..
      "luajit '%s/fuzz/seed_corpus.lua' '%s' '%s/seeds'"):format(src, dir, dir, src, src, dir))
  end)

  it("build with clang and libFuzzer", function()
    if not have_clang then
      return pending("clang is not installed (scripts/install-deps.sh test installs it)")
    end
    assert(built, tail(build_out or ""))
  end)

  for _, t in ipairs(TARGETS) do
    it(t .. " runs 3 s over its seeds without a finding", function()
      if not have_clang then return pending("clang is not installed") end
      assert(built, "the fuzz targets did not build")
      local work = H.tmpdir()
      local ok, out = sh(("'%s/fuzz/fuzz_%s' -seed=1 -max_total_time=3 -timeout=10 -rss_limit_mb=2048 " ..
        "-max_len=4096 -artifact_prefix='%s/' '%s' '%s/seeds/%s'"):format(dir, t, work, work, dir, t))
      assert(ok, tail(out))
      -- it did run: the seeds were read and executions counted
      local runs = tonumber(out:match("Done (%d+) runs") or out:match("#(%d+)%s+DONE"))
      assert(runs and runs > 0, tail(out))
    end)
  end
end)
