/*
 * bus_log.h: the embedded bus's write-ahead log on disk (`herald run --bus-dir DIR`): an
 * append-only segment log with group commit, read back at start (bus_log.c has the format
 * and why this over LMDB or SQLite).
 *
 *   publish --append(ev)--> buffer --commit: write + fdatasync on the thread pool-->
 *           committed(upto): every publish up to seq `upto` is on disk (the webhook's 200)
 *   every subscription acked --done(seq)--> a done record; a segment whose events are all
 *           done is deleted (oldest first)
 *   open: every segment read back; events published and not done are handed to found()
 */
#ifndef HERALD_BUS_LOG_H
#define HERALD_BUS_LOG_H

#include "event.h"

#include <stdint.h>
#include <uv.h>

typedef struct herald_bus_log herald_bus_log;

/* A group commit finished: every record appended with seq <= upto is durable (status 0), or
 * the write failed (status HERALD_EIO: those publishes are not durable). */
typedef void (*herald_bus_log_commit_cb)(void *data, uint64_t upto, int status);
/* An event found at open, published and not done; ev is lent (take a reference to keep it). */
typedef void (*herald_bus_log_found_cb)(void *data, uint64_t seq, uint32_t seg, herald_event *ev);
typedef void (*herald_bus_log_close_cb)(void *data);

/* Opens (creating) the log in dir, locking it against a second process, reads it back
 * (found() for each event still to deliver, in publish order) and starts a new segment.
 * Returns a new log, or NULL with *err set (reason logged). */
herald_bus_log *herald_bus_log_open(uv_loop_t *loop, const char *dir, herald_bus_log_found_cb found,
                                    herald_bus_log_commit_cb committed, void *data, int *err);
/* Appends a publish record for ev; returns its sequence number and sets *seg to its segment.
 * Durable once committed() reports a seq at least as high. Starts a commit if none runs.
 * Returns 0 once a write has failed (the log takes nothing more: the caller refuses it). */
uint64_t herald_bus_log_append(herald_bus_log *l, const herald_event *ev, uint32_t *seg);
/* Records that the event (seq, seg) was acked by every subscription: it will not be delivered
 * again after a restart (unless the record is lost in a crash before it reaches the disk). */
void herald_bus_log_done(herald_bus_log *l, uint64_t seq, uint32_t seg);
/* Writes and syncs what is pending, waits for the commit running, closes and frees the log;
 * cb(data) runs on the loop after the last committed(). */
void herald_bus_log_close(herald_bus_log *l, herald_bus_log_close_cb cb, void *data);

#endif
