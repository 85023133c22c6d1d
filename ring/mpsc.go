package ring

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The producer table of an MPSC ring: one 128-byte entry per slot, so
// that producers storing their intents do not share a line.
//
//	+0  u64 owner: bits 0..31 pid, bits 32..43 generation (bumped at each
//	               attach), bits 60..63 state (0 free, 1 attaching,
//	               2 attached)
//	+8  u64 owner's start time (clock ticks after boot, /proc/PID/stat
//	        field 22), so a recycled pid is not taken for the owner
//	+16 u64 reserved, 0 (was the intent length: recovery finds it)
//	+24 u64 intent position | 1 (positions are 16-aligned, so bit 0 marks
//	        the word valid; 0: no intent)
//
// A producer stores its intent (the position) before it CASes the tail,
// and stores a claimed header word, naming its slot and generation, right
// after. Every claim in the ring is therefore attributable: by its header
// once claimed, by the intent in between. One handle serializes that
// short window among its goroutines.
const (
	slotOwner     = 0
	slotStart     = 8
	slotReserved  = 16
	slotIntentPos = 24

	slotFree      = 0
	slotAttaching = 1
	slotAttached  = 2

	// recoverySlice bounds each sleep of a consumer blocked on a claim
	// in flight: a dead producer never wakes it, so it looks again.
	recoverySlice = 10 * time.Millisecond
)

// Owner identifies the process holding a producer slot.
type Owner struct {
	PID       int
	StartTime uint64 // 0 while the owner is still attaching
}

func ownerWord(state uint64, gen uint32, pid int) uint64 {
	return state<<60 | uint64(gen&genMask)<<32 | uint64(uint32(pid))
}

type mpscProducer struct {
	slot uint32 // 1-based slot number, as stored in claim words
	gen  uint32
	pid  int

	headCache atomic.Uint64 // a head seen; only a lower bound of the real one
	claimMu   sync.Mutex    // serializes intent, tail CAS and claim store
	detached  atomic.Bool
}

// testHookClaimWindow, set only by tests, runs between the tail CAS and
// the claim store: a test parks a producer process there to kill it.
var testHookClaimWindow func()

func (s *shared) slotOff(i int) int { return offSlotTable + i*slotSize }

func (s *shared) alive(o Owner) bool {
	if s.opts.Liveness != nil {
		return s.opts.Liveness(o)
	}
	return ProcessAlive(o)
}

// readOwner reads a slot's owner words once.
func (s *shared) readOwner(i int) (word uint64, o Owner) {
	off := s.slotOff(i)
	word = atomic.LoadUint64(word64(s.mem, off+slotOwner))
	o.PID = int(uint32(word))
	o.StartTime = atomic.LoadUint64(word64(s.mem, off+slotStart))
	return word, o
}

func (mp *mpscProducer) attachSlot(s *shared) error {
	pid := os.Getpid()
	start, err := processStartTime(pid)
	if err != nil {
		return err
	}
	h := atomic.LoadUint64(s.head)
	for i := 0; i < s.m.geo.Producers; i++ {
		w, o := s.readOwner(i)
		switch w >> 60 {
		case slotFree:
		case slotAttaching, slotAttached:
			if s.alive(o) {
				continue
			}
			// The owner is dead. Its claimed headers carry its
			// generation, which the new one will not match; but a claim
			// still in its intent window is known only by the intent,
			// so keep the slot until the consumer is past it.
			ip := atomic.LoadUint64(word64(s.mem, s.slotOff(i)+slotIntentPos))
			if ip != 0 && int64(ip&^1-h) >= 0 {
				continue
			}
		default:
			continue // garbage: leave it alone, another slot may do
		}
		gen := (w>>32 + 1) & genMask
		if gen == 0 {
			gen = 1
		}
		off := s.slotOff(i)
		if !atomic.CompareAndSwapUint64(word64(s.mem, off+slotOwner), w, ownerWord(slotAttaching, uint32(gen), pid)) {
			continue
		}
		atomic.StoreUint64(word64(s.mem, off+slotIntentPos), 0)
		atomic.StoreUint64(word64(s.mem, off+slotReserved), 0)
		atomic.StoreUint64(word64(s.mem, off+slotStart), start)
		atomic.StoreUint64(word64(s.mem, off+slotOwner), ownerWord(slotAttached, uint32(gen), pid))
		mp.slot, mp.gen, mp.pid = uint32(i+1), uint32(gen), pid
		mp.headCache.Store(h)
		return nil
	}
	return fmt.Errorf("%w (%d slots)", ErrNoSlot, s.m.geo.Producers)
}

// detach frees the slot. Reservations still outstanding on this handle
// must have been committed or aborted: the consumer would otherwise
// skip them once it sees the slot re-used.
func (mp *mpscProducer) detach(s *shared) error {
	if mp.detached.Swap(true) {
		return nil
	}
	off := s.slotOff(int(mp.slot - 1))
	mine := ownerWord(slotAttached, mp.gen, mp.pid)
	atomic.StoreUint64(word64(s.mem, off+slotIntentPos), 0)
	atomic.CompareAndSwapUint64(word64(s.mem, off+slotOwner), mine, ownerWord(slotFree, mp.gen, 0))
	return nil
}

func (mp *mpscProducer) tryReserve(p *Producer, typ uint32, n int) (Reservation, error) {
	s := &p.s
	m := &s.m
	if mp.detached.Load() || s.isClosed() {
		return Reservation{}, ErrClosed
	}
	if n < 0 || uint64(n) > m.maxP {
		return Reservation{}, fmt.Errorf("reserve %d bytes: %w (max %d)", n, ErrTooLarge, m.maxP)
	}
	rs := recordSize(uint64(n))
	slotOff := s.slotOff(int(mp.slot - 1))
	intentPos := word64(s.mem, slotOff+slotIntentPos)

	// Unlocked on every return below; not deferred, which costs a
	// visible share of a claim.
	mp.claimMu.Lock()
	for {
		t := atomic.LoadUint64(s.tail)
		off := t & m.mask
		need, word := rs, makeWord(stateClaimed, 0, mp.slot, mp.gen, uint64(n))
		if off+rs > m.size {
			// Claim the padding up to the end first, then go round.
			need = m.size - off
			word = makeWord(stateClaimed, flagPad, mp.slot, mp.gen, need-headerSize)
		}
		h := mp.headCache.Load()
		if int64(h-t) > 0 || t+need-h > m.size {
			// The head must be read after the tail for the check to be
			// sound: everything below it has been consumed and zeroed.
			h = atomic.LoadUint64(s.head)
			if int64(h-t) > 0 {
				// Our tail is stale (others claimed and the consumer
				// consumed since), unless the tail has not moved: then
				// the head is past it, which no honest consumer does.
				if atomic.LoadUint64(s.tail) == t {
					mp.claimMu.Unlock()
					return Reservation{}, corrupt("head beyond tail", t, h)
				}
				continue
			}
			if t-h > m.size || h%recordAlign != 0 {
				mp.claimMu.Unlock()
				return Reservation{}, corrupt("head outside [tail-size, tail]", t, h)
			}
			mp.headCache.Store(h)
			if t+need-h > m.size {
				mp.claimMu.Unlock()
				return Reservation{}, ErrFull
			}
		}
		publishWord(intentPos, t|1)
		if !atomic.CompareAndSwapUint64(s.tail, t, t+need) {
			continue
		}
		if testHookClaimWindow != nil {
			testHookClaimWindow()
		}
		// A CAS, not a store: if the consumer took this claim for a dead
		// producer's (it can, while the word is still 0, if a producer
		// that lost the race for this position died naming it too and
		// Liveness misjudged us), the claim is not ours to fill.
		if !atomic.CompareAndSwapUint64(word64(s.data, int(off)), 0, word) {
			continue
		}
		if word&flagPad != 0 {
			p.writeHeader(t, word&^(0xF<<stateShift)|stateCommitted<<stateShift, 0, nil)
			s.wake(s.consWait)
			continue
		}
		mp.claimMu.Unlock()
		return Reservation{p: p, pos: t, word: word, typ: typ}, nil
	}
}

// commit replaces the claim word by the committed one. The CAS fails only
// if the consumer declared this producer dead and skipped the claim.
func (mp *mpscProducer) commit(p *Producer, r Reservation) error {
	return mp.finish(p, r, r.word&^(0xF<<stateShift)|stateCommitted<<stateShift, r.Bytes())
}

// abort turns the claim into a record the consumer skips.
func (mp *mpscProducer) abort(p *Producer, r Reservation) error {
	return mp.finish(p, r, r.word&^(0xF<<stateShift)|stateCommitted<<stateShift|flagSkip, nil)
}

func (mp *mpscProducer) finish(p *Producer, r Reservation, word uint64, payload []byte) error {
	s := &p.s
	off := r.pos & s.m.mask
	wp := word64(s.data, int(off))
	// Look before writing type and checksum: if the claim is no longer
	// ours, those bytes may belong to someone else by now.
	if atomic.LoadUint64(wp) != r.word {
		return ErrAbandoned
	}
	if word&flagSkip == 0 {
		sum := headerSum(s.m.seed, r.pos, word, r.typ, payloadHash(&s.m, payload))
		binary.LittleEndian.PutUint32(s.data[off+8:], r.typ)
		binary.LittleEndian.PutUint32(s.data[off+12:], sum)
	}
	// The CAS publishes the record (it synchronizes before the consumer's
	// load of the word) and fails only if the consumer skipped the claim.
	if !atomic.CompareAndSwapUint64(wp, r.word, word) {
		return ErrAbandoned
	}
	s.wake(s.consWait)
	return nil
}

// stuckClaim remembers the claim at the consumer's head that is not
// committed, so recovery looks after one claim at a time.
type stuckClaim struct {
	pos   uint64
	valid bool
}

func (sc *stuckClaim) note(pos uint64) { sc.pos, sc.valid = pos, true }

// recoverStuck looks at the claim in flight at head. If its producer is
// dead, the claim becomes a skipped record and the consumer goes on. A
// producer that is alive, however slow, is never skipped.
//
// Why a late commit cannot follow: a producer is declared dead only when
// the operating system reports its process gone (or its pid reused by a
// process with another start time); a dead process stores nothing more.
// The claim word is replaced by CAS, so a commit racing it in a process
// misjudged by a custom Liveness fails with ErrAbandoned instead of
// publishing.
func (c *Consumer) recoverStuck() error {
	if !c.stuck.valid || c.stuck.pos != c.head || c.peeked {
		return nil
	}
	s := &c.s
	m := &s.m
	h := c.head
	off := h & m.mask
	wp := word64(s.data, int(off))
	w := atomic.LoadUint64(wp)
	switch {
	case wordState(w) == stateClaimed:
		slot := wordSlot(w)
		if slot == 0 || int(slot) > m.geo.Producers {
			return c.fail(corrupt("claim slot", h, w))
		}
		ow, o := s.readOwner(int(slot - 1))
		if ow>>60 != slotFree && uint32(ow>>32)&genMask == wordGen(w) && s.alive(o) {
			return nil
		}
		n := wordLen(w)
		if w&flagPad == 0 && n > m.maxP {
			return c.fail(corrupt("claim length", h, w))
		}
		atomic.CompareAndSwapUint64(wp, w, w&^(0xF<<stateShift)|stateCommitted<<stateShift|flagSkip)
		return nil
	case w == 0:
		// Between tail CAS and claim store: find the slot whose intent is
		// this position.
		t := atomic.LoadUint64(s.tail)
		if t == h {
			return nil
		}
		// A producer that lost the tail CAS for this position and died
		// before writing a new intent also names it; so wait while any
		// owner naming it lives, and skip only when all are dead.
		named := false
		for i := 0; i < m.geo.Producers; i++ {
			if atomic.LoadUint64(word64(s.mem, s.slotOff(i)+slotIntentPos)) != h|1 {
				continue
			}
			ow, o := s.readOwner(i)
			if ow>>60 != slotFree && s.alive(o) {
				return nil
			}
			named = true
		}
		if !named {
			return nil
		}
		need := c.claimEnd(h, t) - h
		flags := uint64(flagSkip)
		if off+need == m.size && need-headerSize > m.maxP {
			flags |= flagPad
		}
		atomic.CompareAndSwapUint64(wp, 0, makeWord(stateCommitted, flags, 0, 0, need-headerSize))
	}
	return nil
}

// claimEnd finds where the claim at h, still in its intent window, ends:
// at the next claim boundary, which is the first position after h that
// is the tail, the end of the data area, a non-zero word (a header:
// nothing of this claim has been written, and consumed bytes are zeroed)
// or a position some intent names (a later claim in its own window). The
// tail never stands inside a claim, so the scan stops at the true end;
// it runs only for a dead producer's claim.
func (c *Consumer) claimEnd(h, tail uint64) uint64 {
	s := &c.s
	m := &s.m
	for e := h + recordAlign; ; e += recordAlign {
		if e == tail || e&m.mask == 0 || atomic.LoadUint64(word64(s.data, int(e&m.mask))) != 0 {
			return e
		}
		for i := 0; i < m.geo.Producers; i++ {
			if atomic.LoadUint64(word64(s.mem, s.slotOff(i)+slotIntentPos)) == e|1 {
				return e
			}
		}
	}
}
