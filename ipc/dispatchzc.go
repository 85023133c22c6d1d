//go:build linux

package ipc

// Zero-copy dispatch: a DispatchReservation is a dispatch message written
// in place in the dispatch ring. It owns the connection's dispatch
// producer (Conn.zcHeld) from the moment ReserveDispatch waits for room
// until Commit or Abort, so that no other writer (a Dispatch's direct
// write, the queue's flusher) sleeps on the ring's producer word or
// writes the ring meanwhile: Dispatch calls queue their messages behind
// it, and its end starts the flusher for them.

import (
	"context"
	"fmt"

	"github.com/ringipc/ringipc/ring"
)

// DispatchReservation is a dispatch message being written in place
// (Conn.ReserveDispatch). It holds the connection's dispatch side: fill it
// and Commit (or Abort) promptly; Dispatch calls on the connection wait
// meanwhile.
//
// A DispatchReservation ends with exactly one Commit, CommitN or Abort;
// later calls on it, or on a copy of it, return ErrCallDone (Bytes
// returns nil) and do nothing else. The zero value has ended.
type DispatchReservation struct {
	c   *Conn
	r   ring.Reservation
	seq uint64
}

// ReserveDispatch claims room for a dispatch message of n bytes directly
// in the dispatch ring, for a sender that writes the message in place
// instead of copying it (Dispatch copies). It waits for room until ctx
// ends or the connection does, whatever the connection's Policy: the
// message is not queued. Messages that Dispatch queued earlier go first:
// while the connection's queue holds any, ReserveDispatch fails with an
// error matching ErrTryAgain (use Dispatch, or try later). On a server
// driven by an event loop it does not wait either: a full ring is
// ErrTryAgain. n above the dispatch ring's limit is ErrTooLarge.
func (c *Conn) ReserveDispatch(ctx context.Context, id uint16, n int) (DispatchReservation, error) {
	if n < 0 || n > c.maxDisp {
		return DispatchReservation{}, tooLarge("dispatch", n, c.maxDisp, raiseDispRing)
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
	return d.r.Bytes()
}

// Commit sends the message with every byte reserved.
func (d *DispatchReservation) Commit() error {
	if !d.live() {
		return fmt.Errorf("commit dispatch: %w", ErrCallDone)
	}
	return d.CommitN(len(d.r.Bytes()))
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
	if r := len(d.r.Bytes()); n < 0 || n > r {
		return fmt.Errorf("commit %d bytes of a %d-byte dispatch reservation: %w", n, r, ErrTooLarge)
	}
	if !c.zcLive.CompareAndSwap(d.seq, 0) {
		return fmt.Errorf("commit dispatch: %w", ErrCallDone)
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
	d.r.Abort() //nolint:errcheck // the only outstanding reservation
	c.zcEnd()
	c.qMu.Unlock()
	return nil
}
