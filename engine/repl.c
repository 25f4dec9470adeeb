/*
 * repl.c: line editing for `herald repl`, on libedit's readline-compatible API.
 *
 * The REPL itself (commands, evaluation, printing, what to complete) is Lua
 * (scripts/stdlib/herald/repl.lua); this file gives it a prompt:
 *
 *   core.readline(prompt) -> line | nil (EOF, Ctrl-D) | false (Ctrl-C: the line is cancelled)
 *   core.history_load(path) -> true | nil, err    (a missing file is not an error)
 *   core.history_add(line)
 *   core.history_save(path) -> true | nil, err    (creates the parent directories)
 *   core.set_completer(fn | nil)                  fn(text, line_so_far) -> { candidate, ... }
 *   core.isatty(fd) -> bool
 *
 * How a key reaches Lua:
 *
 *   tty --read()--> repl_getc (ours, via rl_getc_function) --> libedit line editor
 *                      |  SIGINT during read(): EINTR + flag   |  Tab: complete_hook
 *                      v                                       v
 *                   returns -1: libedit ends the line,     Lua completer under lua_pcall
 *                   readline() gives NULL, we return false  (errors are dropped, never raised)
 *
 * Ctrl-C: libedit's own signal handling is off (rl_catch_signals = 0: it would re-raise SIGINT
 * to the whole process group). While readline() runs, and only then, our SIGINT handler is
 * installed without SA_RESTART, so the blocked read() fails with EINTR; repl_getc reports
 * end of input, libedit restores the terminal through its normal exit path, and the flag tells
 * core.readline the line was cancelled rather than ended. The previous handler (libuv's, from
 * engine init) is put back before returning. The REPL does not run the libuv loop.
 *
 * Single-threaded and one prompt per process: the state below is static.
 */
#include "lua_host.h"

#include <errno.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <editline/readline.h>

#ifdef HERALD_LAZY_EDIT
/* libedit is loaded when the REPL first calls it (engine/lazy_lib.h): its functions through
 * stubs, its variables through their addresses, looked up here. */
#include "lazy_lib.h"
extern herald_lazy_lib herald__lazy_lib_edit;
#define HERALD_RL_VAR(name) (*(__typeof__(name) *)herald__lazy_var(&herald__lazy_lib_edit, #name))
#define rl_readline_name HERALD_RL_VAR(rl_readline_name)
#define rl_line_buffer HERALD_RL_VAR(rl_line_buffer)
#define rl_point HERALD_RL_VAR(rl_point)
#define rl_basic_word_break_characters HERALD_RL_VAR(rl_basic_word_break_characters)
#define rl_completer_word_break_characters HERALD_RL_VAR(rl_completer_word_break_characters)
#define rl_attempted_completion_function HERALD_RL_VAR(rl_attempted_completion_function)
#define rl_attempted_completion_over HERALD_RL_VAR(rl_attempted_completion_over)
#define rl_completion_append_character HERALD_RL_VAR(rl_completion_append_character)
#define rl_catch_signals HERALD_RL_VAR(rl_catch_signals)
#define rl_getc_function HERALD_RL_VAR(rl_getc_function)
#endif

#define HISTORY_MAX 1000

static volatile sig_atomic_t interrupted; /* set by on_sigint while readline() runs */
static int initialised;
static lua_State *completer_L; /* the state whose completer runs; set by core.readline */
static int completer_ref = LUA_NOREF;

/* The candidates of the current completion: owned here, freed by completion_clear. The
 * generator hands libedit strdup'ed copies, which libedit frees. */
static char **cands;
static size_t ncands, cand_next;

static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
}

/* Reads one character from the terminal for libedit, decoding UTF-8 into a code point (libedit
 * turns our int into one wchar_t). Returns -1 on EOF, error or Ctrl-C; libedit then ends the
 * line. */
static int repl_getc(FILE *in) {
  int fd = fileno(in);
  unsigned char b[4];
  int need = 0, got = 0;
  for (;;) {
    if (interrupted) return -1;
    ssize_t n = read(fd, b + got, 1);
    if (n == 1) {
      if (got == 0) {
        if (b[0] < 0x80) return b[0];
        need = b[0] >= 0xF0 ? 4 : b[0] >= 0xE0 ? 3 : b[0] >= 0xC0 ? 2 : 1;
        if (need == 1) return b[0]; /* a stray continuation byte: pass it on */
      }
      if (++got == need) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue; /* loops back to the interrupted check */
    return -1;
  }
  int cp = b[0] & (0x7F >> need);
  for (int i = 1; i < need; i++) cp = (cp << 6) | (b[i] & 0x3F);
  return cp;
}

static void completion_clear(void) {
  for (size_t i = 0; i < ncands; i++) free(cands[i]);
  free(cands);
  cands = NULL;
  ncands = cand_next = 0;
}

/* rl_completion_matches generator: returns a new string (libedit frees it) or NULL. */
static char *candidate_gen(const char *text, int state) {
  (void)text;
  if (state == 0) cand_next = 0;
  if (cand_next >= ncands) return NULL;
  return strdup(cands[cand_next++]);
}

/* Calls the Lua completer with (text, line up to the cursor) and keeps the strings of the
 * array it returns in cands. Any Lua error, or a non-table result, gives no candidates.
 * stack: (balanced) */
static void completion_fill(const char *text) {
  completion_clear();
  lua_State *L = completer_L;
  if (!L || completer_ref == LUA_NOREF) return;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, completer_ref); /* stack: -> fn */
  lua_pushstring(L, text);                           /* stack: fn -> fn text */
  lua_pushlstring(L, rl_line_buffer ? rl_line_buffer : "",
                  rl_line_buffer && rl_point > 0 ? (size_t)rl_point : 0); /* -> fn text line */
  if (lua_pcall(L, 2, 1, 0) == 0 && lua_istable(L, -1)) { /* stack: fn text line -> result */
    size_t n = lua_objlen(L, -1);
    cands = calloc(n ? n : 1, sizeof *cands);
    for (size_t i = 1; cands && i <= n; i++) {
      lua_rawgeti(L, -1, (int)i); /* stack: result -> result s */
      const char *s = lua_tostring(L, -1);
      if (s && (cands[ncands] = strdup(s)) != NULL) ncands++;
      lua_pop(L, 1); /* stack: result s -> result */
    }
  }
  lua_settop(L, top); /* drops the result or the error message */
}

/* rl_attempted_completion_function: returns a new NULL-terminated array from
 * rl_completion_matches (libedit frees it and its strings), or NULL for no match. */
static char **complete_hook(const char *text, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1; /* never fall back to file names */
  completion_fill(text);
  char **m = ncands ? rl_completion_matches(text, candidate_gen) : NULL;
  completion_clear();
  return m;
}

static void ensure_init(void) {
  if (initialised) return;
  initialised = 1;
  rl_readline_name = "herald";
  rl_catch_signals = 0;
  rl_getc_function = repl_getc;
  rl_attempted_completion_function = complete_hook;
  /* '.' and ':' are not breaks: "body.user.na", "gjson.get" and ":filter" complete whole */
  static char breaks[] = " \t\n\"'`()[]{},;=+-*/<>~%#^&|";
  rl_basic_word_break_characters = breaks;
  rl_completer_word_break_characters = breaks;
  rl_completion_append_character = '\0';
  rl_initialize();
  using_history();
  stifle_history(HISTORY_MAX);
}

/* stack: prompt -> line | nil | false */
static int l_readline(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "> ");
  ensure_init();
  completer_L = L;
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint; /* no SA_RESTART: the read() in repl_getc must see EINTR */
  sigemptyset(&sa.sa_mask);
  interrupted = 0;
  sigaction(SIGINT, &sa, &old);
  char *line = readline(prompt); /* a new string, freed below */
  sigaction(SIGINT, &old, NULL);
  int cancelled = interrupted;
  interrupted = 0;
  if (cancelled) {
    free(line);
    fputs("^C\n", stdout);
    fflush(stdout);
    lua_pushboolean(L, 0);
  } else if (!line) {
    lua_pushnil(L);
  } else {
    lua_pushstring(L, line);
    free(line);
  }
  return 1;
}

/* stack: path -> true | nil err */
static int l_history_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  ensure_init();
  if (access(path, F_OK) != 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (read_history(path) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: cannot read history", path);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* stack: line -> */
static int l_history_add(lua_State *L) {
  const char *line = luaL_checkstring(L, 1);
  ensure_init();
  add_history(line); /* libedit copies the string */
  return 0;
}

/* mkdir -p of the folder holding path (modes 0700: history can hold secrets). 0 or -1. */
static int mkdir_parents(const char *path) {
  char *dir = strdup(path);
  if (!dir) return -1;
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) {
      if (*p != '/') continue;
      *p = '\0';
      if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        free(dir);
        return -1;
      }
      *p = '/';
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
      free(dir);
      return -1;
    }
  }
  free(dir);
  return 0;
}

/* stack: path -> true | nil err */
static int l_history_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  ensure_init();
  if (mkdir_parents(path) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(errno));
    return 2;
  }
  if (write_history(path) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: cannot write history", path);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Appends the newest history entry to path (creating it), so a crash or kill loses nothing
 * typed before it. stack: path -> true | nil err */
static int l_history_append(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  ensure_init();
  if (mkdir_parents(path) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(errno));
    return 2;
  }
  int rc = access(path, F_OK) == 0 ? append_history(1, path) : write_history(path);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: cannot write history", path);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- Ctrl-C while Lua runs ----
 * lua_sethook is one of the few Lua calls safe in a signal handler: SIGINT arms a count-1 hook
 * that raises "interrupted" at the next instruction of interpreted code. The REPL turns the
 * JIT off for what it evaluates (LuaJIT does not call hooks from compiled traces). */
static lua_State *volatile running_L;

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted (Ctrl-C)");
}

static void on_sigint_running(int sig) {
  (void)sig;
  lua_State *L = running_L;
  if (L) lua_sethook(L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* core.call_interruptible(fn, ...) -> true, results... | false, err: pcall, with Ctrl-C
 * interrupting fn instead of the process. */
static int l_call_interruptible(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int base = lua_gettop(L);
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint_running;
  sigemptyset(&sa.sa_mask);
  running_L = L;
  sigaction(SIGINT, &sa, &old);
  int rc = lua_pcall(L, base - 1, LUA_MULTRET, 0);
  sigaction(SIGINT, &old, NULL);
  running_L = NULL;
  lua_sethook(L, NULL, 0, 0);
  lua_pushboolean(L, rc == 0);
  lua_insert(L, 1);
  return lua_gettop(L);
}

/* Keeps fn in the registry (replacing the previous completer); nil removes it.
 * stack: fn|nil -> */
static int l_set_completer(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  if (completer_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, completer_ref);
  completer_ref = LUA_NOREF;
  if (!lua_isnoneornil(L, 1)) {
    lua_pushvalue(L, 1);                               /* stack: fn -> fn fn */
    completer_ref = luaL_ref(L, LUA_REGISTRYINDEX);    /* stack: fn fn -> fn */
  }
  completer_L = L;
  return 0;
}

/* stack: fd -> bool */
static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* stack: core -> core */
void herald__lua_open_repl(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"readline", l_readline},         {"history_load", l_history_load},
      {"history_add", l_history_add},   {"history_save", l_history_save},
      {"set_completer", l_set_completer}, {"isatty", l_isatty},
      {"history_append", l_history_append}, {"call_interruptible", l_call_interruptible},
      {NULL, NULL},
  };
  luaL_register(L, NULL, fns);
}
