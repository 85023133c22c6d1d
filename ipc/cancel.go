//go:build linux

package ipc

// Cancellation and deadlines on the server (FeatureCancel; docs/ipc.md
// 5.1). The connection handles one request at a time, so the records
// that matter are never at the head of the request ring: a cancel record
// always follows the request it names, which has been handled by the
// time the loop gets to the cancel record in order. The server therefore
// looks ahead (ring.Consumer.Scan) without consuming:
//
//   - before a handler starts, it scans what is new behind the request
//     and remembers the cancels it finds (pending); a request named there,
//     or whose deadline has passed, is skipped and answered
//     respCancelled;
//   - while a handler runs, the token reader (Conn.readLoop) scans what
//     is new whenever a token for the request ring comes (the client
//     sends one after every cancel record), and a cancel of the running
//     request ends its Request.Context (as its deadline does, through
//     one timer per connection).
//
// Each record is scanned once (scanPos only moves on), so a look costs at
// most the records committed since the last one (a ring's worth), and
// their scanning over a connection's life as much as reading their
// headers once more; nothing here allocates unless a handler asks for its
// Request.Context.

import (
	"context"
	"encoding/binary"
	"sync"
	"time"

	"github.com/ringipc/ringipc/ring"
)

// cancelScanChunk is how many records one Scan of the look-ahead visits
// before it checks in again.
const cancelScanChunk = 256

// MaxPendingCancels bounds the cancel records of waiting requests a
// connection remembers (FeatureCancel): what a client can make the
// server hold for its look-ahead. One more makes it forget the oldest: a
// cancel is advice, and its call has already failed on the client.
const MaxPendingCancels = 64

// cancelState is a connection's view of its client's cancels and
// deadlines. on is read-only; hint is atomic; mu guards the rest, and is
// held by the loop around the start and the end of each handler and by
// the token reader while it scans, so that the reader scans only while
// the loop is inside a handler and releases nothing.
type cancelState struct {
	on bool // FeatureCancel granted

	mu       sync.Mutex
	scanPos  uint64 // request ring position scanned up to
	pending  [MaxPendingCancels]pendingCancel
	npending int
	dead     bool // the connection ended: contexts made from now on are done

	// The request whose handler runs.
	running  bool
	corr     uint64
	next     uint64 // ring position just past its record
	hasDL    bool
	deadline int64 // CLOCK_MONOTONIC ns
	ended    error // context.Canceled (client's cancel) or DeadlineExceeded, once either ended it
	ctx      *reqCtx
	timer    *time.Timer // ends ctx at the deadline; one per connection, made on first use
	visitFn  func(uint64, ring.Record)
}

// pendingCancel is a cancel record seen ahead: the call it names, and
// where the record is (the call is before it in the ring).
type pendingCancel struct {
	corr uint64
	pos  uint64
}

// requestKind decodes a request record's Type word: its header size and
// deadline, or that it is a cancel record. ok is false for any other use
// of bits 16..31 (a protocol violation).
func (c *Conn) requestKind(typ uint32, data []byte) (hdr int, dl int64, hasDL, cancel, ok bool) {
	switch ext := typ >> 16; {
	case ext == 0:
		return reqHdrSize, 0, false, false, len(data) >= reqHdrSize
	case !c.cx.on:
		return 0, 0, false, false, false
	case typ == reqCancel:
		return 0, 0, false, true, len(data) == cancelRecordSize
	case ext == reqDeadline>>16:
		if len(data) < reqDeadlineHdrSize {
			return 0, 0, false, false, false
		}
		return reqDeadlineHdrSize, int64(binary.LittleEndian.Uint64(data[8:])), true, false, true
	}
	return 0, 0, false, false, false
}

// cancelRecord handles a cancel record the loop found at the head of the
// ring: the call it names came before it and has been answered, so it
// only forgets the look-ahead's note of it.
func (c *Conn) cancelRecord() {
	pos, _, _ := c.reqC.PeekedAt()
	cx := &c.cx
	cx.mu.Lock()
	for i := 0; i < cx.npending; i++ {
		if cx.pending[i].pos == pos {
			cx.removePending(i)
			break
		}
	}
	cx.mu.Unlock()
}

// begin is called by the loop before it runs the handler of the request
// it has peeked: it looks at what is new behind the request (with
// nothing new, one load of the ring's tail), and reports whether the
// request is to be skipped (a cancel for it is pending, or its deadline
// has passed). Otherwise the request is the running one until end.
func (c *Conn) begin(corr uint64, dl int64, hasDL bool) (skip bool) {
	cx := &c.cx
	pos, next, _ := c.reqC.PeekedAt()
	cx.mu.Lock()
	if int64(cx.scanPos-next) < 0 {
		cx.scanPos = next
	}
	c.scanLocked()
	if cx.npending > 0 {
		skip = cx.takePending(corr, pos)
	}
	if !skip && hasDL && monoClockNow() >= dl {
		skip = true
	}
	if !skip {
		cx.running, cx.corr, cx.next = true, corr, next
		cx.hasDL, cx.deadline, cx.ended = hasDL, dl, nil
	}
	cx.mu.Unlock()
	return skip
}

// end is called by the loop once the handler has returned, before the
// request's record is released. It ends the request's context (its
// handler is done) and says whether the client's cancel or deadline had
// ended the request.
func (c *Conn) end() (cancelled bool) {
	cx := &c.cx
	cx.mu.Lock()
	cx.running = false
	cancelled = cx.ended != nil
	if !cancelled && cx.hasDL && !c.rw.done && monoClockNow() >= cx.deadline {
		cancelled = true // passed while the handler ran without its context
	}
	if cx.ctx != nil {
		cx.ctx.cancel(context.Canceled)
		cx.ctx = nil
		if cx.timer != nil {
			cx.timer.Stop()
		}
	}
	cx.mu.Unlock()
	return cancelled
}

// reqToken is the token reader's hook for the request ring's consumer
// token (the client sends one after each cancel record): look ahead now
// if a handler runs (else begin will, before the next one).
func (c *Conn) reqToken() {
	cx := &c.cx
	cx.mu.Lock()
	if cx.running {
		c.scanLocked()
	}
	cx.mu.Unlock()
}

// scanLocked looks at the records committed behind the running (or
// starting) request since the last look; cx.mu held.
func (c *Conn) scanLocked() {
	cx := &c.cx
	for more := true; more; {
		cx.scanPos, more = c.reqC.Scan(cx.scanPos, cancelScanChunk, cx.visitFn)
	}
}

// visit notes one record seen ahead: a cancel of the running request
// ends it; one of a waiting request is remembered. Anything else (the
// requests themselves, or a record Peek will find corrupt) is passed
// over: a cancel is the client's advice about its own calls, so a forged
// one can only cancel what that client could have cancelled honestly.
func (cx *cancelState) visit(pos uint64, r ring.Record) {
	if r.Type != reqCancel || len(r.Data) != cancelRecordSize {
		return
	}
	corr := binary.LittleEndian.Uint64(r.Data)
	if cx.running && corr == cx.corr && int64(pos-cx.next) >= 0 {
		cx.endRunning(context.Canceled)
		return
	}
	if cx.npending == MaxPendingCancels {
		cx.removePending(0)
	}
	cx.pending[cx.npending] = pendingCancel{corr: corr, pos: pos}
	cx.npending++
}

// takePending reports whether a cancel behind the request at pos names
// corr, forgetting it and every note of a cancel before pos (consumed in
// order already: the loop has passed them).
func (cx *cancelState) takePending(corr, pos uint64) bool {
	found := false
	for i := 0; i < cx.npending; {
		p := cx.pending[i]
		switch {
		case int64(p.pos-pos) <= 0:
			cx.removePending(i)
		case p.corr == corr && !found:
			found = true
			cx.removePending(i)
		default:
			i++
		}
	}
	return found
}

func (cx *cancelState) removePending(i int) {
	copy(cx.pending[i:cx.npending], cx.pending[i+1:cx.npending])
	cx.npending--
	cx.pending[cx.npending] = pendingCancel{}
}

// endRunning ends the running request for err (the client's cancel or
// its deadline), once; cx.mu held.
func (cx *cancelState) endRunning(err error) {
	if cx.ended != nil {
		return
	}
	cx.ended = err
	if cx.ctx != nil {
		cx.ctx.cancel(err)
	}
}

// connEnded ends the running request's context with the connection
// (kill), and every one made after.
func (c *Conn) connEnded() {
	cx := &c.cx
	cx.mu.Lock()
	cx.dead = true
	if cx.ctx != nil {
		cx.ctx.cancel(context.Canceled)
	}
	cx.mu.Unlock()
}

// deadlineFired is the connection's timer: the running request's
// deadline has come (or a stale firing for an earlier one: then it
// re-arms for the current one, or does nothing).
func (c *Conn) deadlineFired() {
	cx := &c.cx
	cx.mu.Lock()
	defer cx.mu.Unlock()
	if !cx.running || !cx.hasDL || cx.ctx == nil || cx.ended != nil {
		return
	}
	if left := cx.deadline - monoClockNow(); left > 0 {
		cx.timer.Reset(time.Duration(left))
		return
	}
	cx.endRunning(context.DeadlineExceeded)
}

// requestContext is Request.Context with FeatureCancel: made on first
// use (the one allocation of a request whose handler asks for it), done
// when the client cancels the call, at its deadline, when the handler
// returns, or when the connection ends.
func (c *Conn) requestContext() context.Context {
	cx := &c.cx
	cx.mu.Lock()
	defer cx.mu.Unlock()
	if cx.ctx != nil {
		return cx.ctx
	}
	x := &reqCtx{parent: c.ctx}
	switch {
	case cx.dead || !cx.running:
		// The connection, or the handler, has ended already.
		x.cancel(context.Canceled)
		return x
	case cx.ended != nil:
		x.cancel(cx.ended)
	}
	if cx.hasDL {
		x.deadline, x.hasDL = monoTime(cx.deadline), true
		left := time.Duration(cx.deadline - monoClockNow())
		if left <= 0 && cx.ended == nil {
			cx.ended = context.DeadlineExceeded
			x.cancel(cx.ended)
		}
		if cx.ended == nil {
			if cx.timer == nil {
				cx.timer = time.AfterFunc(left, c.deadlineFired)
			} else {
				cx.timer.Reset(left)
			}
		}
	}
	cx.ctx = x
	return x
}

// reqCtx is a request's context: a plain struct, ended by the
// connection's request path, with its Done channel made only if asked
// for.
type reqCtx struct {
	parent   context.Context // the connection's: for Value
	deadline time.Time
	hasDL    bool

	mu   sync.Mutex
	done chan struct{}
	err  error
}

func (x *reqCtx) Deadline() (time.Time, bool) { return x.deadline, x.hasDL }

func (x *reqCtx) Done() <-chan struct{} {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.done == nil {
		x.done = make(chan struct{})
		if x.err != nil {
			close(x.done)
		}
	}
	return x.done
}

func (x *reqCtx) Err() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.err
}

func (x *reqCtx) Value(key any) any { return x.parent.Value(key) }

// cancel ends the context with err, once.
func (x *reqCtx) cancel(err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.err != nil {
		return
	}
	x.err = err
	if x.done != nil {
		close(x.done)
	}
}
