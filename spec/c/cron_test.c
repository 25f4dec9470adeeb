/*
 * cron_test.c: Go durations, zones, Go time formatting and robfig/cron v3 schedules.
 *
 * Expected next-fire times come from robfig/cron v3's own spec_test.go (TestNext, the DST
 * tables) rewritten to 5 fields, plus Argo-specific cases. Prints "N passed, M failed" and exits
 * non-zero on any failure.
 */
#include "common.h"
#include "cron.h"

#include <stdio.h>
#include <string.h>

static int passed, failed;

#define CHECK(cond, ...)                                                                      \
  do {                                                                                        \
    if (cond) {                                                                               \
      passed++;                                                                               \
    } else {                                                                                  \
      failed++;                                                                               \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                    \
      fprintf(stderr, __VA_ARGS__);                                                           \
      fputc('\n', stderr);                                                                    \
    }                                                                                         \
  } while (0)

static herald_tz *UTC;

/* "2012-03-11T00:00:00-0500" or "...Z" -> ns since the epoch. */
static int64_t T(const char *s) {
  int y, mo, d, h, mi, sec = 0, n = 0;
  if (sscanf(s, "%d-%d-%dT%d:%d:%d%n", &y, &mo, &d, &h, &mi, &sec, &n) < 6) {
    fprintf(stderr, "bad time literal %s\n", s);
    exit(2);
  }
  const char *z = s + n;
  int off = 0;
  if (*z == '+' || *z == '-') {
    int oh, om;
    if (sscanf(z + 1, "%2d%2d", &oh, &om) != 2) exit(2);
    off = (oh * 60 + om) * 60 * (*z == '-' ? -1 : 1);
  }
  return (herald_tz_date(UTC, y, mo, d, h, mi, sec) - off) * INT64_C(1000000000);
}

static const char *fmt(int64_t t, const herald_tz *tz, char *buf) {
  if (t == 0) return "(none)";
  herald_time_format_go(t, tz ? tz : UTC, buf, 80);
  return buf;
}

/* ---- durations ---- */

static void dur_ok(const char *s, int64_t want) {
  int64_t got = -42;
  char err[200] = "";
  int r = herald_parse_duration_msg(s, &got, err, sizeof err);
  CHECK(r == 0 && got == want, "duration \"%s\": want %lld, got r=%d %lld (%s)", s,
        (long long)want, r, (long long)got, err);
}

static void dur_bad(const char *s, const char *msg) {
  int64_t got = 0;
  char err[200] = "";
  int r = herald_parse_duration_msg(s, &got, err, sizeof err);
  CHECK(r == HERALD_EINVAL && strcmp(err, msg) == 0, "duration \"%s\": want error '%s', got r=%d '%s'",
        s, msg, r, err);
  CHECK(herald_parse_duration(s, &got) == HERALD_EINVAL, "duration \"%s\" short form", s);
}

static void test_durations(void) {
  const int64_t US = 1000, MS = 1000000, S = 1000000000, M = 60 * S, H = 60 * M;
  dur_ok("0", 0);
  dur_ok("-0", 0);
  dur_ok("+0", 0);
  dur_ok("5ns", 5);
  dur_ok("1us", US);
  dur_ok("1\xc2\xb5s", US);
  dur_ok("1\xce\xbcs", US);
  dur_ok("300ms", 300 * MS);
  dur_ok("10s", 10 * S);
  dur_ok("1.5h", 90 * M);
  dur_ok("2h45m", 2 * H + 45 * M);
  dur_ok("-1.5h", -90 * M);
  dur_ok("+10s", 10 * S);
  dur_ok(".5s", 500 * MS);
  dur_ok("1.s", S);
  dur_ok("1h1m1s1ms1us1ns", H + M + S + MS + US + 1);
  dur_ok("0.000000001s", 1);
  dur_ok("1.0000000001s", S); /* digits below 1ns are dropped */
  dur_ok("9223372036854775807ns", INT64_MAX);
  dur_ok("-9223372036854775808ns", INT64_MIN);
  dur_ok("100h", 100 * H);
  dur_bad("", "time: invalid duration \"\"");
  dur_bad("10", "time: missing unit in duration \"10\"");
  dur_bad("1x", "time: unknown unit \"x\" in duration \"1x\"");
  dur_bad("1h2", "time: missing unit in duration \"1h2\"");
  dur_bad("-", "time: invalid duration \"-\"");
  dur_bad(".", "time: invalid duration \".\"");
  dur_bad("s", "time: invalid duration \"s\"");
  dur_bad("1h-2m", "time: unknown unit \"h-\" in duration \"1h-2m\"");
  dur_bad("1 s", "time: unknown unit \" s\" in duration \"1 s\"");
  dur_bad("9223372036854775808ns", "time: invalid duration \"9223372036854775808ns\"");
  dur_bad("3000000h", "time: invalid duration \"3000000h\"");
}

/* ---- zones and formatting ---- */

static void fmt_is(int64_t t, const char *zone, const char *want) {
  herald_tz *tz = NULL;
  char err[200] = "", buf[80] = "";
  int r = herald_tz_load(zone, &tz, err, sizeof err);
  CHECK(r == 0, "load %s: %s", zone, err);
  if (r) return;
  size_t n = herald_time_format_go(t, tz, buf, sizeof buf);
  CHECK(strcmp(buf, want) == 0 && n == strlen(want), "format in %s: want '%s', got '%s'", zone,
        want, buf);
  herald_tz_free(tz);
}

static void test_zones(void) {
  fmt_is(T("2024-01-01T00:00:00Z"), "UTC", "2024-01-01 00:00:00 +0000 UTC");
  fmt_is(T("2024-01-01T00:00:00Z"), "", "2024-01-01 00:00:00 +0000 UTC");
  fmt_is(T("2024-01-01T00:00:00Z") + 123456789, "UTC", "2024-01-01 00:00:00.123456789 +0000 UTC");
  fmt_is(T("2024-01-01T00:00:00Z") + 500000000, "UTC", "2024-01-01 00:00:00.5 +0000 UTC");
  fmt_is(T("2024-01-01T00:00:00Z") + 1000, "UTC", "2024-01-01 00:00:00.000001 +0000 UTC");
  fmt_is(T("2024-01-01T00:00:00Z"), "Asia/Kolkata", "2024-01-01 05:30:00 +0530 IST");
  fmt_is(T("2024-01-15T12:00:00Z"), "America/New_York", "2024-01-15 07:00:00 -0500 EST");
  fmt_is(T("2024-07-15T12:00:00Z"), "America/New_York", "2024-07-15 08:00:00 -0400 EDT");
  fmt_is(T("2024-01-15T12:00:00Z"), "Europe/Berlin", "2024-01-15 13:00:00 +0100 CET");
  fmt_is(T("2024-07-15T12:00:00Z"), "Europe/Berlin", "2024-07-15 14:00:00 +0200 CEST");
  /* Past the last transition in the file: the POSIX TZ footer rule decides. */
  fmt_is(T("2100-07-01T12:00:00Z"), "America/New_York", "2100-07-01 08:00:00 -0400 EDT");
  fmt_is(T("2100-12-01T12:00:00Z"), "America/New_York", "2100-12-01 07:00:00 -0500 EST");
  fmt_is(T("2250-07-01T12:00:00Z"), "Europe/Berlin", "2250-07-01 14:00:00 +0200 CEST");
  /* Southern hemisphere: DST spans the new year. */
  fmt_is(T("2024-01-15T00:00:00Z"), "Australia/Sydney", "2024-01-15 11:00:00 +1100 AEDT");
  fmt_is(T("2150-01-15T00:00:00Z"), "Australia/Sydney", "2150-01-15 11:00:00 +1100 AEDT");
  fmt_is(T("2150-07-15T00:00:00Z"), "Australia/Sydney", "2150-07-15 10:00:00 +1000 AEST");
  /* Before the first transition: local mean time, printed as Go does. */
  fmt_is(T("1850-01-01T12:00:00Z"), "America/New_York", "1850-01-01 07:03:58 -0456 LMT");
  /* Numeric abbreviations are printed as they are. */
  fmt_is(T("2024-01-01T00:00:00Z"), "America/Sao_Paulo", "2023-12-31 21:00:00 -0300 -03");
  fmt_is(T("1969-12-31T23:59:59Z") + 250000000, "UTC", "1969-12-31 23:59:59.25 +0000 UTC");

  herald_tz *tz = NULL;
  char err[200] = "";
  CHECK(herald_tz_load("Mars/Olympus", &tz, err, sizeof err) == HERALD_ENOTFOUND && !tz &&
            strcmp(err, "unknown time zone Mars/Olympus") == 0,
        "unknown zone: '%s'", err);
  CHECK(herald_tz_load("../../etc/passwd", &tz, err, sizeof err) == HERALD_EINVAL &&
            strcmp(err, "time: invalid location name") == 0,
        "dot-dot zone: '%s'", err);
  CHECK(herald_tz_load("/etc/localtime", &tz, err, sizeof err) == HERALD_EINVAL, "absolute zone");
  CHECK(herald_tz_load("America", &tz, err, sizeof err) < 0, "a directory is not a zone");
  CHECK(herald_tz_load("Local", &tz, err, sizeof err) == 0 && tz, "Local loads");
  herald_tz_free(tz);

  /* time.Date normalisation and DST resolution, as Go. */
  herald_tz *ny = NULL;
  herald_tz_load("America/New_York", &ny, NULL, 0);
  char b1[80], b2[80];
  int64_t d;
  d = herald_tz_date(ny, 2012, 3, 11, 2, 30, 0) * INT64_C(1000000000); /* in the gap */
  CHECK(d == T("2012-03-11T01:30:00-0500"), "Date in gap: %s", fmt(d, ny, b1));
  d = herald_tz_date(ny, 2012, 11, 4, 1, 30, 0) * INT64_C(1000000000); /* ambiguous: first */
  CHECK(d == T("2012-11-04T01:30:00-0400"), "Date ambiguous: %s", fmt(d, ny, b1));
  d = herald_tz_date(ny, 2012, 13, 1, 0, 0, 0) * INT64_C(1000000000);
  CHECK(d == T("2013-01-01T00:00:00-0500"), "Date month 13: %s", fmt(d, ny, b1));
  d = herald_tz_date(ny, 2012, 3, 0, 0, 0, 0) * INT64_C(1000000000);
  CHECK(d == T("2012-02-29T00:00:00-0500"), "Date day 0: %s", fmt(d, ny, b2));
  herald_civil c;
  herald_tz_civil(ny, T("2024-03-04T05:06:07Z") + 8, &c);
  CHECK(c.year == 2024 && c.month == 3 && c.day == 4 && c.hour == 0 && c.minute == 6 &&
            c.second == 7 && c.nsec == 8 && c.wday == 1 && c.yday == 64 && c.offset == -18000 &&
            !c.isdst && strcmp(c.abbr, "EST") == 0,
        "civil fields");
  herald_tz_free(ny);
}

/* ---- cron ---- */

static herald_cron *parse(const char *expr, const char *tz, unsigned flags) {
  herald_cron *c = NULL;
  char err[300] = "";
  int r = herald_cron_parse(expr, tz, flags, &c, err, sizeof err);
  CHECK(r == 0 && c, "parse '%s': %s", expr, err);
  return c;
}

/* Checks next(from) == want; then each further want is the next after the previous. */
static void next_is(const char *expr, const char *tz, const char *from, const char *want) {
  herald_cron *c = parse(expr, tz, HERALD_CRON_DESCRIPTORS);
  if (!c) return;
  char b1[80], b2[80];
  int64_t got = herald_cron_next(c, T(from));
  int64_t w = want ? T(want) : 0;
  const herald_tz *z = herald_cron_zone(c);
  CHECK(got == w, "'%s' (%s) after %s: want %s, got %s", expr, tz ? tz : "UTC", from,
        fmt(w, z, b1), fmt(got, z, b2));
  herald_cron_free(c);
}

static void parse_err(const char *expr, const char *tz, unsigned flags, const char *msg) {
  herald_cron *c = NULL;
  char err[300] = "";
  int r = herald_cron_parse(expr, tz, flags, &c, err, sizeof err);
  CHECK(r < 0 && !c && strcmp(err, msg) == 0, "parse '%s': want error '%s', got r=%d '%s'", expr,
        msg, r, err);
  herald_cron_free(c);
}

static void test_cron_fields(void) {
  /* robfig TestNext, 5-field. */
  next_is("0/15 * * * *", NULL, "2012-07-09T14:45:00Z", "2012-07-09T15:00:00Z");
  next_is("0/15 * * * *", NULL, "2012-07-09T14:59:00Z", "2012-07-09T15:00:00Z");
  next_is("0/15 * * * *", NULL, "2012-07-09T14:59:59Z", "2012-07-09T15:00:00Z");
  next_is("20-35/15 * * * *", NULL, "2012-07-09T15:45:00Z", "2012-07-09T16:20:00Z");
  next_is("*/15 * * * *", NULL, "2012-07-09T23:46:00Z", "2012-07-10T00:00:00Z");
  next_is("20-35/15 * * * *", NULL, "2012-07-09T23:45:00Z", "2012-07-10T00:20:00Z");
  next_is("20-35/15 1/2 * * *", NULL, "2012-07-09T23:35:51Z", "2012-07-10T01:20:00Z");
  next_is("20-35/15 10-12 * * *", NULL, "2012-07-09T23:35:51Z", "2012-07-10T10:20:00Z");
  next_is("20-35/15 1/2 */2 * *", NULL, "2012-07-09T23:35:51Z", "2012-07-11T01:20:00Z");
  next_is("20-35/15 * 9-20 * *", NULL, "2012-07-09T23:35:51Z", "2012-07-10T00:20:00Z");
  next_is("20-35/15 * 9-20 Jul *", NULL, "2012-07-09T23:35:51Z", "2012-07-10T00:20:00Z");
  next_is("0 0 9 Apr-Oct ?", NULL, "2012-07-09T23:35:00Z", "2012-08-09T00:00:00Z");
  next_is("0 0 */5 Apr,Aug,Oct Mon", NULL, "2012-07-09T23:35:00Z", "2012-08-01T00:00:00Z");
  next_is("0 0 */5 Oct Mon", NULL, "2012-07-09T23:35:00Z", "2012-10-01T00:00:00Z");
  next_is("0 0 * Feb Mon", NULL, "2012-07-09T23:35:00Z", "2013-02-04T00:00:00Z");
  next_is("0 0 * Feb Mon/2", NULL, "2012-07-09T23:35:00Z", "2013-02-01T00:00:00Z");
  next_is("* * * * *", NULL, "2012-12-31T23:59:45Z", "2013-01-01T00:00:00Z");
  /* Strictly after, and sub-second input rounds to the next whole second first. */
  next_is("* * * * *", NULL, "2024-01-01T10:00:00Z", "2024-01-01T10:01:00Z");
  {
    herald_cron *c = parse("* * * * *", NULL, 0);
    int64_t got = herald_cron_next(c, T("2024-01-01T10:00:59Z") + 999999999);
    CHECK(got == T("2024-01-01T10:01:00Z"), "sub-second after");
    herald_cron_free(c);
  }
  /* Lists, ranges, steps, names in any case. */
  next_is("5,10,55 * * * *", NULL, "2024-01-01T10:10:00Z", "2024-01-01T10:55:00Z");
  next_is("5,,10 * * * *", NULL, "2024-01-01T10:06:00Z", "2024-01-01T10:10:00Z");
  next_is("0 9-17/4 * * *", NULL, "2024-01-01T13:00:00Z", "2024-01-01T17:00:00Z");
  next_is("0 12 * * mon-FRI", NULL, "2024-01-05T12:00:00Z", "2024-01-08T12:00:00Z"); /* Fri -> Mon */
  next_is("0 12 * * Sat,sun", NULL, "2024-01-01T00:00:00Z", "2024-01-06T12:00:00Z");
  next_is("0 0 1 jAn,JUL *", NULL, "2024-02-01T00:00:00Z", "2024-07-01T00:00:00Z");
  next_is("0 0 1 jan-MAR/2 *", NULL, "2024-01-01T00:00:00Z", "2024-03-01T00:00:00Z");
  next_is("0 0 * * 0", NULL, "2024-01-01T00:00:00Z", "2024-01-07T00:00:00Z");
  next_is("0 0 * * 6", NULL, "2024-01-01T00:00:00Z", "2024-01-06T00:00:00Z");
  next_is("30 */6 * * *", NULL, "2024-01-01T06:30:00Z", "2024-01-01T12:30:00Z");
  next_is("+5 * * * *", NULL, "2024-01-01T00:00:00Z", "2024-01-01T00:05:00Z"); /* Atoi takes '+' */

  /* Day-of-month / day-of-week: OR when both are restricted, AND when either is * or ?. */
  next_is("0 0 1 * MON", NULL, "2024-01-02T00:00:00Z", "2024-01-08T00:00:00Z");
  next_is("0 0 1 * MON", NULL, "2024-01-29T00:00:00Z", "2024-02-01T00:00:00Z");
  next_is("0 0 13 * FRI", NULL, "2024-09-01T00:00:00Z", "2024-09-06T00:00:00Z");
  next_is("0 0 * * MON", NULL, "2024-01-29T00:00:00Z", "2024-02-05T00:00:00Z");
  next_is("0 0 ? * MON", NULL, "2024-01-29T00:00:00Z", "2024-02-05T00:00:00Z");
  next_is("0 0 1 * *", NULL, "2024-01-02T00:00:00Z", "2024-02-01T00:00:00Z");
  next_is("0 0 1 * ?", NULL, "2024-01-02T00:00:00Z", "2024-02-01T00:00:00Z");
  /* A step > 1 makes `*` a restriction (robfig drops the star bit): OR again. */
  next_is("0 0 */10 * MON", NULL, "2024-01-02T00:00:00Z", "2024-01-08T00:00:00Z");
  next_is("0 0 */10 * MON", NULL, "2024-01-08T00:00:00Z", "2024-01-11T00:00:00Z");
  /* ... but `*\/1` is still a star: AND. */
  next_is("0 0 */1 * MON", NULL, "2024-01-02T00:00:00Z", "2024-01-08T00:00:00Z");
  next_is("0 0 */1 * MON", NULL, "2024-01-08T00:00:00Z", "2024-01-15T00:00:00Z");

  /* Leap days and impossible dates. */
  next_is("0 0 29 2 *", NULL, "2012-07-09T23:35:00Z", "2016-02-29T00:00:00Z");
  next_is("0 0 29 2 *", NULL, "2016-02-29T00:00:00Z", "2020-02-29T00:00:00Z");
  next_is("0 0 29 Feb ?", NULL, "2023-03-01T00:00:00Z", "2024-02-29T00:00:00Z");
  next_is("0 0 29 2 *", NULL, "2097-01-01T00:00:00Z", NULL); /* 2100 is not leap; 2104 > 5 y */
  next_is("0 0 30 2 *", NULL, "2012-07-09T23:35:00Z", NULL);
  next_is("0 0 31 4 *", NULL, "2012-07-09T23:35:00Z", NULL);
  next_is("0 0 31 * *", NULL, "2024-01-31T00:00:00Z", "2024-03-31T00:00:00Z");
  next_is("0 0 28-31 2 *", NULL, "2023-02-28T00:00:00Z", "2024-02-28T00:00:00Z");
}

static void test_cron_descriptors(void) {
  next_is("@hourly", NULL, "2024-01-01T10:15:00Z", "2024-01-01T11:00:00Z");
  next_is("@daily", NULL, "2024-01-01T10:15:00Z", "2024-01-02T00:00:00Z");
  next_is("@midnight", NULL, "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z");
  next_is("@weekly", NULL, "2024-01-01T10:15:00Z", "2024-01-07T00:00:00Z");
  next_is("@monthly", NULL, "2024-01-01T10:15:00Z", "2024-02-01T00:00:00Z");
  next_is("@yearly", NULL, "2024-01-01T10:15:00Z", "2025-01-01T00:00:00Z");
  next_is("@annually", NULL, "2024-01-01T10:15:00Z", "2025-01-01T00:00:00Z");
  next_is("@daily", "Asia/Kolkata", "2024-01-01T10:15:00Z", "2024-01-01T18:30:00Z");
  next_is("CRON_TZ=Asia/Kolkata @daily", NULL, "2024-01-01T10:15:00Z", "2024-01-01T18:30:00Z");

  herald_cron *c = parse("@every 90m", NULL, HERALD_CRON_DESCRIPTORS);
  int64_t every = 0;
  CHECK(c && herald_cron_is_every(c, &every) && every == INT64_C(5400000000000), "@every 90m");
  int64_t from = T("2024-01-01T10:00:00Z") + 700000000;
  CHECK(c && herald_cron_next(c, from) == T("2024-01-01T11:30:00Z"), "@every rounds down to s");
  CHECK(c && herald_cron_prev(c, from) == T("2024-01-01T10:00:00Z"), "@every prev");
  herald_cron_free(c);
  c = parse("@every 500ms", NULL, HERALD_CRON_DESCRIPTORS);
  CHECK(c && herald_cron_is_every(c, &every) && every == INT64_C(1000000000), "@every < 1s is 1s");
  herald_cron_free(c);
  c = parse("@every 1.7s", NULL, HERALD_CRON_DESCRIPTORS);
  CHECK(c && herald_cron_is_every(c, &every) && every == INT64_C(1000000000), "@every drops fractions");
  herald_cron_free(c);
  c = parse("0 * * * *", NULL, 0);
  CHECK(c && !herald_cron_is_every(c, NULL), "not @every");
  herald_cron_free(c);
}

static void test_cron_zones(void) {
  next_is("0 9 * * *", "Asia/Kolkata", "2024-01-01T00:00:00Z", "2024-01-01T09:00:00+0530");
  next_is("0 9 * * *", "Asia/Kolkata", "2024-01-01T04:00:00Z", "2024-01-02T09:00:00+0530");
  next_is("TZ=Asia/Kolkata 0 9 * * *", NULL, "2024-01-01T00:00:00Z", "2024-01-01T09:00:00+0530");
  /* CRON_TZ wins over the default zone. */
  next_is("CRON_TZ=Europe/Berlin 0 9 * * *", "Asia/Kolkata", "2024-01-01T00:00:00Z",
          "2024-01-01T09:00:00+0100");
  next_is("CRON_TZ=UTC 0 9 * * *", "Asia/Kolkata", "2024-01-01T00:00:00Z", "2024-01-01T09:00:00Z");
  next_is("30 0 * * *", "Asia/Kolkata", "2024-01-01T00:00:00Z", "2024-01-02T00:30:00+0530");
  /* Day-of-week is the local one: Monday 02:00 in Kolkata is Sunday 20:30 UTC. */
  next_is("0 2 * * MON", "Asia/Kolkata", "2024-01-01T00:00:00Z", "2024-01-08T02:00:00+0530");

  /* robfig's DST tables, America/New_York, spring forward 2012-03-11 02:00 EST -> 03:00 EDT. */
  const char *ny = "America/New_York";
  next_is("0 * * * *", ny, "2012-03-11T00:00:00-0500", "2012-03-11T01:00:00-0500");
  next_is("0 * * * *", ny, "2012-03-11T01:00:00-0500", "2012-03-11T03:00:00-0400");
  next_is("0 * * * *", ny, "2012-03-11T03:00:00-0400", "2012-03-11T04:00:00-0400");
  next_is("0 1 * * *", ny, "2012-03-11T00:00:00-0500", "2012-03-11T01:00:00-0500");
  next_is("0 1 * * *", ny, "2012-03-11T01:00:00-0500", "2012-03-12T01:00:00-0400");
  next_is("0 2 * * *", ny, "2012-03-11T00:00:00-0500", "2012-03-12T02:00:00-0400"); /* skipped */
  next_is("30 2 * * *", ny, "2012-03-10T03:00:00-0500", "2012-03-12T02:30:00-0400");
  next_is("CRON_TZ=America/New_York 0 2 * * *", NULL, "2012-03-11T00:00:00-0500",
          "2012-03-12T02:00:00-0400");
  /* Fall back 2012-11-04 02:00 EDT -> 01:00 EST: the repeated hour fires twice (robfig). */
  next_is("30 2 04 Nov *", ny, "2012-11-04T00:00:00-0400", "2012-11-04T02:30:00-0500");
  next_is("30 1 04 Nov *", ny, "2012-11-04T01:45:00-0400", "2012-11-04T01:30:00-0500");
  next_is("0 * * * *", ny, "2012-11-04T00:00:00-0400", "2012-11-04T01:00:00-0400");
  next_is("0 * * * *", ny, "2012-11-04T01:00:00-0400", "2012-11-04T01:00:00-0500");
  next_is("0 * * * *", ny, "2012-11-04T01:00:00-0500", "2012-11-04T02:00:00-0500");
  next_is("0 1 * * *", ny, "2012-11-04T00:00:00-0400", "2012-11-04T01:00:00-0400");
  next_is("0 1 * * *", ny, "2012-11-04T01:00:00-0400", "2012-11-04T01:00:00-0500");
  next_is("0 1 * * *", ny, "2012-11-04T01:00:00-0500", "2012-11-05T01:00:00-0500");
  next_is("0 2 * * *", ny, "2012-11-04T00:00:00-0400", "2012-11-04T02:00:00-0500");
  next_is("0 2 * * *", ny, "2012-11-04T02:00:00-0500", "2012-11-05T02:00:00-0500");
  next_is("0 3 * * *", ny, "2012-11-04T00:00:00-0400", "2012-11-04T03:00:00-0500");
  next_is("0 3 * * *", ny, "2012-11-04T03:00:00-0500", "2012-11-05T03:00:00-0500");

  /* Europe/Berlin 2024: 03-31 02:00 CET -> 03:00 CEST, 10-27 03:00 CEST -> 02:00 CET. */
  const char *be = "Europe/Berlin";
  next_is("30 2 * * *", be, "2024-03-30T03:00:00+0100", "2024-04-01T02:30:00+0200");
  next_is("0 * * * *", be, "2024-03-31T01:00:00+0100", "2024-03-31T03:00:00+0200");
  next_is("30 2 * * *", be, "2024-10-27T00:00:00+0200", "2024-10-27T02:30:00+0200");
  next_is("30 2 * * *", be, "2024-10-27T02:30:00+0200", "2024-10-27T02:30:00+0100");
  next_is("30 2 * * *", be, "2024-10-27T02:30:00+0100", "2024-10-28T02:30:00+0100");
  next_is("0 0 * * *", be, "2024-10-26T12:00:00+0200", "2024-10-27T00:00:00+0200");
  next_is("0 0 * * *", be, "2024-10-27T00:00:00+0200", "2024-10-28T00:00:00+0100");
  /* Sao Paulo 2018-11-04: midnight did not exist (00:00 -> 01:00). robfig skips that day for a
   * daily midnight job, and, for a job on that date only, goes on to the next year's. */
  const char *sp = "America/Sao_Paulo";
  next_is("0 0 * * *", sp, "2018-11-03T12:00:00-0300", "2018-11-05T00:00:00-0200");
  next_is("0 0 4 11 *", sp, "2018-11-03T12:00:00-0300", "2019-11-04T00:00:00-0300");
  next_is("0 1 4 11 *", sp, "2018-11-03T12:00:00-0300", "2018-11-04T01:00:00-0200");

  /* Southern hemisphere, and dates past the zone file's last transition. */
  next_is("0 2 * * *", "Australia/Sydney", "2150-01-01T00:00:00+1100", "2150-01-01T02:00:00+1100");
  next_is("0 12 1 7 *", "America/New_York", "2150-01-01T00:00:00Z", "2150-07-01T12:00:00-0400");
}

static void test_cron_prev(void) {
  herald_cron *c = parse("0 * * * *", NULL, 0);
  CHECK(herald_cron_prev(c, T("2024-01-01T10:30:00Z")) == T("2024-01-01T10:00:00Z"), "prev hourly");
  CHECK(herald_cron_prev(c, T("2024-01-01T10:00:00Z")) == T("2024-01-01T10:00:00Z"), "prev at");
  herald_cron_free(c);
  c = parse("0 0 29 2 *", NULL, 0);
  CHECK(herald_cron_prev(c, T("2024-06-01T00:00:00Z")) == T("2024-02-29T00:00:00Z"), "prev leap");
  herald_cron_free(c);
  c = parse("0 9 * * MON-FRI", "Europe/Berlin", 0);
  CHECK(herald_cron_prev(c, T("2024-01-07T12:00:00Z")) == T("2024-01-05T09:00:00+0100"),
        "prev weekday");
  herald_cron_free(c);
  c = parse("0 0 30 2 *", NULL, 0);
  CHECK(herald_cron_prev(c, T("2024-06-01T00:00:00Z")) == 0, "prev never");
  herald_cron_free(c);
}

static void test_cron_errors(void) {
  const unsigned D = HERALD_CRON_DESCRIPTORS;
  parse_err("", NULL, D, "empty spec string");
  parse_err("* * * *", NULL, D, "expected exactly 5 fields, found 4: [* * * *]");
  parse_err("0 0 0 * * *", NULL, D, "expected exactly 5 fields, found 6: [0 0 0 * * *]");
  parse_err("60 * * * *", NULL, D, "minute field \"60\": end of range (60) above maximum (59): 60");
  parse_err("* 24 * * *", NULL, D, "hour field \"24\": end of range (24) above maximum (23): 24");
  parse_err("* * 0 * *", NULL, D,
            "day-of-month field \"0\": beginning of range (0) below minimum (1): 0");
  parse_err("* * 32 * *", NULL, D,
            "day-of-month field \"32\": end of range (32) above maximum (31): 32");
  parse_err("* * * 13 *", NULL, D, "month field \"13\": end of range (13) above maximum (12): 13");
  parse_err("* * * 0 *", NULL, D, "month field \"0\": beginning of range (0) below minimum (1): 0");
  parse_err("* * * * 7", NULL, D, "day-of-week field \"7\": end of range (7) above maximum (6): 7");
  parse_err("* * * foo *", NULL, D,
            "month field \"foo\": failed to parse int from foo: strconv.Atoi: parsing \"foo\": "
            "invalid syntax");
  parse_err("* * * * MON-FUN", NULL, D,
            "day-of-week field \"MON-FUN\": failed to parse int from FUN: strconv.Atoi: parsing "
            "\"FUN\": invalid syntax");
  parse_err("0 0 * * MONDAY", NULL, D,
            "day-of-week field \"MONDAY\": failed to parse int from MONDAY: strconv.Atoi: parsing "
            "\"MONDAY\": invalid syntax");
  parse_err("1,5-1 * * * *", NULL, D,
            "minute field \"1,5-1\": beginning of range (5) beyond end of range (1): 5-1");
  parse_err("*/0 * * * *", NULL, D,
            "minute field \"*/0\": step of range should be a positive number: */0");
  parse_err("1-2-3 * * * *", NULL, D, "minute field \"1-2-3\": too many hyphens: 1-2-3");
  parse_err("1/2/3 * * * *", NULL, D, "minute field \"1/2/3\": too many slashes: 1/2/3");
  parse_err("-5 * * * *", NULL, D,
            "minute field \"-5\": failed to parse int from : strconv.Atoi: parsing \"\": invalid "
            "syntax");
  parse_err("*/x * * * *", NULL, D,
            "minute field \"*/x\": failed to parse int from x: strconv.Atoi: parsing \"x\": "
            "invalid syntax");
  parse_err("@daily", NULL, 0, "parser does not accept descriptors: @daily");
  parse_err("@every 1h", NULL, 0, "parser does not accept descriptors: @every 1h");
  parse_err("@fortnightly", NULL, D, "unrecognized descriptor: @fortnightly");
  parse_err("@DAILY", NULL, D, "unrecognized descriptor: @DAILY");
  parse_err("@every 1x", NULL, D,
            "failed to parse duration @every 1x: time: unknown unit \"x\" in duration \"1x\"");
  parse_err("CRON_TZ=Mars/Olympus 0 * * * *", NULL, D,
            "provided bad location Mars/Olympus: unknown time zone Mars/Olympus");
  parse_err("TZ=Europe/Berlin", NULL, D,
            "missing fields after time zone in spec \"TZ=Europe/Berlin\"");
  parse_err("0 * * * *", "Mars/Olympus", D, "unknown time zone Mars/Olympus");
}

int main(void) {
  if (herald_tz_load("UTC", &UTC, NULL, 0) != 0) return 2;
  test_durations();
  test_zones();
  test_cron_fields();
  test_cron_descriptors();
  test_cron_zones();
  test_cron_prev();
  test_cron_errors();
  herald_tz_free(UTC);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
