//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/ringipc/ringipc/ring"
)

// Cred is a peer's identity as the kernel reported it (SO_PEERCRED) when
// the connection was made.
type Cred struct {
	PID int32
	UID uint32
	GID uint32
}

// Handler answers one request. ServeIPC runs on the connection's own
// goroutine (or inside Conn.Process), one request at a time per
// connection; requests of different connections run concurrently.
type Handler interface {
	ServeIPC(w *ResponseWriter, r *Request)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(w *ResponseWriter, r *Request)

// ServeIPC calls f(w, r).
func (f HandlerFunc) ServeIPC(w *ResponseWriter, r *Request) { f(w, r) }

// Selector routes a request to its handler. Select returns nil for a
// message it does not know; the client then gets ErrUnknownMessage. It is
// called concurrently from every connection's goroutine.
type Selector interface {
	Select(service, id uint16) Handler
}

// Service is what a client connects to, by id. Every field but ID is
// optional.
type Service struct {
	ID   uint16
	Name string // for logs
	// OnConnect runs once the client is authorized, before the handshake
	// reply; an error refuses the connection (return a RejectCode to
	// pass the client a code). It may set the connection's private data.
	OnConnect func(c *Conn) error
	// OnDisconnect runs exactly once for every connection whose
	// OnConnect succeeded, whatever ended it, after its last handler has
	// returned and before its shared memory is released. err says why.
	OnDisconnect func(c *Conn, err error)
	// Handlers maps message ids to handlers for the default selector;
	// ignored when Config.Selector is set. Register copies it.
	Handlers map[uint16]Handler

	stats *serviceStats // set by Register on its copy
}

// table is the default Selector: per service, a slice indexed by id.
type table map[uint16][]Handler

func (t table) Select(service, id uint16) Handler {
	hs := t[service]
	if int(id) < len(hs) {
		return hs[id]
	}
	return nil
}

// Request is one request as its handler sees it. The Request and its
// Data are valid only until ServeIPC returns: Data is a view of the
// request ring, which the client reuses afterwards.
type Request struct {
	Conn *Conn
	ID   uint16 // message id
	// Data is the request body, in shared memory. The client process can
	// still write to it while the handler reads it: copy what must not
	// change under you before you validate it.
	Data []byte
	ctx  context.Context
}

// Context is the request's context. It is done when the connection ends
// and, if the client asked for FeatureCancel (the Go client does), also
// when the client cancels the call (its context ended before the
// response came: Err is context.Canceled), at the call's deadline, which
// travels with the request (context.DeadlineExceeded; Deadline returns
// it), and once the handler has returned. A handler that returns after
// its context ended by the client's cancel or deadline, without
// answering, answers that the call was cancelled; the client has given
// up on it anyway. With an external poll loop (Config.EventLoop) nobody
// reads the client's cancel while a handler runs: the context then ends
// at the deadline or with the connection, and a cancel that came first
// skips the request instead.
//
// The context is made on first use: a handler that never asks for it
// costs no allocation, and one that does costs one (and one more for
// its Done channel).
func (r *Request) Context() context.Context {
	if r.Conn == nil || !r.Conn.cx.on {
		return r.ctx
	}
	return r.Conn.requestContext()
}

// ResponseWriter sends the one response to a request: Respond (a copy),
// Reserve+Commit (zero copy), or Fail (an error), after parts of a
// streamed response if the handler sends any (Send, ReservePart). If the
// handler returns without a response, an empty success response is sent. A
// ResponseWriter is valid only during ServeIPC and must not be used by
// other goroutines.
type ResponseWriter struct {
	c        *Conn
	corr     uint64
	done     bool
	reserved bool
	tooLarge int  // the size of a response refused as too large, else 0
	panicked bool // the handler panicked: finish answers respPanic
	res      ring.Reservation
	body     []byte       // a large body reserved in the response body segment
	pend     *pendingResp // external mode: the response ring was full

	part      bool // the reservation is a stream part (ReservePart)
	partBytes int  // external mode: bytes of parts kept aside (stream.go)
	// cancelled: the client's cancel or deadline ended the request;
	// finish answers respCancelled if the handler did not answer.
	cancelled bool
}

// MaxBody returns the largest response body the handler may send: what
// the response ring carries or, with FeatureLarge, Config.MaxMessage if
// that is more (a client whose ClientOptions.MaxMessage is smaller fails
// the call with ErrTooLarge).
func (w *ResponseWriter) MaxBody() int { return w.c.maxResponse() }

// Respond sends body as the success response (a copy). Respond, Reserve
// and Fail return ErrResponded once the handler has answered.
func (w *ResponseWriter) Respond(body []byte) error {
	if w.notes(len(body)) {
		return w.respondInNotes(body)
	}
	b, err := w.reserve(respOK, 0, len(body))
	if err != nil {
		return err
	}
	copyBody(b, body)
	return w.Commit()
}

// Reserve claims n bytes for the response body directly in the response
// ring. Fill them, then call Commit (or CommitN to send fewer). The
// slice is valid until then.
func (w *ResponseWriter) Reserve(n int) ([]byte, error) {
	return w.reserve(respOK, 0, n)
}

// Fail sends an error response: the client's call returns a *HandlerError
// with code and msg (errors.Is(err, ErrHandler)).
func (w *ResponseWriter) Fail(code int32, msg string) error {
	if len(msg) > w.c.maxResp {
		msg = msg[:w.c.maxResp]
	}
	b, err := w.reserve(respHandlerError, code, len(msg))
	if err != nil {
		return err
	}
	copy(b, msg)
	return w.Commit()
}

func (w *ResponseWriter) reserve(status uint32, code int32, n int) ([]byte, error) {
	if w.done || w.reserved {
		return nil, ErrResponded
	}
	c := w.c
	if n < 0 || n > c.maxResponse() {
		w.tooLarge = max(n, 1)
		if c.large {
			return nil, tooLarge("response", n, c.maxResponse(), raiseLarge)
		}
		return nil, tooLarge("response", n, c.maxResp, raiseRespRing)
	}
	if n > c.maxResp {
		return w.reserveLarge(status, code, n)
	}
	total := respHdrSize + n
	var p []byte
	if c.external {
		if len(c.pending) == 0 {
			r, err := c.respP.TryReserve(status, total)
			if err == nil {
				w.res = r
				p = r.Bytes()
			} else if err != ring.ErrFull {
				return nil, c.ringErr("respond", err)
			}
		}
		if p == nil {
			// The loop must not block: keep the response aside and flush
			// it when the client makes room.
			w.pend = c.newPending(status, total)
			p = w.pend.b
		}
	} else {
		r, err := c.respP.Reserve(c.ctx, status, total)
		if err != nil {
			return nil, c.ringErr("respond", err)
		}
		w.res = r
		p = r.Bytes()
	}
	putRespHeader(p, w.corr, code)
	w.reserved = true
	if status != respOK {
		c.stats.errResponses.Add(1)
	}
	return p[respHdrSize:], nil
}

// putRespHeader writes a response record's header (docs/ipc.md §5.2).
func putRespHeader(p []byte, corr uint64, code int32) {
	le := binary.LittleEndian
	le.PutUint64(p[0:], corr)
	le.PutUint32(p[8:], uint32(code))
	le.PutUint32(p[12:], 0)
}

// Commit publishes the body filled in after Reserve (ErrNotReserved
// without one).
func (w *ResponseWriter) Commit() error {
	if !w.reserved || w.part {
		return ErrNotReserved
	}
	return w.commit(w.reservedLen())
}

// CommitN publishes only the first n bytes of the body reserved, for a
// handler that reserves for the largest answer it may give and learns
// its size while writing it in place; the rest of the space goes back to
// the response ring (ring.Reservation.CommitN). An n outside 0..the
// length reserved is an error matching ErrTooLarge and sends nothing:
// the reservation is still the handler's to commit.
func (w *ResponseWriter) CommitN(n int) error {
	if !w.reserved || w.part {
		return ErrNotReserved
	}
	if r := w.reservedLen(); n < 0 || n > r {
		return fmt.Errorf("commit %d bytes of a %d-byte reservation: %w", n, r, ErrTooLarge)
	}
	return w.commit(n)
}

// reservedLen is the body length of the outstanding reservation.
func (w *ResponseWriter) reservedLen() int {
	if w.pend != nil {
		return len(w.pend.b) - respHdrSize
	}
	if w.body != nil {
		return len(w.body)
	}
	return len(w.res.Bytes()) - respHdrSize
}

func (w *ResponseWriter) commit(n int) error {
	w.reserved = false
	w.done = true
	c := w.c
	if w.pend != nil {
		w.pend.b = w.pend.b[:respHdrSize+n]
		c.pending = append(c.pending, w.pend)
		w.pend = nil
		c.stats.responses.Add(1)
		return nil
	}
	if w.body != nil {
		return w.commitLarge(n)
	}
	// Counted before publishing, so that a client holding the response
	// also sees it counted.
	c.stats.responses.Add(1)
	c.stats.bytesOut.Add(uint64(n))
	if err := w.res.CommitN(respHdrSize + n); err != nil {
		return c.ringErr("respond", err)
	}
	return nil
}

// finish sends the default response of a handler that returned without
// one, and aborts a reservation left uncommitted.
func (w *ResponseWriter) finish() {
	if w.reserved {
		if w.pend != nil {
			w.c.freePending(w.pend)
			w.pend = nil
		} else {
			w.res.Abort() //nolint:errcheck // the only outstanding reservation
			w.body = nil
		}
		w.reserved, w.part = false, false
	}
	if w.done {
		return
	}
	status := uint32(respOK)
	var code int32
	switch {
	case w.panicked:
		status = respPanic
	case w.cancelled:
		status = respCancelled
	case w.tooLarge > 0:
		// The code tells the client the size it was refused (u32).
		status, code = respTooLarge, int32(uint32(min(uint64(w.tooLarge), math.MaxUint32)))
	}
	if _, err := w.reserve(status, code, 0); err == nil {
		w.Commit() //nolint:errcheck // a failure ends the connection, reported by the loop
	}
}
