/*
 * spill.h: the spill file: what a drain that ran out of time could not deliver, written at the
 * end of the shutdown and replayed by the next start (spill.c).
 */
#ifndef HERALD_SPILL_H
#define HERALD_SPILL_H

#include "engine.h"

#include <stdint.h>

/* The spill file: --state-dir (or --bus-dir)/spill.jsonl as main.lua configures it, else
 * $XDG_STATE_HOME/herald/spill.jsonl. Owned by spill.c. */
const char *herald__spill_path(herald_engine *eng);
/* Adds ev to what herald__spill_write writes (a copy is made). */
void herald__spill_event(herald_engine *eng, const herald_event *ev);
/* Adds the events of the action table at action_idx (its `events` field) the same way; returns
 * how many. For an action whose bus delivery was already acked (at most once). */
uint64_t herald__spill_action(herald_engine *eng, lua_State *L, int action_idx);
/* Writes what was spilled, and what the replay has not had accepted yet, to the spill file.
 * Returns the number of events written, negative (minus that number) when the write failed,
 * 0 when there was nothing (the file is left alone). Stops the replay. */
int64_t herald__spill_write(herald_engine *eng);

/* Reads the spill file left by the last stop and publishes its events (deleting the file once
 * the bus accepted them all). Returns how many it found. */
int herald__spill_replay_start(herald_engine *eng);
/* Events of the replay not yet accepted by the bus. */
size_t herald__spill_replay_pending(void);
/* Releases the replay's handles and memory (after the bus closed). */
void herald__spill_close(void);

#endif
