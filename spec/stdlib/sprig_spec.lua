-- spec/stdlib/sprig_spec.lua: Sprig v3 functions (herald.sprig) through herald.gotemplate.
-- Expected values are ported from Masterminds/sprig's *_test.go where they apply.
require "helpers.stdlib"
local tpl = require "herald.gotemplate"
local sprig = require "herald.sprig"
local cjson = require "cjson"
local hjson = require "herald.json" -- decodes as Herald does: empty arrays marked

local function render(text, data)
  local t, err = tpl.compile(text, { name = "s" })
  if not t then return nil, err end
  return t:render(data)
end

local function cases(name, list)
  describe(name, function()
    for _, c in ipairs(list) do
      it(c[1] .. " => " .. tostring(c[2]), function()
        local out, err = render(c[1], c[3])
        assert.is_nil(err)
        assert.are.equal(c[2], out)
      end)
    end
  end)
end

local function failing(name, list)
  describe(name, function()
    for _, c in ipairs(list) do
      it(c[1] .. " fails", function()
        local out, err = render(c[1], c[3])
        assert.is_nil(out)
        assert.truthy(err and err:find(c[2], 1, true), err)
      end)
    end
  end)
end

cases("sprig strings", {
  { [[{{ trim "  5.00 \n" }}]], "5.00" },
  { [[{{ trimAll "$" "$5.00$" }}]], "5.00" },
  { [[{{ trimall "$" "$5.00" }}]], "5.00" },
  { [[{{ trimPrefix "-" "-5" }}]], "5" },
  { [[{{ trimSuffix "-" "5-" }}]], "5" },
  { [[{{ upper "hello" }} {{ lower "HELLO" }}]], "HELLO hello" },
  { [[{{ title "hello world" }}]], "Hello World" },
  { [[{{ untitle "Hello World" }}]], "hello world" },
  { [[{{ repeat 3 "ab" }}]], "ababab" },
  { [[{{ substr 1 4 "fooba" }}]], "oob" },
  { [[{{ substr 0 2 "hello" }}]], "he" },
  { [[{{ substr -1 2 "hello" }}]], "he" },
  { [[{{ substr 2 -1 "hello" }}]], "llo" },
  { [[{{ substr 0 9 "abc" }}]], "abc" },
  { [[{{ nospace " h e l l o " }}]], "hello" },
  { [[{{ trunc 5 "Hello World" }}]], "Hello" },
  { [[{{ trunc -5 "Hello World" }}]], "World" },
  { [[{{ trunc 50 "Hello" }}]], "Hello" },
  { [[{{ abbrev 5 "hello world" }}]], "he..." },
  { [[{{ abbrev 20 "hello world" }}]], "hello world" },
  { [[{{ abbrevboth 5 10 "1234 5678 9123" }}]], "...5678..." },
  { [[{{ initials "First Try" }}]], "FT" },
  { [[{{ contains "cat" "catch" }} {{ contains "dog" "catch" }}]], "true false" },
  { [[{{ hasPrefix "cat" "catch" }} {{ hasSuffix "ch" "catch" }}]], "true true" },
  { [[{{ quote "a" "b" }}]], [["a" "b"]] },
  { [[{{ quote 1 }}]], [["1"]] },
  { [[{{ quote "a\"b" }}]], [["a\"b"]] },
  { [[{{ squote "a" 2 }}]], "'a' '2'" },
  { [[{{ cat "a" "b" 3 }}]], "a b 3" },
  { [[{{ cat "a" .nothing "b" }}]], "a b", {} },
  { [[{{ indent 2 "a\nb" }}]], "  a\n  b" },
  { [[{{ nindent 2 "a" }}]], "\n  a" },
  { [[{{ "I Am Henry VIII" | replace " " "-" }}]], "I-Am-Henry-VIII" },
  { [[{{ plural "one" "many" 1 }} {{ plural "one" "many" 2 }}]], "one many" },
  { [[{{ snakecase "FirstName" }}]], "first_name" },
  { [[{{ snakecase "HTTPServer" }}]], "http_server" },
  { [[{{ snakecase "NoHTTPS" }}]], "no_https" },
  { [[{{ snakecase "GO_PATH" }}]], "go_path" },
  { [[{{ snakecase "GO PATH" }}]], "go_path" },
  { [[{{ snakecase "GO-PATH" }}]], "go_path" },
  { [[{{ camelcase "http_server" }}]], "HttpServer" },
  { [[{{ camelcase "_camel_case" }}]], "_CamelCase" },
  { [[{{ camelcase "no_https" }}]], "NoHttps" },
  { [[{{ camelcase "_complex__case_" }}]], "_Complex_Case_" },
  { [[{{ camelcase "all" }}]], "All" },
  { [[{{ kebabcase "FirstName" }}]], "first-name" },
  { [[{{ kebabcase "HTTPServer" }}]], "http-server" },
  { [[{{ swapcase "This Is A.Test" }}]], "tHIS iS a.tEST" },
  { [[{{ wrap 5 "Hello World" }}]], "Hello\nWorld" },
  { [[{{ wrapWith 5 "\t" "Hello World" }}]], "Hello\tWorld" },
  { [[{{ wrapWith 3 "|" "abcdefgh" }}]], "abc|def|gh" },
  { [[{{ $v := split "$" "a$b$c" }}{{ $v._0 }}{{ $v._2 }}]], "ac" },
  { [[{{ splitList "," "a,b,c" }}]], "[a b c]" },
  { [[{{ $v := splitn "$" 2 "a$b$c" }}{{ $v._1 }}]], "b$c" },
  { [[{{ list "a" "b" | join "-" }}]], "a-b" },
  { [[{{ list 1 2 nil 3 | join "," }}]], "1,2,3" },
  { [[{{ join "," "abc" }}]], "abc" },
  { [[{{ list "c" "a" "b" | sortAlpha }}]], "[a b c]" },
  { [[{{ toString 1.5 }} {{ toString true }}]], "1.5 true" },
  { [[{{ list 1 "a" | toStrings }}]], "[1 a]" },
  { [[{{ len (shuffle "abcd") }}]], "4" },
  { [[{{ len (randAlphaNum 10) }} {{ len (randAlpha 3) }} {{ len (randNumeric 4) }} {{ len (randAscii 5) }}]], "10 3 4 5" },
  { [[{{ regexMatch "^[0-9]+$" (randNumeric 8) }}]], "true" },
  { [[{{ hello }}]], "Hello!" },
})

cases("sprig defaults and flow", {
  { [[{{ default "foo" .nothing }}]], "foo", {} },
  { [[{{ default "foo" "" }}]], "foo" },
  { [[{{ default "foo" "bar" }}]], "bar" },
  { [[{{ default 5 0 }}]], "5" },
  { [[{{ .x | default "d" }}]], "d", { x = cjson.null } },
  { [[{{ empty "" }} {{ empty 0 }} {{ empty "x" }} {{ empty list }} {{ empty (list 1) }} {{ empty false }}]],
    "true true false true false true" },
  { [[{{ coalesce 0 "" "x" "y" }}]], "x" },
  { [[{{ coalesce 0 "" }}]], "<no value>" },
  { [[{{ all 1 "a" true }} {{ all 1 "" }}]], "true false" },
  { [[{{ any 0 "" "x" }} {{ any 0 "" }}]], "true false" },
  { [[{{ ternary "yes" "no" true }} {{ false | ternary "yes" "no" }}]], "yes no" },
  { [[{{ fromJson "{\"a\":{\"b\":[1,2]}}" | toJson }}]], [[{"a":{"b":[1,2]}}]] },
  { [[{{ (fromJson "{\"a\":5}").a }}]], "5" },
  { [[{{ fromJson "not json" }}]], "<no value>" },
  { [[{{ dict "b" 2 "a" "x<y>" | toJson }}]], [[{"a":"x\u003cy\u003e","b":2}]] },
  { [[{{ dict "a" "x<y>" | toRawJson }}]], [[{"a":"x<y>"}]] },
  { [[{{ list 1 2.5 true nil "s" | toJson }}]], [=[[1,2.5,true,null,"s"]]=] },
  { [[{{ dict "a" (list 1 2) "b" (dict) | toPrettyJson }}]], "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}" },
  { [[{{ mustToJson (dict "k" "v") }}]], [[{"k":"v"}]] },
  { [[{{ toJson "a\nb\t\"c\"" }}]], [["a\nb\t\"c\""]] },
  { [[{{ toJson 1e21 }} {{ toJson 0.0000001 }} {{ toJson 123456789 }}]], "1e+21 1e-7 123456789" },
  { [[{{ toJson .x }}]], [[{"n":3,"s":"t"}]], { x = { n = 3, s = "t" } } },
})

cases("sprig type conversion", {
  { [[{{ atoi "42" }} {{ atoi "x" }}]], "42 0" },
  { [[{{ int "42" }} {{ int 3.9 }} {{ int "0x1F" }} {{ int "012" }} {{ int "x" }} {{ int true }}]], "42 3 31 10 0 1" },
  { [[{{ int64 "-7" }} {{ int64 -2.5 }}]], "-7 -2" },
  { [[{{ float64 "1.5" }} {{ float64 "x" }} {{ float64 2 }}]], "1.5 0 2" },
  { [[{{ toDecimal "0777" }}]], "511" },
  { [[{{ typeOf "a" }} {{ typeOf 1.5 }} {{ typeOf (list) }} {{ typeOf (dict "a" 1) }}]],
    "string float64 []interface {} map[string]interface {}" },
  { [[{{ kindOf "a" }} {{ kindOf (list 1) }} {{ kindOf (dict "a" 1) }} {{ kindIs "string" "x" }}]], "string slice map true" },
  { [[{{ typeIs "string" "x" }} {{ deepEqual (list 1 2) (list 1 2) }}]], "true true" },
})

cases("sprig encoding and hashes", {
  { [[{{ b64enc "hello" }}]], "aGVsbG8=" },
  { [[{{ b64enc "" }}{{ b64enc "a" }} {{ b64enc "ab" }}]], "YQ== YWI=" },
  { [[{{ b64dec "aGVsbG8=" }}]], "hello" },
  { [[{{ b64dec "!!!!" }}]], "illegal base64 data at input byte 0" },
  { [[{{ b32enc "hello" }}]], "NBSWY3DP" },
  { [[{{ b32enc "a" }}]], "ME======" },
  { [[{{ b32dec "NBSWY3DP" }}]], "hello" },
  { [[{{ b32dec "ME======" }}]], "a" },
  { [[{{ sha1sum "abc" }}]], "a9993e364706816aba3e25717850c26c9cd0d89d" },
  { [[{{ sha256sum "abc" }}]], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
  { [[{{ sha256sum "" }}]], "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
  { [[{{ sha1sum "The quick brown fox jumps over the lazy dog" }}]], "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12" },
  { [[{{ adler32sum "Wikipedia" }}]], "300286872" },
  { [[{{ regexMatch "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$" uuidv4 }}]], "true" },
  { [[{{ ne uuidv4 uuidv4 }}]], "true" },
  { [[{{ len (b64dec (randBytes 12)) }}]], "12" },
})

cases("sprig lists", {
  { [[{{ list 1 2 3 }}]], "[1 2 3]" },
  { [[{{ tuple "a" "b" }}]], "[a b]" },
  { [[{{ first (list 1 2 3) }} {{ last (list 1 2 3) }}]], "1 3" },
  { [[{{ first list }}]], "<no value>" },
  { [[{{ rest (list 1 2 3) }} {{ initial (list 1 2 3) }}]], "[2 3] [1 2]" },
  { [[{{ append (list 1 2) 3 }} {{ push (list 1) 2 }} {{ prepend (list 2) 1 }}]], "[1 2 3] [1 2] [1 2]" },
  { [[{{ concat (list 1 2) (list 3) list }}]], "[1 2 3]" },
  { [[{{ reverse (list 1 2 3) }}]], "[3 2 1]" },
  { [[{{ uniq (list 1 2 1 "a" "a") }}]], "[1 2 a]" },
  { [[{{ without (list 1 2 3 2) 2 }}]], "[1 3]" },
  { [[{{ has 2 (list 1 2) }} {{ has 5 (list 1 2) }} {{ has 1 .nothing }}]], "true false false", {} },
  { [[{{ compact (list 1 "" 0 "a" nil) }}]], "[1 a]" },
  { [[{{ slice (list 1 2 3 4) 1 3 }} {{ slice (list 1 2 3) }} {{ slice (list 1 2 3) 2 }}]], "[2 3] [1 2 3] [3]" },
  { [[{{ chunk 2 (list 1 2 3 4 5) }}]], "[[1 2] [3 4] [5]]" },
  { [[{{ until 3 }} {{ untilStep 0 10 4 }} {{ untilStep 5 0 -2 }}]], "[0 1 2] [0 4 8] [5 3 1]" },
  { [[{{ seq 3 }}|{{ seq 2 4 }}|{{ seq 0 2 6 }}|{{ seq 3 1 }}]], "1 2 3|2 3 4|0 2 4 6|3 2 1" },
  { [[{{ range $i, $e := list "a" "b" }}{{ $i }}{{ $e }}{{ end }}]], "0a1b" },
  { [[{{ mustFirst (list 9) }} {{ mustLast (list 8 9) }}]], "9 9" },
  { [[{{ .l | first }}]], "x", { l = { "x", "y" } } },
})

cases("sprig dicts", {
  { [[{{ $d := dict "a" 1 "b" 2 }}{{ $d.a }}{{ get $d "b" }}{{ get $d "zz" }}]], "12" },
  { [[{{ $d := dict "a" 1 }}{{ $_ := set $d "b" 2 }}{{ $d }}]], "map[a:1 b:2]" },
  { [[{{ $d := dict "a" 1 "b" 2 }}{{ $_ := unset $d "a" }}{{ $d }}]], "map[b:2]" },
  { [[{{ hasKey (dict "a" 1) "a" }} {{ hasKey (dict "a" 1) "b" }}]], "true false" },
  { [[{{ keys (dict "b" 1 "a" 2) }} {{ values (dict "b" 1 "a" 2) }}]], "[a b] [2 1]" },
  { [[{{ keys (dict "b" 1) (dict "a" 2) | sortAlpha }}]], "[a b]" },
  { [[{{ pluck "a" (dict "a" 1) (dict "b" 2) (dict "a" 3) }}]], "[1 3]" },
  { [[{{ pick (dict "a" 1 "b" 2 "c" 3) "a" "c" }}]], "map[a:1 c:3]" },
  { [[{{ omit (dict "a" 1 "b" 2 "c" 3) "a" "c" }}]], "map[b:2]" },
  { [[{{ merge (dict "a" 1 "n" (dict "x" 1)) (dict "a" 2 "b" 3 "n" (dict "y" 2)) }}]], "map[a:1 b:3 n:map[x:1 y:2]]" },
  { [[{{ mergeOverwrite (dict "a" 1) (dict "a" 2 "b" 3) }}]], "map[a:2 b:3]" },
  { [[{{ dig "a" "b" "c" "def" (dict "a" (dict "b" (dict "c" "found"))) }}]], "found" },
  { [[{{ dig "a" "x" "def" (dict "a" (dict "b" 1)) }}]], "def" },
  { [[{{ dig "user" "name" "anon" .Input }}]], "sam", { Input = { user = { name = "sam" } } } },
  { [[{{ $c := deepCopy (dict "a" (list 1)) }}{{ $c }}]], "map[a:[1]]" },
  { [[{{ dict "a" }}]], "map[a:]" },
  { [[{{ dict 1 2 }}]], "map[1:2]" },
})

cases("sprig math", {
  { [[{{ add 1 2 3 }} {{ add1 5 }} {{ sub 5 7 }} {{ mul 2 3 4 }}]], "6 6 -2 24" },
  { [[{{ div 7 2 }} {{ div -7 2 }} {{ mod 7 3 }} {{ mod -7 3 }}]], "3 -3 1 -1" },
  { [[{{ add 1.9 1 }} {{ add "2" 1 }}]], "2 3" },
  { [[{{ max 1 5 3 }} {{ min 4 2 9 }} {{ biggest 1 2 }}]], "5 2 2" },
  { [[{{ maxf 1.5 2.5 }} {{ minf 1.5 -2.5 }}]], "2.5 -2.5" },
  { [[{{ floor 1.7 }} {{ ceil 1.2 }} {{ floor "-1.5" }}]], "1 2 -2" },
  { [[{{ round 123.555555 3 }} {{ round 123.5 0 }} {{ round 123.4 0 }} {{ round 123.55 1 0.6 }}]], "123.556 124 123 123.5" },
  { [[{{ addf 1.1 2.2 }} {{ subf 1.5 0.3 }} {{ mulf 1.1 3 }} {{ divf 10 4 }}]], "3.3 1.2 3.3 2.5" },
  { [[{{ add .Input.n 1 }}]], "4", { Input = { n = 3 } } },
  { [[{{ int (randInt 1 2) }}]], "1" },
})

local T0 = sprig._new_time(1136214245, 123456789) -- 2006-01-02 15:04:05.123456789 UTC (Mon)
cases("sprig dates", {
  { [[{{ date "2006-01-02 15:04:05" .t }}]], "2006-01-02 15:04:05", { t = T0 } },
  { [[{{ date "Mon Jan _2 3:04PM MST" .t }}]], "Mon Jan  2 3:04PM UTC", { t = T0 } },
  { [[{{ date "Monday, January 2 2006 03:04:05.000 -07:00 Z07:00" .t }}]],
    "Monday, January 2 2006 03:04:05.123 +00:00 Z", { t = T0 } },
  { [[{{ date "06/1/2 .999999 002" .t }}]], "06/1/2 .123456 002", { t = T0 } },
  { [[{{ .t }}]], "2006-01-02 15:04:05.123456789 +0000 UTC", { t = T0 } },
  { [[{{ date "2006-01-02" 0 }}]], "1970-01-01" },
  { [[{{ date "2006-01-02T15:04:05Z07:00" 1700000000 }}]], "2023-11-14T22:13:20Z" },
  { [[{{ dateInZone "2006-01-02 15:04 MST" .t "UTC" }}]], "2006-01-02 15:04 UTC", { t = T0 } },
  { [[{{ htmlDate .t }}]], "2006-01-02", { t = T0 } },
  { [[{{ toDate "2006-01-02" "2017-12-31" | date "02/01/2006" }}]], "31/12/2017" },
  { [[{{ toDate "2006-01-02T15:04:05Z07:00" "2020-02-29T23:59:58+02:00" | unixEpoch }}]], "1583013598" },
  { [[{{ toDate "Jan 2, 2006 at 3:04pm" "Feb 3, 2013 at 7:54pm" | date "2006-01-02 15:04" }}]], "2013-02-03 19:54" },
  { [[{{ toDate "2006-01-02" "bad" }}]], "0001-01-01 00:00:00 +0000 UTC" },
  { [[{{ unixEpoch .t }}]], "1136214245", { t = T0 } },
  { [[{{ dateModify "1h30m" .t | date "15:04" }}]], "16:34", { t = T0 } },
  { [[{{ dateModify "-24h" .t | date "2006-01-02" }}]], "2006-01-01", { t = T0 } },
  { [[{{ dateModify "bogus" .t | date "15:04" }}]], "15:04", { t = T0 } },
  { [[{{ duration 95 }} {{ duration "3600" }} {{ duration 0 }} {{ duration 90061 }}]], "1m35s 1h0m0s 0s 25h1m1s" },
  { [[{{ durationRound "2h10m5s" }} {{ durationRound "400h" }} {{ durationRound "9000h" }} {{ durationRound "59s" }}]], "2h 16d 1y 59s" },
  { [[{{ ago now }}]], "0s" },
  { [[{{ regexMatch "^[0-9]{4}-[0-9]{2}-[0-9]{2}$" (now | date "2006-01-02") }}]], "true" },
  { [[{{ gt (now | unixEpoch | atoi) 1600000000 }}]], "true" },
  { [[{{ toJson .t }}]], [["2006-01-02T15:04:05.123456789Z"]], { t = T0 } },
})

cases("sprig regex", {
  { [[{{ regexMatch "^[a-z]+\\[[0-9]+\\]$" "adam[23]" }}]], "true" },
  { [[{{ regexMatch "x" "abc" }}]], "false" },
  { [[{{ regexFind "[a-zA-Z][1-9]" "abcd1234" }}]], "d1" },
  { [[{{ regexFind "z" "abc" }}]], "" },
  { [[{{ regexFindAll "[2,4,6,8]" "123456789" -1 }}]], "[2 4 6 8]" },
  { [[{{ regexFindAll "[2,4,6,8]" "123456789" 2 }}]], "[2 4]" },
  { [[{{ regexFindAll "a*" "baaab" -1 }}]], "[ aaa ]" },
  { [[{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "${1}W" }}]], "-W-xxW-" },
  { [[{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "$1W" }}]], "---" },
  { [[{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "[$0]" }}]], "-[ab]-[axxb]-" },
  { [[{{ regexReplaceAll "a*" "baaac" "X" }}]], "XbXcX" },
  { [[{{ regexReplaceAll "(\\w+)@(\\w+)" "me@host" "$2 at $$1" }}]], "host at $1" },
  { [[{{ regexReplaceAllLiteral "a(x*)b" "-ab-axxb-" "${1}" }}]], "-${1}-${1}-" },
  { [[{{ regexSplit "z+" "pizza" -1 }}]], "[pi a]" },
  { [[{{ regexSplit "z+" "pizza" 1 }}]], "[pizza]" },
  { [[{{ regexSplit "" "abc" -1 }}]], "[a b c]" },
  { [[{{ regexSplit "a" "banana" -1 }}]], "[b n n ]" },
  { [[{{ regexQuoteMeta "1.2+3" }}]], [[1\.2\+3]] },
  { [[{{ mustRegexMatch "^a" "abc" }}]], "true" },
  { [[{{ regexReplaceAll "^refs/heads/" .Input.ref "" }}]], "main", { Input = { ref = "refs/heads/main" } } },
  { [[{{ .Input.ref | regexReplaceAll "^refs/heads/" "" }}]], "", { Input = { ref = "refs/heads/main" } } },
})

cases("sprig paths", {
  { [[{{ base "/a/b/c.txt" }} {{ dir "/a/b/c.txt" }} {{ ext "c.tar.gz" }} {{ clean "/a/../b/./c/" }} {{ isAbs "/x" }}]],
    "c.txt /a/b .gz /b/c true" },
})

describe("sprig environment access", function()
  it("is not available: env and expandenv would leak the engine's environment", function()
    local t, err = require("herald.gotemplate").compile([[{{ env "HOME" }}]])
    assert.is_nil(t)
    assert.matches('function "env" not defined', err)
  end)
end)

failing("sprig errors", {
  { [[{{ upper 1 }}]], "wrong type for value; expected string; got float64" },
  { [[{{ upper .x }}]], "invalid value; expected string", {} },
  { [[{{ repeat "a" "b" }}]], "wrong type for value; expected int; got string" },
  { [[{{ first "abc" }}]], "error calling first: Cannot find first on type string" },
  { [[{{ concat (list 1) "x" }}]], "error calling concat: Cannot concat type string as list" },
  { [[{{ div 1 0 }}]], "error calling div: runtime error: integer divide by zero" },
  { [[{{ mustFromJson "nope" }}]], "error calling mustFromJson:" },
  { [[{{ regexMatch "(" "x" }}]], "error calling regexMatch: error parsing regexp:" },
  { [[{{ mustToDate "2006-01-02" "x" }}]], 'error calling mustToDate: parsing time "x" as "2006-01-02": cannot parse "x" as "2006"' },
  { [[{{ mustDateModify "x" now }}]], 'error calling mustDateModify: time: invalid duration "x"' },
  { [[{{ ternary 1 2 "x" }}]], "wrong type for value; expected bool; got string" },
  { [[{{ get (list 1) "a" }}]], "wrong type for value; expected map[string]interface {}; got []interface {}" },
  { [[{{ fail "stop here" }}]], "error calling fail: stop here" },
})

describe("sprig module", function()
  it("is a table of functions", function()
    for _, name in ipairs({ "upper", "toJson", "regexReplaceAll", "sha256sum", "dateModify", "dig" }) do
      assert.is_function(sprig[name])
    end
  end)
  it("returns JSON that cjson reads back", function()
    local s = sprig.toJson({ a = { 1, 2, { b = cjson.null } }, c = "x" })
    assert.are.same({ a = { 1, 2, { b = cjson.null } }, c = "x" }, hjson.decode(s))
  end)
end)
