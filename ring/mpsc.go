package ring

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
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
//	+16 14 x u64 intent lanes: a claim's position | 1 (positions are
//	        16-aligned, so bit 0 marks the word valid; 0: lane free)
//
// A producer takes a free lane by CAS from 0 to the position it is about
// to claim, CASes the tail, stores a claimed header word naming its slot
// and generation, and frees the lane. Every claim in the ring is
// therefore attributable: by its header once claimed, by a lane in
// between. The lane CAS is also what keeps the goroutines sharing a handle
// apart: each claim in its window holds its own lane, so no lock is
// needed, and a lane a hostile peer scribbled on only costs a lane.
const (
	slotOwner = 0
	slotStart = 8
	slotLanes = 16
	numLanes  = (slotSize - slotLanes) / 8

	slotFree      = 0
	slotAttaching = 1
	slotAttached  = 2

	// recoverySlice bounds each sleep of a consumer blocked on a claim
	// in flight: a dead producer never wakes it, so it looks again.
	recoverySlice = 10 * time.Millisecond
)

// laneWaitLimit bounds how long a claim waits for a free lane. Lanes are
// held for a few dozen instructions, so every lane of a slot busy for that
// long means they hold garbage (ErrCorrupt), not 14 claims in flight.
// Tests shorten it.
var laneWaitLimit = time.Second

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
	detached  atomic.Bool
}

// testHookClaimWindow, set only by tests, runs between the tail CAS and
// the claim store: a test parks a producer process there to kill it.
var testHookClaimWindow func()

func (s *shared) slotOff(i int) int { return offSlotTable + i*slotSize }

// lane returns intent lane l of slot i.
func (s *shared) lane(i, l int) *uint64 { return word64(s.mem, s.slotOff(i)+slotLanes+8*l) }

// namesPos reports whether a lane of slot i names position pos.
func (s *shared) namesPos(i int, pos uint64) bool {
	for l := range numLanes {
		if atomic.LoadUint64(s.lane(i, l)) == pos|1 {
			return true
		}
	}
	return false
}

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

// laneAhead reports whether a lane of slot i names a position at or
// past h.
func (s *shared) laneAhead(i int, h uint64) bool {
	for l := range numLanes {
		if ip := atomic.LoadUint64(s.lane(i, l)); ip != 0 && int64(ip&^1-h) >= 0 {
			return true
		}
	}
	return false
}

func (s *shared) clearLanes(i int) {
	for l := range numLanes {
		atomic.StoreUint64(s.lane(i, l), 0)
	}
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
			if s.laneAhead(i, h) {
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
		s.clearLanes(i)
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
// skip them once it sees the slot re-used. Goroutines of this handle
// asleep in Reserve must end with ErrClosed, so detach wakes the ring's
// sleeping producers; those of other handles re-check and sleep again.
func (mp *mpscProducer) detach(s *shared) error {
	if mp.detached.Swap(true) {
		return nil
	}
	off := s.slotOff(int(mp.slot - 1))
	mine := ownerWord(slotAttached, mp.gen, mp.pid)
	s.clearLanes(int(mp.slot - 1))
	atomic.CompareAndSwapUint64(word64(s.mem, off+slotOwner), mine, ownerWord(slotFree, mp.gen, 0))
	s.wake(s.prodWait)
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
	var lane *uint64 // held from its CAS until the claim word is stored
	var waited time.Time
	fail := func(err error) (Reservation, error) {
		if lane != nil {
			atomic.StoreUint64(lane, 0)
		}
		return Reservation{}, err
	}
	for {
		t := atomic.LoadUint64(s.tail)
		if t%recordAlign != 0 {
			// Every claim is a multiple of 16 bytes: a misaligned tail
			// is a scribble, and a claim there could reach past the end.
			return fail(corrupt("tail misaligned", t, 0))
		}
		off := t & m.mask
		need, word := rs, makeWord(stateClaimed, 0, mp.slot, mp.gen, uint64(n))
		if off+rs > m.size {
			// Claim the padding up to the end first, then go round.
			need = m.size - off
			word = makeWord(stateClaimed, flagPad, mp.slot, mp.gen, need-headerSize)
		} else if sl := slackedSize(off, rs); sl != rs && sl-headerSize <= m.maxP {
			// Claim up to the next cache line, so that the next claim,
			// likely another producer's, starts on a line of its own:
			// producers writing records that share a line pulled it
			// between them. Not when the claim could then no longer be
			// skipped as one record (recovery from a dead producer).
			need = sl
			word |= flagSlack
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
					return fail(corrupt("head beyond tail", t, h))
				}
				continue
			}
			if t-h > m.size || h%recordAlign != 0 {
				return fail(corrupt("head outside [tail-size, tail]", t, h))
			}
			mp.headCache.Store(h)
			if t+need-h > m.size {
				return fail(ErrFull)
			}
		}
		// The intent (t|1 in our lane) must be visible before the tail
		// CAS: taking a lane by CAS does both, and so does publishWord
		// for a lane already held.
		if lane == nil {
			if lane = mp.takeLane(s, t|1); lane == nil {
				if waited.IsZero() {
					waited = time.Now()
				} else if time.Since(waited) > laneWaitLimit {
					return fail(corrupt("every intent lane of the slot busy", uint64(mp.slot), 0))
				}
				runtime.Gosched()
				continue
			}
		} else {
			publishWord(lane, t|1)
		}
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
		// The claim word names us now: the lane is free again.
		atomic.StoreUint64(lane, 0)
		return Reservation{p: p, pos: t, word: word, typ: typ}, nil
	}
}

// takeLane takes a free intent lane of our slot for intent v, or returns
// nil if none is free.
func (mp *mpscProducer) takeLane(s *shared, v uint64) *uint64 {
	for l := range numLanes {
		w := s.lane(int(mp.slot-1), l)
		if atomic.LoadUint64(w) == 0 && atomic.CompareAndSwapUint64(w, 0, v) {
			return w
		}
	}
	return nil
}

// commit replaces the claim word by the committed one, of n payload
// bytes (n <= the claim's). The CAS fails only if the consumer declared
// this producer dead and skipped the claim.
//
// A shorter record than claimed leaves the claim's extent unchanged (the
// tail is long past it): the record keeps the slack flag if slack still
// reaches the claim's end, and otherwise drops it and the rest of the
// claim becomes a skip record of the same slot and generation, whose word
// is stored before the CAS that publishes the record, so that the
// consumer, which reaches it only after the record, finds it committed.
func (mp *mpscProducer) commit(p *Producer, r Reservation, n uint64) error {
	m := &p.s.m
	off := r.pos & m.mask
	word := r.word&^(0xF<<stateShift|lenMask) | stateCommitted<<stateShift | n
	var rest, skipWord uint64
	if claimed := wordLen(r.word); n != claimed {
		end := off + recordSize(claimed)
		if r.word&flagSlack != 0 {
			end = off + slackedSize(off, recordSize(claimed))
		}
		rs := recordSize(n)
		if r.word&flagSlack == 0 || off+slackedSize(off, rs) != end {
			word &^= flagSlack
			if off+rs != end {
				rest = off + rs
				skipWord = makeWord(stateCommitted, flagSkip, mp.slot, mp.gen, end-rest-headerSize)
			}
		}
	}
	return mp.finish(p, r, word, p.s.data[off+headerSize:off+headerSize+n], rest, skipWord)
}

// abort turns the claim into a record the consumer skips.
func (mp *mpscProducer) abort(p *Producer, r Reservation) error {
	return mp.finish(p, r, r.word&^(0xF<<stateShift)|stateCommitted<<stateShift|flagSkip, nil, 0, 0)
}

// finish publishes the claim r as word, after storing skipWord at data
// offset rest when a shortened record leaves the rest of the claim.
func (mp *mpscProducer) finish(p *Producer, r Reservation, word uint64, payload []byte, rest, skipWord uint64) error {
	s := &p.s
	off := r.pos & s.m.mask
	wp := word64(s.data, int(off))
	// Look before writing type, checksum or a skip word: if the claim is
	// no longer ours, those bytes may belong to someone else by now.
	if atomic.LoadUint64(wp) != r.word {
		return fmt.Errorf("claim at position %d: %w", r.pos, ErrAbandoned)
	}
	if skipWord != 0 {
		// The consumer reads it only after the CAS below (it stops at
		// the claim until then), which orders this store before.
		atomic.StoreUint64(word64(s.data, int(rest)), skipWord)
	}
	if word&flagSkip == 0 {
		sum := headerSum(s.m.seed, r.pos, word, r.typ, payloadHash(&s.m, payload))
		binary.LittleEndian.PutUint32(s.data[off+8:], r.typ)
		binary.LittleEndian.PutUint32(s.data[off+12:], sum)
	}
	// The CAS publishes the record (it synchronizes before the consumer's
	// load of the word) and fails only if the consumer skipped the claim.
	if !atomic.CompareAndSwapUint64(wp, r.word, word) {
		return fmt.Errorf("claim at position %d: %w", r.pos, ErrAbandoned)
	}
	p.noteWake(s.wake(s.consWait))
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
			if !s.namesPos(i, h) {
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
			if s.namesPos(i, e) {
				return e
			}
		}
	}
}
