package ring

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/ringipc/ringipc/futex"
	"github.com/ringipc/ringipc/internal/prefetch"
)

// BroadcastWriter writes records to a broadcast ring. A ring has one
// writer; it is not safe for concurrent use (serialise Write calls)
// except Arm, Close and the read-only accessors, which any goroutine may
// call at any time.
//
// Write never waits: it overwrites whatever readers have not read. Its
// cost does not depend on the number of readers: readers write nothing
// the writer reads, and a wake-up, when some reader has announced it
// sleeps, is one FUTEX_WAKE for all of them.
type BroadcastWriter struct {
	m    bcMeta
	data []byte

	// Shared words, all on the writer's line; only the writer stores.
	// tail: stored (Swap) after a record's bytes, which it publishes:
	// a reader's load that observes it sees the record.
	// intent: stored (Swap, a full barrier) before any byte below it is
	// overwritten, and only raised: a reader that copied bytes and then
	// finds intent <= their position + DataSize knows none was
	// overwritten meanwhile (the seqlock check).
	// mark: the start of a committed record, stored after its tail when
	// the intent moved, so within a stride and a record of the tail:
	// where a lapped reader resumes.
	// wake: bumped, then FUTEX_WAKEd, to wake sleeping readers (only
	// while armed) and on Close.
	// closed: 1 once Close ran.
	// armed: 1 once some reader announced that it sleeps (Arm), while
	// the wake-ups that follow find sleepers (see wakeArmed). Arm stores
	// it (Swap) then loads tail; Write publishes tail then loads it: a
	// Dekker pair, so one of them sees the other and no wake-up is lost.
	// Readers load it to skip announcing themselves while it is set.
	tail, intent, mark  *uint64
	wake, closed, armed *uint32

	pos    uint64 // tail as the writer knows it
	intPos uint64 // intent as stored
	seq    uint32 // number of the next record, modulo 2^32

	wakes atomic.Uint64
}

// NewBroadcastWriter attaches the writer to the broadcast ring at the
// start of mem, which InitBroadcast laid out. It carries on from the
// tail and the record number it finds, so a writer may take over a ring
// from one that is gone (one writer at a time).
func NewBroadcastWriter(mem []byte) (*BroadcastWriter, error) {
	m, err := readBroadcastMeta(mem)
	if err != nil {
		return nil, fmt.Errorf("attach broadcast writer: %w", err)
	}
	w := &BroadcastWriter{
		m:      m,
		data:   mem[bcDataOff : bcDataOff+int(m.size) : bcDataOff+int(m.size)],
		tail:   word64(mem, bcOffTail),
		intent: word64(mem, bcOffIntent),
		mark:   word64(mem, bcOffMark),
		wake:   word32(mem, bcOffWake),
		closed: word32(mem, bcOffClosed),
		armed:  word32(mem, bcOffArmed),
	}
	w.pos = atomic.LoadUint64(w.tail)
	w.intPos = max(atomic.LoadUint64(w.intent), w.pos)
	if w.pos%recordAlign != 0 {
		return nil, fmt.Errorf("attach broadcast writer: %w", corrupt("tail", w.pos, w.pos))
	}
	// A writer taking over a ring numbers on from the last record, or
	// readers would take the restart for corruption.
	seq, ok := seqAt(&w.m, w.data, w.mark, w.intent, w.pos, w.pos, func() {})
	if !ok {
		return nil, fmt.Errorf("attach broadcast writer: %w", corrupt("records before the tail", w.pos, w.pos))
	}
	w.seq = seq
	return w, nil
}

// MaxPayload returns the largest payload Write accepts.
func (w *BroadcastWriter) MaxPayload() int { return int(w.m.maxP) }

// Tail returns the end of the last committed record (a byte position).
func (w *BroadcastWriter) Tail() uint64 { return atomic.LoadUint64(w.tail) }

// Armed reports whether the next write wakes sleeping readers: some
// reader announced that it sleeps, and the wake-ups since found readers
// asleep.
func (w *BroadcastWriter) Armed() bool { return atomic.LoadUint32(w.armed) != 0 }

// Wakes returns how many times a publish or Arm woke sleeping readers.
func (w *BroadcastWriter) Wakes() uint64 { return w.wakes.Load() }

// Write publishes one record. It never waits; it fails only with
// ErrTooLarge, or ErrClosed after Close.
func (w *BroadcastWriter) Write(typ uint32, p []byte) error {
	if uint64(len(p)) > w.m.maxP {
		return fmt.Errorf("%w: %d bytes, broadcast ring takes at most %d", ErrTooLarge, len(p), w.m.maxP)
	}
	if atomic.LoadUint32(w.closed) != 0 {
		return ErrClosed
	}
	le := binary.LittleEndian
	rs := recordSize(uint64(len(p)))
	pos := w.pos
	off := pos & w.m.mask
	padPos, padLen := pos, uint64(0)
	if off+rs > w.m.size {
		padLen = w.m.size - off
		pos += padLen
		off = 0
	}
	end := pos + rs
	moved := false
	if end > w.intPos {
		// Raise the intent before touching any byte below it. Swap is a
		// full barrier: the stores below cannot pass it.
		w.intPos = end + w.m.stride
		atomic.SwapUint64(w.intent, w.intPos)
		moved = true
	}
	if padLen != 0 {
		h := w.data[padPos&w.m.mask:]
		lw := uint32(padLen-headerSize) | bcPadFlag
		le.PutUint32(h[0:], lw)
		le.PutUint32(h[4:], 0)
		le.PutUint32(h[8:], w.seq)
		le.PutUint32(h[12:], bcSum(w.m.seed, padPos, lw, 0, w.seq, 0))
	}
	// The lines ahead, for writing (see prefetchAhead): two, since a
	// record of 64 bytes and its header span two lines. Without, each
	// publish (a full barrier) waited for this record's lines to come
	// back from the readers' caches: broadcast, 1 subscriber, 10.4-11.1 M
	// msgs/s published; with, 23.4-26.5 M (AMD guest, 3 interleaved
	// invocations; docs/design.md 2.9.3).
	pf := (off + prefetchAhead) & w.m.mask
	prefetch.Write(&w.data[pf])
	prefetch.Write(&w.data[(pf+64)&w.m.mask]) // 64: the smallest line there is
	h := w.data[off : off+rs]
	copy(h[headerSize:], p)
	lw := uint32(len(p))
	le.PutUint32(h[0:], lw)
	le.PutUint32(h[4:], typ)
	le.PutUint32(h[8:], w.seq)
	le.PutUint32(h[12:], bcSum(w.m.seed, pos, lw, typ, w.seq, bcPayloadHash(&w.m, p)))
	w.pos = end
	w.seq++
	// Publish: the record's bytes happen before any load that observes
	// the new tail. Swap, not Store: it is the store half of the Dekker
	// pair with Arm (see publishWord).
	atomic.SwapUint64(w.tail, end)
	if moved {
		atomic.StoreUint64(w.mark, pos)
	}
	if atomic.LoadUint32(w.armed) != 0 {
		w.wakeArmed()
	}
	return nil
}

// Arm is how a reader that is about to sleep, having seen tail seen,
// tells the writer (its announcement reaches the writer's process out of
// band: readers cannot write the ring). The next Write wakes every
// sleeping reader; if the tail has already moved past seen, or the ring
// is closed, Arm wakes them at once. Safe to call concurrently with
// Write.
func (w *BroadcastWriter) Arm(seen uint64) {
	atomic.SwapUint32(w.armed, 1) // a full barrier in every build (see publishWord)
	if atomic.LoadUint64(w.tail) != seen || atomic.LoadUint32(w.closed) != 0 {
		w.wakeArmed()
	}
}

// wakeArmed wakes the readers that sleep after an announcement. armed
// stays set while wake-ups find sleepers: a reader back from one finds
// it set and sleeps again without announcing itself (BroadcastReader.Wait),
// so a sparse stream costs one FUTEX_WAKE per record and no announcement
// round trip. A wake-up that finds nobody asleep (the readers are
// reading) clears armed, then moves the wake word and wakes once more:
// a reader that saw armed set before the clear loaded the wake word
// before that, so it does not sleep on it, or is woken (docs/design.md
// §2.9.5 has the argument).
func (w *BroadcastWriter) wakeArmed() {
	w.wakes.Add(1)
	if w.wakeAll() > 0 {
		return
	}
	if atomic.SwapUint32(w.armed, 0) != 0 {
		w.wakeAll()
	}
}

// wakeAll moves the wake word, so that a reader about to FUTEX_WAIT on
// its old value does not sleep, and wakes those already asleep: how many
// it woke (always 0 where futexes are emulated).
func (w *BroadcastWriter) wakeAll() int {
	atomic.AddUint32(w.wake, 1)
	n, _ := bcFutexWake(w.wake, 0) // the address is valid and aligned by construction
	return n
}

// bcFutexWake is futex.Wake; a test replaces it to choose how many
// sleepers a wake-up finds.
var bcFutexWake = futex.Wake

// Close ends the stream: readers read what was written, then ErrClosed.
// Safe to call more than once and from any goroutine.
func (w *BroadcastWriter) Close() error {
	if atomic.SwapUint32(w.closed, 1) == 0 {
		w.wakes.Add(1)
		w.wakeAll()
	}
	return nil
}
