/*
 * metrics.c: the metric registry and its Prometheus text rendering.
 *
 * Families keep creation order (stable output). Series are created at start-up (Argo
 * initialises its counters to 0 per source/event and sensor/trigger, so dashboards see them
 * before the first event) and updated with plain adds on the loop thread.
 */
#include "metrics.h"
#include "common.h"

#include <stdarg.h>
#include <string.h>

typedef struct herald_metric_family {
  char *name, *help;
  herald_metric_kind kind;
  herald_metric *series, *last;
  struct herald_metric_family *next;
} family;

static family *families, *families_tail;

/* Series are looked up by name + labels when instances are created: a hash keeps creating
 * thousands of sensors linear. */
#define SERIES_BUCKETS 4096
static struct bucket {
  herald_metric *m;
  struct bucket *next;
} *series_index[SERIES_BUCKETS];

static uint32_t series_hash(const char *name, const char *labels) {
  uint32_t h = 2166136261u;
  for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
  h = (h ^ '{') * 16777619u;
  for (const char *p = labels; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
  return h % SERIES_BUCKETS;
}

static family *family_get(const char *name, const char *help, herald_metric_kind kind) {
  for (family *f = families; f; f = f->next)
    if (strcmp(f->name, name) == 0) return f;
  family *f = herald_xcalloc(1, sizeof *f);
  f->name = herald_xstrdup(name);
  f->help = herald_xstrdup(help ? help : "");
  f->kind = kind;
  if (families_tail) families_tail->next = f;
  else families = f;
  families_tail = f;
  return f;
}

herald_metric *herald_metric_get(const char *name, const char *help, herald_metric_kind kind, ...) {
  family *f = family_get(name, help, kind);
  herald_buf labels = HERALD_BUF_INIT;
  va_list ap;
  va_start(ap, kind);
  for (const char *k; (k = va_arg(ap, const char *)) != NULL;) {
    const char *v = va_arg(ap, const char *);
    if (labels.len) herald_buf_putc(&labels, ',');
    herald_buf_printf(&labels, "%s=\"", k);
    for (const char *p = v; *p; p++) { /* Prometheus label escaping */
      if (*p == '\\' || *p == '"') herald_buf_putc(&labels, '\\'), herald_buf_putc(&labels, *p);
      else if (*p == '\n') herald_buf_puts(&labels, "\\n");
      else herald_buf_putc(&labels, *p);
    }
    herald_buf_putc(&labels, '"');
  }
  va_end(ap);
  const char *ls = labels.len ? labels.data : "";
  uint32_t h = series_hash(name, ls);
  for (struct bucket *b = series_index[h]; b; b = b->next) {
    if (b->m->family == f && strcmp(b->m->labels, ls) == 0) {
      herald_buf_free(&labels);
      return b->m;
    }
  }
  herald_metric *m = herald_xcalloc(1, sizeof *m);
  struct bucket *b = herald_xmalloc(sizeof *b);
  b->m = m;
  b->next = series_index[h];
  series_index[h] = b;
  m->family = f;
  m->labels = herald_xstrdup(ls);
  herald_buf_free(&labels);
  if (f->last) f->last->next = m;
  else f->series = m;
  f->last = m;
  return m;
}

static void sample(herald_buf *b, const char *name, const char *suffix, const char *labels,
                   double v) {
  if (*labels) herald_buf_printf(b, "%s%s{%s} %.17g\n", name, suffix, labels, v);
  else herald_buf_printf(b, "%s%s %.17g\n", name, suffix, v);
}

void herald_metrics_render(herald_buf *b) {
  static const char *const kinds[] = {"counter", "gauge", "summary"};
  for (family *f = families; f; f = f->next) {
    herald_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, kinds[f->kind]);
    for (herald_metric *m = f->series; m; m = m->next) {
      if (f->kind == HERALD_SUMMARY) {
        sample(b, f->name, "_sum", m->labels, m->value);
        sample(b, f->name, "_count", m->labels, m->count);
      } else {
        sample(b, f->name, "", m->labels, m->value);
      }
    }
  }
}

void herald_metrics_free(void) {
  for (int i = 0; i < SERIES_BUCKETS; i++) {
    while (series_index[i]) {
      struct bucket *b = series_index[i];
      series_index[i] = b->next;
      free(b);
    }
  }
  while (families) {
    family *f = families;
    families = f->next;
    while (f->series) {
      herald_metric *m = f->series;
      f->series = m->next;
      free(m->labels);
      free(m);
    }
    free(f->name);
    free(f->help);
    free(f);
  }
  families_tail = NULL;
}
