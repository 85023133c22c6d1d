/*
 * call.c: ringbench's "c" transport of the call scenario (cmd/ringbench,
 * ccall.go). The C client calls the echo service of ringbench's server
 * child, one call at a time, and measures itself as ringbench's fanin
 * clients do: it speaks ringbench's child protocol on stdin and stdout
 * (cmd/ringbench/child.go), so the parent's harness cuts its window.
 *
 *   call ADDRESS SIZE RATE SPIN_NS RING_SIZE HIST_SUB_BITS HIST_MAX_NS
 *
 * stdin:  "mark" (the first starts the window, the second ends it), "exit"
 * stdout: {"ev":"ready"}, {"ev":"mark","cpu_ns":N} per mark, and at the
 *         end {"ev":"done","sent":N,"window":W,"lat":{histogram}}
 *
 * Latencies go into ringbench's log-linear histogram (hist.go), whose two
 * parameters the parent passes, so that the buckets cannot drift apart:
 * index(v) = s*2^b + v>>s, s = max(0, bitlen(v) - (b+1)). Unpaced, one
 * call in 8 is timed (a random one), as callLoop does; paced, every call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../ringipc.h"

enum { SERVICE = 1, ECHO = 1, STRIDE = 8 };

static int sub_bits;
static long long hist_max;
static unsigned long long *counts;
static size_t nbuckets;
static unsigned long long overflow, total;
static long long hmin, hmax;

static void die(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	/* The parent reads errors from "done". */
	printf("{\"ev\":\"done\",\"sent\":0,\"err\":\"c caller: ");
	for (char *p = msg; *p; p++)
		putchar(*p == '"' || *p == '\\' ? '\'' : *p);
	printf("\"}\n");
	fflush(stdout);
	exit(1);
}

static size_t hist_index(long long v)
{
	int len = v ? 64 - __builtin_clzll((unsigned long long)v) : 0;
	int s = len - (sub_bits + 1);
	if (s < 0)
		s = 0;
	return (size_t)s * ((size_t)1 << sub_bits) + (size_t)((unsigned long long)v >> s);
}

static void record(long long v)
{
	if (v < 0)
		v = 0;
	if (v > hist_max) {
		v = hist_max;
		overflow++;
	}
	counts[hist_index(v)]++;
	total++;
	if (v < hmin)
		hmin = v;
	if (v > hmax)
		hmax = v;
}

static void hist_reset(void)
{
	memset(counts, 0, nbuckets * sizeof *counts);
	overflow = total = 0;
	hmin = hist_max;
	hmax = 0;
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long cpu_ns(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ((long long)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
	       ((long long)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
}

/* Control: the parent's lines on stdin, read without waiting. */
static int marks;
static char line[64];
static size_t linelen;

static void control(void)
{
	for (;;) {
		char c;
		ssize_t n = read(0, &c, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0)
			exit(1); /* the parent is gone */
		if (c != '\n') {
			if (linelen < sizeof line - 1)
				line[linelen++] = c;
			continue;
		}
		line[linelen] = 0;
		linelen = 0;
		if (!strcmp(line, "mark")) {
			printf("{\"ev\":\"mark\",\"cpu_ns\":%lld}\n", cpu_ns());
			fflush(stdout);
			marks++;
		} else if (!strcmp(line, "exit")) {
			exit(0);
		}
	}
}

/* pause_until sleeps until slot (CLOCK_MONOTONIC ns) in ppoll on stdin,
 * so that a mark arriving during the pause is answered at once. */
static void pause_until(long long slot)
{
	for (;;) {
		long long d = slot - now_ns();
		if (d <= 0)
			return;
		struct timespec ts = {.tv_sec = d / 1000000000LL, .tv_nsec = d % 1000000000LL};
		struct pollfd p = {.fd = 0, .events = POLLIN};
		if (ppoll(&p, 1, &ts, NULL) > 0)
			control();
	}
}

int main(int argc, char **argv)
{
	if (argc != 8)
		die("usage: call ADDRESS SIZE RATE SPIN_NS RING_SIZE HIST_SUB_BITS HIST_MAX_NS");
	const char *addr = argv[1];
	size_t size = (size_t)strtoull(argv[2], NULL, 0);
	long rate = strtol(argv[3], NULL, 0);
	long long spin = strtoll(argv[4], NULL, 0);
	unsigned long long ring = strtoull(argv[5], NULL, 0);
	sub_bits = atoi(argv[6]);
	hist_max = strtoll(argv[7], NULL, 0);
	if (size < 8 || sub_bits < 1 || sub_bits > 16 || hist_max <= 0)
		die("bad arguments");
	nbuckets = hist_index(hist_max) + 1;
	counts = calloc(nbuckets, sizeof *counts);
	hist_reset();
	int fl = fcntl(0, F_GETFL);
	if (fl < 0 || fcntl(0, F_SETFL, fl | O_NONBLOCK) < 0)
		die("stdin: %s", strerror(errno));

	ripc_options o;
	ripc_options_init(&o);
	o.req_size = o.resp_size = o.disp_size = ring;
	o.max_ring = 1ull << 30; /* ringbench's server grants up to this */
	o.spin_us = spin < 0 ? -1 : (int)(spin / 1000);
	if (spin > 0 && o.spin_us == 0)
		o.spin_us = 1;
	ripc_client *c;
	ripc_info info;
	int rc = ripc_connect(addr, SERVICE, &o, &c, &info);
	if (rc)
		die("connect %s: %s", addr, ripc_strerror(rc));
	if (info.max_req < size)
		die("the server granted requests of up to %u bytes, want %zu", info.max_req, size);
	unsigned char *req = calloc(1, size), *resp = malloc(size);
	for (size_t j = 8; j < size; j++)
		req[j] = (unsigned char)j;
	printf("{\"ev\":\"ready\"}\n");
	fflush(stdout);

	unsigned long long n = 0, at0 = 0, rng = 0x9e3779b97f4a7c15ull | 1;
	long long period = rate > 0 ? 1000000000LL / rate : 0, slot = now_ns();
	int seen = 0;
	long long last_look = 0;
	for (;; n++) {
		/* Marks are read every call when paced (a late caller does
		 * not pause, and must still see them); unpaced, at least every
		 * 100 µs (the clock every 16 calls), so that the window is cut
		 * within that of the parent's marks without a system call per
		 * call. */
		if (period) {
			pause_until(slot);
			slot += period;
			control();
		} else if ((n & 15) == 0) {
			long long t = now_ns();
			if (t - last_look >= 100000) {
				last_look = t;
				control();
			}
		}
		if (marks != seen) {
			if (seen == 0) { /* the window starts: forget the warm-up */
				at0 = n;
				hist_reset();
			}
			seen = marks;
			if (seen >= 2)
				break;
		}
		memcpy(req, &n, 8); /* the tag the echo must bring back */
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		int timed = period || rng % STRIDE == 0;
		long long t0 = timed ? now_ns() : 0;
		ripc_response r;
		if ((rc = ripc_call(c, ECHO, req, size, resp, size, &r, -1)))
			die("call %llu: %s", n, ripc_strerror(rc));
		if (timed)
			record(now_ns() - t0);
		if (r.len != size || memcmp(resp, &n, 8))
			die("call %llu: a %zu-byte response with another tag", n, r.len);
	}
	ripc_close(c); /* ends the server child's run */
	printf("{\"ev\":\"done\",\"sent\":%llu,\"window\":%llu,\"lat\":{\"buckets\":[", n, n - at0);
	int first = 1;
	for (size_t i = 0; i < nbuckets; i++)
		if (counts[i]) {
			printf("%s[%zu,%llu]", first ? "" : ",", i, counts[i]);
			first = 0;
		}
	printf("],\"overflow\":%llu,\"min\":%lld,\"max\":%lld}}\n", overflow, total ? hmin : 0, hmax);
	fflush(stdout);
	/* Marks are answered until "exit". */
	int flg = fcntl(0, F_GETFL);
	fcntl(0, F_SETFL, flg & ~O_NONBLOCK);
	for (;;)
		control();
}
