/*
 * ringipc.c: the C client (see ringipc.h). Section numbers refer to
 * docs/ipc.md ("ipc §") and docs/design.md ("design §").
 *
 * Shared memory is a trust boundary: every word the server can write is
 * loaded once into a local, validated, and only then used; a bad value is
 * RIPC_EPROTO, never an access outside the mapping.
 */
#define _GNU_SOURCE /* MSG_CMSG_CLOEXEC, struct ucred, F_GET_SEALS */
#include "ringipc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/vfs.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ringipc's shared memory is little-endian; this client reads it natively"
#endif

#ifndef F_SEAL_SHRINK
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif
#ifndef F_GET_SEALS
#define F_GET_SEALS 1034
#endif
#ifndef FUTEX_WAKE
#define FUTEX_WAKE 1 /* linux/futex.h's value; libc's headers suffice */
#endif
#define TMPFS_MAGIC_ 0x01021994 /* statfs f_type of tmpfs/shmem (linux/magic.h) */

/* ---- protocol constants (ipc §2-§6, design §2, segment.md) ---- */

#define HELLO_MAGIC 0x4f4c454843504952ull /* "RIPCHELO" */
#define REPLY_MAGIC 0x594c505243504952ull /* "RIPCRPLY" */
#define HELLO_SIZE 48
#define REPLY_SIZE 96
#define PROTO_VERSION 1

#define SEG_MAGIC 0x00435049474e4952ull /* "RINGIPC\0" */
#define SEG_HEADER 4096
#define SEG_KIND_IPC 2

#define RING_MAGIC 0x52434950474e4952ull /* the bytes "RINGPICR" */
#define RING_VERSION 1
#define OFF_CLOSED 64
#define OFF_TAIL 128
#define OFF_UNFENCED 136 /* design §2.6.6 */
#define OFF_HEAD 256
#define OFF_FENCES 264
#define OFF_CONSWAIT 384
#define OFF_PRODWAIT 512
#define RING_DATA 640 /* SPSC: no producer table */

#define MIN_RING 4096ull
#define RING_LIMIT (1ull << 32) /* ipc §3: every ring is at most 4 GiB */
#define DEFAULT_MAX_RING (16ull << 20)
#define CTL_SIZE 128
#define REQ_HDR 8
#define RESP_HDR 16

#define ST_COMMITTED 0xAull
#define FL_PAD (1ull << 56)
#define FL_SKIP (1ull << 57)
#define FL_SLACK (1ull << 58)
#define FL_MASK (0xFull << 56)
#define SLOTGEN_MASK (0xFFFFFFull << 32)

/* Wake tokens (ipc §6); word index = ring*2 + (0 consumer, 1 producer). */
enum { W_REQ_CONS, W_REQ_PROD, W_RESP_CONS, W_RESP_PROD, W_DISP_CONS, W_DISP_PROD, NWORDS };
static const unsigned char token_of[NWORDS] = {0x01, 0x02, 0x11, 0x12, 0x21, 0x22};
/* The words this client sleeps on: the server sends their tokens. */
#define LOCAL_WORDS ((1u << W_REQ_PROD) | (1u << W_RESP_CONS) | (1u << W_DISP_CONS))

typedef _Atomic uint64_t a64;
typedef _Atomic uint32_t a32;

/* One single-producer ring of the connection segment (design §2). */
struct ring {
	unsigned char *base, *data;
	a64 *tail, *head;
	a32 *closed, *wait[2]; /* [0] consumer word, [1] producer word */
	a32 *unfenced, *fences; /* design §2.6.6 */
	int widx;              /* word index of wait[0] */
	uint64_t size, mask, maxp, seed;
	bool sums;
	bool failed;

	/* Producer side (the request ring). */
	uint64_t ptail;  /* local tail: next position to write */
	uint64_t hcache; /* last head loaded */
	bool reserved;   /* a reservation is outstanding */
	uint64_t rpos, rlen;
	uint16_t rid;
	bool can_unfence;  /* this process is registered for membarrier */
	bool unfenced_on;  /* the tail is published with release stores */
	uint32_t awake;    /* commits in a row that found the consumer awake */

	/* Consumer side (response and dispatch rings). */
	uint64_t chead;     /* local head */
	uint64_t published; /* head as last stored */
	uint64_t tcache;    /* last tail loaded */
	bool peeked;
	uint64_t cur_size; /* bytes the peeked record frees */
	uint32_t cur_type;
	const unsigned char *cur_data;
	uint64_t cur_len;
	bool fencing; /* declared fences = 1: fence the producer before sleeping */
};

/* Correlation ids are 1, 2, 3...: the calls in flight are
 * [expect, next_corr), and those up to abandon_upto were given up. */
struct ripc_client {
	int fd;
	unsigned char *map;
	size_t map_len;
	unsigned char *ctl;
	struct ring rq, rs, ds; /* request, response, dispatch */
	ripc_info info;
	long spin_ns;

	uint64_t next_corr;    /* next correlation id to send */
	uint64_t expect;       /* correlation id of the oldest request in flight */
	uint64_t abandon_upto; /* responses up to this corr belong to abandoned calls */
	bool resp_held;        /* a response view is out (ripc_next_response) */

	unsigned kept;   /* bit i: word i's token waits for socket space */
	bool peer_gone;  /* end of file on the socket */
	int dead;        /* 0, or the error that ended the connection */
	bool rings_closed;
};

/* ---- small helpers ---- */

static inline uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t rd16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void wr64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void wr32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void wr16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline bool pow2(uint64_t n) { return n && !(n & (n - 1)); }
static inline uint64_t rec_size(uint64_t n) { return (16 + n + 15) & ~15ull; }

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- checksums (design §2.3) ---- */

/* XXH64, seed 0, of the 24 bytes seed^pos | word | type | fold. */
static uint32_t header_sum(uint64_t seed, uint64_t pos, uint64_t word, uint32_t type, uint32_t fold)
{
	unsigned char b[24];
	wr64(b, seed ^ pos);
	wr64(b + 8, word);
	wr32(b + 16, type);
	wr32(b + 20, fold);
	return (uint32_t)ripc_xxh64(b, sizeof b, 0);
}

/* The payload fold: 0 without payload checksums; else the halves of the
 * payload's XXH64 (seed 0) xored. A padding record folds the hash of no
 * bytes. */
static uint32_t fold(const struct ring *r, const void *p, uint64_t n)
{
	if (!r->sums)
		return 0;
	uint64_t h = ripc_xxh64(p, (size_t)n, 0);
	return (uint32_t)h ^ (uint32_t)(h >> 32);
}

/* ---- wake tokens (ipc §6) ---- */

/* send_token writes word i's token without waiting; if the socket buffer
 * is full the token is kept (one per word) until flush_kept gets it out. */
static void send_token(ripc_client *c, int i)
{
	unsigned char b = token_of[i];
	for (;;) {
		ssize_t n = send(c->fd, &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n == 1)
			return;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			c->kept |= 1u << i;
		/* Other errors: the socket is broken; reading it says so. */
		return;
	}
}

static void flush_kept(ripc_client *c)
{
	while (c->kept) {
		unsigned char b[NWORDS];
		int n = 0, idx[NWORDS];
		for (int i = 0; i < NWORDS; i++)
			if (c->kept & (1u << i)) {
				idx[n] = i;
				b[n++] = token_of[i];
			}
		ssize_t k = send(c->fd, b, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				c->kept = 0; /* broken socket: nobody to wake */
			return;
		}
		for (ssize_t j = 0; j < k; j++)
			c->kept &= ~(1u << idx[j]);
	}
}

/* ---- asymmetric fences (design §2.6.6) ---- */

#define MEMBARRIER_QUERY 0
#define MEMBARRIER_GLOBAL_EXPEDITED (1 << 1)
#define MEMBARRIER_REGISTER_GLOBAL_EXPEDITED (1 << 2)

/* fences_ok says whether this process takes part: the kernel has the
 * global expedited membarrier, the process is registered for it (so a
 * peer's barrier reaches its threads) and a first barrier worked.
 * Registering twice is harmless, so racing first calls are too. */
static bool fences_ok(void)
{
	static atomic_int state; /* 0 unknown, 1 yes, -1 no */
	int s = atomic_load(&state);
	if (s)
		return s > 0;
	long need = MEMBARRIER_GLOBAL_EXPEDITED | MEMBARRIER_REGISTER_GLOBAL_EXPEDITED;
	long q = syscall(SYS_membarrier, MEMBARRIER_QUERY, 0, 0);
	bool ok = q >= 0 && (q & need) == need &&
		  syscall(SYS_membarrier, MEMBARRIER_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0 &&
		  syscall(SYS_membarrier, MEMBARRIER_GLOBAL_EXPEDITED, 0, 0) == 0;
	atomic_store(&state, ok ? 1 : -1);
	return ok;
}

/* fence_producer completes an announcement on a consumer word whose
 * producer may publish with release stores: after it, the producer's
 * tail store is visible to the re-check, or the producer's next load of
 * the word sees the announcement. The command worked once, so it fails
 * only for want of kernel memory; the caller may not sleep without it. */
static void fence_producer(struct ring *r)
{
	if (!r->fencing || atomic_load(r->unfenced) == 0)
		return;
	while (syscall(SYS_membarrier, MEMBARRIER_GLOBAL_EXPEDITED, 0, 0) != 0)
		sched_yield();
}

/* announce stores v in a wait word of r with a full barrier, then
 * fences r's producer if this side is r's fencing consumer: the first
 * half of the sleeping protocol (design §2.6, §2.6.6). */
static void announce(struct ring *r, a32 *w, uint32_t v)
{
	(void)atomic_exchange(w, v);
	fence_producer(r);
}

/* futex_wake wakes every thread in FUTEX_WAIT on w (a shared futex: the
 * sleeper is another process mapping the same memory). */
static void futex_wake(a32 *w)
{
	(void)syscall(SYS_futex, (void *)w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* wake is the waker's step after a publishing store (design §2.6, ipc
 * §6): if the peer announced itself on word w (index i), clear it and
 * wake it as the value says: 2 = it sleeps in FUTEX_WAIT, anything else
 * = send the token. The plain load first keeps a busy stream free of
 * locked instructions and system calls. */
static bool wake(ripc_client *c, a32 *w, int i)
{
	uint32_t v;
	if (atomic_load(w) == 0 || (v = atomic_exchange(w, 0)) == 0)
		return false;
	if (v == 2)
		futex_wake(w);
	else if (!(LOCAL_WORDS & (1u << i)))
		send_token(c, i);
	return true;
}

/* publish64 is the store half of a Dekker pair: an exchange, a full
 * barrier, never a release store (design §2.6). */
static inline void publish64(a64 *p, uint64_t v) { (void)atomic_exchange(p, v); }

/* kill ends the connection after a fatal error: the rings are closed,
 * which wakes the server, and the socket is shut down. Views stay
 * mapped until ripc_close. */
static void close_rings(ripc_client *c);
static int kill_conn(ripc_client *c, int err)
{
	if (!c->dead) {
		c->dead = err;
		close_rings(c);
		shutdown(c->fd, SHUT_RDWR);
	}
	return err;
}

/* read_tokens takes every token waiting on the socket without waiting.
 * Only the three the server may send (0x02, 0x11, 0x21) are valid; at
 * any time and in any number, since the sleeper re-checks its ring. */
static int read_tokens(ripc_client *c)
{
	unsigned char buf[64];
	for (;;) {
		ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (n <= 0) { /* end of file, or reset: the server is gone */
			c->peer_gone = true;
			return 0;
		}
		for (ssize_t j = 0; j < n; j++) {
			int i = -1;
			for (int k = 0; k < NWORDS; k++)
				if (token_of[k] == buf[j])
					i = k;
			if (i < 0 || !(LOCAL_WORDS & (1u << i)))
				return kill_conn(c, RIPC_EPROTO);
		}
		if ((size_t)n < sizeof buf)
			return 0;
	}
}

/* ---- rings: producer (design §2.4) ---- */

static int ring_attach(struct ring *r, unsigned char *base, uint64_t size, bool sums, int widx)
{
	memset(r, 0, sizeof *r);
	r->base = base;
	r->data = base + RING_DATA;
	r->closed = (a32 *)(base + OFF_CLOSED);
	r->tail = (a64 *)(base + OFF_TAIL);
	r->head = (a64 *)(base + OFF_HEAD);
	r->wait[0] = (a32 *)(base + OFF_CONSWAIT);
	r->wait[1] = (a32 *)(base + OFF_PRODWAIT);
	r->unfenced = (a32 *)(base + OFF_UNFENCED);
	r->fences = (a32 *)(base + OFF_FENCES);
	r->widx = widx;
	r->size = size;
	r->mask = size - 1;
	r->maxp = size / 2 - 16;
	r->sums = sums;
	r->seed = rd64(base + 32);
	/* Initial positions from the ring, never 0 (design §2.2). */
	uint64_t h = atomic_load(r->head), t = atomic_load(r->tail);
	if (t - h > size || (t | h) % 16)
		return RIPC_EPROTO;
	r->ptail = t;
	r->hcache = h;
	r->chead = r->published = h;
	r->tcache = t;
	/* The request ring (widx 0) is ours to produce into, the others to
	 * consume: say which of our consumers fence for their producer, and
	 * start the producer fenced (design §2.6.6). */
	if (widx == 0) {
		r->can_unfence = fences_ok();
		atomic_store(r->unfenced, 0);
	} else {
		r->fencing = fences_ok();
		atomic_store(r->fences, r->fencing ? 1 : 0);
	}
	return 0;
}

/* ring_reserve claims room for n payload bytes: 0, RIPC_EAGAIN (full),
 * RIPC_EDISCONNECTED (closed) or RIPC_EPROTO. */
static int ring_reserve(struct ring *r, uint64_t n)
{
	if (r->failed)
		return RIPC_EPROTO;
	if (atomic_load(r->closed))
		return RIPC_EDISCONNECTED;
	uint64_t rs = rec_size(n), t = r->ptail, off = t & r->mask, pad = 0;
	if (off + rs > r->size)
		pad = r->size - off;
	if (t + pad + rs - r->hcache > r->size) {
		uint64_t h = atomic_load(r->head);
		if (h - r->hcache > t - r->hcache || h % 16) {
			r->failed = true;
			return RIPC_EPROTO;
		}
		r->hcache = h;
		if (t + pad + rs - h > r->size)
			return RIPC_EAGAIN;
	}
	if (pad) {
		/* Published by the tail store of the next commit. */
		uint64_t w = ST_COMMITTED << 60 | FL_PAD | (pad - 16);
		unsigned char *p = r->data + off;
		wr32(p + 8, 0);
		wr32(p + 12, header_sum(r->seed, t, w, 0, fold(r, "", 0)));
		wr64(p, w);
		r->ptail = t += pad;
	}
	r->reserved = true;
	r->rpos = t;
	r->rlen = n;
	return 0;
}

/* choose_fence decides how the next commit publishes its tail (design
 * §2.6.6): with release stores once UNFENCE_AFTER commits in a row found
 * the consumer awake and the consumer declared that it fences, after
 * setting unfenced with a full barrier; with full barriers again from the
 * commit that finds the consumer asleep. */
#define UNFENCE_AFTER 64
static void choose_fence(struct ring *r, bool woke)
{
	if (woke) {
		r->awake = 0;
		if (r->unfenced_on) {
			r->unfenced_on = false;
			atomic_store(r->unfenced, 0); /* after the last release store */
		}
		return;
	}
	if (r->unfenced_on || !r->can_unfence || ++r->awake < UNFENCE_AFTER)
		return;
	r->awake = 0;
	if (atomic_load(r->fences) != 1)
		return;
	(void)atomic_exchange(r->unfenced, 1); /* before the first release store */
	r->unfenced_on = true;
}

static void ring_commit(ripc_client *c, struct ring *r, uint32_t type)
{
	uint64_t pos = r->rpos, n = r->rlen;
	unsigned char *p = r->data + (pos & r->mask);
	uint64_t w = ST_COMMITTED << 60 | n;
	wr32(p + 8, type);
	wr32(p + 12, header_sum(r->seed, pos, w, type, fold(r, p + 16, n)));
	wr64(p, w);
	r->ptail = pos + rec_size(n);
	r->reserved = false;
	if (r->unfenced_on)
		atomic_store_explicit(r->tail, r->ptail, memory_order_release);
	else
		publish64(r->tail, r->ptail);
	choose_fence(r, wake(c, r->wait[0], r->widx));
}

/* ---- rings: consumer (design §2.4) ---- */

static void ring_publish(ripc_client *c, struct ring *r)
{
	if (r->published == r->chead)
		return;
	r->published = r->chead;
	publish64(r->head, r->chead);
	wake(c, r->wait[1], r->widx + 1);
}

static int ring_fail(struct ring *r)
{
	r->failed = true;
	return RIPC_EPROTO;
}

/* tail_ok loads the tail and checks it against head h. */
static bool load_tail(struct ring *r, uint64_t h)
{
	uint64_t t = atomic_load(r->tail);
	if (t - h > r->size || t % 16)
		return false;
	r->tcache = t;
	return true;
}

/* ring_peek finds the next record: 0 with cur_* set, RIPC_EAGAIN
 * (empty), RIPC_EDISCONNECTED (closed and drained) or RIPC_EPROTO. */
static int ring_peek(ripc_client *c, struct ring *r)
{
	if (r->failed)
		return RIPC_EPROTO;
	if (r->peeked)
		return 0;
	for (;;) {
		uint64_t h = r->chead, off = h & r->mask;
		if (h == r->tcache) {
			if (!load_tail(r, h))
				return ring_fail(r);
			if (r->tcache == h) {
				ring_publish(c, r);
				if (!atomic_load(r->closed))
					return RIPC_EAGAIN;
				/* Closed: a last record may have been published
				 * between the tail load and the close. */
				if (!load_tail(r, h))
					return ring_fail(r);
				if (r->tcache == h)
					return RIPC_EDISCONNECTED;
			}
		}
		uint64_t w = atomic_load((a64 *)(r->data + off));
		uint64_t n = w & 0xFFFFFFFFull, fl = w & FL_MASK, rs;
		if (w >> 60 != ST_COMMITTED || (w & SLOTGEN_MASK) || (fl & ~(FL_PAD | FL_SKIP)))
			return ring_fail(r); /* slack is MPSC only */
		if (fl & FL_PAD) {
			rs = 16 + n;
			if (off + rs != r->size)
				return ring_fail(r);
		} else {
			rs = rec_size(n);
			if (n > r->maxp || off + rs > r->size)
				return ring_fail(r);
		}
		if (rs > r->tcache - h && (!load_tail(r, h) || rs > r->tcache - h))
			return ring_fail(r);
		if (fl & FL_SKIP) { /* a claim given up: no type, no sum */
			r->chead = h + rs;
			continue;
		}
		const unsigned char *p = r->data + off;
		uint32_t type = rd32(p + 8), sum = rd32(p + 12);
		const unsigned char *payload = (fl & FL_PAD) ? (const unsigned char *)"" : p + 16;
		uint64_t plen = (fl & FL_PAD) ? 0 : n;
		if (header_sum(r->seed, h, w, type, fold(r, payload, plen)) != sum)
			return ring_fail(r);
		if (fl & FL_PAD) {
			r->chead = h + rs;
			continue;
		}
		r->peeked = true;
		r->cur_size = rs;
		r->cur_type = type;
		r->cur_data = p + 16;
		r->cur_len = n;
		return 0;
	}
}

static void ring_release(ripc_client *c, struct ring *r)
{
	r->peeked = false;
	r->chead += r->cur_size;
	if (r->chead - r->published >= r->size / 8)
		ring_publish(c, r);
}

/* ---- closing (ipc §7) ---- */

/* close_ring follows ipc §7 to the letter: closed = 1 (exchange), then
 * for each wait word: store 0, FUTEX_WAKE (a sleeper in the kernel), and
 * for the peer's word its token, whatever the word held, so that a
 * sleeper of either kind wakes and re-checks the ring. */
static void close_ring(ripc_client *c, struct ring *r)
{
	(void)atomic_exchange(r->closed, 1);
	for (int k = 0; k < 2; k++) {
		atomic_store(r->wait[k], 0);
		futex_wake(r->wait[k]);
		if (!(LOCAL_WORDS & (1u << (r->widx + k))))
			send_token(c, r->widx + k);
	}
}

static void close_rings(ripc_client *c)
{
	if (c->rings_closed)
		return;
	c->rings_closed = true;
	close_ring(c, &c->rq);
	close_ring(c, &c->rs);
	close_ring(c, &c->ds);
	flush_kept(c);
}

/* ---- waiting ---- */

/* An attempt at what the caller waits for: 0 done, RIPC_EAGAIN not yet,
 * another code to return. */
typedef int (*attempt_fn)(ripc_client *c, void *arg);

static int remaining_ms(int64_t deadline)
{
	if (deadline < 0)
		return -1;
	int64_t d = deadline - now_ns();
	if (d <= 0)
		return 0;
	return (int)((d + 999999) / 1000000);
}

/* wait_for calls try until it stops saying RIPC_EAGAIN: polling for the
 * spin budget, then by the sleeping protocol (design §2.6, ipc §6):
 * announce on word i (exchange), re-check, and only then sleep in poll on
 * the socket until a token, the timeout or end of file. */
static int wait_for(ripc_client *c, attempt_fn try, void *arg, int i, int timeout_ms)
{
	int rc = try(c, arg);
	if (rc != RIPC_EAGAIN || timeout_ms == 0)
		return rc;
	int64_t start = now_ns();
	int64_t deadline = timeout_ms < 0 ? -1 : start + (int64_t)timeout_ms * 1000000;
	for (long n = 1;; n++) {
		rc = try(c, arg);
		if (rc != RIPC_EAGAIN)
			return rc;
		if (n % 64 == 0) {
			int64_t t = now_ns();
			if (t - start >= c->spin_ns || (deadline >= 0 && t >= deadline))
				break;
			if (n % 1024 == 0)
				sched_yield(); /* the server may need this core */
		}
		if (c->spin_ns <= 0)
			break;
	}
	struct ring *wr = i == W_REQ_PROD ? &c->rq : i == W_RESP_CONS ? &c->rs : &c->ds;
	a32 *w = i == W_REQ_PROD ? c->rq.wait[1] : wr->wait[0];
	for (;;) {
		if (c->dead)
			return c->dead;
		flush_kept(c);
		announce(wr, w, 1);
		rc = try(c, arg);
		if (rc != RIPC_EAGAIN) {
			atomic_store(w, 0); /* single sleeper: withdraw */
			return rc;
		}
		if (c->peer_gone) {
			/* The server is gone without closing this ring (it was
			 * killed): nothing more will come. */
			atomic_store(w, 0);
			return RIPC_EDISCONNECTED;
		}
		int ms = remaining_ms(deadline);
		if (deadline >= 0 && ms == 0) {
			atomic_store(w, 0);
			return RIPC_ETIMEDOUT;
		}
		struct pollfd pfd = {.fd = c->fd, .events = POLLIN | (c->kept ? POLLOUT : 0)};
		int pr = poll(&pfd, 1, ms);
		if (pr < 0 && errno != EINTR) {
			atomic_store(w, 0);
			return RIPC_ESYS;
		}
		if (pr > 0) {
			if (pfd.revents & POLLOUT)
				flush_kept(c);
			if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
				int e = read_tokens(c);
				if (e)
					return e;
			}
		}
	}
}

/* ---- handshake (ipc §1-§3) ---- */

void ripc_options_init(ripc_options *o)
{
	memset(o, 0, sizeof *o);
	o->server_uid = -1;
}

static int connect_socket(const char *address, int timeout_ms)
{
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	size_t len = strlen(address);
	socklen_t alen;
	if (len == 0) {
		errno = EINVAL;
		return RIPC_EINVAL;
	}
	if (address[0] == '@') {
		/* Abstract: a leading NUL, then exactly the name's bytes; the
		 * length is part of the name (ipc §1). */
		if (len > sizeof sa.sun_path) {
			errno = ENAMETOOLONG;
			return RIPC_EINVAL;
		}
		memcpy(sa.sun_path + 1, address + 1, len - 1);
		alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	} else {
		if (len >= sizeof sa.sun_path) {
			errno = ENAMETOOLONG;
			return RIPC_EINVAL;
		}
		memcpy(sa.sun_path, address, len);
		alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return RIPC_ESYS;
	if (timeout_ms > 0) {
		/* Bounds connect (a full backlog) and each handshake read. */
		struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	}
	int r;
	do
		r = connect(fd, (struct sockaddr *)&sa, alen);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return RIPC_ESYS;
	}
	return fd;
}

static int send_all(int fd, const unsigned char *b, size_t n)
{
	while (n) {
		ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return RIPC_ESYS;
		b += k;
		n -= (size_t)k;
	}
	return 0;
}

#define MAX_FDS 8

/* recv_reply reads the 96-byte reply with recvmsg, which a plain read
 * would not do: it would drop the descriptor (ipc §3). */
static int recv_reply(int fd, unsigned char *b, int *fds, int *nfds)
{
	size_t got = 0;
	*nfds = 0;
	while (got < REPLY_SIZE) {
		union {
			struct cmsghdr h;
			unsigned char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
		} cm;
		struct iovec iov = {.iov_base = b + got, .iov_len = REPLY_SIZE - got};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof cm.buf};
		ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h; h = CMSG_NXTHDR(&mh, h)) {
			if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
				continue;
			size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t j = 0; j < k; j++) {
				int f;
				memcpy(&f, CMSG_DATA(h) + j * sizeof(int), sizeof f);
				if (*nfds < MAX_FDS)
					fds[(*nfds)++] = f;
				else
					close(f);
			}
		}
		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK ? RIPC_ETIMEDOUT : RIPC_ESYS;
		if (n == 0)
			return RIPC_EDISCONNECTED;
		if (mh.msg_flags & MSG_CTRUNC)
			*nfds = MAX_FDS + 1; /* descriptors were lost: refuse */
		got += (size_t)n;
	}
	return 0;
}

static void close_fds(int *fds, int n)
{
	for (int i = 0; i < n && i < MAX_FDS; i++)
		close(fds[i]);
}

/* The reply's numbers (ipc §3), decoded once. */
struct grant {
	uint64_t sizes[3], offs[3], payload;
	uint32_t features, max_req, max_disp;
};

/* check_grant judges the reply before anything is mapped (ipc §3.2, §9.3):
 * ring sizes within what was asked for (RIPC_ETOOLARGE otherwise), the
 * layout, the limits, the features, and a payload no larger than the
 * rings need, which is the file's size. */
static int check_grant(struct grant *g, const unsigned char *rb, const ripc_options *o, uint64_t file_size)
{
	uint64_t asked[3] = {o->req_size, o->resp_size, o->disp_size};
	for (int i = 0; i < 3; i++) {
		g->sizes[i] = rd64(rb + 24 + 8 * i);
		g->offs[i] = rd64(rb + 48 + 8 * i);
	}
	g->payload = rd64(rb + 80);
	g->features = rd32(rb + 16);
	g->max_req = rd32(rb + 88);
	g->max_disp = rd32(rb + 92);
	uint64_t max_ring = o->max_ring ? o->max_ring : DEFAULT_MAX_RING;
	uint64_t end = CTL_SIZE, need = CTL_SIZE;
	for (int i = 0; i < 3; i++) {
		uint64_t s = g->sizes[i], off = g->offs[i];
		uint64_t cap = asked[i] ? (asked[i] > MIN_RING ? asked[i] : MIN_RING) : max_ring;
		if (!pow2(s) || s < MIN_RING)
			return RIPC_EPROTO;
		if (s > cap || s > RING_LIMIT)
			return RIPC_ETOOLARGE;
		if (off % 128 || off < end)
			return RIPC_EPROTO;
		end = off + RING_DATA + s;
		need = (need + RING_DATA + s + 127) & ~127ull;
	}
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
	if (page < SEG_HEADER)
		page = SEG_HEADER;
	need = (need + page - 1) / page * page;
	if (rd64(rb + 72) != 0 || end > g->payload || g->payload > need || file_size != SEG_HEADER + g->payload)
		return RIPC_EPROTO;
	if (g->max_req != g->sizes[0] / 2 - 16 - REQ_HDR || g->max_disp != g->sizes[2] / 2 - 16)
		return RIPC_EPROTO;
	if (g->features & ~o->features)
		return RIPC_EPROTO; /* granted what was not asked for */
	return 0;
}

/* check_segment validates the mapped segment against the reply
 * (segment.md, design §2.1) and attaches the rings. */
static int check_segment(ripc_client *c, const struct grant *g, uint64_t file_size)
{
	unsigned char hdr[88];
	memcpy(hdr, c->map, sizeof hdr); /* one read; check the copy */
	if (rd64(hdr) != SEG_MAGIC || rd32(hdr + 8) != 1 || rd64(hdr + 80) != ripc_xxh64(hdr, 80, 0) ||
	    rd32(hdr + 12) != SEG_HEADER || rd64(hdr + 16) != file_size || rd32(hdr + 24) != SEG_KIND_IPC)
		return RIPC_EPROTO;
	for (int i = 0; i < 3; i++)
		if (rd64(hdr + 32 + 8 * i) != g->sizes[i] || rd64(hdr + 56 + 8 * i) != g->offs[i])
			return RIPC_EPROTO;
	bool sums = g->features & RIPC_FEATURE_PAYLOAD_CHECKSUM;
	unsigned char *pay = c->map + SEG_HEADER;
	struct ring *rings[3] = {&c->rq, &c->rs, &c->ds};
	for (int i = 0; i < 3; i++) {
		unsigned char meta[64];
		memcpy(meta, pay + g->offs[i], sizeof meta);
		uint32_t flags = rd32(meta + 12);
		if (rd64(meta) != RING_MAGIC || rd32(meta + 8) != RING_VERSION ||
		    rd64(meta + 56) != ripc_xxh64(meta, 56, 0) || (flags & ~1u) ||
		    (bool)(flags & 1) != sums || rd64(meta + 16) != g->sizes[i] || rd32(meta + 24) != 0 ||
		    rd32(meta + 28) != 0 || rd64(meta + 40) != 0 || rd64(meta + 48) != 0)
			return RIPC_EPROTO;
		if (ring_attach(rings[i], pay + g->offs[i], g->sizes[i], sums, 2 * i))
			return RIPC_EPROTO;
	}
	c->ctl = pay;
	c->info.features = g->features;
	c->info.req_size = g->sizes[0];
	c->info.resp_size = g->sizes[1];
	c->info.disp_size = g->sizes[2];
	c->info.max_req = g->max_req;
	c->info.max_disp = g->max_disp;
	return 0;
}

static int status_err(uint32_t st)
{
	switch (st) {
	case 1: return RIPC_EVERSION;
	case 3: return RIPC_ESERVICE;
	case 2: case 4: case 5: case 6: return RIPC_EREJECTED;
	case 7: return RIPC_ELIMIT;
	default: return RIPC_EREJECTED; /* a status of a later version: still a refusal */
	}
}

/* connect_once is one connection attempt of ripc_connect, with o
 * checked and hs_ms the time it may take. */
static int connect_once(const char *address, uint16_t service, const ripc_options *opts,
			int hs_ms, ripc_client **out, ripc_info *info)
{
	ripc_options o = *opts;
	/* Ask only for what this client implements: a server that granted
	 * large bodies or progress notes would send records it cannot read. */
	o.features &= RIPC_FEATURE_PAYLOAD_CHECKSUM | RIPC_FEATURE_CLOSE_REASON;
	ripc_client *c = calloc(1, sizeof *c);
	if (!c)
		return RIPC_ESYS;
	c->spin_ns = o.spin_us < 0 ? 0 : (o.spin_us == 0 ? 200 : o.spin_us) * 1000L;
	c->next_corr = c->expect = 1;
	int fds[MAX_FDS], nfds = 0, rc;
	c->fd = connect_socket(address, hs_ms);
	if (c->fd < 0) {
		rc = c->fd;
		goto fail_free;
	}

	/* Judge the server before sending anything (ipc §9). */
	struct ucred cred;
	socklen_t cl = sizeof cred;
	if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
		rc = RIPC_ESYS;
		goto fail_sock;
	}
	c->info.server_pid = cred.pid;
	c->info.server_uid = cred.uid;
	c->info.server_gid = cred.gid;
	if (o.server_uid >= 0 ? (int64_t)cred.uid != o.server_uid : (geteuid() == 0 && cred.uid != 0)) {
		rc = RIPC_EBADSERVER;
		goto fail_sock;
	}

	unsigned char hb[HELLO_SIZE] = {0};
	wr64(hb, HELLO_MAGIC);
	wr16(hb + 8, PROTO_VERSION);
	wr16(hb + 10, service);
	wr32(hb + 12, o.features);
	wr64(hb + 16, o.req_size);
	wr64(hb + 24, o.resp_size);
	wr64(hb + 32, o.disp_size);
	/* A server that refuses at accept replies and closes before reading
	 * the hello, which may then fail to send: the reply says why. */
	if ((rc = send_all(c->fd, hb, sizeof hb)) && errno != EPIPE && errno != ECONNRESET)
		goto fail_sock;
	unsigned char rb[REPLY_SIZE];
	if ((rc = recv_reply(c->fd, rb, fds, &nfds))) {
		close_fds(fds, nfds);
		goto fail_sock;
	}
	if (rd64(rb) != REPLY_MAGIC) {
		close_fds(fds, nfds);
		rc = RIPC_EPROTO;
		goto fail_sock;
	}
	c->info.server_version = rd16(rb + 8);
	c->info.status = rd32(rb + 12);
	c->info.detail = rd32(rb + 20);
	if (c->info.status != 0) {
		close_fds(fds, nfds);
		rc = status_err(c->info.status);
		goto fail_sock;
	}
	if (c->info.server_version != PROTO_VERSION) {
		close_fds(fds, nfds);
		rc = RIPC_EVERSION;
		goto fail_sock;
	}
	if (nfds != 1) {
		close_fds(fds, nfds);
		rc = RIPC_EPROTO;
		goto fail_sock;
	}

	/* The segment: a sealed tmpfs memfd (segment.md), mapped whole once
	 * the reply has been judged. */
	int mfd = fds[0];
	struct stat st;
	struct statfs sfs;
	int seals = fcntl(mfd, F_GET_SEALS);
	if (fstatfs(mfd, &sfs) < 0 || sfs.f_type != TMPFS_MAGIC_ || fstat(mfd, &st) < 0 || seals < 0 ||
	    (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW) || !S_ISREG(st.st_mode) ||
	    st.st_size < SEG_HEADER + CTL_SIZE) {
		close(mfd);
		rc = RIPC_EPROTO;
		goto fail_sock;
	}
	struct grant g;
	if ((rc = check_grant(&g, rb, &o, (uint64_t)st.st_size))) {
		close(mfd);
		goto fail_sock;
	}
	c->map_len = (size_t)st.st_size;
	c->map = mmap(NULL, c->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	close(mfd); /* the mapping keeps the memory */
	if (c->map == MAP_FAILED) {
		c->map = NULL;
		rc = RIPC_ESYS;
		goto fail_sock;
	}
	if ((rc = check_segment(c, &g, (uint64_t)st.st_size)))
		goto fail_map;

	/* From now on the socket carries only tokens, never waited on
	 * except in poll. */
	int fl = fcntl(c->fd, F_GETFL);
	if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		rc = RIPC_ESYS;
		goto fail_map;
	}
	struct timeval zero = {0};
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof zero);
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &zero, sizeof zero);
	if (info)
		*info = c->info;
	*out = c;
	return 0;

fail_map:
	munmap(c->map, c->map_len);
fail_sock:
	if (info)
		*info = c->info;
	{
		int e = errno;
		close(c->fd);
		errno = e;
	}
fail_free:
	free(c);
	return rc;
}

int ripc_connect(const char *address, uint16_t service, const ripc_options *opts,
		 ripc_client **out, ripc_info *info)
{
	ripc_options o;
	if (opts)
		o = *opts;
	else
		ripc_options_init(&o);
	*out = NULL;
	if ((o.req_size && !pow2(o.req_size)) || (o.resp_size && !pow2(o.resp_size)) ||
	    (o.disp_size && !pow2(o.disp_size)) || (o.max_ring && !pow2(o.max_ring)))
		return RIPC_EINVAL;
	/* A server whose handshake slots are taken (status 7, detail 1 or
	 * 2: ipc §3.1) is asked again, 1 ms doubling to 100 ms apart, for as
	 * long as the handshake time allows, as the Go client does. */
	int hs_ms = o.handshake_ms == 0 ? 5000 : o.handshake_ms;
	int64_t deadline = hs_ms < 0 ? -1 : now_ns() + (int64_t)hs_ms * 1000000;
	ripc_info tmp;
	if (!info)
		info = &tmp;
	for (long pause_ms = 1;; pause_ms = pause_ms * 2 > 100 ? 100 : pause_ms * 2) {
		int ms = deadline < 0 ? -1 : remaining_ms(deadline);
		if (deadline >= 0 && ms == 0)
			return RIPC_ETIMEDOUT;
		memset(info, 0, sizeof *info);
		int rc = connect_once(address, service, &o, ms, out, info);
		if (rc != RIPC_ELIMIT || (info->detail != 1 && info->detail != 2))
			return rc;
		if (deadline >= 0 && remaining_ms(deadline) <= pause_ms)
			return rc;
		struct timespec ts = {.tv_sec = pause_ms / 1000, .tv_nsec = (pause_ms % 1000) * 1000000L};
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
}

void ripc_info_get(const ripc_client *c, ripc_info *info) { *info = c->info; }

int ripc_fd(const ripc_client *c) { return c->fd; }

void ripc_close(ripc_client *c)
{
	if (!c)
		return;
	close_rings(c);
	close(c->fd);
	munmap(c->map, c->map_len);
	free(c);
}

/* ---- requests ---- */

struct reserve_arg {
	uint64_t n;
};

static int try_reserve(ripc_client *c, void *arg)
{
	if (c->dead)
		return c->dead;
	if (c->peer_gone)
		return RIPC_EDISCONNECTED;
	return ring_reserve(&c->rq, ((struct reserve_arg *)arg)->n);
}

int ripc_reserve(ripc_client *c, uint16_t id, size_t len, void **body, int timeout_ms)
{
	if (c->dead)
		return c->dead;
	if (c->rq.reserved)
		return RIPC_ESTATE;
	if (len > c->info.max_req)
		return RIPC_ETOOLARGE;
	struct reserve_arg a = {.n = REQ_HDR + (uint64_t)len};
	int rc = wait_for(c, try_reserve, &a, W_REQ_PROD, timeout_ms);
	if (rc == RIPC_EPROTO)
		return kill_conn(c, rc);
	if (rc)
		return rc;
	c->rq.rid = id;
	*body = c->rq.data + (c->rq.rpos & c->rq.mask) + 16 + REQ_HDR;
	return 0;
}

int ripc_commit(ripc_client *c, uint64_t *corr)
{
	if (!c->rq.reserved)
		return RIPC_ESTATE;
	if (c->dead) {
		c->rq.reserved = false;
		return c->dead;
	}
	uint64_t k = c->next_corr++;
	wr64(c->rq.data + (c->rq.rpos & c->rq.mask) + 16, k);
	ring_commit(c, &c->rq, c->rq.rid);
	if (corr)
		*corr = k;
	return 0;
}

int ripc_abort(ripc_client *c)
{
	if (!c->rq.reserved)
		return RIPC_ESTATE;
	/* Nothing was published. A padding record written for this
	 * reservation stays: the local tail is already past it, and the
	 * next commit's tail store publishes it (design §2.4). */
	c->rq.reserved = false;
	return 0;
}

int ripc_send(ripc_client *c, uint16_t id, const void *req, size_t len, uint64_t *corr, int timeout_ms)
{
	void *b;
	int rc = ripc_reserve(c, id, len, &b, timeout_ms);
	if (rc)
		return rc;
	if (len)
		memcpy(b, req, len);
	return ripc_commit(c, corr);
}

/* ---- responses ---- */

static int try_response(ripc_client *c, void *arg)
{
	(void)arg;
	if (c->dead)
		return c->dead;
	for (;;) {
		int rc = ring_peek(c, &c->rs);
		if (rc)
			return rc;
		struct ring *r = &c->rs;
		if (r->cur_len < RESP_HDR)
			return RIPC_EPROTO;
		uint64_t corr = rd64(r->cur_data);
		/* ipc §5.2: a response matching no call in flight is released
		 * unread; the server answers in request order, so one that
		 * matches a call must be the oldest's. */
		if (corr - c->expect >= c->next_corr - c->expect) {
			ring_release(c, r);
			continue;
		}
		if (corr != c->expect)
			return RIPC_EPROTO;
		if (corr <= c->abandon_upto) { /* a call given up on */
			c->expect++;
			ring_release(c, r);
			continue;
		}
		return 0;
	}
}

/* live_calls reports whether a call not given up on is in flight. */
static bool live_calls(const ripc_client *c)
{
	uint64_t first = c->expect > c->abandon_upto ? c->expect : c->abandon_upto + 1;
	return first < c->next_corr;
}

static int fill_response(ripc_client *c, ripc_response *res)
{
	struct ring *r = &c->rs;
	res->corr = rd64(r->cur_data);
	res->status = r->cur_type;
	res->code = (int32_t)rd32(r->cur_data + 8);
	res->body = r->cur_data + RESP_HDR;
	res->len = (size_t)(r->cur_len - RESP_HDR);
	return 0;
}

int ripc_next_response(ripc_client *c, ripc_response *res, int timeout_ms)
{
	if (c->dead)
		return c->dead;
	if (c->resp_held)
		return RIPC_ESTATE;
	if (!live_calls(c))
		return RIPC_ESTATE; /* nothing in flight */
	int rc = wait_for(c, try_response, NULL, W_RESP_CONS, timeout_ms);
	if (rc == RIPC_EPROTO)
		return kill_conn(c, rc);
	if (rc == RIPC_EDISCONNECTED)
		c->abandon_upto = c->next_corr - 1; /* no answer will come */
	if (rc)
		return rc;
	c->resp_held = true;
	return fill_response(c, res);
}

int ripc_release_response(ripc_client *c)
{
	if (!c->resp_held)
		return RIPC_ESTATE;
	c->resp_held = false;
	c->expect++;
	ring_release(c, &c->rs);
	return 0;
}

static int status_code(uint32_t st)
{
	switch (st) {
	case 0: return 0;
	case 1: return RIPC_EUNKNOWNMSG;
	case 2: return RIPC_EHANDLER;
	case 3: return RIPC_ETOOLARGE;
	case 4: return RIPC_EPANIC;
	default: return RIPC_EPROTO; /* that call only (ipc §5.2) */
	}
}

int ripc_call(ripc_client *c, uint16_t id, const void *req, size_t len,
	      void *resp, size_t cap, ripc_response *res, int timeout_ms)
{
	if (c->dead)
		return c->dead;
	if (c->resp_held || c->rq.reserved || live_calls(c))
		return RIPC_ESTATE; /* pipelined responses to take first */
	int64_t deadline = timeout_ms < 0 ? -1 : now_ns() + (int64_t)timeout_ms * 1000000;
	uint64_t corr;
	int rc = ripc_send(c, id, req, len, &corr, timeout_ms);
	if (rc)
		return rc;
	int ms = remaining_ms(deadline);
	rc = wait_for(c, try_response, NULL, W_RESP_CONS, deadline < 0 ? -1 : (ms ? ms : 1));
	if (rc == RIPC_ETIMEDOUT || rc == RIPC_EAGAIN) {
		c->abandon_upto = corr; /* its response is skipped when it comes */
		return RIPC_ETIMEDOUT;
	}
	if (rc == RIPC_EDISCONNECTED)
		c->abandon_upto = c->next_corr - 1; /* no answer will come */
	if (rc == RIPC_EPROTO)
		return kill_conn(c, rc);
	if (rc)
		return rc;
	ripc_response v;
	fill_response(c, &v);
	rc = status_code(v.status);
	if (v.len > cap) {
		if (res) {
			*res = v;
			res->body = NULL;
		}
		c->expect++;
		ring_release(c, &c->rs);
		return rc ? rc : RIPC_ESHORTBUF;
	}
	if (v.len)
		memcpy(resp, v.body, v.len);
	if (res) {
		*res = v;
		res->body = resp;
	}
	c->expect++;
	ring_release(c, &c->rs);
	return rc;
}

/* ---- dispatch ---- */

static int try_dispatch(ripc_client *c, void *arg)
{
	(void)arg;
	if (c->dead)
		return c->dead;
	int rc = ring_peek(c, &c->ds);
	if (rc == 0 && (c->ds.cur_type >> 16))
		return RIPC_EPROTO; /* ipc §5.3: bits 16..31 zero */
	if (rc == RIPC_EAGAIN && c->peer_gone)
		return RIPC_EDISCONNECTED;
	return rc;
}

int ripc_recv(ripc_client *c, ripc_message *m, int timeout_ms)
{
	int rc = wait_for(c, try_dispatch, NULL, W_DISP_CONS, timeout_ms);
	if (rc == RIPC_EPROTO)
		return kill_conn(c, rc);
	if (rc)
		return rc;
	m->id = (uint16_t)c->ds.cur_type;
	m->data = c->ds.cur_data;
	m->len = (size_t)c->ds.cur_len;
	return 0;
}

int ripc_release_message(ripc_client *c)
{
	if (!c->ds.peeked)
		return RIPC_ESTATE;
	ring_release(c, &c->ds);
	return 0;
}

/* ---- event loops ---- */

int ripc_prepare_poll(ripc_client *c, short *events)
{
	*events = POLLIN;
	if (c->dead || c->peer_gone)
		return 1; /* let the caller find out through recv/process */
	flush_kept(c);
	/* Responses to calls given up on are taken here, so that only
	 * live ones make the caller act. */
	bool calls = c->expect != c->next_corr && !c->resp_held;
	announce(&c->ds, c->ds.wait[0], 1);
	if (calls)
		announce(&c->rs, c->rs.wait[0], 1);
	int rc = try_dispatch(c, NULL);
	if (rc == RIPC_EAGAIN && calls)
		rc = try_response(c, NULL);
	if (rc != RIPC_EAGAIN) {
		/* Something to do (a record, a close, an error): withdraw. */
		atomic_store(c->ds.wait[0], 0);
		if (calls)
			atomic_store(c->rs.wait[0], 0);
		if (rc == RIPC_EPROTO)
			kill_conn(c, rc);
		return 1;
	}
	if (c->kept)
		*events |= POLLOUT;
	return 0;
}

int ripc_process(ripc_client *c, short revents)
{
	if (c->dead)
		return c->dead;
	if (c->kept)
		flush_kept(c);
	if (revents & (POLLIN | POLLHUP | POLLERR)) {
		int rc = read_tokens(c);
		if (rc)
			return rc;
	}
	return c->peer_gone ? RIPC_EDISCONNECTED : 0;
}

void ripc_flow_control(const ripc_client *c, ripc_flow *f)
{
	f->active = atomic_load((a32 *)(c->ctl + 0));
	f->queued = atomic_load((a32 *)(c->ctl + 4));
	f->dropped = atomic_load((a64 *)(c->ctl + 8));
	f->events = atomic_load((a64 *)(c->ctl + 16));
}

uint32_t ripc_close_reason(const ripc_client *c)
{
	return atomic_load((a32 *)(c->ctl + 24));
}

const char *ripc_strerror(int err)
{
	switch (err) {
	case RIPC_OK: return "ok";
	case RIPC_ESYS: return "system call failed (see errno)";
	case RIPC_EPROTO: return "protocol error";
	case RIPC_EVERSION: return "protocol version mismatch";
	case RIPC_EREJECTED: return "connection rejected";
	case RIPC_ESERVICE: return "unknown service";
	case RIPC_EDISCONNECTED: return "disconnected";
	case RIPC_ETOOLARGE: return "too large";
	case RIPC_EAGAIN: return "try again";
	case RIPC_ETIMEDOUT: return "timed out";
	case RIPC_EUNKNOWNMSG: return "unknown message id";
	case RIPC_EHANDLER: return "handler error";
	case RIPC_EPANIC: return "handler panicked";
	case RIPC_ESHORTBUF: return "buffer too small";
	case RIPC_ESTATE: return "bad call sequence";
	case RIPC_EBADSERVER: return "server refused";
	case RIPC_EINVAL: return "invalid argument";
	case RIPC_ELIMIT: return "server limit reached";
	}
	return "unknown error";
}
