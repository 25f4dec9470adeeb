/*
 * metrics.h: Prometheus counters and summaries with Argo's metric names, rendered in the text
 * exposition format at GET /metrics.
 *
 * A metric is one series (name + label set), created once at start-up and updated on the hot
 * path with a plain add (single-threaded loop: no atomics needed).
 */
#ifndef HERALD_METRICS_H
#define HERALD_METRICS_H

#include "buf.h"

typedef enum { HERALD_COUNTER, HERALD_GAUGE, HERALD_SUMMARY } herald_metric_kind;

typedef struct herald_metric {
  double value; /* counter/gauge value; summary sum. First: herald/engine.lua adds to it via FFI */
  double count; /* summary count */
  struct herald_metric *next;
  const struct herald_metric_family *family;
  char *labels; /* rendered label set without braces: a="x",b="y" */
} herald_metric;

/* Returns the series for name{labels}, creating it (at 0) the first time. `labels` holds
 * alternating keys and values, NULL-terminated: ("sensor_name", "s", "trigger_name", "t", NULL).
 * Never returns NULL. */
herald_metric *herald_metric_get(const char *name, const char *help, herald_metric_kind kind, ...);

static inline void herald_metric_inc(herald_metric *m) { m->value += 1; }
static inline void herald_metric_add(herald_metric *m, double v) { m->value += v; }
static inline void herald_metric_set(herald_metric *m, double v) { m->value = v; }
static inline void herald_metric_observe(herald_metric *m, double v) { m->value += v, m->count += 1; }

/* Appends every metric in the text format to b. */
void herald_metrics_render(herald_buf *b);
/* Frees every metric (at exit). */
void herald_metrics_free(void);

#endif
