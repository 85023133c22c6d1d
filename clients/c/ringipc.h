/*
 * ringipc.h: a C client for ringipc services (C11 and libc, Linux).
 *
 * Written from the protocol documents only: docs/ipc.md (handshake,
 * connection segment, messages, wake tokens, shutdown), docs/design.md
 * (the rings) and docs/segment.md (the segment header). It connects to a
 * Go ipc.Server over a Unix stream socket, maps the connection's sealed
 * memfd, and talks through its three single-producer rings:
 *
 *   request ring   client -> server   (this client produces)
 *   response ring  server -> client   (this client consumes)
 *   dispatch ring  server -> client   (this client consumes)
 *
 * Threads: a ripc_client is used by one thread at a time (guard it with
 * your own lock if several threads share it). Calls may be pipelined:
 * ripc_send several requests, then take their responses in order with
 * ripc_next_response; ripc_call does one round trip.
 *
 * Waiting: a blocking function polls the ring for a while (the spin
 * budget), then announces itself in the ring's wait word and sleeps in
 * poll(2) on the socket until the server's wake token arrives. For an
 * event loop, ripc_fd() is the descriptor to watch and ripc_prepare_poll()
 * says which events to watch for; see the README.
 *
 * Errors: functions returning int return 0 (or a count) on success and a
 * negative RIPC_E* code on failure. RIPC_ESYS leaves errno set.
 */
#ifndef RINGIPC_H
#define RINGIPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
	RIPC_OK = 0,
	RIPC_ESYS = -1,        /* a system call failed: see errno */
	RIPC_EPROTO = -2,      /* the server broke the protocol, or shared memory is corrupt; the connection is dead */
	RIPC_EVERSION = -3,    /* reply status 1: the server speaks another version */
	RIPC_EREJECTED = -4,   /* reply status 2, 4, 5 or 6: malformed hello, not authorized, refused by the service, unavailable */
	RIPC_ESERVICE = -5,    /* reply status 3: unknown service */
	RIPC_EDISCONNECTED = -6, /* the connection has ended (closed by either side, or the server died) */
	RIPC_ETOOLARGE = -7,   /* request above max_req (nothing sent), response status 3, or a ring granted larger than accepted */
	RIPC_EAGAIN = -8,      /* nothing now: ring full (send) or empty (receive) and the timeout was 0 */
	RIPC_ETIMEDOUT = -9,   /* the timeout passed */
	RIPC_EUNKNOWNMSG = -10,/* response status 1: the service has no handler for the message id */
	RIPC_EHANDLER = -11,   /* response status 2: the handler failed; see ripc_response.code and the body */
	RIPC_EPANIC = -12,     /* response status 4: the handler panicked */
	RIPC_ESHORTBUF = -13,  /* the response did not fit the caller's buffer; ripc_response.len says how much is needed */
	RIPC_ESTATE = -14,     /* misuse: e.g. a reservation outstanding, or nothing to release */
	RIPC_EBADSERVER = -15, /* the server's credentials were refused (see ripc_options.server_uid) */
	RIPC_EINVAL = -16,     /* a bad argument (address, option) */
	RIPC_ELIMIT = -17      /* reply status 7: a server limit is reached (ripc_info.detail says which); retry later */
};

/* Feature bits (docs/ipc.md §2.1). */
#define RIPC_FEATURE_PAYLOAD_CHECKSUM 1u
#define RIPC_FEATURE_CLOSE_REASON 16u /* the server says why it ended the connection: ripc_close_reason */

typedef struct ripc_options {
	/* Ring data sizes to ask for: 0 (the server's default) or a power
	 * of two >= 4096. */
	uint64_t req_size, resp_size, disp_size;
	/* Largest ring size accepted from the server for a size left at 0
	 * (a power of two; 0 means 16 MiB). A grant above what was asked is
	 * always refused. */
	uint64_t max_ring;
	uint32_t features;      /* RIPC_FEATURE_* to ask for; other bits are not asked for */
	int spin_us;            /* polling before sleeping: 0 means 200 µs, negative none */
	int handshake_ms;       /* bound on connect + handshake, retries included: 0 means 5000, negative none */
	/* The server's uid must be this one (>= 0). -1 (or a zeroed
	 * options struct, see ripc_options_init) applies the default rule:
	 * a client running as root accepts only a root server. */
	int64_t server_uid;
} ripc_options;

/* ripc_options_init fills in the defaults (what a NULL options pointer
 * means): server default sizes, no features, default spin and timeout,
 * default server check. */
void ripc_options_init(ripc_options *o);

/* What the handshake learnt; filled in on success and on rejection. */
typedef struct ripc_info {
	uint32_t status;        /* reply status (0 = accepted) */
	uint32_t detail;        /* status 5: the service's reject code; status 7: which limit */
	uint16_t server_version;
	uint32_t features;      /* granted */
	uint64_t req_size, resp_size, disp_size;
	uint32_t max_req, max_disp; /* largest request / dispatch body */
	pid_t server_pid;       /* SO_PEERCRED of the socket */
	uid_t server_uid;
	gid_t server_gid;
} ripc_info;

typedef struct ripc_client ripc_client;

/* ripc_connect connects to address (a path, or "@name" for a Linux
 * abstract socket), opens service and returns the client in *out. opts
 * and info may be NULL. While the server refuses because its handshake
 * slots are full (RIPC_ELIMIT, detail 1 or 2) it tries again, 1 ms
 * doubling to 100 ms apart, until handshake_ms has passed. */
int ripc_connect(const char *address, uint16_t service, const ripc_options *opts,
		 ripc_client **out, ripc_info *info);

/* ripc_close closes the rings (waking the server), the socket and the
 * mapping, and frees c. Views from ripc_next_response/ripc_recv die with it. */
void ripc_close(ripc_client *c);

/* ripc_info_get copies what the handshake learnt. */
void ripc_info_get(const ripc_client *c, ripc_info *info);

/* A response, as a view into the response ring (ripc_next_response) or into
 * the caller's buffer (ripc_call). */
typedef struct ripc_response {
	uint64_t corr;          /* the request's correlation id */
	uint32_t status;        /* 0 ok, 1 unknown message, 2 handler error, 3 too large, 4 panic */
	int32_t code;           /* status 2: the handler's code */
	const void *body;       /* body (status 0) or error text (status 2) */
	size_t len;             /* its length */
} ripc_response;

/* A dispatch message, a view into the dispatch ring. */
typedef struct ripc_message {
	uint16_t id;
	const void *data;
	size_t len;
} ripc_message;

/* Timeouts are in milliseconds: -1 waits for ever, 0 does not wait. */

/* ripc_call sends request id with body req[0..len) and waits for its
 * response, copying the body into resp[0..cap). res (may be NULL)
 * receives status, code and length; res->body points into resp. Any
 * response status other than 0 is returned as its RIPC_E* code (with the
 * handler's text copied for status 2). Responses to other requests sent
 * with ripc_send and not yet taken are an error (RIPC_ESTATE): take them
 * first. */
int ripc_call(ripc_client *c, uint16_t id, const void *req, size_t len,
	      void *resp, size_t cap, ripc_response *res, int timeout_ms);

/* In place (zero copy) requests: ripc_reserve returns in *body len bytes
 * inside the request ring, waiting for room up to timeout_ms; fill them
 * and ripc_commit (which sends the request and returns its correlation
 * id), or ripc_abort. One reservation at a time. */
int ripc_reserve(ripc_client *c, uint16_t id, size_t len, void **body, int timeout_ms);
int ripc_commit(ripc_client *c, uint64_t *corr);
int ripc_abort(ripc_client *c);

/* ripc_send copies one request into the ring (ripc_reserve + memcpy +
 * ripc_commit). */
int ripc_send(ripc_client *c, uint16_t id, const void *req, size_t len, uint64_t *corr, int timeout_ms);

/* ripc_next_response waits for the next response (the server answers in the
 * order it was sent) and returns it as a view into the response ring,
 * valid until ripc_release_response, which must come before the next
 * ripc_next_response or ripc_call. It returns 0 whatever the status: look at
 * r->status. */
int ripc_next_response(ripc_client *c, ripc_response *r, int timeout_ms);
int ripc_release_response(ripc_client *c);

/* ripc_recv waits for the next dispatch message, a view valid until
 * ripc_release_message. timeout 0: RIPC_EAGAIN if none is there. */
int ripc_recv(ripc_client *c, ripc_message *m, int timeout_ms);
int ripc_release_message(ripc_client *c);

/* Event loops. ripc_fd is the socket: the client owns it. Before each
 * poll, call ripc_prepare_poll: it announces that this client sleeps on
 * the dispatch ring (and, if calls are in flight, the response ring) and
 * returns 1 if a message or response is already there, or the connection
 * has ended (do not sleep: handle it now; ripc_recv says
 * RIPC_EDISCONNECTED once the ring is drained), or 0 with *events set to
 * what to poll the fd for
 * (POLLIN, plus POLLOUT while a wake token waits for socket space). When
 * poll returns, call ripc_process with the revents: it reads wake tokens
 * and writes kept ones; then take messages with ripc_recv(..., 0) until
 * RIPC_EAGAIN. ripc_process returns RIPC_EDISCONNECTED once the server has
 * gone (messages it committed before can still be read). */
int ripc_fd(const ripc_client *c);
int ripc_prepare_poll(ripc_client *c, short *events);
int ripc_process(ripc_client *c, short revents);

/* Flow control state the server publishes (docs/ipc.md §4.1). */
typedef struct ripc_flow {
	uint32_t active, queued;
	uint64_t dropped, events;
} ripc_flow;
void ripc_flow_control(const ripc_client *c, ripc_flow *f);

/* Why the server ended the connection (docs/ipc.md §4.1), meaningful
 * with RIPC_FEATURE_CLOSE_REASON granted once a function has returned
 * RIPC_EDISCONNECTED: RIPC_CLOSE_NONE then means the server died (or
 * the connection ended from this side). Any other value is a server
 * newer than this client. */
enum {
	RIPC_CLOSE_NONE = 0,          /* not closed by the server: it died */
	RIPC_CLOSE_SHUTDOWN = 1,      /* graceful shutdown, requests it had were answered */
	RIPC_CLOSE_SERVER = 2,        /* the server closed every connection without draining */
	RIPC_CLOSE_CONN = 3,          /* the server closed this connection only */
	RIPC_CLOSE_SLOW_CONSUMER = 4, /* this client did not read its dispatch ring */
	RIPC_CLOSE_PROTOCOL = 5       /* the server judged that this client broke the protocol */
};
uint32_t ripc_close_reason(const ripc_client *c);

/* ripc_strerror names an RIPC_E* code. */
const char *ripc_strerror(int err);

/* XXH64 of len bytes with seed (exported for tests). */
uint64_t ripc_xxh64(const void *p, size_t len, uint64_t seed);

#ifdef __cplusplus
}
#endif
#endif
