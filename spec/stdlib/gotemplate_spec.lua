-- spec/stdlib/gotemplate_spec.lua: Go text/template semantics of herald.gotemplate.
-- Cases ported from Go's text/template exec_test.go / parse_test.go where they apply, plus the
-- templates Argo users write in sensors.
require "helpers.stdlib"
local tpl = require "herald.gotemplate"
local cjson = require "cjson"
local hjson = require "herald.json" -- decodes as Herald does: empty arrays marked

local function render(text, data, opts)
  opts = opts or {}
  opts.name = opts.name or "x"
  local t, err = tpl.compile(text, opts)
  if not t then return nil, err end
  return t:render(data)
end

local DATA = {
  Input = hjson.decode([[{
    "body": {"message": "hello world", "n": 3, "f": 2.5, "big": 1e21, "zero": 0,
             "items": [1, 2, 3], "names": ["b", "a"], "m": {"b": 2, "a": 1}, "nul": null,
             "empty": "", "t": true, "nested": {"deep": {"x": "y"}}, "objs": [{"id": 1}, {"id": 2}]},
    "type": "push", "name": "ev", "count": 3
  }]]),
}

local function cases(list)
  for _, c in ipairs(list) do
    it(c[1] .. " => " .. tostring(c[2]), function()
      local out, err = render(c[1], c[3] or DATA)
      assert.is_nil(err)
      assert.are.equal(c[2], out)
    end)
  end
end

local function errors(list)
  for _, c in ipairs(list) do
    it(c[1] .. " fails: " .. c[2], function()
      local out, err = render(c[1], c[3] or DATA)
      assert.is_nil(out)
      assert.is_string(err)
      assert.are.equal(c[2], err)
    end)
  end
end

describe("gotemplate text and fields", function()
  cases {
    { "", "" },
    { "plain text", "plain text" },
    { "{{ .Input.body.message }}", "hello world" },
    { "{{.Input.name}}-{{.Input.type}}", "ev-push" },
    { "{{ .Input.count }}", "3" },
    { "{{ .Input.body.f }}", "2.5" },
    { "{{ .Input.body.big }}", "1e+21" },
    { "{{ .Input.body.items }}", "[1 2 3]" },
    { "{{ .Input.body.m }}", "map[a:1 b:2]" },
    { "{{ .Input.body.objs }}", "[map[id:1] map[id:2]]" },
    { "{{ .Input.body.t }}", "true" },
    { "{{ .Input.missing }}", "<no value>" },
    { "{{ .Input.missing.deeper }}", "<no value>" },
    { "{{ .Input.body.nul }}", "<no value>" },
    { "{{ .Input.body.nested.deep.x }}", "y" },
    { "{{ . }}", "hello", "hello" },
    { "{{ $ }}", "7", 7 },
    { "{{ .Input.body.empty }}", "" },
    { "{{ print .Input.body.nul }}", "<nil>" },
    { "{{ .Input.body.nested | print }}", "map[deep:map[x:y]]" },
  }
end)

describe("gotemplate literals", function()
  cases {
    { "{{ 1 }}", "1" },
    { "{{ -1 }}", "-1" },
    { "{{ 1.5 }}", "1.5" },
    { "{{ 3.0 }}", "3" },
    { "{{ 1e3 }}", "1000" },
    { "{{ 0x1F }}", "31" },
    { "{{ 0o17 }}", "15" },
    { "{{ 0b101 }}", "5" },
    { "{{ 1_000 }}", "1000" },
    { "{{ 'a' }}", "97" },
    { "{{ '\\n' }}", "10" },
    { "{{ 0.1 }}", "0.1" },
    { "{{ 1e-7 }}", "1e-07" },
    { "{{ true }} {{ false }}", "true false" },
    { [[{{ "a\tb\u00e9\x41" }}]], "a\tbéA" },
    { "{{ `raw\\n` }}", "raw\\n" },
    { "{{ \"\" }}", "" },
  }
end)

describe("gotemplate trim markers and comments", function()
  cases {
    { "a  {{- 1 }}  b", "a1  b" },
    { "a  {{ 1 -}}  b", "a  1b" },
    { "a \n {{- 1 -}} \n b", "a1b" },
    { "{{- 3 }}", "3" },
    { "{{-3}}", "-3" },
    { "x{{/* comment */}}y", "xy" },
    { "x {{- /* comment */ -}} y", "xy" },
    { "{{/* multi\nline */}}z", "z" },
  }
end)

describe("gotemplate pipelines and variables", function()
  cases {
    { "{{ .Input.body.message | printf \"%s!\" }}", "hello world!" },
    { "{{ \"x\" | printf \"%s%s\" \"y\" }}", "yx" },
    { "{{ $x := .Input.name }}{{ $x }}", "ev" },
    { "{{ $x := 1 }}{{ $x = 2 }}{{ $x }}", "2" },
    { "{{ $x := 1 }}{{ if true }}{{ $x = 3 }}{{ end }}{{ $x }}", "3" },
    { "{{ $x := 1 }}{{ if true }}{{ $x := 5 }}{{ $x }}{{ end }}{{ $x }}", "51" },
    { "{{ with $x := .Input.name }}{{ $x }}{{ . }}{{ end }}", "evev" },
    { "{{ (print \"a\") }}", "a" },
    { "{{ (index .Input.body.objs 1).id }}", "2" },
    { "{{ $o := index .Input.body.objs 0 }}{{ $o.id }}", "1" },
    { "{{ $.Input.name }}", "ev" },
    { "{{ with .Input.body }}{{ $.Input.name }}{{ end }}", "ev" },
    { "{{ print (print 1 2) 3 }}", "1 23" },
    { "{{ print 1 (print 2) 3 }}", "123" },
    { "{{ $x := \"a\" }}{{ $y := \"b\" }}{{ print $x $y }}", "ab" },
  }
end)

describe("gotemplate if / else / with", function()
  cases {
    { "{{ if eq .Input.type \"push\" }}yes{{ else }}no{{ end }}", "yes" },
    { "{{ if eq .Input.type \"pull\" }}yes{{ else }}no{{ end }}", "no" },
    { "{{ if .Input.missing }}a{{ else if .Input.count }}b{{ else }}c{{ end }}", "b" },
    { "{{ if false }}a{{ else if false }}b{{ else }}c{{ end }}", "c" },
    { "{{ if .Input.body.empty }}t{{ else }}f{{ end }}", "f" },
    { "{{ if .Input.body.zero }}t{{ else }}f{{ end }}", "f" },
    { "{{ if .Input.body.nul }}t{{ else }}f{{ end }}", "f" },
    { "{{ if .Input.body.items }}t{{ else }}f{{ end }}", "t" },
    { "{{ if .Input.body.m }}t{{ else }}f{{ end }}", "t" },
    { "{{ if list }}t{{ else }}f{{ end }}", "f" },
    { "{{ with .Input.body.nested }}{{ .deep.x }}{{ end }}", "y" },
    { "{{ with .Input.missing }}x{{ else }}none{{ end }}", "none" },
    { "{{ with .Input.missing }}x{{ else with .Input.name }}{{ . }}{{ end }}", "ev" },
    { "{{ if and .Input.count .Input.name }}ok{{ end }}", "ok" },
    { "{{ if or .Input.missing .Input.body.empty }}ok{{ else }}no{{ end }}", "no" },
    { "{{ if not .Input.missing }}ok{{ end }}", "ok" },
  }
end)

describe("gotemplate range", function()
  cases {
    { "{{ range .Input.body.items }}{{ . }},{{ end }}", "1,2,3," },
    { "{{ range $i, $e := .Input.body.items }}{{ $i }}:{{ $e }} {{ end }}", "0:1 1:2 2:3 " },
    { "{{ range $e := .Input.body.names }}{{ $e }}{{ end }}", "ba" },
    { "{{ range $k, $v := .Input.body.m }}{{ $k }}={{ $v }};{{ end }}", "a=1;b=2;" },
    { "{{ range .Input.body.m }}{{ . }}{{ end }}", "12" },
    { "{{ range .Input.missing }}x{{ else }}empty{{ end }}", "empty" },
    { "{{ range list }}x{{ else }}empty{{ end }}", "empty" },
    { "{{ range .Input.body.items }}{{ if eq . 2 }}{{ break }}{{ end }}{{ . }}{{ end }}", "1" },
    { "{{ range .Input.body.items }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ . }}{{ end }}", "13" },
    { "{{ range 3 }}{{ . }}{{ end }}", "012" },
    { "{{ range .Input.body.objs }}{{ .id }}{{ $.Input.name }}{{ end }}", "1ev2ev" },
    { "{{ range $i, $o := .Input.body.objs }}{{ range $.Input.body.names }}{{ $i }}{{ . }}{{ end }}{{ end }}", "0b0a1b1a" },
    { "{{ $n := 0 }}{{ range .Input.body.items }}{{ $n = add $n . }}{{ end }}{{ $n }}", "6" },
  }
end)

describe("gotemplate define / template / block", function()
  cases {
    { "{{ define \"T\" }}[{{ . }}]{{ end }}{{ template \"T\" .Input.name }}", "[ev]" },
    { "{{ template \"T\" 1 }}{{ define \"T\" }}<{{ . }}>{{ end }}", "<1>" },
    { "{{ define \"T\" }}{{ $ }}{{ end }}{{ template \"T\" 5 }}", "5" },
    { "{{ define \"T\" }}{{ . }}{{ end }}{{ template \"T\" }}", "<no value>" },
    { "{{ block \"B\" .Input.name }}b:{{ . }}{{ end }}", "b:ev" },
    { "{{ define \"rec\" }}{{ if gt . 0 }}{{ . }}{{ template \"rec\" (sub . 1) }}{{ end }}{{ end }}{{ template \"rec\" 3 }}", "321" },
  }
end)

describe("gotemplate builtins", function()
  cases {
    { "{{ len .Input.body.items }}", "3" },
    { "{{ len .Input.body.m }}", "2" },
    { "{{ len \"héllo\" }}", "6" },
    { "{{ index .Input.body.items 0 }}", "1" },
    { "{{ index .Input.body.m \"b\" }}", "2" },
    { "{{ index .Input.body.m \"zz\" }}", "<no value>" },
    { "{{ index .Input.body.objs 1 \"id\" }}", "2" },
    { "{{ index \"abc\" 1 }}", "98" },
    { "{{ index .Input.body.items }}", "[1 2 3]" },
    { "{{ slice \"abcdef\" 1 3 }}", "bc" },
    { "{{ slice .Input.body.items 1 }}", "[2 3]" },
    { "{{ print 1 2 }}", "1 2" },
    { "{{ print \"a\" \"b\" }}", "ab" },
    { "{{ print \"a\" 1 2 \"b\" }}", "a1 2b" },
    { "{{ println 1 \"a\" }}", "1 a\n" },
    { "{{ printf \"%d-%s\" 5 \"x\" }}", "5-x" },
    { "{{ printf \"%v %v %v\" .Input.body.items .Input.body.m .Input.body.nul }}", "[1 2 3] map[a:1 b:2] <nil>" },
    { "{{ printf \"%q\" \"a\\\"b\" }}", "\"a\\\"b\"" },
    { "{{ printf \"%.2f\" 3.14159 }}", "3.14" },
    { "{{ printf \"%5s|%-5s|\" \"ab\" \"cd\" }}", "   ab|cd   |" },
    { "{{ printf \"%x %X %o %b\" 255 255 8 5 }}", "ff FF 10 101" },
    { "{{ printf \"%x\" \"hi\" }}", "6869" },
    { "{{ printf \"%t\" true }}", "true" },
    { "{{ printf \"%05d|%+d|%e\" 42 3 1234.5678 }}", "00042|+3|1.234568e+03" },
    { "{{ printf \"%g %g\" 1e6 123456.0 }}", "1e+06 123456" },
    { "{{ printf \"%c%c\" 72 105 }}", "Hi" },
    { "{{ printf \"%d\" }}", "%!d(MISSING)" },
    { "{{ printf \"%d\" \"x\" }}", "%!d(string=x)" },
    { "{{ printf \"x\" 1 }}", "x%!(EXTRA float64=1)" },
    { "{{ printf \"%s\" .Input.missing }}", "%!s(<nil>)" },
    { "{{ printf \"100%%\" }}", "100%" },
    { "{{ printf \"%T %T\" \"a\" .Input.body.items }}", "string []interface {}" },
    { "{{ printf \"%s\" .Input.body.items }}", "[1 2 3]" },
    { "{{ eq 1 1 }} {{ eq 1 2 }} {{ eq \"a\" \"a\" }}", "true false true" },
    { "{{ eq .Input.count 3 }}", "true" },
    { "{{ eq .Input.type \"x\" \"push\" }}", "true" },
    { "{{ eq .Input.missing \"x\" }}", "false" },
    { "{{ eq .Input.missing nil }}", "true" },
    { "{{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt 3 2 }} {{ ge 1 2 }}", "true true true true false" },
    { "{{ lt \"a\" \"b\" }}", "true" },
    { "{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 \"\" }} {{ or 0 5 }}", "0 2  5" },
    { "{{ not 0 }} {{ not \"x\" }}", "true false" },
    { "{{ html \"<a href='x'>&\\\"\" }}", "&lt;a href=&#39;x&#39;&gt;&amp;&#34;" },
    { "{{ js \"it's <b>\" }}", "it\\'s \\u003Cb\\u003E" },
    { "{{ urlquery \"a b&c=d/é\" }}", "a+b%26c%3Dd%2F%C3%A9" },
    { "{{ \"<x>\" | html }}", "&lt;x&gt;" },
  }
end)

describe("gotemplate Argo templates", function()
  cases {
    { "{{ .Input.body.message | upper }}", "HELLO WORLD" },
    { "{{ if eq .Input.type \"push\" }}yes{{ else }}no{{ end }}", "yes" },
    { "{{ printf \"%s-%d\" .Input.name (int .Input.count) }}", "ev-3" },
    { "{{ .Input.body.m | toJson }}", "{\"a\":1,\"b\":2}" },
    { "{{ index .Input.body.items 0 }}", "1" },
    { "{{ .Input.body.message | replace \" \" \"-\" | lower }}", "hello-world" },
    { "{{ .Input.missing | default \"fallback\" }}", "fallback" },
    { "{{ .Input.body.names | join \",\" }}", "b,a" },
    { "{{ .Input | b64enc | b64dec }}", "map[body:map[big:1e+21 empty: f:2.5 items:[1 2 3] m:map[a:1 b:2] message:hello world n:3 names:[b a] nested:map[deep:map[x:y]] nul:<nil> objs:[map[id:1] map[id:2]] t:true zero:0] count:3 name:ev type:push]" },
    { "{{ gt (len .Input.body.items) 2 }}", "true" },
    { "{{ regexMatch \"^hel+o\" .Input.body.message }}", "true" },
    { "{{ .Input.body.message | trunc 5 }}", "hello" },
  }
  it("works with a string .Input (data filter template)", function()
    assert.are.equal("ABC", (render("{{ .Input | upper }}", { Input = "abc" })))
  end)
end)

describe("gotemplate parse errors", function()
  local function perr(text, msg)
    it(text .. " -> " .. msg, function()
      local t, err = tpl.compile(text, { name = "x" })
      assert.is_nil(t)
      assert.are.equal(msg, err)
    end)
  end
  perr("{{ nope }}", 'template: x:1:3: function "nope" not defined')
  perr("hello {{ .A | nope }}", 'template: x:1:14: function "nope" not defined')
  perr("{{ .A", "template: x:1:0: unclosed action")
  perr("{{ if .A }}x", "template: x:1:12: unexpected EOF")
  perr("{{ end }}", "template: x:1:3: unexpected {{end}}")
  perr("{{ else }}", "template: x:1:3: unexpected {{else}}")
  perr("{{ }}", "template: x:1:3: missing value for command")
  perr("{{ if }}{{ end }}", "template: x:1:6: missing value for if")
  perr("{{ $x }}", 'template: x:1:3: undefined variable "$x"')
  perr("{{ \"abc }}", "template: x:1:3: unterminated quoted string")
  perr("{{ `abc }}", "template: x:1:3: unterminated raw quoted string")
  perr("{{ 3x }}", 'template: x:1:3: bad number syntax: "3x"')
  perr("{{ /* x */ }}", "template: x:1:3: bad character U+002F '/'")
  perr("{{/* x }}", "template: x:1:0: unclosed comment")
  perr("{{/* x */ 1 }}", "template: x:1:0: comment ends before closing delimiter")
  perr("{{ break }}", "template: x:1:3: {{break}} outside {{range}}")
  perr("{{ continue }}", "template: x:1:3: {{continue}} outside {{range}}")
  perr("{{ 1 | 2 }}", "template: x:1:9: non executable command in pipeline stage 2")
  perr("{{ (1 }}", "template: x:1:6: unclosed left paren")
  perr("{{ 1) }}", "template: x:1:4: unexpected right paren")
  perr("{{ template .X }}", 'template: x:1:12: unexpected ".X" in template clause')
  perr("{{ if 1 }}{{ else }}{{ else }}{{ end }}", "template: x:1:23: expected end; found {{else}}")
  perr("{{ define \"a\" }}1{{ end }}{{ define \"a\" }}2{{ end }}", 'template: x:1:26: template: multiple definition of template "a"')
  perr("a\n{{ nope }}", 'template: x:2:3: function "nope" not defined')
  perr("{{ 1.x }}", 'template: x:1:3: bad number syntax: "1.x"')
  perr("{{ \"a\".b }}", 'template: x:1:6: unexpected . after term "\\"a\\""')
  perr("{{ $x := 1 , }}", 'template: x:1:11: unexpected "," in operand')
end)

describe("gotemplate runtime errors", function()
  errors {
    { "{{ index .Input.body.items 5 }}", 'template: x:1:3: executing "x" at <index .Input.body.items 5>: error calling index: index out of range: 5' },
    { "{{ index .Input.body.items \"a\" }}", 'template: x:1:3: executing "x" at <index .Input.body.items "a">: error calling index: cannot index slice/array with type string' },
    { "{{ index .Input.missing 1 }}", 'template: x:1:3: executing "x" at <index .Input.missing 1>: error calling index: index of untyped nil' },
    { "{{ index 3 1 }}", 'template: x:1:3: executing "x" at <index 3 1>: error calling index: can\'t index item of type float64' },
    { "{{ .Input.body.nul.x }}", 'template: x:1:3: executing "x" at <.Input.body.nul.x>: nil pointer evaluating interface {}.x' },
    { "{{ .Input.body.items.x }}", 'template: x:1:3: executing "x" at <.Input.body.items.x>: can\'t evaluate field x in type []interface {}' },
    { "{{ .Input.name.x }}", 'template: x:1:3: executing "x" at <.Input.name.x>: can\'t evaluate field x in type string' },
    { "{{ lt 1 \"a\" }}", 'template: x:1:3: executing "x" at <lt 1 "a">: error calling lt: incompatible types for comparison' },
    { "{{ lt true false }}", 'template: x:1:3: executing "x" at <lt true false>: error calling lt: invalid type for comparison' },
    { "{{ eq .Input.body.items .Input.body.items }}", 'template: x:1:3: executing "x" at <eq .Input.body.items .Input.body.items>: error calling eq: non-comparable type [1 2 3]: []interface {}' },
    { "{{ eq 1 }}", 'template: x:1:3: executing "x" at <eq 1>: error calling eq: missing argument for comparison' },
    { "{{ len 3 }}", 'template: x:1:3: executing "x" at <len 3>: error calling len: len of type float64' },
    { "{{ not 1 2 }}", 'template: x:1:3: executing "x" at <not 1 2>: wrong number of args for not: want 1 got 2' },
    { "{{ upper \"a\" \"b\" }}", 'template: x:1:3: executing "x" at <upper "a" "b">: wrong number of args for upper: want 1 got 2' },
    { "{{ printf }}", 'template: x:1:3: executing "x" at <printf>: wrong number of args for printf: want at least 1 got 0' },
    { "{{ .Input.count | upper }}", 'template: x:1:18: executing "x" at <upper>: wrong type for value; expected string; got float64' },
    { "{{ template \"nope\" }}", 'template: x:1:0: executing "x" at <{{ template "nope" }}>: template "nope" not defined' },
    { "{{ range .Input.name }}{{ end }}", 'template: x:1:0: executing "x" at <.Input.name>: range can\'t iterate over ev' },
    { "{{ nil }}", 'template: x:1:3: executing "x" at <nil>: nil is not a command' },
    { "{{ .Input.name 1 }}", 'template: x:1:3: executing "x" at <.Input.name 1>: name is not a method but has arguments' },
    { "{{ 1 2 }}", 'template: x:1:3: executing "x" at <1 2>: can\'t give argument to non-function 1' },
    { "{{ slice \"abc\" 2 1 }}", 'template: x:1:3: executing "x" at <slice "abc" 2 1>: error calling slice: runtime error: slice bounds out of range [2:1]' },
    { "{{ define \"T\" }}{{ index . 9 }}{{ end }}{{ template \"T\" .Input.body.items }}", 'template: x:1:19: executing "T" at <index . 9>: error calling index: index out of range: 9' },
    { "{{ fail \"boom\" }}", 'template: x:1:3: executing "x" at <fail "boom">: error calling fail: boom' },
  }
  it("never raises: errors come back as values", function()
    local t = assert(tpl.compile("{{ index . 1 }}"))
    local ok, out, err = pcall(t.render, t, {})
    assert.is_true(ok)
    assert.is_nil(out)
    assert.is_string(err)
  end)
end)

describe("gotemplate API", function()
  it("exposes the generated Lua as t.source", function()
    local t = assert(tpl.compile("{{ .Input.body.x }}", { name = "p" }))
    assert.is_string(t.source)
    assert.truthy(t.source:find('fld(fld(fld(dot, "Input"', 1, true))
    assert.truthy(t.source:find("{{ .Input.body.x }}", 1, true))
  end)
  it("renders the same compiled template many times", function()
    local t = assert(tpl.compile("{{ range .Input }}{{ . }}{{ end }}|{{ len .Input }}"))
    assert.are.equal("12|2", t:render({ Input = { 1, 2 } }))
    assert.are.equal("abc|3", t:render({ Input = { "a", "b", "c" } }))
    assert.are.equal("|0", t:render({ Input = {} }))
  end)
  it("accepts extra functions", function()
    local t = assert(tpl.compile("{{ twice .x }}", { funcs = { twice = function(s) return s .. s end } }))
    assert.are.equal("abab", t:render({ x = "ab" }))
  end)
  it("reports compile errors with the template name", function()
    local t, err = tpl.compile("{{ if }}")
    assert.is_nil(t)
    assert.truthy(err:find("^template: template:1:"))
  end)
  it("keeps generated code free of globals", function()
    local t = assert(tpl.compile("{{ range $i, $e := . }}{{ $i }}{{ end }}"))
    assert.are.equal("01", t:render({ "a", "b" }))
  end)
  it("renders a simple field fast", function()
    local t = assert(tpl.compile("{{ .Input.body.x }}"))
    local d = { Input = { body = { x = "v" } } }
    local n = 200000
    local c = os.clock()
    for _ = 1, n do t:render(d) end
    local per = (os.clock() - c) / n
    assert.is_true(per < 2e-6, "render took " .. per * 1e9 .. " ns")
  end)
end)
