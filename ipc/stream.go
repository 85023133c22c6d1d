//go:build linux

package ipc

// Streamed responses (FeatureStream, docs/ipc.md §5.2): a handler sends
// its answer in parts, each a response record of status respStreamPart
// with the request's correlation id, then ends it with one ordinary
// response. The server still handles a connection's requests one at a
// time and answers each with exactly one final response, so nothing
// else about the protocol changes. The parts travel through the response
// ring, which is the stream's flow control: a Send that finds the ring
// full waits for the client to read, and the client reads a part only
// when its caller asks for the next one.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"

	"github.com/ringipc/ringipc/ring"
)

var (
	// ErrNoStream: ResponseWriter.Send on a connection whose client did
	// not ask for streamed responses (FeatureStream), such as the C
	// client. Nothing was sent; the handler can still answer with one
	// response.
	ErrNoStream = errors.New("ipc: the client does not take streamed responses (no FeatureStream)")
	// ErrStreamed: a call other than Client.Stream was answered with a
	// streamed response. Its parts and its final response were
	// discarded; read such a message with Client.Stream.
	ErrStreamed = errors.New("ipc: the handler streamed its response; read it with Client.Stream")
)

// errStreamed is preallocated: the reader fills it in without allocating.
var errStreamed = fmt.Errorf("call: %w", ErrStreamed)

// partQueueLimit bounds the bytes of stream parts an event-loop
// connection keeps aside while its response ring is full: one ring's
// worth (docs/ipc.md §5.2).
func (c *Conn) partQueueLimit() int { return int(c.reply.sizes[1]) }

// Send sends part as the next part of a streamed response (a copy). The
// client receives the parts in order, then the final response, which the
// handler sends as usual (Respond, Reserve+Commit, Fail, or returning);
// so a request still has exactly one final response. Each part is at
// most MaxBody bytes (else an error matching ErrTooLarge, nothing sent).
//
// Send waits while the response ring is full: the client reads a part
// only when its caller takes the next one, so a slow reader slows the
// handler down rather than making either side buffer. It returns early
// with the connection's end. On a server driven by an event loop
// (Config.EventLoop) the handler cannot wait inside Process: a part the
// ring cannot take now is kept aside, at most one response ring's worth
// of them per connection, and beyond that Send fails with an error
// matching ErrTryAgain.
//
// A client that stops reading the stream midway (breaks out of its
// loop, or its context ends) makes its side discard the remaining parts
// and, with FeatureCancel (which Dial asks for), tells the server: once
// the cancel is in, Send fails with an error matching context.Canceled
// (context.DeadlineExceeded once the call's deadline passed), so a
// handler that stops at Send's first error stops working for nobody,
// and the call is answered cancelled. Without FeatureCancel, or on a
// server driven by an event loop (which reads no cancel while a handler
// runs), the handler is not told and runs to its end.
//
// A client that did not ask for streamed
// responses (FeatureStream; the C client does not) cannot take parts:
// Send returns an error matching ErrNoStream, and nothing goes out. Send
// after the final response, or with a reservation outstanding, returns
// ErrResponded.
func (w *ResponseWriter) Send(part []byte) error {
	b, err := w.ReservePart(len(part))
	if err != nil {
		return err
	}
	copy(b, part)
	return w.CommitPart(len(part))
}

// ReservePart is Send in place: it claims n bytes for the next part in
// the response ring (waiting for room as Send does) and returns them to
// fill; CommitPart then sends the first k of them, k <= n. The slice is
// valid until CommitPart. Until then the handler can neither respond nor
// send another part.
func (w *ResponseWriter) ReservePart(n int) ([]byte, error) {
	if w.done || w.reserved {
		return nil, ErrResponded
	}
	c := w.c
	if c.reply.features&FeatureStream == 0 {
		return nil, fmt.Errorf("stream part: %w", ErrNoStream)
	}
	if n < 0 || n > c.maxResponse() {
		if c.large {
			return nil, tooLarge("stream part", n, c.maxResponse(), raiseLarge)
		}
		return nil, tooLarge("stream part", n, c.maxResp, raiseRespRing)
	}
	if err := c.requestEnded(); err != nil {
		// The client stopped reading (its cancel came) or the call's
		// deadline passed: nobody wants the rest.
		return nil, fmt.Errorf("stream part: %w", err)
	}
	if n > c.maxResp {
		// A large part goes in the response body segment (large.go).
		if c.external && (len(c.pending) > 0 || !c.respOut.room(c.respP, n)) {
			return nil, fmt.Errorf("stream part of %d bytes: %w: the response body segment is busy, and an event-loop handler cannot wait for the client", n, ErrTryAgain)
		}
		b, err := w.reserveLarge(respStreamPart, 0, n)
		if err == nil {
			w.part = true
		}
		return b, err
	}
	total := respHdrSize + n
	var p []byte
	if c.external {
		if len(c.pending) == 0 {
			r, err := c.respP.TryReserve(respStreamPart, total)
			if err == nil {
				w.res = r
				p = r.Bytes()
			} else if err != ring.ErrFull {
				return nil, c.ringErr("stream part", err)
			}
		}
		if p == nil {
			if w.partBytes+total > c.partQueueLimit() {
				return nil, fmt.Errorf("stream part of %d bytes: %w: the response ring is full and %d bytes of parts wait already; an event-loop handler cannot wait for the client (at most %d bytes queue)",
					n, ErrTryAgain, w.partBytes, c.partQueueLimit())
			}
			w.pend = c.newPending(respStreamPart, total)
			p = w.pend.b
		}
	} else {
		r, err := c.respP.Reserve(c.ctx, respStreamPart, total)
		if err != nil {
			return nil, c.ringErr("stream part", err)
		}
		w.res = r
		p = r.Bytes()
	}
	putRespHeader(p, w.corr, 0)
	w.reserved, w.part = true, true
	return p[respHdrSize:], nil
}

// requestEnded says why the running request was given up, with
// FeatureCancel: context.Canceled once the client's cancel came (a
// Stream whose loop stopped, or whose context ended),
// context.DeadlineExceeded once the call's deadline passed; nil while it
// stands. It reads the clock only for a request with a deadline, and
// allocates nothing (Request.Context would).
func (c *Conn) requestEnded() error {
	cx := &c.cx
	if !cx.on {
		return nil
	}
	cx.mu.Lock()
	defer cx.mu.Unlock()
	if cx.ended == nil && cx.hasDL && monoClockNow() >= cx.deadline {
		cx.endRunning(context.DeadlineExceeded)
	}
	return cx.ended
}

// CommitPart sends the first n bytes of the part ReservePart claimed
// (ErrNotReserved without one; an n out of range is an error matching
// ErrTooLarge that sends nothing).
func (w *ResponseWriter) CommitPart(n int) error {
	if !w.reserved || !w.part {
		return ErrNotReserved
	}
	if r := w.reservedLen(); n < 0 || n > r {
		return fmt.Errorf("commit %d bytes of a %d-byte part: %w", n, r, ErrTooLarge)
	}
	if w.body != nil {
		w.reserved = false
		err := w.commitLarge(n) // a part: not counted as a response
		w.part = false
		return err
	}
	w.reserved, w.part = false, false
	c := w.c
	if w.pend != nil {
		w.pend.b = w.pend.b[:respHdrSize+n]
		w.partBytes += len(w.pend.b)
		c.pending = append(c.pending, w.pend)
		w.pend = nil
		return nil
	}
	c.stats.bytesOut.Add(uint64(n))
	if err := w.res.CommitN(respHdrSize + n); err != nil {
		return c.ringErr("stream part", err)
	}
	return nil
}

// Stream sends req as message id and ranges over the response's parts:
// each part the handler sent (ResponseWriter.Send), then the body of the
// final response if it is not empty. A handler that does not stream
// gives one element, its response (none if empty). An error (the
// handler's Fail, a too-large request, the connection's end, ctx) is
// the last element, with a nil slice. Each range over the sequence makes
// the call anew.
//
// Zero copy: each slice is a view of the response ring, valid until the
// loop body returns; copy what you keep. While the body runs, the
// client reads no other response, as while a zero-copy Response is
// held; the server is still busy with this request anyway (it handles
// a connection's requests in order), so do not call this Client from
// inside the loop: such a call waits for the stream to end, and the
// stream for the loop, for ever.
//
// Back-pressure: a part is read from the ring only when the loop asks
// for the next, so a slow loop slows the handler's Send down and the
// client never buffers parts. Breaking out of the loop ends the call
// for the caller: the client discards the parts still to come and the
// final response as they arrive, and the connection goes on serving
// other calls meanwhile; with FeatureCancel (which Dial asks for) the
// handler is told, as for an abandoned call: its Request.Context ends.
// ctx bounds the whole stream; when it ends, the rest is discarded as
// well.
//
// The parts are sent only if the server granted FeatureStream, which
// Dial asks for; a plain Call answered with parts fails with
// ErrStreamed.
func (cl *Client) Stream(ctx context.Context, id uint16, req []byte) iter.Seq2[[]byte, error] {
	return func(yield func([]byte, error) bool) {
		if len(req) > cl.maxReq {
			yield(nil, cl.reqTooLarge(len(req)))
			return
		}
		w := getWaiter()
		w.zc, w.stream = true, true
		if len(req) > cl.ringReq {
			if err := cl.sendLarge(ctx, id, req, w); err != nil {
				putWaiter(w)
				yield(nil, err)
				return
			}
			cl.streamParts(ctx, w, yield)
			return
		}
		typ, hdr, dl := cl.requestHeader(ctx, id, len(req))
		r, err := cl.reserve(ctx, typ, hdr+len(req), w, true)
		if err != nil {
			putWaiter(w)
			yield(nil, err)
			return
		}
		if hdr != reqHdrSize {
			binary.LittleEndian.PutUint64(r.Bytes()[reqHdrSize:], uint64(dl))
		}
		copy(r.Bytes()[hdr:], req)
		if err := cl.commit(r, w); err != nil {
			putWaiter(w)
			yield(nil, err)
			return
		}
		cl.streamParts(ctx, w, yield)
	}
}

// streamParts is the loop of Stream once the request is out.
func (cl *Client) streamParts(ctx context.Context, w *waiter, yield func([]byte, error) bool) {
	for {
		if err := cl.wait(ctx, w); err != nil {
			// The final response was an error, or the call was given
			// up (an orphan whose remaining records the reader drops).
			putWaiter(w)
			yield(nil, err)
			return
		}
		// This goroutine holds the reader role and the record: a part,
		// or the final response's body.
		part := w.part
		more := cl.yieldRecord(w, yield)
		if !part {
			putWaiter(w)
			return
		}
		if !more {
			return
		}
		w.reader = true // the role is still ours: read the next part
	}
}

// yieldRecord hands the record w holds to yield, then releases it. After
// the final response it lets go of the reader role too. After a part it
// keeps the role if yield asks for more; otherwise (yield returned false
// or panicked, or the release failed) w is left to the reader, which
// discards the rest of the stream and frees w once its final response
// is in.
func (cl *Client) yieldRecord(w *waiter, yield func([]byte, error) bool) (more bool) {
	part, view, large := w.part, w.view, w.large
	wanted := false // the caller asks for more; false if yield panics
	defer func() {
		rerr := cl.releaseResp(large)
		more = part && wanted && rerr == nil
		cl.mu.Lock()
		w.handed, w.part, w.view = false, false, nil
		stopped := part && !more
		if stopped {
			w.discard = true
		}
		corr := w.corr
		cl.mu.Unlock()
		if stopped && cl.cancelOn {
			cl.sendCancel(corr) // the handler's context ends
		}
		if !more {
			cl.releaseRole()
		}
		if rerr != nil && wanted {
			// Tell the caller, who is still listening; the connection
			// is ending anyway.
			yield(nil, cl.ringErr(rerr))
		}
	}()
	wanted = true
	if part || len(view) > 0 {
		wanted = false
		wanted = yield(view, nil)
	}
	return
}
