//go:build linux

package ipc

// The event-loop mode (Config.EventLoop): Process, one turn of the
// application's poll loop, and the responses kept aside while the
// response ring is full.

import (
	"errors"
	"fmt"

	"github.com/ringipc/ringipc/ring"
)

type pendingResp struct {
	status uint32
	b      []byte
	large  bool // b's body goes to the response body segment (large_server.go)
}

// Process is the external poll loop's entry point (Config.EventLoop): call
// it when Fd polls readable, and when a Requeuer loop was asked to. It
// reads the wake tokens, handles every request available, flushes what
// waits for ring space, and returns without blocking (handlers aside). Once the connection has ended it tears
// it down and returns an error matching ErrDisconnected (or the reason it
// ended); drop the descriptor from the poll set then. Calls must not
// overlap: one that does returns ErrConcurrentProcess, and one on a
// server without Config.EventLoop ErrNoEventLoop.
func (c *Conn) Process() error {
	if !c.external {
		return ErrNoEventLoop
	}
	c.pmu.Lock()
	if c.running {
		c.pmu.Unlock()
		return ErrConcurrentProcess
	}
	if c.isDead() {
		c.pmu.Unlock()
		// Ended between turns (Close, Server.Close): tear down here too,
		// or wait for the teardown running elsewhere, so that RemoveConn
		// has run when the error comes back, as it has below. A loop
		// would otherwise find the descriptor readable and Process it
		// again and again meanwhile.
		c.teardown()
		return c.endErr()
	}
	c.running = true
	c.pmu.Unlock()

	c.again = false
	c.process()

	c.pmu.Lock()
	c.running = false
	c.pendingOut = len(c.pending) > 0
	end := c.draining.Load() && !c.pendingOut
	c.pmu.Unlock()
	if end {
		c.kill(errShutdown) // Shutdown, and nothing left to answer
	}
	if c.isDead() {
		c.teardown()
		return c.endErr()
	}
	if c.again {
		c.srv.cfg.EventLoop.(Requeuer).Requeue(c)
	}
	return nil
}

func (c *Conn) endErr() error {
	<-c.done
	if errors.Is(c.err, ErrDisconnected) {
		return c.err
	}
	return fmt.Errorf("%w: %w", ErrDisconnected, c.err)
}

func (c *Conn) process() {
	if err := c.readTokensTurn(); err != nil {
		c.kill(err)
		return
	}
	c.drainTokenChans()
	if !c.flushPendingArmed() {
		c.flushQueueNow()
		return
	}
	_, capped := c.srv.cfg.EventLoop.(Requeuer)
	for handled := 0; !c.isDead(); handled++ {
		if capped && handled == c.srv.cfg.MaxTurnRequests {
			// Others' turn: the loop calls Process again (Requeue), so
			// the request word stays unarmed.
			c.again = true
			break
		}
		rec, err := c.reqC.TryPeek()
		if err == ring.ErrEmpty {
			c.reqC.Waiter().Arm()
			rec, err = c.reqC.TryPeek()
			if err == ring.ErrEmpty {
				break
			}
			c.reqC.Waiter().Disarm()
		}
		if err != nil {
			c.kill(c.loopErr(err))
			return
		}
		if !c.handleOne(rec) {
			return
		}
		if len(c.pending) > 0 && !c.flushPendingArmed() {
			break // wait for the client to free response space
		}
	}
	c.flushQueueNow()
}

// drainTokenChans empties the wake channels, which nothing waits on in
// external mode.
func (c *Conn) drainTokenChans() {
	for _, ch := range c.waker.local {
		if ch != nil {
			select {
			case <-ch:
			default:
			}
		}
	}
}

// flushPendingArmed writes out responses kept aside, arming the response
// producer word when the ring is still full (then it returns false).
func (c *Conn) flushPendingArmed() bool {
	if c.flushPending() {
		return true
	}
	c.respP.Waiter().Arm()
	if c.flushPending() {
		c.respP.Waiter().Disarm()
		return true
	}
	return false
}

func (c *Conn) flushPending() bool {
	for len(c.pending) > 0 {
		p := c.pending[0]
		if p.large {
			if !c.flushLarge(p) {
				return false
			}
			c.pending[0] = nil
			c.pending = c.pending[1:]
			continue
		}
		r, err := c.respP.TryReserve(p.status, len(p.b))
		if err == ring.ErrFull {
			return false
		}
		if err != nil {
			c.kill(c.ringErr("respond", err))
			return false
		}
		copy(r.Bytes(), p.b)
		if err := r.Commit(); err != nil {
			c.kill(c.ringErr("respond", err))
			return false
		}
		c.stats.bytesOut.Add(uint64(len(p.b) - respHdrSize))
		c.pending[0] = nil
		c.pending = c.pending[1:]
		c.freePending(p)
	}
	c.pending = c.pending[:0:0]
	return true
}

func (c *Conn) newPending(status uint32, n int) *pendingResp {
	for i := len(c.pendFree) - 1; i >= 0; i-- {
		if p := c.pendFree[i]; cap(p.b) >= n {
			c.pendFree = append(c.pendFree[:i], c.pendFree[i+1:]...)
			p.status, p.b = status, p.b[:n]
			return p
		}
	}
	return &pendingResp{status: status, b: make([]byte, n)}
}

func (c *Conn) freePending(p *pendingResp) {
	if !p.large && len(c.pendFree) < 16 {
		c.pendFree = append(c.pendFree, p)
	}
}
