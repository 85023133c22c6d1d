//go:build linux

package ipc

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/ringipc/ringipc/ring"
)

// Defaults of the dispatch queue's byte budgets (Config fields of the
// same names): a client that does not read can make the server hold at
// most this much for it, and all such clients together at most
// DefaultMaxQueuedBytes.
const (
	DefaultDispatchQueueBytes = 1 << 20
	DefaultMaxQueuedBytes     = 64 << 20
)

// qitem is one queued dispatch message; b is a private copy.
type qitem struct {
	id uint16
	b  []byte
}

// deque is a FIFO ring of queued dispatch messages; qMu guards it.
type deque struct {
	items []qitem
	head  int
	n     int
}

func (d *deque) len() int { return d.n }

func (d *deque) push(it qitem) {
	if d.n == len(d.items) {
		grown := make([]qitem, max(8, 2*len(d.items)))
		for i := range d.n {
			grown[i] = d.items[(d.head+i)%len(d.items)]
		}
		d.items, d.head = grown, 0
	}
	d.items[(d.head+d.n)%len(d.items)] = it
	d.n++
}

func (d *deque) first() qitem { return d.items[d.head] }

// front appends up to n entries from the front to dst.
func (d *deque) front(dst []qitem, n int) []qitem {
	for i := range min(d.n, n) {
		dst = append(dst, d.items[(d.head+i)%len(d.items)])
	}
	return dst
}

func (d *deque) pop() qitem {
	it := d.items[d.head]
	d.items[d.head] = qitem{}
	d.head = (d.head + 1) % len(d.items)
	d.n--
	return it
}

// Dispatch sends an asynchronous message to the client under the
// connection's policy (Config.DispatchPolicy); nil means the message was
// accepted: written to the dispatch ring, or queued behind a full ring
// (DispatchWith says which). It may be called from any goroutine at any
// time. When the dispatch ring is full, Dispatch waits briefly for the
// client to make room (a reader hands space back in batches, so a full
// ring is often full for a moment only), then the message waits in the
// connection's queue (Config.DispatchQueue entries,
// Config.DispatchQueueBytes bytes, and room in the server's
// Config.MaxQueuedBytes); when it does not fit there either, the policy
// decides: disconnect the client (PolicyDisconnect, the default:
// ErrSlowConsumer), drop the message (PolicyDrop: ErrDropped), or wait
// until ctx ends (PolicyBlock). Only PolicyBlock looks at ctx: under the
// others Dispatch never waits for the client.
//
// A body larger than the dispatch ring carries (FeatureLarge, up to
// MaxDispatch) goes in the connection's dispatch body segment and is
// never queued: the bodies the client has not released yet are its
// queue. When they leave no room (after a poll of dispatchSpin), or
// messages are queued, or the ring is full, the policy decides as above.
//
// Fan-out to many connections from a handler: give Dispatch a context of
// its own (context.Background under the default policy), not the
// handler's Request.Context, which ends with the caller's call and would
// cancel the message for every other connection.
//
// Messages of one goroutine arrive in the order it sent them. A queued
// message counts against the queue until the flusher has committed it
// and taken it off, a moment after the client could read it; the
// client's FlowControl shows when the queue is empty. A message still
// queued when the connection ends is never sent: Stats.LostDispatches
// counts it.
func (c *Conn) Dispatch(ctx context.Context, id uint16, body []byte) error {
	_, err := c.dispatch(ctx, id, body, c.policy)
	return err
}

// DispatchOptions are the per-message choices of DispatchWith. The zero
// value means the connection's defaults.
type DispatchOptions struct {
	// Policy applies when the dispatch ring and the connection's queue
	// are full; PolicyDefault means Config.DispatchPolicy. A publisher
	// that must not lose one message for one client can block for it
	// (PolicyBlock, bounded by the context's deadline) while other
	// messages of the same connection keep the server's policy.
	Policy Policy
}

// DispatchResult says where DispatchWith put an accepted message.
type DispatchResult int

const (
	// DispatchNone: the message was not accepted (the error says why).
	DispatchNone DispatchResult = iota
	// DispatchWritten: the message is committed to the dispatch ring; the
	// client can read it now, and it survives the connection's end
	// until the client has drained its ring.
	DispatchWritten
	// DispatchQueued: the ring was full, so the message waits in the
	// server's queue for the client to make room. It reaches the ring in
	// order, or is lost (Stats.LostDispatches) if the connection ends
	// first.
	DispatchQueued
)

func (r DispatchResult) String() string {
	switch r {
	case DispatchNone:
		return "none"
	case DispatchWritten:
		return "written"
	case DispatchQueued:
		return "queued"
	}
	return fmt.Sprintf("DispatchResult(%d)", int(r))
}

// DispatchWith is Dispatch with per-message options, and says whether
// the message was written to the ring or queued. It allocates nothing
// more than Dispatch does (a queued message's copy, from a recycled
// buffer when one fits).
func (c *Conn) DispatchWith(ctx context.Context, id uint16, body []byte, o DispatchOptions) (DispatchResult, error) {
	pol := o.Policy
	if pol == PolicyDefault {
		pol = c.policy
	}
	if pol < PolicyBlock || pol > PolicyDisconnect {
		return DispatchNone, fmt.Errorf("dispatch: %w: unknown policy %d", os.ErrInvalid, pol)
	}
	return c.dispatch(ctx, id, body, pol)
}

// dispatch is Dispatch under policy pol.
func (c *Conn) dispatch(ctx context.Context, id uint16, body []byte, pol Policy) (DispatchResult, error) {
	if len(body) > c.maxDisp {
		switch {
		case !c.large:
			return DispatchNone, tooLarge("dispatch", len(body), c.maxDisp, raiseDispRing)
		case len(body) > c.MaxDispatch():
			return DispatchNone, tooLarge("dispatch", len(body), c.MaxDispatch(), raiseLarge)
		}
		if err := c.dispatchLarge(ctx, id, body, pol); err != nil {
			return DispatchNone, err
		}
		return DispatchWritten, nil
	}
	c.qMu.Lock()
	for {
		if c.qDead {
			c.qMu.Unlock()
			return DispatchNone, fmt.Errorf("dispatch: %w", ErrDisconnected)
		}
		if c.q.len() == 0 && !c.zcHeld {
			// The queue is empty: the producer is ours while we hold qMu.
			err := c.writeDirect(id, body)
			if err == nil {
				c.dispN++
				c.dispBytes += uint64(len(body))
				if c.dispN == dispCountEvery {
					c.moveDispCounts()
				}
				c.passRoom()
				c.qMu.Unlock()
				return DispatchWritten, nil
			}
			if err != ring.ErrFull {
				c.qMu.Unlock()
				return DispatchNone, c.ringErr("dispatch", err)
			}
		}
		if c.queueTake(len(body)) {
			break
		}
		switch pol {
		case PolicyDrop:
			c.stats.dropped.Add(1)
			atomic.AddUint64(word64(c.ctl, ctlDropped), 1)
			c.qMu.Unlock()
			return DispatchNone, ErrDropped
		case PolicyDisconnect:
			c.qMu.Unlock()
			err := fmt.Errorf("dispatch: %w", ErrSlowConsumer)
			c.kill(err)
			return DispatchNone, err
		}
		if c.q.len() == 0 && !c.zcHeld {
			// No queue (DispatchQueue < 0), or the message does not fit
			// in the byte budgets with nothing of ours queued: nothing
			// will ever signal queue room, so wait for ring space
			// itself, keeping qMu so the producer stays ours. The
			// client's next release wakes us.
			err := c.writeBlocking(ctx, id, body)
			c.passRoom()
			c.qMu.Unlock()
			if err != nil {
				return DispatchNone, err
			}
			c.stats.dispatches.Add(1)
			c.stats.bytesOut.Add(uint64(len(body)))
			return DispatchWritten, nil
		}
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
		if err != nil {
			// A token we did not take stays for the next waiter.
			c.qMu.Unlock()
			return DispatchNone, err
		}
	}
	// Queue a copy. The ring was full a moment ago (or older entries are
	// still waiting), so this message goes behind them.
	var b []byte
	if n := len(c.free); n > 0 && cap(c.free[n-1]) >= len(body) {
		b = c.free[n-1][:len(body)]
		c.free = c.free[:n-1]
	} else {
		b = make([]byte, len(body))
	}
	copy(b, body)
	c.q.push(qitem{id: id, b: b})
	c.qBytes += len(body)
	if c.q.len() == 1 {
		c.stats.flowEvents.Add(1)
		atomic.AddUint64(word64(c.ctl, ctlFlowEvents), 1)
		atomic.StoreUint32(word32(c.ctl, ctlFlow), 1)
	}
	atomic.StoreUint32(word32(c.ctl, ctlQueued), uint32(c.q.len()))
	c.passRoom()
	if !c.external && !c.flushing && !c.zcHeld {
		c.flushing = true
		c.wg.Add(1)
		go c.flushLoop()
	}
	c.qMu.Unlock()
	return DispatchQueued, nil
}

// queueTake reserves room for a message of n bytes in the queue: an
// entry, n bytes of the connection's byte budget, and n of the server's;
// qMu held. It reports false, reserving nothing, if any is short.
func (c *Conn) queueTake(n int) bool {
	if c.q.len() >= c.qLimit || c.qBytes+n > c.srv.cfg.DispatchQueueBytes {
		return false
	}
	if c.srv.queued.Add(int64(n)) > c.srv.cfg.MaxQueuedBytes {
		c.srv.queued.Add(-int64(n))
		return false
	}
	return true
}

// dispatchSpin bounds how long Dispatch polls a full ring before it
// queues; qMu is held meanwhile.
const dispatchSpin = 20 * time.Microsecond

// writeDirect writes one message straight into the ring; qMu held and the
// queue empty. A full ring is polled for up to dispatchSpin (not in
// external mode, whose loop must not wait); ErrFull then means the
// caller queues the message, with the producer word armed so that the
// client's next release wakes the flusher.
func (c *Conn) writeDirect(id uint16, body []byte) error {
	err := c.dispP.TryWrite(uint32(id), body)
	if err != ring.ErrFull {
		return err
	}
	if pol, budget := c.dispP.Waiter().Policy(); !c.external && pol != ring.WaitSleep {
		c.dispP.Waiter().Poll(min(budget, dispatchSpin), func() bool {
			err = c.dispP.TryWrite(uint32(id), body)
			return err != ring.ErrFull
		})
		if err != ring.ErrFull {
			return err
		}
	}
	// Announce that we wait for space, then look again (the ring's
	// Dekker pattern): either the client's next Release sees the word
	// and sends a token, or this retry sees its space.
	c.dispP.Waiter().Arm()
	if err = c.dispP.TryWrite(uint32(id), body); err != ring.ErrFull {
		c.dispP.Waiter().Disarm()
	}
	return err
}

// writeBlocking writes one message, sleeping until the ring has room,
// ctx ends or the connection does; qMu held and the queue empty.
func (c *Conn) writeBlocking(ctx context.Context, id uint16, body []byte) error {
	r, err := c.dispP.Reserve(ctx, uint32(id), len(body))
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("dispatch: %w", ctx.Err())
		}
		return c.ringErr("dispatch", err)
	}
	copy(r.Bytes(), body)
	if err := r.Commit(); err != nil {
		return c.ringErr("dispatch", err)
	}
	return nil
}

// dispCountEvery is how many direct dispatches a connection counts
// before it adds them to its stats.
const dispCountEvery = 64

// moveDispCounts adds the direct dispatches counted under qMu to the
// connection's stats; qMu held.
func (c *Conn) moveDispCounts() {
	if c.dispN > 0 {
		c.stats.dispatches.Add(c.dispN)
		c.stats.bytesOut.Add(c.dispBytes)
		c.dispN, c.dispBytes = 0, 0
	}
}

// passRoom hands the room token on to a Dispatch waiting for queue room,
// if there is room and a waiter; qMu held. Each waiter that gets in
// passes it on, so one token wakes them all in turn without a channel
// per wait.
func (c *Conn) passRoom() {
	if c.waiting > 0 && !c.qDead && (c.q.len() < c.qLimit || c.q.len() == 0) {
		select {
		case c.room <- struct{}{}:
		default:
		}
	}
}

// popped finishes the first n queue entries, which the flusher has
// committed; qMu held. Once the connection has ended (qDead), kill has
// counted every entry still queued as lost: those committed before the
// end were not, and come off that count again.
func (c *Conn) popped(n int) {
	if c.qDead && n > 0 {
		c.stats.lostDispatches.Add(^uint64(n - 1))
	}
	for range n {
		it := c.q.pop()
		c.qBytes -= len(it.b)
		if !c.qDead { // else kill has given the server its bytes back
			c.srv.queued.Add(-int64(len(it.b)))
		}
		if len(c.free) < maxFreeBufs && cap(it.b) <= maxFreeBuf {
			c.free = append(c.free, it.b)
		}
		c.stats.dispatches.Add(1)
		c.stats.bytesOut.Add(uint64(len(it.b)))
	}
	if c.q.len() == 0 {
		atomic.StoreUint32(word32(c.ctl, ctlFlow), 0)
	}
	atomic.StoreUint32(word32(c.ctl, ctlQueued), uint32(c.q.len()))
	c.passRoom()
}

// Queue buffers kept for reuse: enough that a queue cycling between full
// and empty does not allocate for small messages, few enough that an
// idle connection does not hoard memory.
const (
	maxFreeBufs = 256
	maxFreeBuf  = 4096
)

// flushBatch is how many queue entries the flusher writes per lock.
const flushBatch = 64

// flushLoop writes queued messages into the dispatch ring as the client
// makes room, sleeping on the socket meanwhile. It owns the producer
// until the queue is empty. Entries leave the queue only once committed,
// so that a non-empty queue keeps every Dispatch away from the producer.
func (c *Conn) flushLoop() {
	defer c.wg.Done()
	for {
		c.qMu.Lock()
		if c.q.len() == 0 || c.qDead {
			c.flushing = false
			c.qMu.Unlock()
			return
		}
		c.batch = c.q.front(c.batch[:0], flushBatch)
		c.qMu.Unlock()
		for i, it := range c.batch {
			if err := c.dispP.Write(c.ctx, uint32(it.id), it.b); err != nil {
				c.kill(c.ringErr("dispatch", err))
				c.qMu.Lock()
				c.popped(i) // written before the end: sent, not lost
				c.flushing = false
				c.qMu.Unlock()
				clear(c.batch)
				return
			}
		}
		c.qMu.Lock()
		c.popped(len(c.batch))
		c.qMu.Unlock()
		clear(c.batch)
	}
}

// flushQueueNow is the external loop's flusher: it writes what fits and
// arms the producer word for the rest.
func (c *Conn) flushQueueNow() {
	for {
		c.qMu.Lock()
		if c.q.len() == 0 || c.qDead {
			c.qMu.Unlock()
			return
		}
		it := c.q.first()
		c.qMu.Unlock()
		err := c.dispP.TryWrite(uint32(it.id), it.b)
		if err == ring.ErrFull {
			c.dispP.Waiter().Arm()
			if err = c.dispP.TryWrite(uint32(it.id), it.b); err == ring.ErrFull {
				return
			}
			c.dispP.Waiter().Disarm()
		}
		if err != nil {
			c.kill(c.ringErr("dispatch", err))
			return
		}
		c.qMu.Lock()
		c.popped(1)
		c.qMu.Unlock()
	}
}

// Policy says what Conn.Dispatch does when the dispatch ring and the
// connection's dispatch queue are both full: the client is not reading.
type Policy int

const (
	// PolicyDefault is the zero value: in Config, DefaultDispatchPolicy;
	// in DispatchOptions, the connection's Config.DispatchPolicy.
	PolicyDefault Policy = iota
	// PolicyBlock waits for room until the Dispatch context ends. The
	// caller waits for the slowest client it sends to: use it only where
	// that is what you want (one consumer, a bounded context), never for
	// fan-out from a handler with its Request.Context.
	PolicyBlock
	// PolicyDrop discards the message, counts it, and returns ErrDropped.
	PolicyDrop
	// PolicyDisconnect closes the connection and returns ErrSlowConsumer.
	PolicyDisconnect
)

// DefaultDispatchPolicy is Config.DispatchPolicy when left zero: a
// client that lets its ring and its bounded queue fill is disconnected
// as a slow consumer (ErrSlowConsumer, Stats.SlowConsumers), as NATS
// does. Dispatch then never waits for a client, so one that stops
// reading cannot stall the goroutine that dispatches, the handler it
// runs in, nor the other clients it serves; the queue's bounds
// (DispatchQueue, DispatchQueueBytes) are the slack a client gets for a
// burst or a pause. PolicyBlock stays available, per server or per
// message (DispatchOptions), for a consumer that must get everything.
const DefaultDispatchPolicy = PolicyDisconnect

func (p Policy) String() string {
	switch p {
	case PolicyDefault:
		return "default"
	case PolicyBlock:
		return "block"
	case PolicyDrop:
		return "drop"
	case PolicyDisconnect:
		return "disconnect"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}
