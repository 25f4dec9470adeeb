/*
 * log.c: JSON log lines on stderr. Lines are built in a buffer and written with one write()
 * so lines from a process never interleave mid-line.
 */
#include "log.h"
#include "buf.h"
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static herald_log_level current_level = HLOG_INFO;
static int text_format; /* --log-format text: for people at a terminal */
static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

int herald_log_set_format(const char *name) {
  if (strcmp(name, "json") == 0) text_format = 0;
  else if (strcmp(name, "text") == 0) text_format = 1;
  else return HERALD_EINVAL;
  return 0;
}

/* The fields fragment ("k":v,...: JSON strings and numbers) as ` k=v` pairs, strings unquoted
 * unless they hold a space. */
static void text_fields(herald_buf *line, const char *f) {
  while (*f) {
    if (*f == ',') f++;
    if (*f != '"') break;
    herald_buf_putc(line, ' ');
    const char *k = ++f;
    while (*f && *f != '"') f += (*f == '\\' && f[1]) ? 2 : 1;
    herald_buf_append(line, k, (size_t)(f - k));
    if (*f) f++;
    if (*f == ':') f++;
    herald_buf_putc(line, '=');
    if (*f == '"') {
      const char *v = f + 1, *e = v;
      int space = 0;
      while (*e && *e != '"') {
        if (*e == ' ') space = 1;
        e += (*e == '\\' && e[1]) ? 2 : 1;
      }
      if (space) herald_buf_append(line, f, (size_t)(e - f) + (*e ? 1 : 0));
      else herald_buf_append(line, v, (size_t)(e - v));
      f = *e ? e + 1 : e;
    } else {
      const char *v = f;
      while (*f && *f != ',') f++;
      herald_buf_append(line, v, (size_t)(f - v));
    }
  }
}

void herald_log_set_level(herald_log_level level) {
  current_level = level;
}

int herald_log_parse_level(const char *s, herald_log_level *out) {
  for (int i = 0; i <= HLOG_OFF; i++) {
    if (strcmp(s, level_names[i]) == 0) {
      *out = (herald_log_level)i;
      return 0;
    }
  }
  if (strcmp(s, "warning") == 0) {
    *out = HLOG_WARN;
    return 0;
  }
  return HERALD_EINVAL;
}

int herald_log_enabled(herald_log_level level) {
  return level >= current_level && level < HLOG_OFF;
}

static void vlog(const herald_logger *lg, herald_log_level level, const char *fields,
                 const char *fmt, va_list ap) {
  if (!herald_log_enabled(level)) return;
  char ts[40];
  herald_format_rfc3339(herald_now_ns(), ts, sizeof ts);
  herald_buf msg = HERALD_BUF_INIT, line = HERALD_BUF_INIT;
  herald_buf_vprintf(&msg, fmt, ap);
  const char *name = lg && lg->name ? lg->name : "herald";
  if (text_format) {
    static const char *const upper[] = {"DEBUG", "INFO ", "WARN ", "ERROR", "OFF  "};
    herald_buf_printf(&line, "%s %s %s: ", ts, upper[level], name);
    herald_buf_append(&line, msg.data ? msg.data : "", msg.len);
    if (fields && *fields) text_fields(&line, fields);
    herald_buf_putc(&line, '\n');
  } else {
    herald_buf_printf(&line, "{\"ts\":\"%s\",\"level\":\"%s\",\"logger\":", ts, level_names[level]);
    herald_buf_json_string(&line, name, strlen(name));
    herald_buf_puts(&line, ",\"msg\":");
    herald_buf_json_string(&line, msg.data ? msg.data : "", msg.len);
    if (fields && *fields) {
      herald_buf_putc(&line, ',');
      herald_buf_puts(&line, fields);
    }
    herald_buf_puts(&line, "}\n");
  }
  size_t off = 0;
  while (off < line.len) {
    ssize_t w = write(STDERR_FILENO, line.data + off, line.len - off);
    if (w <= 0) break;
    off += (size_t)w;
  }
  herald_buf_free(&msg);
  herald_buf_free(&line);
}

void herald_log(const herald_logger *lg, herald_log_level level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(lg, level, NULL, fmt, ap);
  va_end(ap);
}

void herald_logf(const herald_logger *lg, herald_log_level level, const char *fields,
                 const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(lg, level, fields, fmt, ap);
  va_end(ap);
}

void herald_log_limited(herald_logger *lg, herald_log_level level, const char *fmt, ...) {
  if (!herald_log_enabled(level)) return;
  uint64_t now = herald_mono_ns();
  if (now - lg->window_start_ns >= 1000000000ull) {
    lg->window_start_ns = now;
    lg->in_window = 0;
  }
  if (lg->in_window >= 10) {
    lg->suppressed++;
    return;
  }
  lg->in_window++;
  char fields[64] = "";
  if (lg->suppressed) {
    snprintf(fields, sizeof fields, "\"suppressed\":%u", lg->suppressed);
    lg->suppressed = 0;
  }
  va_list ap;
  va_start(ap, fmt);
  vlog(lg, level, fields, fmt, ap);
  va_end(ap);
}
