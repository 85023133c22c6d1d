/*
 * driver.c: the C side of the interop tests (clients/c/interop). It runs
 * one scenario against a Go ipc.Server and prints what it saw; the Go test
 * asserts on the exit status and the output.
 *
 *   driver ADDRESS SCENARIO [key=value...]
 *
 * keys: sums=0|1 (payload checksums), req=, resp=, disp= (ring sizes),
 * n= (count), size= (dispatch body size), spin= (µs, -1 none).
 * Lines on stdout are steps the Go test waits for; "ok" ends a success.
 * The service's message ids are those of interop_test.go.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ringipc.h"

enum { M_ECHO = 1, M_FAIL = 2, M_PANIC = 3, M_HUGE = 4, M_DISPATCH = 5, M_CLOSE = 6, M_BLOCK = 7, M_SUM = 8, M_STREAM = 9 };

static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "driver: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static void step(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
	va_end(ap);
}

static void expect(int got, int want, const char *what)
{
	if (got != want)
		fail("%s: got %d (%s), want %d (%s)", what, got, ripc_strerror(got), want, ripc_strerror(want));
}

/* wait_line blocks until the Go test writes a line on stdin. */
static void wait_line(void)
{
	char buf[64];
	if (!fgets(buf, sizeof buf, stdin))
		fail("stdin closed");
}

static long opt(int argc, char **argv, const char *key, long def)
{
	size_t k = strlen(key);
	for (int i = 3; i < argc; i++)
		if (!strncmp(argv[i], key, k) && argv[i][k] == '=')
			return strtol(argv[i] + k + 1, NULL, 0);
	return def;
}

/* code_of names the results the Go tests expect. */
static int code_of(const char *name)
{
	static const struct {
		const char *name;
		int code;
	} codes[] = {{"ok", 0}, {"proto", RIPC_EPROTO}, {"disconnected", RIPC_EDISCONNECTED},
		     {"toolarge", RIPC_ETOOLARGE}, {"rejected", RIPC_EREJECTED}};
	for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
		if (!strcmp(name, codes[i].name))
			return codes[i].code;
	fail("unknown result name %s", name);
	return 0;
}

static unsigned char pat(uint64_t seq, size_t j) { return (unsigned char)(seq * 31 + j * 7 + 1); }

static void fill(unsigned char *b, size_t n, uint64_t seq)
{
	for (size_t j = 0; j < n; j++)
		b[j] = pat(seq, j);
}

static void check(const unsigned char *b, size_t n, uint64_t seq, const char *what)
{
	for (size_t j = 0; j < n; j++)
		if (b[j] != pat(seq, j))
			fail("%s %llu: byte %zu of %zu is %#x, want %#x", what, (unsigned long long)seq, j, n, b[j], pat(seq, j));
}

static ripc_client *connect_opts(const char *addr, int argc, char **argv, ripc_info *info)
{
	ripc_options o;
	ripc_options_init(&o);
	o.features = opt(argc, argv, "sums", 0) ? RIPC_FEATURE_PAYLOAD_CHECKSUM : 0;
	if (opt(argc, argv, "reason", 0))
		o.features |= RIPC_FEATURE_CLOSE_REASON;
	o.req_size = (uint64_t)opt(argc, argv, "req", 0);
	o.resp_size = (uint64_t)opt(argc, argv, "resp", 0);
	o.disp_size = (uint64_t)opt(argc, argv, "disp", 0);
	o.spin_us = (int)opt(argc, argv, "spin", 0);
	uint32_t want = o.features;
	/* Bits the client does not implement (large bodies, progress notes,
	 * streams, cancels): asked for here, never asked of the server. */
	o.features |= (uint32_t)opt(argc, argv, "extra", 0);
	ripc_client *c;
	int rc = ripc_connect(addr, 1, &o, &c, info);
	if (rc)
		fail("connect %s: %s (errno %d, status %u)", addr, ripc_strerror(rc), errno, info->status);
	if (info->features != want)
		fail("granted features %#x, asked %#x (want %#x)", info->features, o.features, want);
	return c;
}

/* Calls of every size, copying, in place and pipelined, over rings small
 * enough to wrap many times; then every error status. */
static void scenario_calls(ripc_client *c, const ripc_info *info, long n)
{
	/* An echo is bounded by the response ring too: resp_size/2 - 32. */
	size_t max = info->max_req, rmax = (size_t)(info->resp_size / 2 - 32);
	if (rmax < max)
		max = rmax;
	size_t sizes[] = {0, 1, 7, 8, 15, 16, 17, 31, 100, 1000, max / 3, max - 17, max - 1, max};
	size_t ns = sizeof sizes / sizeof sizes[0];
	unsigned char *req = malloc(info->max_req + 1), *resp = malloc(info->max_req + 1);
	uint64_t bytes = 0;
	for (long i = 0; i < n; i++) {
		size_t len = sizes[i % ns];
		if (len > max)
			len = max;
		fill(req, len, (uint64_t)i);
		ripc_response r;
		int rc;
		if (i % 3 == 1) { /* in place both ways */
			void *b;
			uint64_t corr;
			if ((rc = ripc_reserve(c, M_ECHO, len, &b, -1)))
				fail("reserve %zu: %s", len, ripc_strerror(rc));
			fill(b, len, (uint64_t)i);
			if ((rc = ripc_commit(c, &corr)))
				fail("commit: %s", ripc_strerror(rc));
			if ((rc = ripc_next_response(c, &r, -1)))
				fail("response: %s", ripc_strerror(rc));
			if (r.corr != corr || r.status != 0 || r.len != len)
				fail("in place call %ld: corr %llu/%llu status %u len %zu/%zu", i,
				     (unsigned long long)r.corr, (unsigned long long)corr, r.status, r.len, len);
			check(r.body, r.len, (uint64_t)i, "in place response");
			expect(ripc_release_response(c), 0, "release");
		} else {
			memset(resp, 0, len);
			if ((rc = ripc_call(c, M_ECHO, req, len, resp, max, &r, -1)))
				fail("call %ld of %zu bytes: %s", i, len, ripc_strerror(rc));
			if (r.len != len)
				fail("call %ld: %zu bytes back, want %zu", i, r.len, len);
			check(resp, len, (uint64_t)i, "response");
		}
		bytes += len;
	}
	/* Pipelined: several requests out, then their responses in order. */
	for (int round = 0; round < 50; round++) {
		uint64_t corr[8];
		for (int k = 0; k < 8; k++) {
			fill(req, 40, (uint64_t)(round * 8 + k));
			expect(ripc_send(c, M_ECHO, req, 40, &corr[k], -1), 0, "pipelined send");
		}
		for (int k = 0; k < 8; k++) {
			ripc_response r;
			expect(ripc_next_response(c, &r, -1), 0, "pipelined response");
			if (r.corr != corr[k] || r.len != 40)
				fail("pipelined response %d: corr %llu, want %llu", k, (unsigned long long)r.corr, (unsigned long long)corr[k]);
			check(r.body, 40, (uint64_t)(round * 8 + k), "pipelined response");
			expect(ripc_release_response(c), 0, "release");
		}
	}
	/* Every status. */
	ripc_response r;
	expect(ripc_call(c, 99, "x", 1, resp, max, &r, -1), RIPC_EUNKNOWNMSG, "unknown message");
	expect(ripc_call(c, M_FAIL, "x", 1, resp, max, &r, -1), RIPC_EHANDLER, "handler error");
	if (r.code != 42 || r.len != 7 || memcmp(resp, "no luck", 7))
		fail("handler error: code %d, text %.*s", r.code, (int)r.len, (const char *)resp);
	expect(ripc_call(c, M_PANIC, "x", 1, resp, max, &r, -1), RIPC_EPANIC, "panic");
	expect(ripc_call(c, M_HUGE, "x", 1, resp, max, &r, -1), RIPC_ETOOLARGE, "response too large");
	/* The largest request goes out; one byte more does not. */
	fill(req, info->max_req, 5);
	expect(ripc_call(c, M_SUM, req, info->max_req, resp, max, &r, -1), 0, "largest request");
	uint64_t want = 0;
	for (size_t j = 0; j < info->max_req; j++)
		want += req[j];
	uint64_t got[2];
	memcpy(got, resp, 16);
	if (r.len != 16 || got[0] != info->max_req || got[1] != want)
		fail("largest request: server saw %llu bytes summing to %llu, want %u, %llu", (unsigned long long)got[0],
		     (unsigned long long)got[1], info->max_req, (unsigned long long)want);
	expect(ripc_call(c, M_ECHO, req, info->max_req + 1, resp, max, &r, -1), RIPC_ETOOLARGE, "request too large");
	fill(req, 100, 7);
	expect(ripc_call(c, M_ECHO, req, 100, resp, 10, &r, -1), RIPC_ESHORTBUF, "short buffer");
	if (r.len != 100)
		fail("short buffer: len %zu, want 100", r.len);
	expect(ripc_call(c, M_ECHO, req, 100, resp, max, &r, -1), 0, "call after a short buffer");
	check(resp, 100, 7, "response");
	step("calls %ld bytes %llu", n, (unsigned long long)bytes);
	free(req);
	free(resp);
}

/* recv_all takes dispatch messages through the event-loop API until want
 * arrived (or the connection ended, if until_end); it checks their order
 * and content and returns how many came. */
static long recv_all(ripc_client *c, long want, size_t size, int until_end)
{
	long got = 0;
	for (;;) {
		ripc_message m;
		int rc;
		while ((rc = ripc_recv(c, &m, 0)) == 0) {
			if (m.len != size || m.id != 100 + got % 7)
				fail("message %ld: id %u, %zu bytes (want id %ld, %zu)", got, m.id, m.len, 100 + got % 7, size);
			check(m.data, m.len, (uint64_t)got, "message");
			expect(ripc_release_message(c), 0, "release message");
			got++;
		}
		if (rc == RIPC_EDISCONNECTED && until_end)
			return got;
		if (rc != RIPC_EAGAIN)
			fail("recv after %ld messages: %s", got, ripc_strerror(rc));
		if (!until_end && got >= want)
			return got;
		short ev;
		if (ripc_prepare_poll(c, &ev))
			continue;
		struct pollfd p = {.fd = ripc_fd(c), .events = ev};
		int pr = poll(&p, 1, -1); /* the Go test's timeout is the hang guard */
		if (pr < 0 && errno != EINTR)
			fail("poll: %s", strerror(errno));
		if (pr > 0) {
			rc = ripc_process(c, p.revents);
			if (rc && rc != RIPC_EDISCONNECTED)
				fail("process: %s", ripc_strerror(rc));
		}
	}
}

static void ask_dispatch(ripc_client *c, long n, size_t size)
{
	unsigned char b[8];
	uint32_t v[2] = {(uint32_t)n, (uint32_t)size};
	memcpy(b, v, 8);
	unsigned char out[16];
	ripc_response r;
	expect(ripc_call(c, M_DISPATCH, b, 8, out, sizeof out, &r, -1), 0, "dispatch request");
}

int main(int argc, char **argv)
{
	if (argc < 3)
		fail("usage: driver ADDRESS SCENARIO [key=value...]");
	const char *addr = argv[1], *sc = argv[2];
	ripc_info info;
	memset(&info, 0, sizeof info);

	if (!strcmp(sc, "reject")) {
		ripc_client *c;
		expect(ripc_connect(addr, 999, NULL, &c, &info), RIPC_ESERVICE, "unknown service");
		if (info.status != 3)
			fail("unknown service: status %u", info.status);
		expect(ripc_connect(addr, 2, NULL, &c, &info), RIPC_EREJECTED, "refused by OnConnect");
		if (info.status != 5 || info.detail != 77)
			fail("OnConnect reject: status %u detail %u", info.status, info.detail);
		ripc_options o;
		ripc_options_init(&o);
		o.req_size = 3000;
		expect(ripc_connect(addr, 1, &o, &c, &info), RIPC_EINVAL, "ring size not a power of two");
		ripc_options_init(&o);
		o.server_uid = (int64_t)getuid() + 1;
		expect(ripc_connect(addr, 1, &o, &c, &info), RIPC_EBADSERVER, "server of another uid");
		ripc_options_init(&o);
		o.max_ring = 8192; /* the server's default rings are larger */
		expect(ripc_connect(addr, 1, &o, &c, &info), RIPC_ETOOLARGE, "rings larger than accepted");
		step("ok");
		return 0;
	}
	if (!strcmp(sc, "limit")) {
		/* The server allows one connection per uid: the second is
		 * refused at accept with status 7, detail 4. */
		ripc_client *c1, *c2;
		expect(ripc_connect(addr, 1, NULL, &c1, &info), 0, "first connection");
		expect(ripc_connect(addr, 1, NULL, &c2, &info), RIPC_ELIMIT, "second connection");
		if (info.status != 7 || info.detail != 4)
			fail("limit: status %u detail %u", info.status, info.detail);
		ripc_close(c1);
		step("ok");
		return 0;
	}

	if (!strcmp(sc, "expect")) {
		/* expect=connect=CODE: the connection must fail so;
		 * expect=CODE,CODE...: the results of successive echo calls
		 * (msg=ID: of calls of that message id instead, body "x";
		 * a success must echo it);
		 * recv=1: then a dispatch receive must fail with RIPC_EPROTO. */
		const char *want = NULL;
		for (int i = 3; i < argc; i++)
			if (!strncmp(argv[i], "expect=", 7))
				want = argv[i] + 7;
		if (!want)
			fail("expect: no expect= list");
		ripc_options o;
		ripc_options_init(&o);
		o.req_size = (uint64_t)opt(argc, argv, "req", 0);
		o.spin_us = (int)opt(argc, argv, "spin", 0);
		ripc_client *c;
		int rc = ripc_connect(addr, 1, &o, &c, &info);
		if (!strncmp(want, "connect=", 8)) {
			expect(rc, code_of(want + 8), "connect");
			step("ok");
			return 0;
		}
		expect(rc, 0, "connect");
		char list[256];
		snprintf(list, sizeof list, "%s", want);
		int k = 0;
		for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ","), k++) {
			unsigned char out[64];
			ripc_response r;
			char what[32];
			snprintf(what, sizeof what, "call %d", k);
			rc = ripc_call(c, (uint16_t)opt(argc, argv, "msg", M_ECHO), "x", 1, out, sizeof out, &r, -1);
			expect(rc, code_of(tok), what);
			if (rc == 0 && (r.len != 1 || out[0] != 'x'))
				fail("%s: a response of %u bytes, not the echo", what, (unsigned)r.len);
		}
		if (opt(argc, argv, "recv", 0)) {
			ripc_message m;
			expect(ripc_recv(c, &m, -1), RIPC_EPROTO, "recv");
		}
		ripc_close(c);
		step("ok");
		return 0;
	}

	ripc_client *c = connect_opts(addr, argc, argv, &info);
	step("connected req %llu resp %llu disp %llu max_req %u", (unsigned long long)info.req_size,
	     (unsigned long long)info.resp_size, (unsigned long long)info.disp_size, info.max_req);
	unsigned char buf[256];
	ripc_response r;

	if (!strcmp(sc, "calls")) {
		scenario_calls(c, &info, opt(argc, argv, "n", 3000));
	} else if (!strcmp(sc, "dispatch")) {
		long n = opt(argc, argv, "n", 1000);
		size_t size = (size_t)opt(argc, argv, "size", 100);
		ask_dispatch(c, n, size);
		long got = recv_all(c, n, size, 0);
		ripc_flow f;
		ripc_flow_control(c, &f);
		step("dispatch %ld flow_events %llu", got, (unsigned long long)f.events);
		/* Calls still work after the stream. */
		expect(ripc_call(c, M_ECHO, "hi", 2, buf, sizeof buf, &r, -1), 0, "call after dispatch");
	} else if (!strcmp(sc, "client-close")) {
		expect(ripc_call(c, M_ECHO, "hi", 2, buf, sizeof buf, &r, -1), 0, "call");
		step("closing");
		ripc_close(c);
		step("ok");
		return 0;
	} else if (!strcmp(sc, "server-close")) {
		/* The server dispatches 3 messages, answers, then closes: the
		 * answer and the messages committed before still arrive. */
		expect(ripc_call(c, M_CLOSE, "", 0, buf, sizeof buf, &r, -1), 0, "call answered before the close");
		if (r.len != 3 || memcmp(buf, "bye", 3))
			fail("close call answered %.*s", (int)r.len, (const char *)buf);
		long got = recv_all(c, 3, 10, 1);
		if (got != 3)
			fail("%ld messages before the close, want 3", got);
		expect(ripc_call(c, M_ECHO, "hi", 2, buf, sizeof buf, &r, -1), RIPC_EDISCONNECTED, "call after the close");
		expect(ripc_send(c, M_ECHO, "hi", 2, NULL, 0), RIPC_EDISCONNECTED, "send after the close");
	} else if (!strcmp(sc, "timeout")) {
		expect(ripc_call(c, M_BLOCK, "", 0, buf, sizeof buf, &r, 50), RIPC_ETIMEDOUT, "blocked call");
		step("timedout");
		wait_line(); /* the Go test has let the handler go */
		/* The late answer is skipped, never mistaken for this one. */
		expect(ripc_call(c, M_ECHO, "after", 5, buf, sizeof buf, &r, -1), 0, "call after a timeout");
		if (r.len != 5 || memcmp(buf, "after", 5))
			fail("call after a timeout got %.*s", (int)r.len, (const char *)buf);
	} else if (!strcmp(sc, "shutdown")) {
		uint64_t k[3];
		expect(ripc_send(c, M_BLOCK, "", 0, &k[0], -1), 0, "send blocking");
		expect(ripc_send(c, M_ECHO, "a", 1, &k[1], -1), 0, "send a");
		expect(ripc_send(c, M_ECHO, "b", 1, &k[2], -1), 0, "send b");
		step("sent");
		for (int i = 0; i < 3; i++) {
			expect(ripc_next_response(c, &r, -1), 0, "response during a graceful shutdown");
			if (r.corr != k[i] || r.status != 0)
				fail("response %d: corr %llu status %u", i, (unsigned long long)r.corr, r.status);
			expect(ripc_release_response(c), 0, "release");
		}
		int rc = 0;
		long i;
		for (i = 0; i < 100000 && (rc = ripc_call(c, M_ECHO, "x", 1, buf, sizeof buf, &r, -1)) == 0; i++)
			;
		expect(rc, RIPC_EDISCONNECTED, "calls after the shutdown");
	} else if (!strcmp(sc, "die")) {
		step("blocking");
		expect(ripc_call(c, M_BLOCK, "", 0, buf, sizeof buf, &r, -1), RIPC_EDISCONNECTED, "call to a server that died");
		expect(ripc_call(c, M_ECHO, "x", 1, buf, sizeof buf, &r, -1), RIPC_EDISCONNECTED, "next call");
		ripc_message m;
		expect(ripc_recv(c, &m, -1), RIPC_EDISCONNECTED, "recv from a server that died");
		expect(ripc_send(c, M_ECHO, "x", 1, NULL, -1), RIPC_EDISCONNECTED, "send to a server that died");
		short ev;
		if (!ripc_prepare_poll(c, &ev))
			fail("prepare_poll after the server died says sleep");
	} else if (!strcmp(sc, "violation")) {
		expect(ripc_call(c, M_ECHO, "x", 1, buf, sizeof buf, &r, -1), 0, "call");
		unsigned char bad = 0x99; /* no such token */
		if (write(ripc_fd(c), &bad, 1) != 1)
			fail("write: %s", strerror(errno));
		int rc = 0;
		for (long i = 0; i < 1000000 && (rc = ripc_call(c, M_ECHO, "x", 1, buf, sizeof buf, &r, -1)) == 0; i++)
			;
		expect(rc, RIPC_EDISCONNECTED, "calls after a protocol violation");
	} else if (!strcmp(sc, "slow")) {
		/* The server disconnects a client that does not read its
		 * dispatch ring; what was committed still arrives. */
		size_t size = (size_t)opt(argc, argv, "size", 100);
		/* Sent without waiting for the answer: the stream may end the
		 * connection before the answer is written. */
		uint32_t v[2] = {(uint32_t)opt(argc, argv, "n", 100000), (uint32_t)size};
		expect(ripc_send(c, M_DISPATCH, v, 8, NULL, -1), 0, "dispatch request");
		int rc;
		short ev;
		for (;;) {
			if (ripc_prepare_poll(c, &ev)) {
				/* messages are there: wait for the end regardless */
				struct pollfd p = {.fd = ripc_fd(c), .events = POLLIN};
				poll(&p, 1, -1);
				rc = ripc_process(c, p.revents);
			} else {
				struct pollfd p = {.fd = ripc_fd(c), .events = ev};
				poll(&p, 1, -1);
				rc = ripc_process(c, p.revents);
			}
			if (rc == RIPC_EDISCONNECTED)
				break;
			if (rc)
				fail("process: %s", ripc_strerror(rc));
		}
		long got = recv_all(c, 0, size, 1);
		if (got < 1)
			fail("no message before the disconnect");
		step("slow %ld", got);
	} else {
		fail("unknown scenario %s", sc);
	}
	if (opt(argc, argv, "reason", 0))
		step("reason %u", ripc_close_reason(c));
	ripc_close(c);
	step("ok");
	return 0;
}
