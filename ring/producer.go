package ring

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/ringipc/ringipc/internal/prefetch"
)

// Producer appends records to a ring.
//
// On a single-producer ring, a Producer must be used by one goroutine at
// a time and only one may exist. On a multi-producer ring, a Producer owns
// one producer slot and is safe for concurrent use by many goroutines;
// each process attaches its own.
type Producer struct {
	s     shared
	multi bool

	// SPSC state, owned by the producer goroutine.
	tail      uint64 // next position to write; published at Commit
	headCache uint64 // last head read; only ever moves forward
	pending   bool   // a reservation is outstanding
	err       error  // sticky corruption

	// Asymmetric fences (SPSC; docs/design.md 2.6.6), owned by the
	// producer goroutine. canUnfence: this process is registered, so a
	// consumer's fence reaches it. unfenced: tail is published with a
	// release store (the shared unfenced word is 1). awake counts the
	// commits in a row that found the consumer awake.
	canUnfence bool
	unfenced   bool
	awake      uint32

	mp mpscProducer

	w Waiter // on prodWait, shared with the other producers (MPSC)

	// wokeConsumer: the last commit of this handle found the consumer
	// asleep (and woke it). Written by the committing goroutine, only
	// when it changes; read by anyone (ConsumerWasAsleep).
	wokeConsumer atomic.Bool
}

// Reservation is space claimed in the ring for one record. Fill Bytes,
// then Commit (or Abort). The slice is valid until then and must not be
// kept afterwards.
type Reservation struct {
	p    *Producer
	pos  uint64
	word uint64 // the claim word (MPSC) or the record's length (SPSC)
	typ  uint32
}

// Bytes returns the payload space: exactly the size asked for.
func (r Reservation) Bytes() []byte {
	if r.p == nil {
		return nil
	}
	start := r.pos&r.p.s.m.mask + headerSize
	end := start + wordLen(r.word)
	return r.p.s.data[start:end:end]
}

// NewProducer attaches a producer to the ring at the start of mem. On a
// multi-producer ring it takes a free producer slot (or that of a producer
// the operating system reports dead), or fails with ErrNoSlot.
func NewProducer(mem []byte, opts *Options) (*Producer, error) {
	s, err := attach(mem, opts)
	if err != nil {
		return nil, fmt.Errorf("attach producer: %w", err)
	}
	p := &Producer{s: s, multi: s.m.geo.Producers > 0}
	p.w.init(s.prodWait, &s.opts, p.multi)
	if p.multi {
		if err := p.mp.attachSlot(&p.s); err != nil {
			return nil, fmt.Errorf("attach producer: %w", err)
		}
		return p, nil
	}
	t := atomic.LoadUint64(s.tail)
	h := atomic.LoadUint64(s.head)
	if t-h > s.m.size || t%recordAlign != 0 || h%recordAlign != 0 {
		return nil, fmt.Errorf("attach producer: %w", corrupt("tail - head", t, t-h))
	}
	p.tail, p.headCache = t, h
	p.canUnfence = asymmetricFences()
	// Fenced until chooseFence says otherwise; a word left set by an
	// earlier producer would only cost the consumer needless fences.
	atomic.StoreUint32(s.unfenced, 0)
	return p, nil
}

// TryReserve claims room for a record of n payload bytes without waiting:
// ErrFull if there is none now, ErrTooLarge if there never can be.
func (p *Producer) TryReserve(typ uint32, n int) (Reservation, error) {
	if p.multi {
		return p.mp.tryReserve(p, typ, n)
	}
	pos, err := p.reserveSPSC(n)
	if err != nil {
		return Reservation{}, err
	}
	return Reservation{p: p, pos: pos, word: uint64(n), typ: typ}, nil
}

// reserveSPSC claims room for n payload bytes at the returned position,
// writing the padding before it if the record must go round.
func (p *Producer) reserveSPSC(n int) (uint64, error) {
	if p.err != nil {
		return 0, p.err
	}
	if p.pending {
		return 0, fmt.Errorf("reserve: %w: a reservation is outstanding", ErrPending)
	}
	if n < 0 || uint64(n) > p.s.m.maxP {
		return 0, fmt.Errorf("reserve %d bytes: %w (max %d)", n, ErrTooLarge, p.s.m.maxP)
	}
	if p.s.isClosed() {
		return 0, ErrClosed
	}
	m := &p.s.m
	rs := recordSize(uint64(n))
	t := p.tail
	off := t & m.mask
	var pad uint64
	if off+rs > m.size {
		pad = m.size - off
	}
	if t+pad+rs-p.headCache > m.size {
		if err := p.refreshHead(); err != nil {
			return 0, err
		}
		if t+pad+rs-p.headCache > m.size {
			return 0, ErrFull
		}
	}
	if pad > 0 {
		// The padding is published with the next commit; until then
		// only this producer knows about it.
		p.writeHeader(t, makeWord(stateCommitted, flagPad, 0, 0, pad-headerSize), 0, nil)
		t += pad
		p.tail = t
	}
	p.pending = true
	return t, nil
}

// commitSPSC publishes the record of n bytes reserved at pos.
func (p *Producer) commitSPSC(pos uint64, typ uint32, n uint64) {
	off := pos & p.s.m.mask
	p.writeHeader(pos, makeWord(stateCommitted, 0, 0, 0, n), typ, p.s.data[off+headerSize:off+headerSize+n])
	p.tail = pos + recordSize(n)
	p.pending = false
	if p.unfenced {
		storeRelease(p.s.tail, p.tail)
	} else {
		publishWord(p.s.tail, p.tail)
	}
	woke := p.s.wake(p.s.consWait)
	p.noteWake(woke)
	p.chooseFence(woke)
	// Two lines: a record of 64 bytes and its header span two, and one
	// line per record left every fifth line of a stream of them unasked.
	prefetch.Write(&p.s.data[(p.tail+prefetchAhead)&p.s.m.mask])
	prefetch.Write(&p.s.data[(p.tail+prefetchAhead+64)&p.s.m.mask])
}

// chooseFence decides how the next commit publishes its tail, from what
// this one found (docs/design.md 2.6.6). A streaming producer, whose
// consumer was awake for unfenceAfter commits in a row and fences for
// it, stops paying a full barrier per record: it sets the shared
// unfenced word with one first, so that a consumer announcing a sleep
// from then on sees it and fences this CPU. A commit that found the
// consumer asleep goes back to full barriers: sparse traffic, where the
// consumer sleeps between records, never leaves them, and its sleeps
// cost no fence.
func (p *Producer) chooseFence(woke bool) {
	if woke {
		p.awake = 0
		if p.unfenced {
			p.unfenced = false
			// After the last release store: a consumer that sees 0
			// sees that store too (stores stay in order).
			atomic.StoreUint32(p.s.unfenced, 0)
		}
		return
	}
	if p.unfenced || !p.canUnfence {
		return
	}
	if p.awake++; p.awake < unfenceAfter {
		return
	}
	p.awake = 0
	if atomic.LoadUint32(p.s.fences) != 1 {
		return // a consumer that cannot fence us (another kind, or none)
	}
	// A full barrier in every build, before the first release store.
	atomic.SwapUint32(p.s.unfenced, 1)
	p.unfenced = true
}

// unfenceAfter is how many commits in a row must find the consumer awake
// before a producer publishes without a full barrier: a stream, not a
// consumer that happened to be polling. A variable for tests.
var unfenceAfter uint32 = 64

// prefetchAhead is how far past its new tail a producer asks for the
// ring's next lines. The consumer read them a lap ago, so they sit shared
// in its cache; the producer's stores to them wait for ownership, and the
// locked instructions that follow (the next tail store, a mutex) wait for
// those stores. Asked for ahead, ownership is there when the stores come.
// Measured (ringbench dispatch, 64 B, 13 interleaved pairs of runs on the
// 2-vCPU Xeon): 18.9-21.1 M msgs/s and 93-99 ns CPU per message without,
// 20.9-22.6 M and 87-94 ns with, better in 12 pairs of 13; 256 B to 8 KiB
// ahead measured alike. spsc and call did not move. On the AMD guest, in
// its slower phase (when its two vCPUs are far apart, every line fetched
// from the other is dear), asking for two lines instead of one: spsc
// 9.3-11.7 M msgs/s against 6.4-6.8 M, dispatch 18.2-21.2 M against
// 10.1-11.1 M (3 interleaved pairs); in its quicker phase alike (spsc
// 42-46 M against 30-43 M, call, pipeline and dispatch within 5%). The
// MPSC producers asking too measured no different.
const prefetchAhead = 512

func (p *Producer) noteWake(woke bool) {
	if p.wokeConsumer.Load() != woke {
		p.wokeConsumer.Store(woke)
	}
}

// ConsumerWasAsleep reports whether the consumer had announced that it
// sleeps when this handle's last commit published, so that the commit
// woke it. A caller that waits for the consumer's answer (a request and
// its response) learns from it whether the answer comes within the
// consumer's handling time or after a wake-up: see Waiter.WaitReply.
func (p *Producer) ConsumerWasAsleep() bool { return p.wokeConsumer.Load() }

// Reserve is TryReserve that waits for room until ctx ends or the ring is
// closed.
func (p *Producer) Reserve(ctx context.Context, typ uint32, n int) (Reservation, error) {
	r, err := p.TryReserve(typ, n)
	if err != ErrFull {
		return r, err
	}
	werr := p.w.Wait(ctx, func() bool {
		r, err = p.TryReserve(typ, n)
		return err != ErrFull
	})
	if werr != nil {
		return Reservation{}, werr
	}
	return r, err
}

// Waiter returns the Waiter on the ring's producer wait word, for loops
// that wait for room outside Reserve: see Waiter. On an MPSC ring every
// producer sleeps on that one word, and Disarm does nothing.
func (p *Producer) Waiter() *Waiter { return &p.w }

// refreshHead re-reads the consumer's position, which must lie between
// the last one seen and our tail.
func (p *Producer) refreshHead() error {
	h := atomic.LoadUint64(p.s.head)
	if h-p.headCache > p.tail-p.headCache || h%recordAlign != 0 {
		p.err = corrupt("head outside [last head, tail]", h, h)
		return p.err
	}
	p.headCache = h
	return nil
}

// writeHeader fills in a record header at pos. In an SPSC ring the
// header is published by the tail store that follows, so plain stores do;
// an MPSC padding record is published by the atomic store of its word,
// which therefore comes last.
func (p *Producer) writeHeader(pos, word uint64, typ uint32, payload []byte) {
	off := pos & p.s.m.mask
	sum := headerSum(p.s.m.seed, pos, word, typ, payloadHash(&p.s.m, payload))
	h := p.s.data[off : off+headerSize]
	binary.LittleEndian.PutUint32(h[8:], typ)
	binary.LittleEndian.PutUint32(h[12:], sum)
	if p.multi {
		publishWord(word64(p.s.data, int(off)), word)
	} else {
		binary.LittleEndian.PutUint64(h, word)
	}
}

// Commit publishes the record with every byte reserved: the consumer's
// Peek that returns it happens after Commit. On an SPSC ring the store of
// the tail synchronizes before the consumer's load of it; on an MPSC ring
// the CAS that commits the record's word does, before the consumer's load
// of that word.
func (r Reservation) Commit() error {
	if r.p == nil {
		return fmt.Errorf("commit: %w: zero Reservation", ErrPending)
	}
	return r.commit(wordLen(r.word))
}

// CommitN publishes the record with only the first n bytes of its
// payload, 0 <= n <= len(Bytes()): for a producer that reserves for the
// largest record it may write and learns the size while writing. The
// rest of the space goes back to the ring: an SPSC producer's tail
// advances past the shorter record only; on an MPSC ring, where later
// claims may already lie behind this one, the rest of the claim becomes
// a skip record the consumer steps over (docs/design.md, 2.5). The
// payload hash, when the ring has one, covers the n bytes.
//
// An n out of range is ErrTooLarge and commits nothing: the reservation
// is still outstanding, to be committed or aborted.
func (r Reservation) CommitN(n int) error {
	if r.p == nil {
		return fmt.Errorf("commit: %w: zero Reservation", ErrPending)
	}
	if n < 0 || uint64(n) > wordLen(r.word) {
		return fmt.Errorf("commit %d bytes: %w (reserved %d)", n, ErrTooLarge, wordLen(r.word))
	}
	return r.commit(uint64(n))
}

func (r Reservation) commit(n uint64) error {
	p := r.p
	if p.multi {
		return p.mp.commit(p, r, n)
	}
	if !p.pending || r.pos != p.tail {
		return fmt.Errorf("commit: %w: reservation is not the outstanding one", ErrPending)
	}
	p.commitSPSC(r.pos, r.typ, n)
	return nil
}

// Abort gives the space back without publishing anything (SPSC) or turns
// the claim into padding the consumer skips (MPSC).
func (r Reservation) Abort() error {
	p := r.p
	if p == nil {
		return fmt.Errorf("abort: %w: zero Reservation", ErrPending)
	}
	if p.multi {
		return p.mp.abort(p, r)
	}
	if !p.pending || r.pos != p.tail {
		return fmt.Errorf("abort: %w: reservation is not the outstanding one", ErrPending)
	}
	p.pending = false
	return nil
}

// TryWrite copies one record into the ring without waiting.
func (p *Producer) TryWrite(typ uint32, b []byte) error {
	if !p.multi {
		pos, err := p.reserveSPSC(len(b))
		if err != nil {
			return err
		}
		off := pos&p.s.m.mask + headerSize
		copy(p.s.data[off:], b)
		p.commitSPSC(pos, typ, uint64(len(b)))
		return nil
	}
	r, err := p.TryReserve(typ, len(b))
	if err != nil {
		return err
	}
	copy(r.Bytes(), b)
	return r.Commit()
}

// Write copies one record into the ring, waiting for room until ctx ends
// or the ring is closed.
func (p *Producer) Write(ctx context.Context, typ uint32, b []byte) error {
	if err := p.TryWrite(typ, b); err != ErrFull {
		return err
	}
	r, err := p.Reserve(ctx, typ, len(b))
	if err != nil {
		return err
	}
	copy(r.Bytes(), b)
	return r.Commit()
}

// Detach is what Close does on a multi-producer ring; on a
// single-producer ring it does nothing.
//
// Deprecated: use Close, which on a multi-producer ring now leaves the
// ring open for the other producers.
func (p *Producer) Detach() error {
	if p.multi {
		return p.mp.detach(&p.s)
	}
	return nil
}

// MaxPayload returns the largest payload this ring accepts.
func (p *Producer) MaxPayload() int { return int(p.s.m.maxP) }

// Close says this producer is done, and is what a deferred cleanup
// should call. On a single-producer ring that ends the stream, as
// CloseRing does: waiters wake, later reservations fail with ErrClosed,
// and the consumer drains what was committed, then sees ErrClosed. On a
// multi-producer ring the other producers go on: Close frees this
// handle's producer slot for another process and leaves the ring open;
// this handle's later reservations fail with ErrClosed. Every reservation
// of this handle must have been committed or aborted first. Close is
// idempotent and safe to call concurrently.
func (p *Producer) Close() error {
	if p.multi {
		return p.mp.detach(&p.s)
	}
	p.s.markClosed()
	return nil
}

// CloseRing closes the ring for every side, including the other
// producers of a multi-producer ring, and detaches this producer: it is
// how one producer ends the stream for everybody. Idempotent and safe to
// call concurrently.
func (p *Producer) CloseRing() error {
	p.s.markClosed()
	if p.multi {
		return p.mp.detach(&p.s)
	}
	return nil
}
