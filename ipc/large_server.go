//go:build linux

package ipc

// The server's side of large bodies (large.go): requests read from the
// request body segment, responses and dispatch messages written into
// theirs.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/ringipc/ringipc/ring"
)

// requestBody resolves the descriptor d of a large request (correlation
// id corr) to its body. A body above Config.MaxMessage is answered with
// status 3 without running a handler; anything else wrong ends the
// connection. ok false: nothing more to do for this record.
func (c *Conn) requestBody(corr uint64, d []byte) (body []byte, ok bool) {
	if len(d) != largeDescSize {
		c.kill(fmt.Errorf("%w: request descriptor of %d bytes", ErrProtocol, len(d)))
		return nil, false
	}
	n, gen, off := getDesc(d)
	var ctx context.Context // nil: an external loop does not wait
	if !c.external {
		ctx = c.ctx
	}
	body, err := c.reqIn.body(n, gen, off, ctx, c.done)
	if err == errBodyNotYet {
		// An external loop reads the socket only in Process: the client
		// sent the segment before it committed the record, so the token
		// is there to read now.
		if terr := c.readTokensTurn(); terr != nil {
			c.kill(terr)
			return nil, false
		}
		body, err = c.reqIn.body(n, gen, off, nil, nil)
	}
	switch {
	case err == nil:
		return body, true
	case errors.Is(err, ErrTooLarge):
		c.stats.calls.Add(1)
		c.rw = ResponseWriter{c: c, corr: corr, tooLarge: int(min(n, math.MaxUint32))}
		c.rw.finish()
	case errors.Is(err, ErrProtocol):
		c.kill(err)
	default:
		c.kill(fmt.Errorf("%w: %w", ErrDisconnected, err))
	}
	return nil, false
}

// reserveLarge is ResponseWriter.reserve for a body larger than the
// response ring carries. In goroutine mode it waits until the client has
// released the last large response, reserves the descriptor record and
// returns the body in the response body segment (zero copy). An external
// loop must not wait: if the segment or the ring is busy, the body goes
// to a private buffer kept aside (pending) like a response that found the
// ring full, and Process handles no more requests until it is out.
func (w *ResponseWriter) reserveLarge(status uint32, code int32, n int) ([]byte, error) {
	c := w.c
	var r ring.Reservation
	if c.external {
		if len(c.pending) == 0 && c.respOut.room(c.respP, n) {
			var err error
			r, err = c.respP.TryReserve(status|typeLarge, respHdrSize+largeDescSize)
			if err != nil && err != ring.ErrFull {
				return nil, c.ringErr("respond", err)
			}
		}
		if r == (ring.Reservation{}) {
			w.pend = &pendingResp{status: status, b: make([]byte, respHdrSize+n), large: true}
			return w.reserved1(status, code, w.pend.b), nil
		}
	} else {
		if err := c.waitRespRoom(n); err != nil {
			return nil, err
		}
		var err error
		if r, err = c.respP.Reserve(c.ctx, status|typeLarge, respHdrSize+largeDescSize); err != nil {
			return nil, c.ringErr("respond", err)
		}
	}
	var ctx context.Context // nil: an external loop does not wait
	if !c.external {
		ctx = c.ctx
	}
	body, err := c.respOut.segment(n, ctx, c.done, c.rc)
	if err != nil {
		r.Abort() //nolint:errcheck // the only outstanding reservation
		return nil, c.respSegmentErr(err)
	}
	w.res, w.body = r, body
	c.respOut.desc(r.Bytes()[respHdrSize:], n)
	w.reserved1(status, code, r.Bytes())
	return body, nil
}

// waitRespRoom waits, in goroutine mode, until the response body segment
// has room for an n-byte body (the client releases bodies as it reads
// them), or the connection ends.
func (c *Conn) waitRespRoom(n int) error {
	if c.respOut.room(c.respP, n) {
		return nil
	}
	err := c.respP.Waiter().Wait(c.ctx, func() bool { return c.isDead() || c.respOut.room(c.respP, n) })
	if err == nil && c.isDead() {
		err = ring.ErrClosed
	}
	if err != nil {
		return c.ringErr("respond", err)
	}
	return nil
}

// respSegmentErr is the error of a response whose body segment could not
// be had: past Config.MaxMemory the response cannot be sent, the handler
// may still Fail, and the connection goes on; anything else (the new
// segment could not be made or sent) ends the connection.
func (c *Conn) respSegmentErr(err error) error {
	if errors.Is(err, ErrLimit) {
		return fmt.Errorf("respond: %w", err)
	}
	err = fmt.Errorf("respond: %w: %w", ErrDisconnected, err)
	c.kill(err)
	return err
}

// reserved1 writes a response header into p and marks the writer
// reserved; it returns the body after the header.
func (w *ResponseWriter) reserved1(status uint32, code int32, p []byte) []byte {
	le := binary.LittleEndian
	le.PutUint64(p[0:], w.corr)
	le.PutUint32(p[8:], uint32(code))
	le.PutUint32(p[12:], 0)
	w.reserved = true
	if status != respOK {
		w.c.stats.errResponses.Add(1)
	}
	return p[respHdrSize:]
}

// commitLarge publishes the first n bytes of a large response reserved
// in the segment (the descriptor says n; the rest of the segment is
// simply not read).
func (w *ResponseWriter) commitLarge(n int) error {
	c := w.c
	if !w.part {
		c.stats.responses.Add(1) // a stream part is not a response
	}
	c.stats.bytesOut.Add(uint64(n))
	c.respOut.desc(w.res.Bytes()[respHdrSize:], n)
	end := w.res.End()
	w.body = nil
	if err := w.res.Commit(); err != nil {
		return c.ringErr("respond", err)
	}
	c.respOut.sent(end)
	return nil
}

// flushLarge writes out a large response kept aside (external mode): it
// reports false, and leaves it queued, while the segment or the ring is
// busy.
func (c *Conn) flushLarge(p *pendingResp) bool {
	if !c.respOut.room(c.respP, len(p.b)-respHdrSize) {
		return false
	}
	r, err := c.respP.TryReserve(p.status|typeLarge, respHdrSize+largeDescSize)
	if err == ring.ErrFull {
		return false
	}
	if err != nil {
		c.kill(c.ringErr("respond", err))
		return false
	}
	n := len(p.b) - respHdrSize
	body, err := c.respOut.segment(n, nil, c.done, c.rc)
	if err != nil {
		r.Abort() //nolint:errcheck // the only outstanding reservation
		c.kill(fmt.Errorf("respond: %w: %w", ErrDisconnected, err))
		return false
	}
	copy(body, p.b[respHdrSize:])
	copy(r.Bytes(), p.b[:respHdrSize])
	c.respOut.desc(r.Bytes()[respHdrSize:], n)
	end := r.End()
	if err := r.Commit(); err != nil {
		c.kill(c.ringErr("respond", err))
		return false
	}
	c.respOut.sent(end)
	c.stats.bytesOut.Add(uint64(n))
	return true
}

// dispatchLarge is Dispatch for a body larger than the dispatch ring
// carries, under policy pol. Large dispatches take turns (dispLarge,
// which guards dispOut). One waits, without holding anything else, until
// the dispatch body segment has room (the client releases what it read),
// writes the body there, and only then takes qMu, waits until the queue
// is empty (the messages before it go first, and the producer is then
// whoever holds qMu), and commits the descriptor. A large message is
// never queued: the segment's bodies in flight are its queue. So under
// PolicyDrop and PolicyDisconnect a client that has not released the
// bodies before (after a poll of dispatchSpin), or has messages queued,
// or a full ring, is not keeping up, and the policy applies; only
// PolicyBlock waits. It does not wait on the ring's producer word, which
// Dispatch and the flusher arm: it polls
// the segment, 10 µs doubling to 200 µs between looks (a 1 MiB body
// takes about that long to copy), which a message of this size hardly
// notices.
func (c *Conn) dispatchLarge(ctx context.Context, id uint16, body []byte, pol Policy) error {
	select {
	case c.dispLarge <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("dispatch: %w", ctx.Err())
	case <-c.ending:
		return fmt.Errorf("dispatch: %w", ErrDisconnected)
	}
	defer func() { <-c.dispLarge }()
	if !c.external {
		return c.dispatchLargeOwned(ctx, id, body, pol)
	}
	var limit time.Duration // PolicyBlock: none
	if pol != PolicyBlock {
		limit = dispatchSpin
	}
	if err := c.waitDispRoom(ctx, len(body), limit); err != nil {
		if err == errNoRoom {
			return c.notKeepingUp(pol)
		}
		return err
	}
	seg, err := c.dispOut.segment(len(body), ctx, c.ending, c.rc)
	if err != nil {
		return fmt.Errorf("dispatch: %w", err)
	}
	copyBody(seg, body)

	c.qMu.Lock()
	if err := c.awaitQueueTurn(ctx, pol); err != nil {
		return err
	}
	full, err := c.commitLargeDesc(ctx, id, len(body), pol)
	if full {
		c.qMu.Unlock()
		return c.notKeepingUp(pol)
	}
	if err == nil {
		c.passRoom()
	}
	c.qMu.Unlock()
	return err
}

// awaitQueueTurn waits, qMu held, until the messages queued before a
// large dispatch have gone and no zero-copy dispatch owns the producer
// (dispatchzc.go). Under a policy other than PolicyBlock, messages
// already queued mean the client is not keeping up. It returns nil with
// qMu still held, or an error with qMu released.
func (c *Conn) awaitQueueTurn(ctx context.Context, pol Policy) error {
	if c.q.len() > 0 && !c.qDead && pol != PolicyBlock {
		c.qMu.Unlock()
		return c.notKeepingUp(pol)
	}
	for (c.q.len() > 0 || c.zcHeld) && !c.qDead {
		c.waiting++
		c.qMu.Unlock()
		var err error
		select {
		case <-c.room:
		case <-ctx.Done():
			err = fmt.Errorf("dispatch: %w", ctx.Err())
		}
		c.qMu.Lock()
		c.waiting--
		c.passRoom() // the token was for everyone waiting
		if err != nil {
			c.qMu.Unlock()
			return err
		}
	}
	if c.qDead {
		c.qMu.Unlock()
		return fmt.Errorf("dispatch: %w", ErrDisconnected)
	}
	return nil
}

// commitLargeDesc commits the descriptor of an n-byte body already in
// the dispatch segment, the producer ours: under PolicyBlock it waits
// for ring room, else a full ring reports full (the caller applies the
// policy) and writes nothing.
func (c *Conn) commitLargeDesc(ctx context.Context, id uint16, n int, pol Policy) (full bool, err error) {
	var r ring.Reservation
	if pol == PolicyBlock {
		r, err = c.dispP.Reserve(ctx, uint32(id)|typeLarge, largeDescSize)
	} else if r, err = c.dispP.TryReserve(uint32(id)|typeLarge, largeDescSize); err == ring.ErrFull {
		return true, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return false, fmt.Errorf("dispatch: %w", ctx.Err())
		}
		return false, c.ringErr("dispatch", err)
	}
	c.dispOut.desc(r.Bytes(), n)
	end := r.End()
	if err := r.Commit(); err != nil {
		return false, c.ringErr("dispatch", err)
	}
	c.dispOut.sent(end)
	c.stats.dispatches.Add(1)
	c.stats.bytesOut.Add(uint64(n))
	return false, nil
}

// dispatchLargeOwned is dispatchLarge on a server whose connections run
// their own goroutines: once the queue is empty it takes the dispatch
// producer for itself as a zero-copy dispatch does (zcHeld: Dispatch
// calls queue behind it meanwhile, and its end starts the flusher for
// them), so it may sleep on the ring's producer word for room in the
// segment, woken by the client's release of a large record, without
// holding qMu. (An external loop's Process drains the wake-up channels,
// so there dispatchLarge polls instead.) dispLarge held.
func (c *Conn) dispatchLargeOwned(ctx context.Context, id uint16, body []byte, pol Policy) error {
	c.qMu.Lock()
	if err := c.awaitQueueTurn(ctx, pol); err != nil {
		return err
	}
	c.zcHeld = true
	c.qMu.Unlock()
	err := c.writeLarge(ctx, id, body, pol)
	c.qMu.Lock()
	c.zcEnd()
	c.qMu.Unlock()
	return err
}

// writeLarge writes a large dispatch message, the producer ours
// (dispatchLargeOwned).
func (c *Conn) writeLarge(ctx context.Context, id uint16, body []byte, pol Policy) error {
	n := len(body)
	if !c.dispOut.room(c.dispP, n) {
		c.dispWant = n
		w := c.dispP.Waiter()
		if pol != PolicyBlock {
			if !w.Poll(dispatchSpin, c.dispReady) || c.isEnding() {
				if c.isEnding() {
					return fmt.Errorf("dispatch: %w", ErrDisconnected)
				}
				return c.notKeepingUp(pol)
			}
		} else if err := w.Wait(ctx, c.dispReady); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("dispatch: %w", ctx.Err())
			}
			return c.ringErr("dispatch", err)
		}
		if c.isEnding() {
			return fmt.Errorf("dispatch: %w", ErrDisconnected)
		}
	}
	seg, err := c.dispOut.segment(n, ctx, c.ending, c.rc)
	if err != nil {
		return fmt.Errorf("dispatch: %w", err)
	}
	copyBody(seg, body)
	full, err := c.commitLargeDesc(ctx, id, n, pol)
	if full {
		return c.notKeepingUp(pol)
	}
	return err
}

// isEnding reports whether kill has begun (it closes ending first).
func (c *Conn) isEnding() bool {
	select {
	case <-c.ending:
		return true
	default:
		return false
	}
}

// notKeepingUp applies PolicyDrop or PolicyDisconnect to a large
// message the client has no room for; qMu not held.
func (c *Conn) notKeepingUp(pol Policy) error {
	if pol == PolicyDrop {
		c.stats.dropped.Add(1)
		atomic.AddUint64(word64(c.ctl, ctlDropped), 1)
		return ErrDropped
	}
	err := fmt.Errorf("dispatch: %w", ErrSlowConsumer)
	c.kill(err)
	return err
}

// The polls of waitDispRoom.
const (
	dispRoomPollMin = 10 * time.Microsecond
	dispRoomPollMax = 200 * time.Microsecond
)

// errNoRoom: waitDispRoom's limit passed.
var errNoRoom = errors.New("no room in the dispatch body segment")

// waitDispRoom waits until the dispatch body segment has room for n
// bytes, ctx ends, the connection does, or (limit > 0) limit has passed
// (errNoRoom); dispLarge held.
func (c *Conn) waitDispRoom(ctx context.Context, n int, limit time.Duration) error {
	d := dispRoomPollMin
	var waited time.Duration
	for !c.dispOut.room(c.dispP, n) {
		if limit > 0 && waited >= limit {
			return errNoRoom
		}
		waited += d
		if c.dispTimer == nil {
			c.dispTimer = time.NewTimer(d)
		} else {
			c.dispTimer.Reset(d)
		}
		select {
		case <-c.dispTimer.C:
		case <-ctx.Done():
			c.dispTimer.Stop()
			return fmt.Errorf("dispatch: %w", ctx.Err())
		case <-c.ending:
			c.dispTimer.Stop()
			return fmt.Errorf("dispatch: %w", ErrDisconnected)
		}
		d = min(2*d, dispRoomPollMax)
	}
	return nil
}

// respondInNotes is Respond for a body of at least progressFrom bytes to
// a client that takes progress notes (FeatureProgress; docs/ipc.md
// §5.4.1). It writes the body into the segment a piece at a time
// (pieceEnd) and after each piece but the last commits a note saying how
// much is written, so that the client copies those bytes out while the
// next piece goes in. A note that finds the ring full is skipped: the
// final response, the ordinary large record, is all a client needs.
//
// The stores are non-temporal unless the client reads from a CPU that
// shares this one's cache, as judged by how soon it releases the first
// note (near.go, docs/design.md §3.6): with cached stores a client far
// away, reading each piece right after it was written, fetched it from
// this CPU's cache, and the overlapped copies took longer than the
// serial ones.
//
// Goroutine mode only: it may wait for room, as reserveLarge does, and
// fails as it does.
func (w *ResponseWriter) respondInNotes(body []byte) error {
	c := w.c
	n := len(body)
	if err := c.waitRespRoom(n); err != nil {
		return err
	}
	seg, err := c.respOut.segment(n, c.ctx, c.done, c.rc)
	if err != nil {
		return c.respSegmentErr(err)
	}
	j := &c.nearJ
	j.bodies++
	watch := j.bodies%nearEvery == 0 // one noted response in nearEvery is timed
	if v := nearTest.Load(); v != 0 {
		j.near, watch = v > 0, false
	}
	for off := 0; off < n; {
		end := pieceEnd(off, n)
		copyPiece(seg[off:end], body[off:end], j.near)
		off = end
		if off == n {
			break
		}
		r, err := c.respP.TryReserve(respProgress|typeLarge, respHdrSize+largeDescSize+noteFlagsSize)
		if err == ring.ErrFull {
			continue
		}
		if err != nil {
			return c.ringErr("respond", err)
		}
		p := r.Bytes()
		le := binary.LittleEndian
		le.PutUint64(p, w.corr)
		le.PutUint64(p[8:], uint64(n))
		c.respOut.desc(p[respHdrSize:], off)
		var flags uint64
		if j.near {
			flags = noteNear
		}
		le.PutUint64(p[respHdrSize+largeDescSize:], flags)
		if err := r.Commit(); err != nil {
			return c.ringErr("respond", err)
		}
		if c.testHookNoted != nil {
			c.testHookNoted()
		}
		if watch {
			watch = false
			c.judgeNear(r.End())
		}
	}
	r, err := c.respP.Reserve(c.ctx, respOK|typeLarge, respHdrSize+largeDescSize)
	if err != nil {
		return c.ringErr("respond", err)
	}
	w.res, w.body = r, seg
	w.reserved1(respOK, 0, r.Bytes())
	return w.Commit()
}
