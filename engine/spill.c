/*
 * spill.c: the spill file, where a drain that ran out of time puts what it could not deliver,
 * and its replay on the next start.
 *
 *   drain deadline: events still on the in-memory bus --herald__spill_event-->  \
 *                   at-most-once actions abandoned   --herald__spill_action--> -+-> buffer
 *   end of shutdown: herald__spill_write: buffer + replay not yet accepted --> FILE.tmp
 *                    --fsync, rename--> FILE (0600: events may carry secrets)
 *   next start:      herald__spill_replay_start: FILE --> publish each event (EBUSFULL: retry
 *                    on a timer) --> every one accepted by the bus --> unlink FILE
 *
 * The file has one structured-mode CloudEvent per line, exactly as herald_event_to_json writes
 * it (data last), so an operator can read it, and replay it elsewhere by hand if need be. The
 * file is deleted only once the bus has accepted every event in it (a durable bus: once they
 * are on disk), so a crash during the replay replays again (duplicates, never losses).
 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "spill.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { R_PENDING, R_PUBLISHING, R_DONE };

typedef struct replay_ev {
  herald_event *ev;
  int state;
} replay_ev;

static struct {
  herald_engine *eng;
  herald_buf out;        /* spilled lines waiting for herald__spill_write */
  uint64_t nout;         /* events in `out` */
  replay_ev *replay;     /* events read from the file at start */
  size_t nreplay, next;  /* next: first not yet published */
  size_t done;           /* accepted by the bus */
  uv_timer_t timer;      /* retries a publish the full bus refused */
  int timer_init, closed;
  char *path;
} S;

const char *herald__spill_path(herald_engine *eng) {
  if (!S.path) {
    if (eng->opts.spill_file && *eng->opts.spill_file) {
      S.path = herald_xstrdup(eng->opts.spill_file);
    } else {
      const char *state = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
      S.path = state && *state ? herald_xasprintf("%s/herald/spill.jsonl", state)
                               : herald_xasprintf("%s/.local/state/herald/spill.jsonl",
                                                  home && *home ? home : "/tmp");
    }
  }
  return S.path;
}

/* ---- writing ---- */

void herald__spill_event(herald_engine *eng, const herald_event *ev) {
  (void)eng;
  herald_event_to_json(ev, &S.out);
  herald_buf_putc(&S.out, '\n');
  S.nout++;
}

/* Pushes a Lua field of the table at idx as a C string (or dflt). Leaves it on the stack. */
static const char *field(lua_State *L, int idx, const char *k, const char *dflt) {
  lua_getfield(L, idx, k);
  const char *s = lua_tostring(L, -1);
  return s ? s : dflt;
}

uint64_t herald__spill_action(herald_engine *eng, lua_State *L, int action_idx) {
  uint64_t n = 0;
  int top = lua_gettop(L);
  /* stack: -> events */
  lua_getfield(L, action_idx, "events");
  int events = lua_gettop(L);
  if (!lua_istable(L, events)) {
    lua_settop(L, top);
    return 0;
  }
  lua_pushnil(L);
  while (lua_next(L, events)) {
    /* stack: events key ev -> context raw... */
    int ev_idx = lua_gettop(L);
    if (lua_istable(L, ev_idx)) {
      lua_getfield(L, ev_idx, "context");
      int ctx = lua_gettop(L);
      if (lua_istable(L, ctx)) {
        const char *id = field(L, ctx, "id", NULL);
        const char *time = field(L, ctx, "time", NULL);
        const char *source = field(L, ctx, "source", "");
        const char *subject = field(L, ctx, "subject", "");
        const char *type = field(L, ctx, "type", "");
        const char *ct = field(L, ctx, "datacontenttype", "application/json");
        size_t dlen = 0;
        lua_getfield(L, ev_idx, "raw"); /* the JSON text the event arrived with */
        const char *data = lua_tolstring(L, -1, &dlen);
        if (!data) { /* no raw text kept: encode the decoded data */
          lua_getglobal(L, "require");
          lua_pushliteral(L, "cjson");
          if (lua_pcall(L, 1, 1, 0) == 0) {
            lua_getfield(L, -1, "encode");
            lua_getfield(L, ev_idx, "data");
            if (lua_pcall(L, 1, 1, 0) == 0) data = lua_tolstring(L, -1, &dlen);
          }
        }
        herald_event *ev = data ? herald_event_new_full(id, time, source, subject, type, ct, data, dlen) : NULL;
        if (ev) {
          herald__spill_event(eng, ev);
          herald_event_unref(ev);
          n++;
        } else {
          herald_log(&eng->log, HLOG_ERROR, "drain: an event of an abandoned action could not be spilled (id %s)",
                     id ? id : "?");
        }
      }
    }
    lua_settop(L, ev_idx - 1); /* keep the key for lua_next */
  }
  lua_settop(L, top);
  return n;
}


static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w, n -= (size_t)w;
  }
  return 0;
}

int64_t herald__spill_write(herald_engine *eng) {
  S.closed = 1;
  if (S.timer_init) uv_timer_stop(&S.timer);
  /* what the replay had not had accepted yet goes back in the file, before the new spills */
  herald_buf all = HERALD_BUF_INIT;
  uint64_t n = 0;
  for (size_t i = 0; i < S.nreplay; i++) {
    if (S.replay[i].state == R_DONE) continue;
    herald_event_to_json(S.replay[i].ev, &all);
    herald_buf_putc(&all, '\n');
    n++;
  }
  herald_buf_append(&all, S.out.data, S.out.len);
  n += S.nout;
  herald_buf_free(&S.out);
  S.nout = 0;
  const char *path = herald__spill_path(eng);
  if (n == 0) {
    herald_buf_free(&all);
    return 0;
  }
  herald_mkdir_parents(path);
  char *tmp = herald_xasprintf("%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  int ok = fd >= 0 && write_all(fd, all.data, all.len) == 0 && fsync(fd) == 0;
  if (fd >= 0) close(fd);
  if (ok && rename(tmp, path) != 0) ok = 0;
  if (ok) { /* the rename itself must survive a power cut */
    const char *slash = strrchr(path, '/');
    char *dir = slash ? herald_xstrndup(path, slash == path ? 1 : (size_t)(slash - path)) : herald_xstrdup(".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) fsync(dfd), close(dfd);
    free(dir);
  }
  if (!ok) {
    herald_log(&eng->log, HLOG_ERROR, "drain: cannot write the spill file %s: %s; %llu event(s) are lost",
               path, strerror(errno), (unsigned long long)n);
    unlink(tmp);
  } else {
    herald_log(&eng->log, HLOG_WARN, "drain: %llu event(s) written to %s; the next start replays them",
               (unsigned long long)n, path);
  }
  free(tmp);
  herald_buf_free(&all);
  return ok ? (int64_t)n : -(int64_t)n;
}

/* ---- replay ---- */

static void pump(void);

static void on_published(void *data, int status) {
  replay_ev *r = &S.replay[(size_t)(uintptr_t)data];
  if (status != 0) { /* the bus is closing: written back by herald__spill_write */
    r->state = R_PENDING;
    return;
  }
  r->state = R_DONE;
  if (++S.done == S.nreplay && !S.closed) {
    const char *path = herald__spill_path(S.eng);
    if (unlink(path) != 0 && errno != ENOENT)
      herald_log(&S.eng->log, HLOG_ERROR, "spill file %s: replayed, but cannot delete it: %s", path, strerror(errno));
    else
      herald_log(&S.eng->log, HLOG_INFO, "spill file %s: %zu event(s) replayed", path, S.nreplay);
  }
}

static void on_timer(uv_timer_t *t) {
  (void)t;
  pump();
}

static void pump(void) {
  herald_bus *bus = S.eng->bus;
  while (!S.closed && S.next < S.nreplay && bus) {
    replay_ev *r = &S.replay[S.next];
    r->state = R_PUBLISHING;
    int rc = herald_bus_publish(bus, r->ev, on_published, (void *)(uintptr_t)S.next);
    if (rc == HERALD_EBUSFULL) { /* the bus has no room yet: try again shortly */
      r->state = R_PENDING;
      uv_timer_start(&S.timer, on_timer, 20, 0);
      return;
    }
    if (rc < 0) {
      r->state = R_PENDING;
      herald_log(&S.eng->log, HLOG_ERROR, "spill replay: %s; the rest stays in the spill file",
                 herald_strerror(rc));
      return;
    }
    S.next++;
  }
}

int herald__spill_replay_start(herald_engine *eng) {
  S.eng = eng;
  const char *path = herald__spill_path(eng);
  int err = 0;
  size_t len = 0;
  char *text = herald_read_file(path, &len, &err);
  if (!text) return 0; /* nothing spilled */
  size_t cap = 0, bad = 0;
  for (const char *p = text, *end = text + len; p < end;) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    if (le > p) {
      const char *why;
      herald_event *ev = herald_event_from_json(p, (size_t)(le - p), &why);
      if (!ev) {
        bad++;
      } else {
        if (S.nreplay == cap) {
          cap = cap ? cap * 2 : 64;
          replay_ev *grown = realloc(S.replay, cap * sizeof *S.replay);
          if (HERALD_FAILS(grown != NULL)) {
            herald_event_unref(ev);
            break;
          }
          S.replay = grown;
        }
        S.replay[S.nreplay++] = (replay_ev){ev, R_PENDING};
      }
    }
    p = nl ? nl + 1 : end;
  }
  free(text);
  if (bad)
    herald_log(&eng->log, HLOG_ERROR, "spill file %s: %zu line(s) are not events herald wrote; skipped",
               path, bad);
  if (S.nreplay == 0) {
    unlink(path);
    return 0;
  }
  herald_log(&eng->log, HLOG_INFO, "spill file %s: replaying %zu event(s) left by the last stop",
             path, S.nreplay);
  uv_timer_init(eng->loop, &S.timer);
  S.timer_init = 1;
  pump();
  return (int)S.nreplay;
}

size_t herald__spill_replay_pending(void) {
  return S.nreplay - S.done;
}

void herald__spill_close(void) {
  if (S.timer_init) {
    uv_timer_stop(&S.timer);
    uv_close((uv_handle_t *)&S.timer, NULL);
    S.timer_init = 0;
  }
  for (size_t i = 0; i < S.nreplay; i++) herald_event_unref(S.replay[i].ev);
  free(S.replay);
  S.replay = NULL;
  S.nreplay = S.next = S.done = 0;
  free(S.path);
  S.path = NULL;
}
