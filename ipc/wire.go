//go:build linux

package ipc

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"time"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
)

// The wire protocol, byte by byte; docs/ipc.md is the prose version and
// wire_test.go pins every number below.
//
// Handshake, on the Unix stream socket, once per connection:
//
//	client -> server  hello, helloSize bytes
//	server -> client  reply, replySize bytes; on success one SCM_RIGHTS
//	                  descriptor (the connection's sealed memfd) rides
//	                  on the same sendmsg
//
// After that the socket carries only one-byte wake tokens, each naming the
// ring word whose sleeper it wakes, and end of file means the peer left.
//
// Hello, little-endian:
//
//	 0 u64 magic helloMagic ("RIPCHELO")
//	 8 u16 protocol version (Version)
//	10 u16 service id
//	12 u32 feature bits requested
//	16 u64 request ring data size (0: server default)
//	24 u64 response ring data size (0: server default)
//	32 u64 dispatch ring data size (0: server default)
//	40 u64 reserved, zero; with FeatureTopic: u32 topic id, u32 zero
//
// Reply, little-endian:
//
//	 0 u64 magic replyMagic ("RIPCRPLY")
//	 8 u16 the server's protocol version
//	10 u16 reserved, zero
//	12 u32 status (statusOK or a reject reason)
//	16 u32 feature bits granted
//	20 u32 detail: the code a service's OnConnect rejected with, else 0
//	24 u64 request ring data size     48 u64 request ring offset
//	32 u64 response ring data size    56 u64 response ring offset
//	40 u64 dispatch ring data size    64 u64 dispatch ring offset
//	72 u64 control block offset       80 u64 payload size of the segment
//	88 u32 max request body           92 u32 max dispatch body
//
// Offsets are relative to the start of the segment's payload (byte
// shmseg.HeaderSize of the memfd). A reject reply carries no descriptor
// and zero from byte 24 on. Bytes 0..15 keep this meaning in every future
// version, so a client can always read why it was turned away.
const (
	helloMagic = 0x4f4c454843504952 // "RIPCHELO" little-endian
	replyMagic = 0x594c505243504952 // "RIPCRPLY" little-endian

	helloSize = 48
	replySize = 96

	// Version is the protocol version this package speaks.
	Version = 1
)

// Reply status codes (reply byte 12).
const (
	statusOK             = 0
	statusBadVersion     = 1 // hello version is not the server's
	statusBadHello       = 2 // bad magic, sizes, or reserved bytes
	statusUnknownService = 3 // no such service id
	statusUnauthorized   = 4 // Config.Authorize refused the peer
	statusRejected       = 5 // the service's OnConnect refused; detail = code
	statusUnavailable    = 6 // server shutting down or out of resources
	statusLimit          = 7 // a server limit is reached; detail = Limit... code
)

// Feature bits (hello byte 12, reply byte 16). The server grants the
// intersection of what was asked and what it knows; unknown bits are
// simply not granted.
const (
	// FeaturePayloadChecksum makes every ring of the connection checksum
	// payloads as well as headers.
	FeaturePayloadChecksum = 1 << 0
	// FeatureCloseReason: the server writes why it ended the connection
	// into the control block (ctlCloseReason) before it closes the
	// rings, so that the client can tell a shutdown or a close from a
	// crash, which leaves the word 0. Dial always asks for it.
	FeatureCloseReason = 1 << 4
	// FeatureStream: the client takes streamed responses, response
	// records of status respStreamPart ahead of the final response
	// (ResponseWriter.Send, Client.Stream). Dial always asks for it.
	FeatureStream = 1 << 2
	// FeatureCancel: the client may send cancel records (reqCancel) and
	// put its call's deadline in a request (reqDeadline); the server
	// skips a request whose cancel or deadline it sees before the
	// handler starts, ends the running handler's Request.Context on
	// either, and answers such requests with respCancelled. The server
	// publishes its clock in the control block (ctlClock). Dial always
	// asks for it.
	FeatureCancel = 1 << 3
	// FeatureProgress: with FeatureLarge, the client takes progress
	// notes (respProgress) ahead of a large response, each saying how
	// much of its body the server has written so far, so that it can
	// copy the body out while the server writes the rest. Dial asks for
	// it with FeatureLarge.
	FeatureProgress = 1 << 6

	knownFeatures = FeaturePayloadChecksum | FeatureCloseReason | FeatureStream | FeatureCancel | FeatureLarge | FeatureProgress
)

// defaultFeatures are asked for by every Dial, whatever
// ClientOptions.Features says: they cost nothing per message.
// (A variable so that a test can dial as a client that predates them.)
var defaultFeatures uint32 = FeatureCloseReason | FeatureStream | FeatureCancel

// Segment geometry kind for an IPC connection (shmseg header kind).
// Params: [0..2] request, response, dispatch data sizes; [3..5] their
// offsets in the payload.
const segmentKind = 2

// The connection segment's payload:
//
//	0                 +----------------------------------+
//	                  | control block, 128 bytes          |  server writes
//	ctlSize (128)     +----------------------------------+
//	                  | request ring (client -> server)   |
//	reqOff + ringSize +----------------------------------+  128-aligned
//	                  | response ring (server -> client)  |
//	                  +----------------------------------+  128-aligned
//	                  | dispatch ring (server -> client)  |
//	                  +----------------------------------+
//
// Control block, written only by the server with atomic stores, read by
// the client with atomic loads:
//
//	 0 u32 flow-control state: 1 while dispatch messages wait in the
//	       server's queue because the dispatch ring was full, else 0
//	 4 u32 messages waiting in the server's dispatch queue
//	 8 u64 dispatch messages dropped (policy Drop)
//	16 u64 flow-control events (times the queue started filling)
//	24 u32 close reason (FeatureCloseReason only): why the server ended
//	       the connection (close...), stored once before it closes the
//	       rings; 0 while the connection is up, and if the server died
//	32 u64 the server's MaxMessage if FeatureLarge is granted, else 0
//	       (large.go; bytes 40..63 are reserved for large bodies, zero)
//	64 i64 clock (FeatureCancel only): the server's CLOCK_MONOTONIC, in
//	       ns, as it set the connection up, before its reply; a client
//	       whose own clock disagrees (another time namespace) learns
//	       the offset to apply to the deadlines it sends
const (
	ctlSize        = 128
	ctlFlow        = 0
	ctlQueued      = 4
	ctlDropped     = 8
	ctlFlowEvents  = 16
	ctlCloseReason = 24
	ctlClock       = 64
	ringAlign      = 128
)

// Close reasons (control block word ctlCloseReason). 0 is what a server
// that died without closing leaves; a client maps an unknown value to a
// plain ErrDisconnected.
const (
	closeNone         = 0 // not closed by the server, or it died
	closeShutdown     = 1 // Server.Shutdown drained the connection
	closeServerClosed = 2 // Server.Close (or a Shutdown whose context ended)
	closeConn         = 3 // Conn.Close: the server ended this connection
	closeSlowConsumer = 4 // PolicyDisconnect: the client did not read its dispatch ring
	closeProtocol     = 5 // the server found the client breaking the protocol
)

// Wake tokens: one byte on the socket, high nibble the ring, low nibble the
// word. A side sends a token only after it found the word set by the peer
// (and cleared it), so a busy stream sends none.
const (
	tokReqCons   = 0x01 // request ring, consumer word: server waits for requests
	tokReqProd   = 0x02 // request ring, producer word: client waits for space
	tokRespCons  = 0x11 // response ring, consumer word: client waits for responses
	tokRespProd  = 0x12 // response ring, producer word: server waits for space
	tokDispCons  = 0x21 // dispatch ring, consumer word: client waits for messages
	tokDispProd  = 0x22 // dispatch ring, producer word: server waits for space
	numWakeWords = 6
)

// tokens lists the wake tokens by word index: ring*2 + (0 consumer, 1 producer).
var tokens = [numWakeWords]byte{tokReqCons, tokReqProd, tokRespCons, tokRespProd, tokDispCons, tokDispProd}

// Word indices.
const (
	wReqCons = iota
	wReqProd
	wRespCons
	wRespProd
	wDispCons
	wDispProd
)

func tokenIndex(b byte) int {
	for i, t := range tokens {
		if t == b {
			return i
		}
	}
	return -1
}

// Record layouts inside the rings. Every record is a ring record whose
// Type word and payload carry:
//
// Request (request ring):
//
//	Type  bits 0..15 message id, bits 16..31 zero
//	+0 u64 correlation id, chosen by the client, echoed in the response
//	+8 ...  request body
//
// With FeatureCancel, two more kinds (every other bit 16..31 is still a
// violation):
//
//	Type  bit 18 (reqDeadline) | message id: a request with a deadline
//	+0  u64 correlation id
//	+8  i64 deadline: CLOCK_MONOTONIC in ns, in the server's clock
//	+16 ... request body
//
//	Type  exactly bit 17 (reqCancel): a cancel record, never answered
//	+0  u64 correlation id of the call to cancel; payload exactly 8 bytes
//
// Response (response ring):
//
//	Type  response status (respOK, ...)
//	+0  u64 correlation id of the request
//	+8  i32 code: the handler's code for respHandlerError, else 0
//	+12 u32 reserved, zero
//	+16 ... body (respOK) or a UTF-8 error text (errors)
//
// Dispatch (dispatch ring):
//
//	Type  bits 0..15 message id, bits 16..31 zero
//	+0 ... body
const (
	reqHdrSize  = 8
	respHdrSize = 16

	respOK             = 0
	respUnknownMessage = 1 // the selector had no handler
	respHandlerError   = 2 // the handler failed with a code
	respTooLarge       = 3 // the response did not fit the response ring
	respPanic          = 4 // the handler panicked before it answered
	respStreamPart     = 5 // FeatureStream: a part of a streamed response, more follow
	respCancelled      = 6 // skipped, or ended without an answer, by the client's cancel or deadline (FeatureCancel)
	respProgress       = 7 // FeatureProgress: a note of how much of the call's large response is written

	reqCancel          = 1 << 17 // request Type: a cancel record (FeatureCancel)
	reqDeadline        = 1 << 18 // request Type bit: a deadline follows the corr (FeatureCancel)
	reqDeadlineHdrSize = 16      // corr and deadline
	// A progress note's payload ends with a u64 of flags (noteFlagsSize
	// bytes, after the descriptor); noteNear: the server found the
	// client's reader on a CPU near its own (near.go).
	noteFlagsSize    = 8
	noteNear         = 1
	cancelRecordSize = 8 // a cancel record's payload: the corr
)

// hello is the decoded client hello.
type hello struct {
	version  uint16
	service  uint16
	features uint32
	sizes    [3]uint64 // request, response, dispatch data sizes
	topic    uint32    // FeatureTopic only: the topic subscribed to
}

func (h *hello) encode(b []byte) {
	le := binary.LittleEndian
	clear(b[:helloSize])
	le.PutUint64(b[0:], helloMagic)
	le.PutUint16(b[8:], h.version)
	le.PutUint16(b[10:], h.service)
	le.PutUint32(b[12:], h.features)
	le.PutUint64(b[16:], h.sizes[0])
	le.PutUint64(b[24:], h.sizes[1])
	le.PutUint64(b[32:], h.sizes[2])
	if h.features&FeatureTopic != 0 {
		le.PutUint32(b[40:], h.topic)
	}
}

// decodeHello reads a hello. It checks only the framing (magic, reserved
// bytes); the server judges version and sizes, to answer with the right
// status.
func decodeHello(b []byte) (hello, error) {
	le := binary.LittleEndian
	if len(b) < helloSize {
		return hello{}, fmt.Errorf("%w: hello of %d bytes", ErrProtocol, len(b))
	}
	if m := le.Uint64(b[0:]); m != helloMagic {
		return hello{}, fmt.Errorf("%w: hello magic %#x", ErrProtocol, m)
	}
	h := hello{
		version:  le.Uint16(b[8:]),
		service:  le.Uint16(b[10:]),
		features: le.Uint32(b[12:]),
		sizes:    [3]uint64{le.Uint64(b[16:]), le.Uint64(b[24:]), le.Uint64(b[32:])},
	}
	if h.features&FeatureTopic != 0 && h.version == Version {
		// Bytes 40..47 of a subscription: topic id, then reserved.
		h.topic = le.Uint32(b[40:])
		if r := le.Uint32(b[44:]); r != 0 {
			return h, fmt.Errorf("%w: hello reserved bytes %#x", ErrProtocol, r)
		}
	} else if r := le.Uint64(b[40:]); r != 0 && h.version == Version {
		return h, fmt.Errorf("%w: hello reserved bytes %#x", ErrProtocol, r)
	}
	return h, nil
}

// reply is the decoded server reply.
type reply struct {
	version  uint16
	status   uint32
	features uint32
	detail   uint32
	sizes    [3]uint64
	offs     [3]uint64
	ctlOff   uint64
	payload  uint64
	maxReq   uint32
	maxDisp  uint32
}

func (r *reply) encode(b []byte) {
	le := binary.LittleEndian
	clear(b[:replySize])
	le.PutUint64(b[0:], replyMagic)
	le.PutUint16(b[8:], r.version)
	le.PutUint32(b[12:], r.status)
	le.PutUint32(b[16:], r.features)
	le.PutUint32(b[20:], r.detail)
	for i := range 3 {
		le.PutUint64(b[24+8*i:], r.sizes[i])
		le.PutUint64(b[48+8*i:], r.offs[i])
	}
	le.PutUint64(b[72:], r.ctlOff)
	le.PutUint64(b[80:], r.payload)
	le.PutUint32(b[88:], r.maxReq)
	le.PutUint32(b[92:], r.maxDisp)
}

func decodeReply(b []byte) (reply, error) {
	le := binary.LittleEndian
	if len(b) < replySize {
		return reply{}, fmt.Errorf("%w: reply of %d bytes", ErrProtocol, len(b))
	}
	if m := le.Uint64(b[0:]); m != replyMagic {
		return reply{}, fmt.Errorf("%w: reply magic %#x", ErrProtocol, m)
	}
	r := reply{
		version:  le.Uint16(b[8:]),
		status:   le.Uint32(b[12:]),
		features: le.Uint32(b[16:]),
		detail:   le.Uint32(b[20:]),
		ctlOff:   le.Uint64(b[72:]),
		payload:  le.Uint64(b[80:]),
		maxReq:   le.Uint32(b[88:]),
		maxDisp:  le.Uint32(b[92:]),
	}
	for i := range 3 {
		r.sizes[i] = le.Uint64(b[24+8*i:])
		r.offs[i] = le.Uint64(b[48+8*i:])
	}
	return r, nil
}

// layout computes where the rings go in a connection segment's payload.
func layout(sizes [3]uint64, ringSize func(uint64) uint64) (offs [3]uint64, total uint64) {
	off := uint64(ctlSize)
	for i, s := range sizes {
		offs[i] = off
		off = alignUp(off+ringSize(s), ringAlign)
	}
	return offs, off
}

func alignUp(n, a uint64) uint64 { return (n + a - 1) &^ (a - 1) }

func isPow2(n uint64) bool { return n != 0 && bits.OnesCount64(n) == 1 }

// ringOptions are the options of every ring handle of a connection. The
// ring resolves a zero Spin itself (DefaultSpin is its default).
func ringOptions(wait ring.WaitPolicy, spin time.Duration, w ring.Waker) *ring.Options {
	return &ring.Options{Wait: wait, Spin: spin, Waker: w}
}

// segmentGeometry builds the shmseg header geometry of a connection.
func segmentGeometry(sizes, offs [3]uint64) shmseg.Geometry {
	return shmseg.Geometry{Kind: segmentKind, Params: [6]uint64{sizes[0], sizes[1], sizes[2], offs[0], offs[1], offs[2]}}
}
