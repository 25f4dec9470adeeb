/*
 * cron.h: Go durations, IANA time zones, and robfig/cron v3 schedules, for the calendar
 * source and for a sensor's conditionsReset.
 *
 *   "2h45m"             --herald_parse_duration------> int64 ns
 *   "Asia/Kolkata"      --herald_tz_load--------------> herald_tz (TZif from /usr/share/zoneinfo)
 *   "CRON_TZ=X 0 9 * * MON-FRI" --herald_cron_parse--> herald_cron --herald_cron_next(t)--> t'
 *   (t, herald_tz)      --herald_time_format_go-------> "2006-01-02 15:04:05.999999999 -0700 MST"
 *
 * Everything here is pure computation: no clocks, no loop, no global state (the zone files are
 * parsed by this file, never through TZ/tzset, so nothing else in the process is disturbed).
 * Semantics follow Go and robfig/cron v3 exactly, including their corner cases; see the
 * function comments. Times are int64 nanoseconds since the Unix epoch unless named `_s`.
 */
#ifndef HERALD_CRON_H
#define HERALD_CRON_H

#include <stddef.h>
#include <stdint.h>

/* ---- durations ---- */

/* Parses a Go duration like time.ParseDuration: an optional sign, then one or more decimal
 * numbers with optional fraction, each followed by a unit among ns, us, µs, μs, ms, s, m, h
 * ("300ms", "-1.5h", "2h45m", "0"). Returns 0 with *out_ns set, or HERALD_EINVAL ("", "10",
 * "1x", overflow). */
int herald_parse_duration(const char *s, int64_t *out_ns);
/* The same, and on error writes Go's message into err (e.g. `time: unknown unit "x" in duration
 * "1x"`) when err is not NULL. */
int herald_parse_duration_msg(const char *s, int64_t *out_ns, char *err, size_t errlen);

/* ---- time zones ---- */

typedef struct herald_tz herald_tz;

/* Loads an IANA zone like Go's time.LoadLocation: "" and "UTC" are UTC, "Local" is the process's
 * zone ($TZ, else /etc/localtime), anything else is read from $ZONEINFO or /usr/share/zoneinfo.
 * Returns 0 and a new zone in *out that the caller frees with herald_tz_free(), or
 * HERALD_EINVAL (bad name) / HERALD_ENOTFOUND (no such zone) with Go's message in err
 * ("unknown time zone Mars/Olympus"). err may be NULL. */
int herald_tz_load(const char *name, herald_tz **out, char *err, size_t errlen);
void herald_tz_free(herald_tz *tz);
/* The name it was loaded with ("UTC" for ""). Valid while tz lives. */
const char *herald_tz_name(const herald_tz *tz);

/* Broken-down local time. */
typedef struct herald_civil {
  int64_t year;
  int month;  /* 1..12 */
  int day;    /* 1..31 */
  int hour, minute, second;
  int nsec;
  int wday;   /* 0 = Sunday */
  int yday;   /* 1..366 */
  int offset; /* seconds east of UTC */
  int isdst;
  const char *abbr; /* "IST", "CEST", "+0530"-like; valid while tz lives */
} herald_civil;

/* Fills *out with the local time of t_ns in tz. */
void herald_tz_civil(const herald_tz *tz, int64_t t_ns, herald_civil *out);
/* Like Go's time.Date(y, mon, d, h, mi, s, 0, tz): out-of-range fields are normalised (month 13
 * is January next year, day 0 the last of the previous month); a wall time that does not exist
 * or exists twice (DST changes) is resolved as Go does. Returns seconds since the epoch. */
int64_t herald_tz_date(const herald_tz *tz, int64_t y, int64_t mon, int64_t d, int64_t h,
                       int64_t mi, int64_t s);

/* Writes t_ns as Go's time.Time.String() in tz, without the monotonic suffix:
 * "2006-01-02 15:04:05.999999999 -0700 MST" (trailing zeros of the fraction trimmed, the
 * fraction omitted when zero). Always NUL-terminates when len > 0; returns the length it needed
 * (snprintf style; 64 bytes is always enough). */
size_t herald_time_format_go(int64_t t_ns, const herald_tz *tz, char *buf, size_t len);

/* ---- cron schedules ---- */

typedef struct herald_cron herald_cron;

/* herald_cron_parse() flags. */
enum {
  /* Accept descriptors (@yearly @annually @monthly @weekly @daily @midnight @hourly,
   * @every <duration>): robfig's ParseStandard. Without it the parser is Argo's calendar
   * parser, NewParser(Minute|Hour|Dom|Month|Dow), which rejects them. */
  HERALD_CRON_DESCRIPTORS = 1u << 0,
};

/* Parses a 5-field cron expression "minute hour day-of-month month day-of-week" with robfig v3's
 * rules: `*` and `?`, lists `a,b`, ranges `a-b`, steps `*\/n` `a-b/n` `a/n` (= a-max/n), month
 * names JAN-DEC and day names SUN-SAT (case-insensitive), day-of-week 0-6 (7 is an error, as in
 * robfig). When both day fields are restricted a day matches if either does; when one is `*`/`?`
 * (a step > 1 makes it restricted) both must match. An optional "CRON_TZ=<zone> " or "TZ=<zone> "
 * prefix sets the zone the fields are read in; otherwise it is default_tz (NULL or "" = UTC).
 * Returns 0 and a new schedule in *out (free with herald_cron_free()), or HERALD_EINVAL /
 * HERALD_ENOTFOUND (unknown zone) with a message in err naming the field and the bad token,
 * e.g. `minute field "61": end of range (61) above maximum (59): 61`. err may be NULL. */
int herald_cron_parse(const char *expr, const char *default_tz, unsigned flags, herald_cron **out,
                      char *err, size_t errlen);
void herald_cron_free(herald_cron *c);

/* The first activation strictly after after_ns, as robfig's Schedule.Next: whole seconds,
 * computed field by field in the schedule's zone. Across DST, a wall time that is skipped does
 * not fire that day, and a wall time that repeats fires in both its occurrences (robfig's
 * "1am nightly job (runs twice)"). "@every d" gives after + d rounded down to the second
 * (d below 1 s counts as 1 s). Returns 0 when nothing matches within five years
 * (e.g. "0 0 30 2 *"; robfig returns the zero time). */
int64_t herald_cron_next(const herald_cron *c, int64_t after_ns);
/* The latest activation at or before at_ns (the "previous cron time" conditionsReset needs),
 * or 0 when there is none in the five years before. For "@every" it is at_ns rounded down to
 * the second. */
int64_t herald_cron_prev(const herald_cron *c, int64_t at_ns);
/* The zone the schedule is evaluated in (its CRON_TZ, else default_tz). Valid while c lives. */
const herald_tz *herald_cron_zone(const herald_cron *c);
/* 1 if the schedule is "@every <d>" (then *every_ns, if not NULL, is the rounded period). */
int herald_cron_is_every(const herald_cron *c, int64_t *every_ns);

#endif
