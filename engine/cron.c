/*
 * cron.c: Go durations, IANA zones (TZif files read directly, POSIX TZ footer rules for dates
 * past the last transition), Go's time.Date/time.String, and a port of robfig/cron v3's parser
 * and SpecSchedule.Next.
 *
 *   expr --split--> [CRON_TZ=zone] fields --get_field/get_range--> 5 bitmasks (+ star bit)
 *   next(t): t+1s --month loop--> day loop (dom/dow rule) --> hour --> minute --> second
 *            each loop wraps back to the month loop when it overflows its unit
 *
 * Next() is kept step for step identical to robfig's, because its behaviour across DST (what
 * fires, what is skipped, what fires twice) is part of what Argo users see. It relies on Go's
 * time.Date normalisation, reproduced by herald_tz_date().
 */
#include "cron.h"

#include "common.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define NS_PER_S INT64_C(1000000000)

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
  return q;
}
static int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

/* ---- durations (Go's time.ParseDuration) ---- */

int herald_parse_duration(const char *s, int64_t *out_ns) {
  return herald_parse_duration_msg(s, out_ns, NULL, 0);
}

int herald_parse_duration_msg(const char *orig, int64_t *out_ns, char *err, size_t errlen) {
  static const struct {
    const char *name;
    uint64_t ns;
  } units[] = {
      {"ns", 1},
      {"us", 1000},
      {"\xc2\xb5s", 1000}, /* U+00B5 micro sign */
      {"\xce\xbcs", 1000}, /* U+03BC Greek mu */
      {"ms", 1000000},
      {"s", 1000000000ull},
      {"m", 60ull * 1000000000ull},
      {"h", 3600ull * 1000000000ull},
  };
  const char *s = orig ? orig : "";
  uint64_t d = 0;
  int neg = 0;
  if (*s == '-' || *s == '+') {
    neg = *s == '-';
    s++;
  }
  if (strcmp(s, "0") == 0) {
    *out_ns = 0;
    return 0;
  }
  if (*s == '\0') goto invalid;
  while (*s) {
    uint64_t v = 0, f = 0;
    double scale = 1;
    if (!(*s == '.' || (*s >= '0' && *s <= '9'))) goto invalid;
    const char *p = s;
    int overflow = 0;
    while (*s >= '0' && *s <= '9') {
      if (v > (UINT64_C(1) << 63) / 10) overflow = 1;
      v = v * 10 + (uint64_t)(*s - '0');
      if (v > (UINT64_C(1) << 63)) overflow = 1;
      s++;
    }
    if (overflow) goto invalid;
    int pre = s != p;
    int post = 0;
    if (*s == '.') {
      s++;
      const char *q = s;
      int ovf = 0;
      while (*s >= '0' && *s <= '9') {
        if (!ovf) {
          if (f > (UINT64_C(1) << 63) / 10) {
            ovf = 1; /* Go ignores the digits that no longer fit */
          } else {
            uint64_t y = f * 10 + (uint64_t)(*s - '0');
            if (y > (UINT64_C(1) << 63)) ovf = 1;
            else {
              f = y;
              scale *= 10;
            }
          }
        }
        s++;
      }
      post = s != q;
    }
    if (!pre && !post) goto invalid;
    const char *u = s;
    while (*s && *s != '.' && !(*s >= '0' && *s <= '9')) s++;
    if (u == s) {
      set_err(err, errlen, "time: missing unit in duration \"%s\"", orig);
      return HERALD_EINVAL;
    }
    uint64_t unit = 0;
    for (size_t i = 0; i < HERALD_ARRAY_SIZE(units); i++)
      if (strlen(units[i].name) == (size_t)(s - u) && memcmp(units[i].name, u, (size_t)(s - u)) == 0)
        unit = units[i].ns;
    if (!unit) {
      set_err(err, errlen, "time: unknown unit \"%.*s\" in duration \"%s\"", (int)(s - u), u, orig);
      return HERALD_EINVAL;
    }
    if (v > (UINT64_C(1) << 63) / unit) goto invalid;
    v *= unit;
    if (f > 0) {
      v += (uint64_t)((double)f * ((double)unit / scale));
      if (v > (UINT64_C(1) << 63)) goto invalid;
    }
    d += v;
    if (d > (UINT64_C(1) << 63)) goto invalid;
  }
  if (neg) {
    *out_ns = d == (UINT64_C(1) << 63) ? INT64_MIN : -(int64_t)d;
    return 0;
  }
  if (d > (uint64_t)INT64_MAX) goto invalid;
  *out_ns = (int64_t)d;
  return 0;
invalid:
  set_err(err, errlen, "time: invalid duration \"%s\"", orig);
  return HERALD_EINVAL;
}

/* ---- calendar arithmetic (proleptic Gregorian, Howard Hinnant's algorithms) ---- */

static int is_leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static int days_in_month(int64_t y, int m) {
  static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : dm[m - 1];
}

static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = floor_div(y, 400);
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
  z += 719468;
  int64_t era = floor_div(z, 146097);
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (*m <= 2);
}

/* ---- time zones ---- */

typedef struct tz_type {
  int32_t off;
  uint8_t isdst;
  const char *abbr;
} tz_type;

typedef struct tz_rule {
  char kind; /* 'J' julian 1..365 without Feb 29, 'N' zero-based day of year, 'M' month.week.day */
  int day, week, mon;
  int32_t time; /* seconds after local midnight; may be negative or past 24h */
} tz_rule;

struct herald_tz {
  char *name;
  int64_t *tx;   /* transition instants, ascending */
  uint8_t *txi;  /* index into types for each transition */
  size_t ntx;
  tz_type *types;
  size_t ntypes;
  char *chars; /* abbreviations (types[i].abbr point into it) */
  /* The POSIX TZ footer, for instants past the last transition (or a zone with none). */
  int has_rule;  /* 0 none, 1 fixed std only, 2 std + dst with rules */
  tz_type rstd, rdst;
  char rstd_abbr[32], rdst_abbr[32];
  tz_rule rstart, rend;
};

const char *herald_tz_name(const herald_tz *tz) { return tz->name; }

void herald_tz_free(herald_tz *tz) {
  if (!tz) return;
  free(tz->name);
  free(tz->tx);
  free(tz->txi);
  free(tz->types);
  free(tz->chars);
  free(tz);
}

/* POSIX TZ string parsing, as Go's tzset: returns 1 on success. */
static int tzs_name(const char **ps, char *out, size_t outlen) {
  const char *s = *ps;
  size_t n = 0;
  if (*s == '<') {
    const char *e = strchr(s, '>');
    if (!e) return 0;
    n = (size_t)(e - s - 1);
    if (n + 1 > outlen) return 0;
    memcpy(out, s + 1, n);
    out[n] = '\0';
    *ps = e + 1;
    return 1;
  }
  while (isalpha((unsigned char)s[n])) n++;
  if (n < 3 || n + 1 > outlen) return 0;
  memcpy(out, s, n);
  out[n] = '\0';
  *ps = s + n;
  return 1;
}

/* [+-]hh[:mm[:ss]], returns seconds (sign as written). */
static int tzs_offset(const char **ps, int32_t *out) {
  const char *s = *ps;
  int neg = 0;
  if (*s == '+' || *s == '-') {
    neg = *s == '-';
    s++;
  }
  if (!isdigit((unsigned char)*s)) return 0;
  long h = 0, m = 0, sec = 0;
  while (isdigit((unsigned char)*s)) h = h * 10 + (*s++ - '0');
  if (h > 168) return 0;
  if (*s == ':') {
    s++;
    if (!isdigit((unsigned char)*s)) return 0;
    while (isdigit((unsigned char)*s)) m = m * 10 + (*s++ - '0');
    if (m > 59) return 0;
    if (*s == ':') {
      s++;
      if (!isdigit((unsigned char)*s)) return 0;
      while (isdigit((unsigned char)*s)) sec = sec * 10 + (*s++ - '0');
      if (sec > 59) return 0;
    }
  }
  long v = h * 3600 + m * 60 + sec;
  *out = (int32_t)(neg ? -v : v);
  *ps = s;
  return 1;
}

static int tzs_num(const char **ps, int lo, int hi, int *out) {
  const char *s = *ps;
  if (!isdigit((unsigned char)*s)) return 0;
  long v = 0;
  while (isdigit((unsigned char)*s)) {
    v = v * 10 + (*s++ - '0');
    if (v > hi) return 0;
  }
  if (v < lo) return 0;
  *out = (int)v;
  *ps = s;
  return 1;
}

static int tzs_rule(const char **ps, tz_rule *r) {
  const char *s = *ps;
  memset(r, 0, sizeof *r);
  if (*s == 'J') {
    s++;
    r->kind = 'J';
    if (!tzs_num(&s, 1, 365, &r->day)) return 0;
  } else if (*s == 'M') {
    s++;
    r->kind = 'M';
    if (!tzs_num(&s, 1, 12, &r->mon) || *s++ != '.' || !tzs_num(&s, 1, 5, &r->week) ||
        *s++ != '.' || !tzs_num(&s, 0, 6, &r->day))
      return 0;
  } else {
    r->kind = 'N';
    if (!tzs_num(&s, 0, 365, &r->day)) return 0;
  }
  r->time = 7200;
  if (*s == '/') {
    s++;
    if (!tzs_offset(&s, &r->time)) return 0;
  }
  *ps = s;
  return 1;
}

static int tz_parse_rule(herald_tz *tz, const char *s) {
  if (!*s) return 1;
  int32_t off;
  if (!tzs_name(&s, tz->rstd_abbr, sizeof tz->rstd_abbr) || !tzs_offset(&s, &off)) return 0;
  tz->rstd.off = -off;
  tz->rstd.isdst = 0;
  tz->rstd.abbr = tz->rstd_abbr;
  if (*s == '\0') {
    tz->has_rule = 1;
    return 1;
  }
  if (!tzs_name(&s, tz->rdst_abbr, sizeof tz->rdst_abbr)) return 0;
  tz->rdst.isdst = 1;
  tz->rdst.abbr = tz->rdst_abbr;
  if (*s == '\0' || *s == ',') {
    tz->rdst.off = tz->rstd.off + 3600;
  } else {
    if (!tzs_offset(&s, &off)) return 0;
    tz->rdst.off = -off;
  }
  if (*s == '\0') {
    /* Go's default: the US rules. */
    const char *dflt = ",M3.2.0,M11.1.0";
    s = dflt;
  }
  if (*s++ != ',' || !tzs_rule(&s, &tz->rstart) || *s++ != ',' || !tzs_rule(&s, &tz->rend) ||
      *s != '\0')
    return 0;
  tz->has_rule = 2;
  return 1;
}

/* Seconds from the start of `year` (UTC) to the rule's moment, for a zone at offset `off`. */
static int64_t rule_time(int64_t year, const tz_rule *r, int32_t off) {
  int64_t s = 0;
  switch (r->kind) {
  case 'J':
    s = (int64_t)(r->day - 1) * 86400;
    if (is_leap(year) && r->day >= 60) s += 86400;
    break;
  case 'N':
    s = (int64_t)r->day * 86400;
    break;
  default: {
    int64_t first = days_from_civil(year, r->mon, 1);
    int dow = (int)floor_mod(first + 4, 7); /* weekday of the 1st */
    int d = r->day - dow;
    if (d < 0) d += 7;
    for (int i = 1; i < r->week; i++) {
      if (d + 7 >= days_in_month(year, r->mon)) break;
      d += 7;
    }
    s = (first - days_from_civil(year, 1, 1) + d) * 86400;
  }
  }
  return s + r->time - off;
}

static const tz_type *tz_rule_lookup(const herald_tz *tz, int64_t t) {
  if (tz->has_rule == 1) return &tz->rstd;
  int64_t days = floor_div(t, 86400);
  int64_t y;
  int m, d;
  civil_from_days(days, &y, &m, &d);
  int64_t ysec = t - days_from_civil(y, 1, 1) * 86400;
  int64_t start = rule_time(y, &tz->rstart, tz->rstd.off);
  int64_t end = rule_time(y, &tz->rend, tz->rdst.off);
  const tz_type *in = &tz->rdst, *out = &tz->rstd;
  if (end < start) {
    int64_t x = start;
    start = end;
    end = x;
    in = &tz->rstd;
    out = &tz->rdst;
  }
  if (ysec < start || ysec >= end) return out;
  return in;
}

static const tz_type *tz_lookup(const herald_tz *tz, int64_t t) {
  if (tz->ntx == 0 || t >= tz->tx[tz->ntx - 1]) {
    if (tz->has_rule) return tz_rule_lookup(tz, t);
    if (tz->ntx == 0) return &tz->types[0];
    return &tz->types[tz->txi[tz->ntx - 1]];
  }
  if (t < tz->tx[0]) {
    /* Go's lookupFirstZone. */
    int used = 0;
    for (size_t i = 0; i < tz->ntx; i++)
      if (tz->txi[i] == 0) used = 1;
    if (!used) return &tz->types[0];
    if (tz->types[tz->txi[0]].isdst)
      for (int zi = (int)tz->txi[0] - 1; zi >= 0; zi--)
        if (!tz->types[zi].isdst) return &tz->types[zi];
    for (size_t zi = 0; zi < tz->ntypes; zi++)
      if (!tz->types[zi].isdst) return &tz->types[zi];
    return &tz->types[0];
  }
  size_t lo = 0, hi = tz->ntx; /* tx[lo] <= t < tx[hi] */
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (tz->tx[mid] <= t) lo = mid;
    else hi = mid;
  }
  return &tz->types[tz->txi[lo]];
}

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static int64_t be64(const unsigned char *p) {
  return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/* Parses TZif data (RFC 8536) into tz. Returns 1 on success. */
static int tz_parse_tzif(herald_tz *tz, const unsigned char *p, size_t len) {
  if (len < 44 || memcmp(p, "TZif", 4) != 0) return 0;
  int version = p[4] ? p[4] - '0' : 1;
  size_t cnt[6];
  for (int i = 0; i < 6; i++) cnt[i] = be32(p + 20 + 4 * i);
  size_t isut = cnt[0], isstd = cnt[1], leap = cnt[2], timecnt = cnt[3], typecnt = cnt[4],
         charcnt = cnt[5];
  size_t tsize = 4;
  size_t off = 44;
  if (version >= 2) {
    size_t v1 = timecnt * 4 + timecnt + typecnt * 6 + charcnt + leap * 8 + isstd + isut;
    off += v1;
    if (off + 44 > len || memcmp(p + off, "TZif", 4) != 0) return 0;
    for (int i = 0; i < 6; i++) cnt[i] = be32(p + off + 20 + 4 * i);
    isut = cnt[0], isstd = cnt[1], leap = cnt[2], timecnt = cnt[3], typecnt = cnt[4],
    charcnt = cnt[5];
    off += 44;
    tsize = 8;
  }
  size_t need = timecnt * tsize + timecnt + typecnt * 6 + charcnt + leap * (tsize + 4) + isstd + isut;
  if (typecnt == 0 || off + need > len) return 0;
  const unsigned char *q = p + off;
  tz->ntx = timecnt;
  tz->tx = herald_xcalloc(timecnt ? timecnt : 1, sizeof *tz->tx);
  tz->txi = herald_xcalloc(timecnt ? timecnt : 1, 1);
  for (size_t i = 0; i < timecnt; i++)
    tz->tx[i] = tsize == 8 ? be64(q + i * 8) : (int64_t)(int32_t)be32(q + i * 4);
  q += timecnt * tsize;
  for (size_t i = 0; i < timecnt; i++) {
    if (q[i] >= typecnt) return 0;
    tz->txi[i] = q[i];
  }
  q += timecnt;
  const unsigned char *types = q;
  q += typecnt * 6;
  tz->chars = herald_xcalloc(charcnt + 1, 1);
  memcpy(tz->chars, q, charcnt);
  q += charcnt;
  tz->ntypes = typecnt;
  tz->types = herald_xcalloc(typecnt, sizeof *tz->types);
  for (size_t i = 0; i < typecnt; i++) {
    tz->types[i].off = (int32_t)be32(types + i * 6);
    tz->types[i].isdst = types[i * 6 + 4];
    size_t ai = types[i * 6 + 5];
    tz->types[i].abbr = ai < charcnt ? tz->chars + ai : "";
  }
  q += leap * (tsize + 4) + isstd + isut;
  if (version >= 2 && q < p + len && *q == '\n') {
    const unsigned char *e = memchr(q + 1, '\n', (size_t)(p + len - q - 1));
    if (e) {
      char rule[128];
      size_t n = (size_t)(e - q - 1);
      if (n < sizeof rule) {
        memcpy(rule, q + 1, n);
        rule[n] = '\0';
        if (!tz_parse_rule(tz, rule)) tz->has_rule = 0; /* Go also ignores a bad footer */
      }
    }
  }
  return 1;
}

static herald_tz *tz_new_utc(const char *name) {
  herald_tz *tz = herald_xcalloc(1, sizeof *tz);
  tz->name = herald_xstrdup(name);
  tz->types = herald_xcalloc(1, sizeof *tz->types);
  tz->ntypes = 1;
  tz->chars = herald_xstrdup("UTC");
  tz->types[0].abbr = tz->chars;
  return tz;
}

static int tz_from_file(const char *path, const char *name, herald_tz **out, int *found) {
  size_t len = 0;
  int err = 0;
  char *data = herald_read_file(path, &len, &err);
  *found = data != NULL;
  if (!data) return 0;
  herald_tz *tz = herald_xcalloc(1, sizeof *tz);
  tz->name = herald_xstrdup(name);
  int ok = tz_parse_tzif(tz, (const unsigned char *)data, len);
  free(data);
  if (!ok) {
    herald_tz_free(tz);
    return 0;
  }
  *out = tz;
  return 1;
}

int herald_tz_load(const char *name, herald_tz **out, char *err, size_t errlen) {
  *out = NULL;
  if (!name || !*name || strcmp(name, "UTC") == 0) {
    *out = tz_new_utc("UTC");
    return 0;
  }
  if (strcmp(name, "Local") == 0) {
    const char *env = getenv("TZ");
    int found = 0;
    if (env && *env == ':') env++;
    if (env && *env) {
      if (*env == '/' && tz_from_file(env, "Local", out, &found)) return 0;
      if (*env != '/' && !strstr(env, "..")) {
        char path[512];
        snprintf(path, sizeof path, "/usr/share/zoneinfo/%s", env);
        if (tz_from_file(path, "Local", out, &found)) return 0;
      }
      /* Go falls back to UTC for a $TZ it cannot load. */
    } else if (tz_from_file("/etc/localtime", "Local", out, &found)) {
      return 0;
    }
    *out = tz_new_utc("Local");
    return 0;
  }
  if (strstr(name, "..") || name[0] == '/' || name[0] == '\\') {
    set_err(err, errlen, "time: invalid location name");
    return HERALD_EINVAL;
  }
  const char *dirs[] = {getenv("ZONEINFO"), "/usr/share/zoneinfo", "/usr/share/lib/zoneinfo",
                        "/usr/lib/locale/TZ", "/etc/zoneinfo"};
  int malformed = 0;
  for (size_t i = 0; i < HERALD_ARRAY_SIZE(dirs); i++) {
    if (!dirs[i] || !*dirs[i]) continue;
    char path[1024];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dirs[i], name) >= sizeof path) continue;
    int found = 0;
    if (tz_from_file(path, name, out, &found)) return 0;
    if (found) malformed = 1;
  }
  if (malformed) {
    set_err(err, errlen, "unknown time zone %s (malformed time zone information)", name);
    return HERALD_EINVAL;
  }
  set_err(err, errlen, "unknown time zone %s", name);
  return HERALD_ENOTFOUND;
}

static void civil_s(const herald_tz *tz, int64_t t, herald_civil *c) {
  const tz_type *ty = tz_lookup(tz, t);
  int64_t local = t + ty->off;
  int64_t days = floor_div(local, 86400);
  int64_t secs = local - days * 86400;
  civil_from_days(days, &c->year, &c->month, &c->day);
  c->hour = (int)(secs / 3600);
  c->minute = (int)(secs / 60 % 60);
  c->second = (int)(secs % 60);
  c->wday = (int)floor_mod(days + 4, 7);
  c->yday = (int)(days - days_from_civil(c->year, 1, 1) + 1);
  c->offset = ty->off;
  c->isdst = ty->isdst;
  c->abbr = ty->abbr;
  c->nsec = 0;
}

void herald_tz_civil(const herald_tz *tz, int64_t t_ns, herald_civil *out) {
  civil_s(tz, floor_div(t_ns, NS_PER_S), out);
  out->nsec = (int)floor_mod(t_ns, NS_PER_S);
}

int64_t herald_tz_date(const herald_tz *tz, int64_t y, int64_t mon, int64_t d, int64_t h,
                       int64_t mi, int64_t s) {
  /* Normalise the month into the year, then add the rest linearly, as Go does. */
  int64_t m0 = mon - 1;
  y += floor_div(m0, 12);
  m0 = floor_mod(m0, 12);
  int64_t local = (days_from_civil(y, (int)m0 + 1, 1) + d - 1) * 86400 + h * 3600 + mi * 60 + s;
  /* Go: guess the offset at `local` read as UTC; if local - offset leaves that offset's
   * period, take the offset in force at local - offset. Both cases reduce to this. */
  int32_t o1 = tz_lookup(tz, local)->off;
  int32_t o = tz_lookup(tz, local - o1)->off;
  return local - o;
}

size_t herald_time_format_go(int64_t t_ns, const herald_tz *tz, char *buf, size_t len) {
  herald_civil c;
  herald_tz_civil(tz, t_ns, &c);
  char frac[12] = "";
  if (c.nsec) {
    snprintf(frac, sizeof frac, ".%09d", c.nsec);
    size_t n = strlen(frac);
    while (n > 1 && frac[n - 1] == '0') frac[--n] = '\0'; /* frac[0] is the '.' */
  }
  int zone = c.offset / 60;
  char sign = zone < 0 ? '-' : '+';
  if (zone < 0) zone = -zone;
  char abbr[40];
  if (c.abbr && *c.abbr) snprintf(abbr, sizeof abbr, "%s", c.abbr);
  else snprintf(abbr, sizeof abbr, "%c%02d%02d", sign, zone / 60, zone % 60);
  int n = snprintf(buf, len, "%04lld-%02d-%02d %02d:%02d:%02d%s %c%02d%02d %s", (long long)c.year,
                   c.month, c.day, c.hour, c.minute, c.second, frac, sign, zone / 60, zone % 60,
                   abbr);
  return n < 0 ? 0 : (size_t)n;
}

/* ---- cron ---- */

#define STAR_BIT (UINT64_C(1) << 63)

struct herald_cron {
  uint64_t second, minute, hour, dom, month, dow;
  int64_t every_ns; /* > 0: "@every" */
  herald_tz *tz;
};

typedef struct bounds {
  const char *field;
  unsigned min, max;
  const char *const *names; /* indexed from min, NULL-terminated */
} bounds;

static const char *const MONTH_NAMES[] = {"jan", "feb", "mar", "apr", "may", "jun", "jul",
                                          "aug", "sep", "oct", "nov", "dec", NULL};
static const char *const DOW_NAMES[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat", NULL};

static const bounds B_MINUTE = {"minute", 0, 59, NULL};
static const bounds B_HOUR = {"hour", 0, 23, NULL};
static const bounds B_DOM = {"day-of-month", 1, 31, NULL};
static const bounds B_MONTH = {"month", 1, 12, MONTH_NAMES};
static const bounds B_DOW = {"day-of-week", 0, 6, DOW_NAMES};

static uint64_t get_bits(unsigned lo, unsigned hi, unsigned step) {
  uint64_t bits = 0;
  for (unsigned i = lo; i <= hi; i += step) bits |= UINT64_C(1) << i;
  return bits;
}

static uint64_t all_bits(const bounds *b) { return get_bits(b->min, b->max, 1) | STAR_BIT; }

/* strconv.Atoi on s[0..n), then robfig's negative check. */
static int parse_uint(const char *s, size_t n, unsigned *out, char *msg, size_t msglen) {
  size_t i = 0;
  int neg = 0;
  if (n > 0 && (s[0] == '+' || s[0] == '-')) {
    neg = s[0] == '-';
    i = 1;
  }
  if (i == n) goto syntax;
  long long v = 0;
  int range = 0;
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') goto syntax;
    if (v > (INT64_MAX - 9) / 10) range = 1;
    else v = v * 10 + (s[i] - '0');
  }
  if (range) {
    snprintf(msg, msglen, "failed to parse int from %.*s: strconv.Atoi: parsing \"%.*s\": value out of range",
             (int)n, s, (int)n, s);
    return -1;
  }
  if (neg && v > 0) {
    snprintf(msg, msglen, "negative number (-%lld) not allowed: %.*s", v, (int)n, s);
    return -1;
  }
  *out = v > 100000 ? 100000 : (unsigned)v; /* anything this big fails the range check anyway */
  return 0;
syntax:
  snprintf(msg, msglen, "failed to parse int from %.*s: strconv.Atoi: parsing \"%.*s\": invalid syntax",
           (int)n, s, (int)n, s);
  return -1;
}

static int parse_int_or_name(const char *s, size_t n, const bounds *b, unsigned *out, char *msg,
                             size_t msglen) {
  if (b->names)
    for (unsigned i = 0; b->names[i]; i++)
      if (strlen(b->names[i]) == n && strncasecmp(b->names[i], s, n) == 0) {
        *out = b->min + i;
        return 0;
      }
  return parse_uint(s, n, out, msg, msglen);
}

/* robfig's getRange: number | number "-" number [ "/" number ], or "*" / "?". */
static int get_range(const char *expr, size_t n, const bounds *b, uint64_t *bits, char *msg,
                     size_t msglen) {
  const char *slash = memchr(expr, '/', n);
  size_t rlen = slash ? (size_t)(slash - expr) : n;
  if (slash && memchr(slash + 1, '/', n - rlen - 1)) {
    snprintf(msg, msglen, "too many slashes: %.*s", (int)n, expr);
    return -1;
  }
  const char *hy = memchr(expr, '-', rlen);
  int single = hy == NULL;
  unsigned start, end, step = 1;
  uint64_t extra = 0;
  size_t lowlen = hy ? (size_t)(hy - expr) : rlen;
  if (lowlen == 1 && (expr[0] == '*' || expr[0] == '?')) {
    start = b->min;
    end = b->max;
    extra = STAR_BIT;
  } else {
    if (parse_int_or_name(expr, lowlen, b, &start, msg, msglen) < 0) return -1;
    if (!hy) {
      end = start;
    } else {
      const char *hi = hy + 1;
      size_t hilen = rlen - lowlen - 1;
      if (memchr(hi, '-', hilen)) {
        snprintf(msg, msglen, "too many hyphens: %.*s", (int)n, expr);
        return -1;
      }
      if (parse_int_or_name(hi, hilen, b, &end, msg, msglen) < 0) return -1;
    }
  }
  if (slash) {
    if (parse_uint(slash + 1, n - rlen - 1, &step, msg, msglen) < 0) return -1;
    if (single) end = b->max; /* "N/step" means "N-max/step" */
    if (step > 1) extra = 0;
  }
  if (start < b->min) {
    snprintf(msg, msglen, "beginning of range (%u) below minimum (%u): %.*s", start, b->min, (int)n, expr);
    return -1;
  }
  if (end > b->max) {
    snprintf(msg, msglen, "end of range (%u) above maximum (%u): %.*s", end, b->max, (int)n, expr);
    return -1;
  }
  if (start > end) {
    snprintf(msg, msglen, "beginning of range (%u) beyond end of range (%u): %.*s", start, end, (int)n, expr);
    return -1;
  }
  if (step == 0) {
    snprintf(msg, msglen, "step of range should be a positive number: %.*s", (int)n, expr);
    return -1;
  }
  *bits = get_bits(start, end, step) | extra;
  return 0;
}

/* A comma-separated list of ranges; empty elements are skipped (strings.FieldsFunc). */
static int get_field(const char *f, size_t n, const bounds *b, uint64_t *out, char *err,
                     size_t errlen) {
  uint64_t bits = 0;
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    while (j < n && f[j] != ',') j++;
    if (j > i) {
      uint64_t r;
      char msg[200];
      if (get_range(f + i, j - i, b, &r, msg, sizeof msg) < 0) {
        set_err(err, errlen, "%s field \"%.*s\": %s", b->field, (int)n, f, msg);
        return -1;
      }
      bits |= r;
    }
    i = j + 1;
  }
  *out = bits;
  return 0;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static int parse_descriptor(herald_cron *c, const char *spec, char *err, size_t errlen) {
  c->second = 1;
  c->minute = 1;
  c->hour = 1;
  c->dom = all_bits(&B_DOM);
  c->month = all_bits(&B_MONTH);
  c->dow = all_bits(&B_DOW);
  if (strcmp(spec, "@yearly") == 0 || strcmp(spec, "@annually") == 0) {
    c->dom = UINT64_C(1) << 1;
    c->month = UINT64_C(1) << 1;
  } else if (strcmp(spec, "@monthly") == 0) {
    c->dom = UINT64_C(1) << 1;
  } else if (strcmp(spec, "@weekly") == 0) {
    c->dow = 1;
  } else if (strcmp(spec, "@daily") == 0 || strcmp(spec, "@midnight") == 0) {
    /* defaults */
  } else if (strcmp(spec, "@hourly") == 0) {
    c->hour = all_bits(&B_HOUR);
  } else if (strncmp(spec, "@every ", 7) == 0) {
    int64_t d;
    char msg[200];
    if (herald_parse_duration_msg(spec + 7, &d, msg, sizeof msg) < 0) {
      set_err(err, errlen, "failed to parse duration %s: %s", spec, msg);
      return -1;
    }
    /* robfig's Every(): at least one second, fractions of a second dropped. */
    if (d < NS_PER_S) d = NS_PER_S;
    c->every_ns = d - d % NS_PER_S;
  } else {
    set_err(err, errlen, "unrecognized descriptor: %s", spec);
    return -1;
  }
  return 0;
}

int herald_cron_parse(const char *expr, const char *default_tz, unsigned flags, herald_cron **out,
                      char *err, size_t errlen) {
  *out = NULL;
  if (!expr || !*expr) {
    set_err(err, errlen, "empty spec string");
    return HERALD_EINVAL;
  }
  herald_cron *c = herald_xcalloc(1, sizeof *c);
  const char *spec = expr;
  const char *zone = default_tz;
  char zbuf[256];
  if (strncmp(spec, "TZ=", 3) == 0 || strncmp(spec, "CRON_TZ=", 8) == 0) {
    const char *eq = strchr(spec, '=');
    const char *sp = strchr(spec, ' ');
    if (!sp) {
      set_err(err, errlen, "missing fields after time zone in spec \"%s\"", expr);
      free(c);
      return HERALD_EINVAL;
    }
    size_t zl = (size_t)(sp - eq - 1);
    if (zl >= sizeof zbuf) zl = sizeof zbuf - 1;
    memcpy(zbuf, eq + 1, zl);
    zbuf[zl] = '\0';
    zone = zbuf;
    spec = sp;
    while (is_space(*spec)) spec++;
    char msg[300];
    int r = herald_tz_load(zone, &c->tz, msg, sizeof msg);
    if (r < 0) {
      set_err(err, errlen, "provided bad location %s: %s", zone, msg);
      free(c);
      return r;
    }
  } else {
    char msg[300];
    int r = herald_tz_load(zone, &c->tz, msg, sizeof msg);
    if (r < 0) {
      set_err(err, errlen, "%s", msg);
      free(c);
      return r;
    }
  }

  if (spec[0] == '@') {
    if (!(flags & HERALD_CRON_DESCRIPTORS)) {
      set_err(err, errlen, "parser does not accept descriptors: %s", spec);
      goto fail;
    }
    if (parse_descriptor(c, spec, err, errlen) < 0) goto fail;
    *out = c;
    return 0;
  }

  /* strings.Fields */
  const char *fs[8];
  size_t fl[8];
  int nf = 0;
  for (const char *p = spec; *p;) {
    while (is_space(*p)) p++;
    if (!*p) break;
    const char *q = p;
    while (*q && !is_space(*q)) q++;
    if (nf < 8) {
      fs[nf] = p;
      fl[nf] = (size_t)(q - p);
    }
    nf++;
    p = q;
  }
  if (nf != 5) {
    char list[200] = "";
    size_t used = 0;
    for (int i = 0; i < nf && i < 8 && used < sizeof list; i++)
      used += (size_t)snprintf(list + used, sizeof list - used, "%s%.*s", i ? " " : "", (int)fl[i], fs[i]);
    set_err(err, errlen, "expected exactly 5 fields, found %d: [%s]", nf, list);
    goto fail;
  }
  const bounds *bs[5] = {&B_MINUTE, &B_HOUR, &B_DOM, &B_MONTH, &B_DOW};
  uint64_t *dst[5] = {&c->minute, &c->hour, &c->dom, &c->month, &c->dow};
  for (int i = 0; i < 5; i++)
    if (get_field(fs[i], fl[i], bs[i], dst[i], err, errlen) < 0) goto fail;
  c->second = 1;
  *out = c;
  return 0;
fail:
  herald_cron_free(c);
  return HERALD_EINVAL;
}

void herald_cron_free(herald_cron *c) {
  if (!c) return;
  herald_tz_free(c->tz);
  free(c);
}

const herald_tz *herald_cron_zone(const herald_cron *c) { return c->tz; }

int herald_cron_is_every(const herald_cron *c, int64_t *every_ns) {
  if (c->every_ns > 0 && every_ns) *every_ns = c->every_ns;
  return c->every_ns > 0;
}

static int bit(uint64_t mask, int v) { return (mask >> v) & 1; }

static int day_matches(const herald_cron *s, const herald_civil *t) {
  int dom_match = bit(s->dom, t->day);
  int dow_match = bit(s->dow, t->wday);
  if ((s->dom & STAR_BIT) || (s->dow & STAR_BIT)) return dom_match && dow_match;
  return dom_match || dow_match;
}

/* Go's t.AddDate(0, months, days) on the local fields of t. */
static int64_t add_date(const herald_tz *tz, int64_t t, int months, int days) {
  herald_civil c;
  civil_s(tz, t, &c);
  return herald_tz_date(tz, c.year, c.month + months, c.day + days, c.hour, c.minute, c.second);
}

/* 1 when a field matches nothing (robfig accepts "," as an empty list), so no time ever
 * matches: spec_next would walk five years minute by minute to find that out (~1 s of loop). */
static int never_fires(const herald_cron *s) {
  uint64_t dom = s->dom & ~STAR_BIT, dow = s->dow & ~STAR_BIT;
  int day_never = ((s->dom | s->dow) & STAR_BIT) ? (!dom || !dow) : (!dom && !dow);
  return !(s->second & ~STAR_BIT) || !(s->minute & ~STAR_BIT) || !(s->hour & ~STAR_BIT) ||
         !(s->month & ~STAR_BIT) || day_never;
}

/* robfig/cron v3 SpecSchedule.Next, on whole seconds. */
static int64_t spec_next(const herald_cron *s, int64_t t) {
  if (never_fires(s)) return INT64_MIN;
  const herald_tz *loc = s->tz;
  herald_civil c;
  t += 1; /* the upcoming second */
  int added = 0;
  civil_s(loc, t, &c);
  int64_t year_limit = c.year + 5;

wrap:
  civil_s(loc, t, &c);
  if (c.year > year_limit) return INT64_MIN;

  while (!bit(s->month, c.month)) {
    if (!added) {
      added = 1;
      t = herald_tz_date(loc, c.year, c.month, 1, 0, 0, 0);
    }
    t = add_date(loc, t, 1, 0);
    civil_s(loc, t, &c);
    if (c.month == 1) goto wrap;
  }

  while (!day_matches(s, &c)) {
    if (!added) {
      added = 1;
      t = herald_tz_date(loc, c.year, c.month, c.day, 0, 0, 0);
    }
    t = add_date(loc, t, 0, 1);
    civil_s(loc, t, &c);
    /* Midnight may not exist on a DST day: get back to it. */
    if (c.hour != 0) {
      if (c.hour > 12) t += (int64_t)(24 - c.hour) * 3600;
      else t -= (int64_t)c.hour * 3600;
      civil_s(loc, t, &c);
    }
    if (c.day == 1) goto wrap;
  }

  while (!bit(s->hour, c.hour)) {
    if (!added) {
      added = 1;
      t = herald_tz_date(loc, c.year, c.month, c.day, c.hour, 0, 0);
    }
    t += 3600;
    civil_s(loc, t, &c);
    if (c.hour == 0) goto wrap;
  }

  while (!bit(s->minute, c.minute)) {
    if (!added) {
      added = 1;
      t -= floor_mod(t, 60); /* t.Truncate(time.Minute): on absolute time, not local */
    }
    t += 60;
    civil_s(loc, t, &c);
    if (c.minute == 0) goto wrap;
  }

  while (!bit(s->second, c.second)) {
    if (!added) added = 1;
    t += 1;
    civil_s(loc, t, &c);
    if (c.second == 0) goto wrap;
  }
  return t;
}

int64_t herald_cron_next(const herald_cron *c, int64_t after_ns) {
  if (c->every_ns > 0) return after_ns + c->every_ns - floor_mod(after_ns, NS_PER_S);
  int64_t r = spec_next(c, floor_div(after_ns, NS_PER_S));
  return r == INT64_MIN ? 0 : r * NS_PER_S;
}

int64_t herald_cron_prev(const herald_cron *c, int64_t at_ns) {
  int64_t at = floor_div(at_ns, NS_PER_S);
  if (c->every_ns > 0) return at * NS_PER_S;
  static const int64_t windows[] = {61, 3601, 2 * 86400, 33 * 86400, 367 * 86400, 5 * 367 * 86400};
  for (size_t i = 0; i < HERALD_ARRAY_SIZE(windows); i++) {
    int64_t x = spec_next(c, at - windows[i]), last = INT64_MIN;
    while (x != INT64_MIN && x <= at) {
      last = x;
      x = spec_next(c, x);
    }
    if (last != INT64_MIN) return last * NS_PER_S;
  }
  return 0;
}
