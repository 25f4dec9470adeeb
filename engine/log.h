/*
 * log.h: structured JSON log lines on stderr, one per call:
 *   {"ts":"2026-11-25T21:05:26.123456789Z","level":"info","logger":"source:webhook:es/ev","msg":"..."}
 * Each source, sensor and trigger instance owns a herald_logger naming it, so every line says
 * where it came from. The level is process-wide (--log-level, env LOG_LEVEL).
 */
#ifndef HERALD_LOG_H
#define HERALD_LOG_H

#include <stdint.h>

typedef enum {
  HLOG_DEBUG = 0,
  HLOG_INFO = 1,
  HLOG_WARN = 2,
  HLOG_ERROR = 3,
  HLOG_OFF = 4,
} herald_log_level;

typedef struct herald_logger {
  const char *name; /* e.g. "sensor:webhook-sensor/trigger:log-trigger"; not owned */
  /* Rate limit for herald_log_limited(): at most `burst` lines per second per logger. */
  uint64_t window_start_ns;
  uint32_t in_window;
  uint32_t suppressed;
} herald_logger;

void herald_log_set_level(herald_log_level level);
/* Parses "debug|info|warn|error"; returns 0 or HERALD_EINVAL. */
int herald_log_parse_level(const char *s, herald_log_level *out);
/* "json" (the default: one JSON object a line) or "text" (for a terminal); HERALD_EINVAL else. */
int herald_log_set_format(const char *name);
int herald_log_enabled(herald_log_level level);

/* lg may be NULL (logger "herald"). */
void herald_log(const herald_logger *lg, herald_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like herald_log, with extra members: `fields` is raw JSON members without braces, e.g.
 * "\"eventID\":\"abc\",\"status\":503" (the caller escapes them), or NULL. */
void herald_logf(const herald_logger *lg, herald_log_level level, const char *fields,
                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Like herald_log but at most 10 lines per second per logger; the rest are counted and the
 * count is reported on the next line that gets through (no floods when a peer is down). */
void herald_log_limited(herald_logger *lg, herald_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
