//go:build linux

package ipc

// Zero-copy dispatch: a DispatchReservation is a dispatch message written
// in place in the dispatch ring, or, larger than the ring carries, in the
// connection's dispatch body segment (large.go). It owns the
// connection's dispatch producer (Conn.zcHeld) from the moment
// ReserveDispatch waits for room until Commit or Abort, so that no other
// writer (a Dispatch's direct write, the queue's flusher, a large
// dispatch) sleeps on the ring's producer word or writes the ring
// meanwhile: Dispatch calls queue their messages behind it, and its end
// starts the flusher for them. A ring reservation holds qMu until it
// ends; a large one holds dispLarge instead (the segment's turn), and
// commits its descriptor as a large Dispatch does.

import (
	"context"
	"fmt"

	"github.com/ringipc/ringipc/ring"
)

// DispatchReservation is a dispatch message being written in place
// (Conn.ReserveDispatch). It holds the connection's dispatch side: fill it
// and Commit (or Abort) promptly; Dispatch calls on the connection wait
// meanwhile, and so does the connection's end (the body is in memory
// the end unmaps), after which Commit fails.
//
// A DispatchReservation ends with exactly one Commit, CommitN or Abort;
// later calls on it, or on a copy of it, return ErrCallDone (Bytes
// returns nil) and do nothing else. The zero value has ended.
type DispatchReservation struct {
	c   *Conn
	r   ring.Reservation
	seq uint64

	// A large reservation (the body in the dispatch body segment): its
	// body, message id, and the context its descriptor's commit waits
	// under for ring room.
	large []byte
	id    uint16
	ctx   context.Context
}

// ReserveDispatch claims room for a dispatch message of n bytes directly
// in the dispatch ring, for a sender that writes the message in place
// instead of copying it (Dispatch copies). It waits for room until ctx
// ends or the connection does, whatever the connection's Policy: the
// message is not queued. Messages that Dispatch queued earlier go first:
// while the connection's queue holds any, ReserveDispatch fails with an
// error matching ErrTryAgain (use Dispatch, or try later). On a server
// driven by an event loop it does not wait either: a full ring is
// ErrTryAgain.
//
// A message larger than the ring carries (up to MaxDispatch, with
// FeatureLarge) is reserved in the connection's dispatch body segment:
// ReserveDispatch then also waits for the client to release the large
// messages before it (and for a large Dispatch in progress), and Commit
// waits, under ctx, for ring room for its descriptor. On a server driven
// by an event loop, which must not wait, a large reservation is
// ErrTooLarge: use Dispatch there. n above MaxDispatch is ErrTooLarge.
func (c *Conn) ReserveDispatch(ctx context.Context, id uint16, n int) (DispatchReservation, error) {
	if n > c.maxDisp && c.large && n <= c.MaxDispatch() {
		if c.external {
			return DispatchReservation{}, fmt.Errorf("reserve dispatch of %d bytes: %w: an event loop's ReserveDispatch is limited to the dispatch ring (%d bytes); use Dispatch", n, ErrTooLarge, c.maxDisp)
		}
		return c.reserveLargeDispatch(ctx, id, n)
	}
	if n < 0 || n > c.maxDisp {
		limit, raise := c.maxDisp, raiseDispRing
		if c.large {
			limit, raise = c.MaxDispatch(), raiseLarge
		}
		return DispatchReservation{}, tooLarge("dispatch", n, limit, raise)
	}
	var r ring.Reservation
	var err error
	// try claims the room; true when done, with qMu held on success.
	try := func() bool {
		c.qMu.Lock()
		switch {
		case c.qDead:
			err = fmt.Errorf("dispatch: %w", ErrDisconnected)
		case !c.zcHeld && (c.q.len() > 0 || c.flushing):
			err = fmt.Errorf("reserve dispatch: %w: %d messages queued by Dispatch go first", ErrTryAgain, c.q.len())
		default:
			r, err = c.dispP.TryReserve(uint32(id), n)
			if err == nil {
				c.zcHeld = true
				return true
			}
			if err == ring.ErrFull {
				// Ours from now on: no other writer touches the ring or
				// sleeps on its producer word while we wait.
				c.zcHeld = true
				c.qMu.Unlock()
				return false
			}
			err = c.ringErr("dispatch", err)
		}
		c.qMu.Unlock()
		return true
	}
	if !try() {
		if c.external {
			err = fmt.Errorf("reserve dispatch: %w: the dispatch ring is full", ErrTryAgain)
		} else if werr := c.dispP.Waiter().Wait(ctx, try); werr != nil {
			err = fmt.Errorf("dispatch: %w", werr)
		}
		if err != nil {
			c.qMu.Lock()
			c.zcEnd()
			c.qMu.Unlock()
			return DispatchReservation{}, err
		}
	} else if err != nil {
		return DispatchReservation{}, err
	}
	// qMu is held until Commit or Abort.
	c.zcSeq++
	c.zcLive.Store(c.zcSeq)
	return DispatchReservation{c: c, r: r, seq: c.zcSeq}, nil
}

// zcEnd gives the producer back after a zero-copy dispatch, to the
// flusher if Dispatch queued messages meanwhile; qMu held.
func (c *Conn) zcEnd() {
	c.zcHeld = false
	if c.q.len() > 0 && !c.qDead && !c.external && !c.flushing {
		c.flushing = true
		c.wg.Add(1)
		go c.flushLoop()
	}
	c.passRoom()
}

// live reports whether d is the connection's live reservation.
func (d *DispatchReservation) live() bool {
	return d.c != nil && d.seq != 0 && d.c.zcLive.Load() == d.seq
}

// Bytes returns the message body to fill in, or nil once d has ended.
func (d *DispatchReservation) Bytes() []byte {
	if !d.live() {
		return nil
	}
	if d.large != nil {
		return d.large
	}
	return d.r.Bytes()
}

// Commit sends the message with every byte reserved.
func (d *DispatchReservation) Commit() error {
	if !d.live() {
		return fmt.Errorf("commit dispatch: %w", ErrCallDone)
	}
	return d.CommitN(len(d.Bytes()))
}

// CommitN sends the first n bytes of the message reserved and gives the
// rest of the space back to the ring (ring.Reservation.CommitN). An n
// outside 0..the length reserved is an error matching ErrTooLarge that
// sends nothing: the reservation is still live.
func (d *DispatchReservation) CommitN(n int) error {
	c := d.c
	if !d.live() {
		return fmt.Errorf("commit dispatch: %w", ErrCallDone)
	}
	if r := len(d.Bytes()); n < 0 || n > r {
		return fmt.Errorf("commit %d bytes of a %d-byte dispatch reservation: %w", n, r, ErrTooLarge)
	}
	if !c.zcLive.CompareAndSwap(d.seq, 0) {
		return fmt.Errorf("commit dispatch: %w", ErrCallDone)
	}
	if d.large != nil {
		return c.commitLargeReservation(d, n)
	}
	err := d.r.CommitN(n)
	c.zcEnd()
	c.qMu.Unlock()
	if err != nil {
		return c.ringErr("dispatch", err)
	}
	c.stats.dispatches.Add(1)
	c.stats.bytesOut.Add(uint64(n))
	return nil
}

// Abort gives the reserved room back unsent.
func (d *DispatchReservation) Abort() error {
	c := d.c
	if !d.live() || !c.zcLive.CompareAndSwap(d.seq, 0) {
		return fmt.Errorf("abort dispatch: %w", ErrCallDone)
	}
	if d.large != nil {
		// Nothing was sent: the body's place in the segment is free for
		// the next one.
		c.endLargeReservation()
		return nil
	}
	d.r.Abort() //nolint:errcheck // the only outstanding reservation
	c.zcEnd()
	c.qMu.Unlock()
	return nil
}

// reserveLargeDispatch is ReserveDispatch of a body larger than the
// dispatch ring, in the dispatch body segment; goroutine mode only. It
// takes the segment's turn (dispLarge) and, once the queue is empty, the
// producer (zcHeld), as dispatchLargeOwned does, and keeps both until
// the reservation ends.
func (c *Conn) reserveLargeDispatch(ctx context.Context, id uint16, n int) (DispatchReservation, error) {
	select {
	case c.dispLarge <- struct{}{}:
	case <-ctx.Done():
		return DispatchReservation{}, fmt.Errorf("dispatch: %w", ctx.Err())
	case <-c.ending:
		return DispatchReservation{}, fmt.Errorf("dispatch: %w", ErrDisconnected)
	}
	c.qMu.Lock()
	switch {
	case c.qDead:
		c.qMu.Unlock()
		<-c.dispLarge
		return DispatchReservation{}, fmt.Errorf("dispatch: %w", ErrDisconnected)
	case c.zcHeld || c.q.len() > 0 || c.flushing:
		// A ring reservation holds qMu, so zcHeld here is a waiter for
		// ring room; queued messages go first, as for ring reservations.
		c.qMu.Unlock()
		<-c.dispLarge
		return DispatchReservation{}, fmt.Errorf("reserve dispatch: %w: %d messages queued by Dispatch go first", ErrTryAgain, c.q.len())
	}
	c.zcHeld = true
	c.qMu.Unlock()
	body, err := c.largeRoom(ctx, n)
	if err != nil {
		c.endLargeReservation()
		return DispatchReservation{}, err
	}
	c.qMu.Lock()
	c.zcSeq++
	seq := c.zcSeq
	c.zcLive.Store(seq)
	c.qMu.Unlock()
	return DispatchReservation{c: c, seq: seq, large: body, id: id, ctx: ctx}, nil
}

// largeRoom waits until the dispatch body segment has room for an
// n-byte body and returns it there; the producer and dispLarge ours.
func (c *Conn) largeRoom(ctx context.Context, n int) ([]byte, error) {
	if !c.dispOut.room(c.dispP, n) {
		c.dispWant = n
		if err := c.dispP.Waiter().Wait(ctx, c.dispReady); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("dispatch: %w", ctx.Err())
			}
			return nil, c.ringErr("dispatch", err)
		}
	}
	if c.isEnding() {
		return nil, fmt.Errorf("dispatch: %w", ErrDisconnected)
	}
	body, err := c.dispOut.segment(n, ctx, c.ending, c.rc)
	if err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	return body, nil
}

// commitLargeReservation sends the first n bytes of a large reservation
// (its descriptor, waiting under the reservation's context for ring
// room) and ends it.
func (c *Conn) commitLargeReservation(d *DispatchReservation, n int) error {
	_, err := c.commitLargeDesc(d.ctx, d.id, n, PolicyBlock)
	c.endLargeReservation()
	return err
}

// endLargeReservation gives back the producer and the segment's turn.
func (c *Conn) endLargeReservation() {
	c.qMu.Lock()
	c.zcEnd()
	c.qMu.Unlock()
	<-c.dispLarge
}
