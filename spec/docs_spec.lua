-- The docs' command blocks that can run offline do run: every ```sh / ```bash block in
-- README.md and docs/*.md whose commands are all offline herald commands (lint, test,
-- compile, repl -e or stdin, help, version, man, completion; `echo ... |` feeding them) is run
-- with sh -e from the source tree, and must exit 0. Blocks that start servers or talk to
-- them (run, emit, curl, kubectl ...) are left to the specs that drive those.
local H = require "helpers.herald"

local OFFLINE = { lint = true, test = true, compile = true, repl = true, help = true,
                  version = true, man = true, completion = true }

local function blocks(path)
  local text = H.read(path) or ""
  local out = {}
  for lang, body in text:gmatch("```(%w*)\n(.-)```") do
    if lang == "sh" or lang == "bash" or lang == "shell" then out[#out + 1] = body end
  end
  return out
end

-- Whether every command of the block is an offline herald command (continuation lines and
-- multi-line quoted arguments belong to the command before them).
local function runnable(body)
  local cmds, quoted = 0, false
  for line in body:gmatch("[^\n]*") do
    local l = line:match("^%s*(.-)%s*$")
    if not quoted and l ~= "" and not l:match("^#") then
      local cmd = l:gsub("^echo%s+'[^']*'%s*|%s*", ""):gsub("^echo%s+\"[^\"]*\"%s*|%s*", "")
      local sub = cmd:match("^herald%s+(%S+)")
      if not sub or not OFFLINE[sub] then return false end
      if sub == "repl" and not (cmd:find(" %-e ") or l:find("|", 1, true)) then return false end
      cmds = cmds + 1
    end
    -- track an open single-quoted argument that spans lines
    local _, n = line:gsub("'", "")
    if n % 2 == 1 then quoted = not quoted end
  end
  return cmds > 0
end

describe("the docs' offline command blocks", function()
  it("run and exit 0", function()
    local bindir = H.tmpdir()
    assert(os.execute(("ln -s %q %q"):format(H.bin:sub(1, 1) == "/" and H.bin or (H.source_dir .. "/" .. H.bin), bindir .. "/herald")) == 0)
    local files = { H.source_dir .. "/README.md" }
    local ls = io.popen("ls " .. H.source_dir .. "/docs/*.md")
    for f in ls:lines() do files[#files + 1] = f end
    ls:close()
    local ran, skipped = 0, 0
    for _, f in ipairs(files) do
      for _, body in ipairs(blocks(f)) do
        if runnable(body) then
          local script = H.tmpdir() .. "/block.sh"
          H.write(script, "set -e\n" .. body)
          local p = io.popen(("cd %q && PATH=%q:$PATH XDG_STATE_HOME=%q sh %q 2>&1; echo \"exit=$?\""):format(
            H.source_dir, bindir, H.tmpdir(), script))
          local out = p:read("*a")
          p:close()
          assert.truthy(out:match("exit=0\n$"), f .. ":\n" .. body .. "\n--- output ---\n" .. out)
          ran = ran + 1
        else
          skipped = skipped + 1
        end
      end
    end
    assert.is_true(ran >= 3, ("%d blocks ran, %d left to other specs"):format(ran, skipped))
  end)
end)

describe("cmake --install", function()
  it("installs the binary, the man page, the completions, docs and examples", function()
    local build = H.bin:match("^(.*)/[^/]+$")
    if not build or not io.open(build .. "/cmake_install.cmake") then
      pending("HERALD_BIN is not in a CMake build directory")
      return
    end
    local prefix = H.tmpdir()
    local p = io.popen(("cmake --install %q --prefix %q 2>&1; echo \"exit=$?\""):format(build, prefix))
    local out = p:read("*a")
    p:close()
    assert.truthy(out:match("exit=0\n$"), out)
    for _, f in ipairs{ "bin/herald", "share/man/man1/herald.1",
                        "share/bash-completion/completions/herald", "share/zsh/vendor-completions/_herald",
                        "share/fish/vendor_completions.d/herald.fish", "share/doc/herald/README.md",
                        "share/doc/herald/docs/cli.md", "share/doc/herald/examples/quickstart/webhook-sensor.yaml" } do
      assert.truthy(io.open(prefix .. "/" .. f), f)
    end
    assert.matches('^%.TH HERALD 1', H.read(prefix .. "/share/man/man1/herald.1"))
    assert.matches("complete %-o filenames %-F _herald herald", H.read(prefix .. "/share/bash-completion/completions/herald"))
    -- the completion offers the commands the binary has
    local c = io.popen(("bash -c 'source %q; COMP_WORDS=(herald te); COMP_CWORD=1; _herald; echo ${COMPREPLY[@]}'")
      :format(prefix .. "/share/bash-completion/completions/herald"))
    assert.equal("test", (c:read("*a"):gsub("%s+$", "")))
    c:close()
  end)
end)
