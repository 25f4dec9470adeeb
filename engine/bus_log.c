/*
 * bus_log.c: the durable embedded bus's log (`--bus-dir DIR`): append-only segments with
 * group commit.
 *
 *   DIR/LOCK                 flock'd by the one process using DIR
 *   DIR/<16 hex>.seg         segments, oldest first; a new one at each start and past 64 MiB
 *   record := u32 body length | u32 CRC-32C of body | body          (host byte order)
 *   body   := 'P' u64 seq (u32 len, bytes) x 7: id time source subject type datacontenttype data
 *           | 'D' u64 seq                         (the event was acked by every subscription)
 *
 * Publishing appends a record to a buffer; one commit at a time runs on libuv's thread pool
 * (write + fdatasync), and every record appended while it ran goes into the next one, so a
 * single fdatasync covers every publish that arrived meanwhile (group commit): the cost per
 * event is a memcpy and a share of one sync. The webhook answers 200 only once its event's
 * commit is done. Done records need no sync of their own (a lost one means a redelivery, never
 * a loss): a batch of only done records is written without fdatasync. A segment whose events
 * are all done is deleted, oldest first: a segment's done records may undo publish records of
 * older segments, so it goes only after them.
 *
 * Reading back (open): every segment is parsed up to its first torn or corrupt record (a crash
 * mid-write leaves at most the last batch torn, and no batch was acknowledged before its sync);
 * events with a publish record and no done record are handed back in publish order.
 *
 * Why a log of our own and not LMDB or SQLite (both in Debian): the bus needs exactly
 * "append, sync a batch, mark done, forget old ones"; a queue in a B-tree pays for ordered
 * keys, page copy-on-write and (LMDB) a single writer that blocks the loop on its commit's
 * fsync, or (SQLite WAL) statement parsing and checkpoints, to get the same. Here the write
 * path is one write() and one fdatasync() per batch off the loop, recovery is a sequential
 * read, and the code is a few hundred lines with no new dependency.
 */
#include "bus_log.h"
#include "buf.h"
#include "common.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEG_MAX (64u << 20) /* a new segment past this many bytes */
#define COMMITS 2           /* commits in flight at once (see kick) */
#define NO_SPLIT ((size_t)-1)

typedef struct seg {
  uint32_t id;
  uint64_t live; /* publish records not yet done */
} seg;

typedef struct commit_work {
  uv_work_t req;
  herald_bus_log *log;
  herald_buf buf;
  size_t split;        /* offset where the new segment starts, or NO_SPLIT */
  uint32_t new_seg;    /* its id */
  int sync;
  int fd;              /* in: current segment; out: the one written last */
  uint64_t upto;       /* highest publish seq in buf (0: none) */
  uint32_t *unlink;    /* segments to delete */
  size_t nunlink;
  uint64_t ticket;     /* writes happen in ticket order */
  int status, err;
} commit_work;

struct herald_bus_log {
  uv_loop_t *loop;
  char *dir;
  int dirfd, lockfd, fd;
  herald_bus_log_commit_cb committed;
  void *data;
  uint64_t last_seq;
  seg *segs;           /* oldest first; the last is the one written to */
  size_t nsegs, segs_cap;
  uint64_t cur_bytes;  /* bytes of the current segment, pending included */
  herald_buf pend;     /* records not yet handed to a commit */
  size_t split;
  uint32_t split_seg;
  int pend_pub;        /* pend holds publish records (needs a sync) */
  uint64_t pend_upto;
  int busy;           /* commits in flight (at most COMMITS) */
  int rolling;        /* one of them starts a new segment: nothing may start beside it */
  int broken;         /* a write failed: nothing more is written or acknowledged */
  int closing;
  uint64_t next_ticket; /* loop side */
  uv_mutex_t mu;      /* guards write_turn and write_failed (pool threads) */
  uv_cond_t turn_cv;
  uint64_t write_turn;
  int write_failed;   /* a write failed: later writes in flight must not land after it */
  herald_bus_log_close_cb close_cb;
  void *close_data;
  herald_logger lg;
};

/* ---- CRC-32C (Castagnoli), bytewise: the log writes a few MB/s at most ---- */

static uint32_t crc_table[256];

static void crc_init(void) {
  if (crc_table[1]) return;
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t crc32c_sw(const void *p, size_t n) {
  const unsigned char *s = p;
  uint32_t c = 0xFFFFFFFFu;
  while (n--) c = crc_table[(c ^ *s++) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* SSE4.2's crc32 instruction computes CRC-32C 8 bytes at a time: the bytewise table was the
 * hottest user-space function of the durable bus under load (perf). */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t c = 0xFFFFFFFFu;
  for (; n >= 8; s += 8, n -= 8) {
    uint64_t v;
    memcpy(&v, s, 8);
    c = __builtin_ia32_crc32di(c, v);
  }
  uint32_t c32 = (uint32_t)c;
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *s++);
  return c32 ^ 0xFFFFFFFFu;
}

static uint32_t crc32c(const void *p, size_t n) {
  static int hw = -1;
  if (hw < 0) hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
  return hw ? crc32c_hw(p, n) : crc32c_sw(p, n);
}
#else
#define crc32c crc32c_sw
#endif

/* ---- records ---- */

static void put_u32(herald_buf *b, uint32_t v) {
  herald_buf_append(b, &v, 4);
}

static void put_str(herald_buf *b, const char *s, size_t n) {
  put_u32(b, (uint32_t)n);
  herald_buf_append(b, s, n);
}

/* Starts a framed record in b (its body is appended next); returns where it starts. */
static size_t begin_record(herald_buf *b) {
  size_t at = b->len;
  uint32_t zero[2] = {0, 0};
  herald_buf_append(b, zero, 8); /* length and CRC, filled by end_record */
  return at;
}

static void end_record(herald_buf *b, size_t at) {
  uint32_t len = (uint32_t)(b->len - at - 8);
  uint32_t crc = crc32c(b->data + at + 8, len);
  memcpy(b->data + at, &len, 4);
  memcpy(b->data + at + 4, &crc, 4);
}

static char *seg_path(const herald_bus_log *l, uint32_t id) {
  return herald_xasprintf("%s/%016x.seg", l->dir, id);
}

static seg *cur_seg(herald_bus_log *l) {
  return &l->segs[l->nsegs - 1];
}

static void push_seg(herald_bus_log *l, uint32_t id) {
  if (l->nsegs == l->segs_cap) {
    l->segs_cap = l->segs_cap ? l->segs_cap * 2 : 16;
    seg *grown = realloc(l->segs, l->segs_cap * sizeof *l->segs);
    HERALD_ASSERT(grown != NULL); /* out of memory */
    l->segs = grown;
  }
  l->segs[l->nsegs++] = (seg){id, 0};
}

static seg *find_seg(herald_bus_log *l, uint32_t id) {
  size_t lo = 0, hi = l->nsegs;
  while (lo < hi) { /* ids ascend */
    size_t mid = (lo + hi) / 2;
    if (l->segs[mid].id < id) lo = mid + 1;
    else hi = mid;
  }
  return lo < l->nsegs && l->segs[lo].id == id ? &l->segs[lo] : NULL;
}

/* ---- commit (thread pool) ---- */

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -errno;
    p += w, n -= (size_t)w;
  }
  return 0;
}

/* Two commits may run at once: the second writes while the first syncs. Their writes happen
 * in ticket order, so when any commit's fdatasync returns, every write before its own is on
 * disk too: the loop may confirm through the highest seq synced, whichever finishes first. */
static void commit_run(uv_work_t *req) {
  commit_work *w = req->data;
  herald_bus_log *l = w->log;
  int r = 0;
  const char *p = w->buf.data;
  size_t n = w->buf.len;
  uv_mutex_lock(&l->mu);
  while (l->write_turn != w->ticket) uv_cond_wait(&l->turn_cv, &l->mu);
  int failed_before = l->write_failed;
  uv_mutex_unlock(&l->mu);
  if (failed_before) { /* never append after a write that may have torn a record */
    r = -EIO;
    n = 0;
    w->split = NO_SPLIT;
  }
  if (w->split != NO_SPLIT) { /* finish the old segment, start the new one */
    if (w->fd >= 0) {
      if (w->split) r = write_all(w->fd, p, w->split);
      if (r == 0 && fdatasync(w->fd) != 0) r = -errno;
      close(w->fd);
    }
    p += w->split, n -= w->split;
    char *path = seg_path(l, w->new_seg);
    w->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    free(path);
    if (w->fd < 0 && r == 0) r = -errno;
    if (w->fd >= 0 && fsync(l->dirfd) != 0 && r == 0) r = -errno; /* the new name is durable */
  }
  if (r == 0 && w->fd >= 0 && n) r = write_all(w->fd, p, n);
  uv_mutex_lock(&l->mu);
  if (r != 0) l->write_failed = 1;
  l->write_turn++;
  uv_cond_broadcast(&l->turn_cv);
  uv_mutex_unlock(&l->mu);
  if (r == 0 && w->fd >= 0 && w->sync && fdatasync(w->fd) != 0) r = -errno;
  for (size_t i = 0; i < w->nunlink; i++) {
    char *path = seg_path(l, w->unlink[i]);
    unlink(path);
    free(path);
  }
  w->status = r == 0 ? 0 : HERALD_EIO;
  w->err = -r;
}

static void kick(herald_bus_log *l);
static void close_finish(herald_bus_log *l);

static void commit_done(uv_work_t *req, int status) {
  (void)status;
  commit_work *w = req->data;
  herald_bus_log *l = w->log;
  if (w->split != NO_SPLIT) {
    l->fd = w->fd;
    l->rolling = 0;
  }
  l->busy--;
  if (w->status != 0 && !l->broken) {
    /* Appending after a record the failure may have torn would hide everything after it from
     * the read-back: stop here, refuse every publish (503) until an operator restarts. */
    herald_log(&l->lg, HLOG_ERROR, "%s: write failed: %s; the bus refuses events from now on (fix the disk and restart)",
               l->dir, strerror(w->err));
    l->broken = 1;
  }
  herald_buf_free(&w->buf);
  free(w->unlink);
  uint64_t upto = w->upto;
  int st = w->status;
  free(w);
  if (upto) l->committed(l->data, upto, st);
  if (l->broken) { /* what was appended since will never be written */
    herald_buf_reset(&l->pend);
    l->pend_pub = 0;
    l->split = NO_SPLIT;
    l->committed(l->data, l->last_seq, HERALD_EIO);
  }
  kick(l);
  if (l->closing && !l->busy && l->pend.len == 0) close_finish(l);
}

/* Hands what is pending to a commit, when fewer than COMMITS run and none starts a new
 * segment (a completion calls again). A batch that starts a segment runs alone. */
static void kick(herald_bus_log *l) {
  if (l->busy >= COMMITS || l->rolling || l->pend.len == 0 || l->broken) return;
  if (l->split != NO_SPLIT && l->busy) return;
  commit_work *w = herald_xcalloc(1, sizeof *w);
  w->log = l;
  w->buf = l->pend;
  l->pend = (herald_buf)HERALD_BUF_INIT;
  w->split = l->split;
  w->new_seg = l->split_seg;
  w->sync = l->pend_pub || l->closing;
  w->upto = l->pend_pub ? l->pend_upto : 0;
  w->fd = l->fd;
  l->split = NO_SPLIT;
  l->pend_pub = 0;
  /* Segments all done, oldest first, older than any this commit writes to. */
  uint32_t writes_from = w->split != NO_SPLIT ? w->new_seg - 1 : cur_seg(l)->id;
  size_t k = 0;
  while (!l->busy && k + 1 < l->nsegs && l->segs[k].live == 0 && l->segs[k].id < writes_from) k++;
  if (k) {
    w->unlink = herald_xmalloc(k * sizeof *w->unlink);
    for (size_t i = 0; i < k; i++) w->unlink[i] = l->segs[i].id;
    w->nunlink = k;
    memmove(l->segs, l->segs + k, (l->nsegs - k) * sizeof *l->segs);
    l->nsegs -= k;
  }
  if (w->split != NO_SPLIT) l->rolling = 1;
  w->ticket = l->next_ticket++;
  l->busy++;
  w->req.data = w;
  uv_queue_work(l->loop, &w->req, commit_run, commit_done);
}

/* ---- append ---- */

static void maybe_roll(herald_bus_log *l) {
  if (l->cur_bytes < SEG_MAX || l->split != NO_SPLIT) return;
  uint32_t id = cur_seg(l)->id + 1;
  push_seg(l, id);
  l->split = l->pend.len;
  l->split_seg = id;
  l->cur_bytes = 0;
}

uint64_t herald_bus_log_append(herald_bus_log *l, const herald_event *ev, uint32_t *segid) {
  if (l->broken) return 0;
  maybe_roll(l);
  size_t before = l->pend.len;
  size_t at = begin_record(&l->pend);
  uint64_t seq = ++l->last_seq;
  herald_buf_putc(&l->pend, 'P');
  herald_buf_append(&l->pend, &seq, 8);
  put_str(&l->pend, ev->id, strlen(ev->id));
  put_str(&l->pend, ev->time, strlen(ev->time));
  put_str(&l->pend, ev->source, strlen(ev->source));
  put_str(&l->pend, ev->subject, strlen(ev->subject));
  put_str(&l->pend, ev->type, strlen(ev->type));
  put_str(&l->pend, ev->datacontenttype, strlen(ev->datacontenttype));
  put_str(&l->pend, ev->data, ev->data_len);
  end_record(&l->pend, at);
  l->cur_bytes += l->pend.len - before;
  cur_seg(l)->live++;
  *segid = cur_seg(l)->id;
  l->pend_pub = 1;
  l->pend_upto = seq;
  kick(l);
  return seq;
}

void herald_bus_log_done(herald_bus_log *l, uint64_t seq, uint32_t segid) {
  if (l->broken) return;
  seg *s = find_seg(l, segid);
  if (HERALD_FAILS(s != NULL && s->live > 0)) return;
  s->live--;
  maybe_roll(l);
  size_t before = l->pend.len;
  size_t at = begin_record(&l->pend);
  herald_buf_putc(&l->pend, 'D');
  herald_buf_append(&l->pend, &seq, 8);
  end_record(&l->pend, at);
  l->cur_bytes += l->pend.len - before;
  kick(l);
}

/* ---- open: read back ---- */

typedef struct found_ev {
  uint64_t seq;
  uint32_t seg;
  herald_event *ev;
} found_ev;

typedef struct readback {
  found_ev *pubs;
  size_t npubs, pubs_cap;
  uint64_t *dones;
  size_t ndones, dones_cap;
} readback;

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* Reads a (u32 len, bytes) field at *p into out (NUL-terminated); -1 if it overruns end. */
static int get_str(const unsigned char **p, const unsigned char *end, herald_buf *out) {
  uint32_t n;
  if (end - *p < 4) return -1;
  memcpy(&n, *p, 4);
  *p += 4;
  if ((size_t)(end - *p) < n) return -1;
  herald_buf_reset(out);
  herald_buf_append(out, *p, n);
  herald_buf_cstr(out);
  *p += n;
  return 0;
}

/* Parses one segment into rb; returns the records read. Stops at the first torn record. */
static size_t read_segment(herald_bus_log *l, uint32_t id, readback *rb, uint64_t *max_seq) {
  char *path = seg_path(l, id);
  int err = 0;
  size_t len = 0, nrec = 0;
  char *text = herald_read_file(path, &len, &err);
  if (!text) {
    herald_log(&l->lg, HLOG_ERROR, "%s: cannot read: %s", path, herald_strerror(err));
    free(path);
    return 0;
  }
  herald_buf f[7];
  for (int i = 0; i < 7; i++) f[i] = (herald_buf)HERALD_BUF_INIT;
  const unsigned char *p = (const unsigned char *)text, *end = p + len;
  while (end - p >= 8) {
    uint32_t blen, crc;
    memcpy(&blen, p, 4);
    memcpy(&crc, p + 4, 4);
    if (blen < 9 || (size_t)(end - p - 8) < blen || crc32c(p + 8, blen) != crc) break;
    const unsigned char *b = p + 8, *bend = b + blen;
    uint64_t seq;
    memcpy(&seq, b + 1, 8);
    if (seq > *max_seq) *max_seq = seq;
    if (b[0] == 'D') {
      if (rb->ndones == rb->dones_cap) {
        rb->dones_cap = rb->dones_cap ? rb->dones_cap * 2 : 1024;
        uint64_t *g = realloc(rb->dones, rb->dones_cap * sizeof *g);
        HERALD_ASSERT(g != NULL); /* out of memory */
        rb->dones = g;
      }
      rb->dones[rb->ndones++] = seq;
    } else if (b[0] == 'P') {
      const unsigned char *q = b + 9;
      int ok = 1;
      for (int i = 0; i < 7 && ok; i++) ok = get_str(&q, bend, &f[i]) == 0;
      herald_event *ev = ok ? herald_event_new_full(f[0].data, f[1].data, f[2].data, f[3].data,
                                                    f[4].data, f[5].data, f[6].data ? f[6].data : "",
                                                    f[6].len)
                            : NULL;
      if (ev) {
        if (rb->npubs == rb->pubs_cap) {
          rb->pubs_cap = rb->pubs_cap ? rb->pubs_cap * 2 : 1024;
          found_ev *g = realloc(rb->pubs, rb->pubs_cap * sizeof *g);
          HERALD_ASSERT(g != NULL); /* out of memory */
          rb->pubs = g;
        }
        rb->pubs[rb->npubs++] = (found_ev){seq, id, ev};
      }
    }
    nrec++;
    p = bend;
  }
  if (p != end)
    herald_log(&l->lg, HLOG_WARN, "%s: %zu byte(s) after the last whole record ignored (a write cut short)",
               path, (size_t)(end - p));
  for (int i = 0; i < 7; i++) herald_buf_free(&f[i]);
  free(text);
  free(path);
  return nrec;
}

herald_bus_log *herald_bus_log_open(uv_loop_t *loop, const char *dir, herald_bus_log_found_cb found,
                                    herald_bus_log_commit_cb committed, void *data, int *err) {
  crc_init();
  herald_bus_log *l = herald_xcalloc(1, sizeof *l);
  l->loop = loop;
  l->dir = herald_xstrdup(dir);
  l->committed = committed;
  l->data = data;
  l->fd = l->dirfd = l->lockfd = -1;
  l->split = NO_SPLIT;
  l->lg.name = "bus:embedded";
  uv_mutex_init(&l->mu);
  uv_cond_init(&l->turn_cv);
  mkdir(dir, 0700);
  l->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  char *lock = herald_xasprintf("%s/LOCK", dir);
  l->lockfd = l->dirfd >= 0 ? open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600) : -1;
  free(lock);
  if (l->lockfd < 0) {
    herald_log(&l->lg, HLOG_ERROR, "--bus-dir %s: %s", dir, strerror(errno));
    goto fail;
  }
  if (flock(l->lockfd, LOCK_EX | LOCK_NB) != 0) {
    herald_log(&l->lg, HLOG_ERROR, "--bus-dir %s: in use by another herald process", dir);
    goto fail;
  }
  /* the segments, oldest first */
  DIR *d = opendir(dir);
  uint32_t *ids = NULL;
  size_t nids = 0, cap = 0;
  for (struct dirent *e; d && (e = readdir(d));) {
    unsigned id;
    if (strlen(e->d_name) != 20 || strcmp(e->d_name + 16, ".seg") != 0 ||
        sscanf(e->d_name, "%16x", &id) != 1)
      continue;
    if (nids == cap) {
      cap = cap ? cap * 2 : 16;
      uint32_t *g = realloc(ids, cap * sizeof *g);
      HERALD_ASSERT(g != NULL); /* out of memory */
      ids = g;
    }
    ids[nids++] = id;
  }
  if (d) closedir(d);
  if (nids) qsort(ids, nids, sizeof *ids, cmp_u32);
  readback rb = {0};
  uint64_t max_seq = 0;
  size_t nrec = 0;
  for (size_t i = 0; i < nids; i++) {
    push_seg(l, ids[i]);
    nrec += read_segment(l, ids[i], &rb, &max_seq);
  }
  if (rb.ndones) qsort(rb.dones, rb.ndones, sizeof *rb.dones, cmp_u64);
  size_t pending = 0;
  for (size_t i = 0; i < rb.npubs; i++) {
    found_ev *fe = &rb.pubs[i];
    if (!rb.ndones || !bsearch(&fe->seq, rb.dones, rb.ndones, sizeof *rb.dones, cmp_u64)) {
      find_seg(l, fe->seg)->live++;
      found(data, fe->seq, fe->seg, fe->ev);
      pending++;
    }
    herald_event_unref(fe->ev);
  }
  free(rb.pubs);
  free(rb.dones);
  l->last_seq = max_seq;
  /* a fresh segment for this run: never append after what a crash may have torn */
  uint32_t next = nids ? ids[nids - 1] + 1 : 1;
  free(ids);
  push_seg(l, next);
  char *path = seg_path(l, next);
  l->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (l->fd < 0) {
    herald_log(&l->lg, HLOG_ERROR, "%s: %s", path, strerror(errno));
    free(path);
    goto fail;
  }
  free(path);
  fsync(l->dirfd);
  if (nids)
    herald_log(&l->lg, HLOG_INFO, "--bus-dir %s: %zu segment(s), %zu record(s) read; %zu event(s) to deliver",
               dir, nids, nrec, pending);
  kick(l); /* nothing pending yet; segments all done are deleted by the first commit */
  return l;
fail:
  uv_mutex_destroy(&l->mu);
  uv_cond_destroy(&l->turn_cv);
  if (l->lockfd >= 0) close(l->lockfd);
  if (l->dirfd >= 0) close(l->dirfd);
  free(l->dir);
  free(l->segs);
  free(l);
  *err = HERALD_EIO;
  return NULL;
}

/* ---- close ---- */

static void close_finish(herald_bus_log *l) {
  if (l->fd >= 0) close(l->fd);
  close(l->lockfd); /* releases the flock */
  close(l->dirfd);
  herald_bus_log_close_cb cb = l->close_cb;
  void *data = l->close_data;
  herald_buf_free(&l->pend);
  uv_mutex_destroy(&l->mu);
  uv_cond_destroy(&l->turn_cv);
  free(l->segs);
  free(l->dir);
  free(l);
  if (cb) cb(data);
}

void herald_bus_log_close(herald_bus_log *l, herald_bus_log_close_cb cb, void *data) {
  l->closing = 1;
  l->close_cb = cb;
  l->close_data = data;
  kick(l); /* a last commit, synced, for the done records too */
  if (!l->busy && l->pend.len == 0) close_finish(l);
}
