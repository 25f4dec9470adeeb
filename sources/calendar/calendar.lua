-- sources/calendar/calendar.lua: the calendar event source's Lua half (the C is calendar.c): its
-- schema (Argo's CalendarEventSource). schedule, interval and timezone are checked with the
-- engine's own parsers (cron.c) when the schema runs inside herald.
local _M = {}

_M.what = "calendar event source"
-- not active_active: with replicas > 1 only the elected leader ticks (Argo's "AP" types)

function _M.schema(S)
  local str, bool, strings, object = S.str, S.bool, S.strings, S.object
  local engine_check, core = S.engine_check, S.core
  return object({
    schedule = str { doc = "5-field cron expression",
      check = engine_check(function(v, parent)
        local tz = type(parent.timezone) == "string" and parent.timezone or nil
        if tz and not core.tz_check(tz) then return nil end -- reported on timezone
        local ok, err = core.cron_check(v, tz)
        return not ok and ("invalid schedule: " .. err) or nil
      end) },
    interval = str { doc = "Go duration between events, e.g. 10s",
      check = engine_check(function(v)
        local ns, err = core.duration_check(v)
        if not ns then return "invalid interval: " .. err end
        if ns < 1e6 then return "interval must be at least 1ms" end
      end) },
    exclusionDates = strings { doc = "dates to skip (EXDATE:20060102T150405Z,...)" },
    timezone = str { doc = "IANA time zone of the schedule",
      check = engine_check(function(v)
        local ok, err = core.tz_check(v)
        return not ok and ("unknown time zone: " .. err) or nil
      end) },
    metadata = S.es_metadata(),
    persistence = object({
      catchup = object({
        enabled = bool { doc = "replay missed ticks" },
        maxDuration = str { doc = "how far back to replay" },
      }),
      configMap = object({
        name = str { doc = "ConfigMap name" },
        createIfNotExist = bool { doc = "create the ConfigMap" },
      }),
    }, { supported = false, what = "calendar persistence and catch-up" }),
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
  }, { doc = "events on a schedule", at_least_one_of = { "schedule", "interval" } })
end

return _M
