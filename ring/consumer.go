package ring

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/ringipc/ringipc/internal/prefetch"
)

// Record is a view of one committed record.
type Record struct {
	Type uint32
	// Data is the payload, inside the ring's memory when returned by
	// Peek: valid until Release, and its capacity ends with it.
	Data []byte
}

// Consumer takes records out of a ring, in the order they were committed
// (SPSC) or claimed (MPSC). A ring has one consumer; a Consumer must be
// used by one goroutine at a time, except Close, which any goroutine may
// call.
type Consumer struct {
	s     shared
	multi bool

	head      uint64 // next position to read
	published uint64 // head as last stored in shared memory
	batch     uint64 // publish once head is this far past published
	tailCache uint64 // last tail read (MPSC: or the end of a record taken on trust)
	tailSeen  uint64 // MPSC: last tail actually read
	peeked    bool
	cur       Record
	curSize   uint64 // bytes Release frees
	err       error  // sticky: once corrupt, always corrupt

	stuck stuckClaim // MPSC: the claim at head that has not committed

	// testHookEmpty, set only by tests, runs between the load of the
	// tail that found the ring empty and the load of closed.
	testHookEmpty func()

	w Waiter // on consWait
}

// maxReleaseBatch bounds the batches in which Release hands space back
// (an eighth of the ring below that): a producer that waits for room in
// a full ring gets some within about the time the consumer takes to read
// this many bytes (microseconds), which a polling producer catches; with
// an eighth of a 1 MiB ring it waited ~100 µs, longer than the adaptive
// polling budget, and slept on every batch.
const maxReleaseBatch = 16 << 10

// errInFlight: an MPSC claim at head is not committed yet. Blocking calls
// use it to look after the claim's producer; callers see ErrEmpty.
var errInFlight = fmt.Errorf("%w: claim in flight", ErrEmpty)

// NewConsumer attaches the consumer to the ring at the start of mem.
func NewConsumer(mem []byte, opts *Options) (*Consumer, error) {
	s, err := attach(mem, opts)
	if err != nil {
		return nil, fmt.Errorf("attach consumer: %w", err)
	}
	c := &Consumer{s: s, multi: s.m.geo.Producers > 0}
	c.w.init(s.consWait, &s.opts, false)
	h := atomic.LoadUint64(s.head)
	t := atomic.LoadUint64(s.tail)
	if t-h > s.m.size || t%recordAlign != 0 || h%recordAlign != 0 {
		return nil, fmt.Errorf("attach consumer: %w", corrupt("tail - head", h, t-h))
	}
	c.head, c.published, c.tailCache, c.tailSeen = h, h, t, t
	c.batch = min(s.m.size/8, maxReleaseBatch)
	// Tell the producer whether this consumer fences for it before each
	// sleep (docs/design.md 2.6.6); the waiter then does.
	var fences uint32
	if !c.multi && asymmetricFences() {
		fences = 1
		c.w.fence = s.unfenced
	}
	atomic.StoreUint32(s.fences, fences)
	return c, nil
}

// TryPeek returns the next record without waiting: ErrEmpty if there is
// none now, ErrClosed once the ring is closed and drained. Peeking again
// before Release returns the same record.
func (c *Consumer) TryPeek() (Record, error) {
	r, err := c.peek()
	if err == errInFlight {
		err = ErrEmpty
	}
	return r, err
}

// Peek returns the next record, waiting until one is committed, ctx ends
// or the ring is closed and drained. The Commit of the record happens
// before Peek returns it.
func (c *Consumer) Peek(ctx context.Context) (Record, error) {
	r, err := c.peek()
	if err != ErrEmpty && err != errInFlight {
		return r, err
	}
	ready := func() bool {
		r, err = c.peek()
		return err != ErrEmpty && err != errInFlight
	}
	w := &c.w
	if w.spin(ctx.Done(), ready, spinHistory) {
		return r, err
	}
	for {
		if cerr := ctx.Err(); cerr != nil {
			return Record{}, cerr
		}
		w.Arm()
		if ready() {
			w.Disarm()
			return r, err
		}
		// A claim in flight may belong to a dead producer that will
		// never wake us: sleep in slices and look after it.
		inFlight := err == errInFlight
		var limit time.Duration
		if inFlight {
			limit = recoverySlice
		}
		if serr := w.Sleep(ctx, limit); serr != nil {
			w.Disarm()
			return Record{}, serr
		}
		if inFlight {
			if rerr := c.recoverStuck(); rerr != nil {
				return Record{}, rerr
			}
		}
		if ready() {
			return r, err
		}
	}
}

// Waiter returns the consumer's Waiter, on the ring's consumer wait word,
// for loops that wait for records outside Peek: see Waiter. It shares
// the consumer's goroutine rule.
func (c *Consumer) Waiter() *Waiter { return &c.w }

func (c *Consumer) peek() (Record, error) {
	if c.err != nil {
		return Record{}, c.err
	}
	if c.peeked {
		return c.cur, nil
	}
	m := &c.s.m
	for {
		h := c.head
		off := h & m.mask
		// Multi-producer: look at the word at the head before the tail.
		// Consumed bytes are zeroed, so a non-zero word there was
		// claimed and the tail is past it: reading the tail (the line
		// every producer CASes) for each record would pull that line
		// away from them. The length checks below read the tail all the
		// same when a record seems to reach past the tail seen.
		var w uint64
		if c.multi || h != c.tailCache {
			w = atomic.LoadUint64(word64(c.s.data, int(off)))
		}
		if h == c.tailCache && w == 0 {
			t := atomic.LoadUint64(c.s.tail)
			if t-h > m.size || t%recordAlign != 0 {
				return Record{}, c.fail(corrupt("tail outside [head, head+size]", h, t))
			}
			c.tailCache, c.tailSeen = t, t
			if t == h {
				// Caught up: hand back everything consumed, so that a
				// producer waiting for space never waits on us.
				c.askForNext(h)
				c.publish()
				if c.testHookEmpty != nil {
					c.testHookEmpty()
				}
				if !c.s.isClosed() {
					return Record{}, ErrEmpty
				}
				// Closed, but a producer may have committed and then
				// closed between our load of the tail and that of
				// closed: the record is owed to us (a commit before a
				// close is delivered), so look at the tail once more.
				if atomic.LoadUint64(c.s.tail) == h {
					return Record{}, ErrClosed
				}
				continue
			}
			// The word is read after the tail, whose load synchronizes
			// with the store that published it.
			w = atomic.LoadUint64(word64(c.s.data, int(off)))
		}
		if wordState(w) != stateCommitted {
			if c.multi && (w == 0 || wordState(w) == stateClaimed) {
				// Claimed (tail is past it) but not committed yet.
				c.publish()
				c.stuck.note(h)
				return Record{}, errInFlight
			}
			return Record{}, c.fail(corrupt("record state", h, w))
		}
		n := wordLen(w)
		rs := recordSize(n)
		fl := wordFlags(w)
		if fl&^(flagPad|flagSkip|flagSlack) != 0 || fl&(flagPad|flagSlack) == flagPad|flagSlack {
			return Record{}, c.fail(corrupt("record flags", h, w))
		}
		if !c.multi && w&(slotMask<<slotShift|genMask<<genShift) != 0 {
			// An SPSC record names no producer slot.
			return Record{}, c.fail(corrupt("record slot bits", h, w))
		}
		if fl&flagSlack != 0 {
			if !c.multi {
				// Only MPSC producers write slack.
				return Record{}, c.fail(corrupt("record flags", h, w))
			}
			rs = slackedSize(off, rs)
		}
		if fl&flagPad != 0 {
			// Padding only where a wrap is due: it must end exactly at the
			// end of the data area.
			rs = headerSize + n
			if off+rs != m.size || !c.within(h, rs) {
				return Record{}, c.fail(corrupt("padding", h, w))
			}
		} else if n > m.maxP || off+rs > m.size || !c.within(h, rs) {
			return Record{}, c.fail(corrupt("record length", h, w))
		}
		if fl&flagSkip != 0 {
			// Aborted or abandoned: no checksum was computed.
			c.head = h + rs
			continue
		}
		typ := binary.LittleEndian.Uint32(c.s.data[off+8:])
		sum := binary.LittleEndian.Uint32(c.s.data[off+12:])
		var payload []byte
		if fl&flagPad == 0 {
			payload = c.s.data[off+headerSize : off+headerSize+n : off+headerSize+n]
		}
		if headerSum(m.seed, h, w, typ, payloadHash(m, payload)) != sum {
			return Record{}, c.fail(corrupt("header checksum", h, uint64(sum)))
		}
		if fl&flagPad != 0 {
			c.head = h + rs
			continue
		}
		c.peeked = true
		c.cur = Record{Type: typ, Data: payload}
		c.curSize = rs
		return c.cur, nil
	}
}

// within reports whether the rs bytes at h lie below the tail, reading
// the tail again if they reach past the one seen.
//
// Multi-producer rings take a committed word's word for it instead (peek
// reads their words before the tail): an honest record lies below the
// tail. But never for more than a ring's worth past the tail last read:
// then the tail is read, and a record beyond it, forged, is corrupt. So a
// ring scribbled full of plausible words costs at most one lap of them,
// not an endless walk, and is found without any access out of bounds.
func (c *Consumer) within(h, rs uint64) bool {
	if rs <= c.tailCache-h {
		return true
	}
	if c.multi && h+rs-c.tailSeen <= c.s.m.size {
		c.tailCache = h + rs
		return true
	}
	t := atomic.LoadUint64(c.s.tail)
	if t-h > c.s.m.size || t%recordAlign != 0 {
		return false
	}
	c.tailCache, c.tailSeen = t, t
	return rs <= t-h
}

// askForNext asks the processor for the line the record at h will start
// in, and for the line it will end in if the last record's size says it
// spans two (a 64-byte payload and its header may), while the tail says
// it is not there yet. A consumer polling an empty ring reads the tail
// over and over; when the producer publishes, that read misses, and the
// record's lines, written by the producer too, missed after it, one
// after the other. Asked for in every empty poll, the record's lines
// come with the tail's or soon after it. Nothing is read from them here:
// a prefetch cannot fault or see a torn value, and the record is
// validated as always once the tail covers it (docs/design.md, 2.4).
// Measured (ringbench -rate 0, 64 B, the AMD guest's slower phase,
// interleaved runs): ring pingpong p50 1.33-1.36 µs without, 1.06-1.09 µs
// with; ipc call 0.52-0.63 M calls/s (p50 1.44-1.48 µs) without,
// 0.61-0.67 M (1.32-1.36 µs) with the start line alone, 0.72-0.75 M
// (1.18-1.20 µs) with both; streaming (spsc, mpsc, dispatch) alike.
func (c *Consumer) askForNext(h uint64) {
	const cpuLine = 64 // what one prefetch brings (lineSize is two of them)
	m := &c.s.m
	prefetch.Read(&c.s.data[h&m.mask])
	if e := c.curSize; e != 0 && e <= 2*cpuLine { // 0: no record yet
		prefetch.Read(&c.s.data[(h+e-1)&m.mask])
	}
}

func (c *Consumer) fail(err error) error {
	c.err = err
	return err
}

// Release frees the record returned by the last Peek; its view becomes
// invalid. The space is handed back to producers in batches (an eighth
// of the ring, at most maxReleaseBatch), and always once the consumer has caught up with them or
// before it sleeps: the store of the head synchronizes before the
// Reserve that reuses the space.
func (c *Consumer) Release() error {
	if !c.peeked {
		if c.err != nil {
			return c.err
		}
		return fmt.Errorf("release: %w: no record peeked", ErrPending)
	}
	c.peeked = false
	c.cur = Record{}
	c.head += c.curSize
	if c.head-c.published >= c.batch {
		c.publish()
	}
	return nil
}

// publish hands [published, head) back to the producers. In MPSC the
// bytes are zeroed first: a record is committed by its word turning
// non-zero, so no word may survive into the next lap.
func (c *Consumer) publish() {
	from, to := c.published, c.head
	if from == to {
		return
	}
	if c.multi {
		m := &c.s.m
		for p := from; p != to; {
			off := p & m.mask
			end := min(off+(to-p), m.size)
			clear(c.s.data[off:end])
			p += end - off
		}
	}
	c.published = to
	publishWord(c.s.head, to)
	c.s.wake(c.s.prodWait)
}

// ReadInto copies the next record's payload into buf and releases it,
// waiting as Peek does. If buf is too small it returns io.ErrShortBuffer
// with n set to the size needed, and keeps the record.
func (c *Consumer) ReadInto(ctx context.Context, buf []byte) (typ uint32, n int, err error) {
	r, err := c.Peek(ctx)
	if err != nil {
		return 0, 0, err
	}
	if len(buf) < len(r.Data) {
		return r.Type, len(r.Data), io.ErrShortBuffer
	}
	n = copy(buf, r.Data)
	return r.Type, n, c.Release()
}

// TryReadInto is ReadInto without waiting (ErrEmpty if there is nothing).
func (c *Consumer) TryReadInto(buf []byte) (typ uint32, n int, err error) {
	r, err := c.TryPeek()
	if err != nil {
		return 0, 0, err
	}
	if len(buf) < len(r.Data) {
		return r.Type, len(r.Data), io.ErrShortBuffer
	}
	n = copy(buf, r.Data)
	return r.Type, n, c.Release()
}

// Read returns a copy of the next record, waiting as Peek does.
func (c *Consumer) Read(ctx context.Context) (typ uint32, data []byte, err error) {
	r, err := c.Peek(ctx)
	if err != nil {
		return 0, nil, err
	}
	data = append([]byte(nil), r.Data...)
	return r.Type, data, c.Release()
}

// Close closes the ring for every side and wakes every waiter. The
// consumer may go on draining committed records. Idempotent.
func (c *Consumer) Close() error {
	c.s.markClosed()
	return nil
}
