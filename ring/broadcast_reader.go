package ring

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/ringipc/ringipc/futex"
	"github.com/ringipc/ringipc/internal/load"
)

// BroadcastReader reads a broadcast ring. It never writes the ring's
// memory, which may be mapped read-only: its position lives in the
// reader's own memory. A reader must be used by one goroutine at a time,
// except Interrupt.
//
// A reader that falls more than a lap behind gets an *OverrunError
// (errors.Is ErrOverrun) from the call that notices, saying what it
// lost; it has then moved to a recent record, and the next call returns
// that record. It never returns a record the writer overwrote while it
// was being read: every read is confirmed afterwards against the
// writer's intent (docs/design.md §2.9.3).
type BroadcastReader struct {
	m    bcMeta
	data []byte

	tail, intent, mark  *uint64
	wake, closed, armed *uint32

	pos       uint64 // next position to read
	seq       uint32 // number of the record at pos, if seqKnown
	seqKnown  bool
	tailCache uint64

	peeked   bool
	cur      Record
	next     uint64 // pos after the peeked record
	curSeq   uint32
	fromSnap bool // cur lies in snap: confirmed when it was copied

	// snap is the reader's own copy of the ring's bytes at positions
	// [snapPos, snapPos+len(snap)), confirmed against the intent after
	// the copy: TryReadInto copies a batch of records at once and reads
	// them from here (see refill).
	snap    []byte
	snapPos uint64

	err     error // sticky: once corrupt, always corrupt
	fence   uint32
	stats   BroadcastReaderStats
	opts    BroadcastReaderOptions
	policy  WaitPolicy
	budget  time.Duration
	adapt   adaptive
	readyFn func() bool
	// busySlices: the default wait options and an Announce, so a busy
	// machine makes Wait sleep in slices (BroadcastBusySlice), while
	// slices pay: slices remembers whether they brought records, as
	// WaitAdaptive remembers whether polls did.
	busySlices bool
	slices     adaptive
	dry        int           // empty slices in a row, up to drySlices
	slice      time.Duration // the next slice's length (nextSlice); 0: BroadcastBusySlice
	sliceTook  time.Duration // how long the last slice lasted, wake-up included; 0: its length
	sliceWord  uint32        // what sleepSlice waits on: always 0, nobody wakes it
}

// BroadcastReaderOptions tune a reader. The zero value sleeps at once
// when the ring is empty (see Wait) and, with no Announce, sleeps in
// short slices.
type BroadcastReaderOptions struct {
	// Wait and Spin choose whether a waiting reader polls before it
	// sleeps, as in Options, except that the zero values mean WaitSleep
	// here, not WaitAdaptive: a broadcast writer never waits for its
	// readers, so a reader polling the tail gains it nothing but steals
	// the tail's cache line from every record the writer publishes. One
	// polling subscriber cut the writer from ~21 M to ~6 M msgs/s and
	// itself from ~18 M to ~5 M (ringbench -scenario broadcast,
	// docs/design.md §2.9); a sleeping one is woken once per batch and
	// reads lines the writer has finished with. WaitAdaptive or
	// WaitSpin, asked for explicitly, poll as elsewhere.
	//
	// With the zero values, on a busy machine (more runnable threads
	// than CPUs) a reader sleeps a slice of BroadcastBusySlice at a time
	// instead of announcing itself, and reads what came meanwhile in one
	// batch, as long as its slices bring records (a dense stream);
	// WaitSleep asked for explicitly always announces (see Wait).
	Wait WaitPolicy
	Spin time.Duration
	// Announce tells the writer, out of band, that the reader is about
	// to sleep having seen tail seen; the writer's process calls
	// BroadcastWriter.Arm(seen). The reader then sleeps in FUTEX_WAIT
	// until woken. Wait does not call it while the writer is armed
	// already (an earlier announcement whose wake-ups still find
	// sleepers): the writer's next write wakes every sleeper. With
	// Announce nil (nobody to tell), it sleeps in slices of
	// BroadcastPollSlice and looks again.
	Announce func(seen uint64) error
}

// BroadcastPollSlice is how long a reader without Announce sleeps before
// it looks at the ring again.
const BroadcastPollSlice = time.Millisecond

// BroadcastBusySlice is how long a reader with the default wait options
// sleeps, at first, before it looks again when the machine is busy,
// rather than announce itself and be woken; slices that find plenty
// grow, up to 4 ms, while the writer's rate leaves them well short of a
// lap (nextSlice). Waking a reader costs its announcement
// (a socket token in ipc), the writer's process reading it and a
// FUTEX_WAKE, and the woken reader then finds a handful of records and
// sleeps again: with more readers than CPUs, that churn took most of the
// CPU. A reader sleeping in slices reads a slice's worth of records at a
// time, later by at most the slice; a slice is short enough that a
// writer filling a 1 MiB ring at full speed does not lap it.
// docs/design.md §2.9.5 has the measurements that chose it.
//
// Slices pay only while records come faster than they do. A reader
// keeps a slice credit (the adaptive polling policy's rule, WaitAdaptive,
// applied to slices; sliceOutcome has the details): a wake-up that finds
// a batch's worth of records adds one, up to 4, one that finds less
// halves it, and empty slices halve it only after 16 in a row. Without
// credit the reader announces itself and is woken per record, and one
// such wait in 16 tries a slice again. A sparse stream polled by
// slices cost each subscriber several wake-ups per message for nothing,
// and kept the machine looking busy, so the slices went on (ringbench
// broadcast at 1,000 messages/s to 8 subscribers: 0.72-0.77 ms of CPU
// per message, against 0.43-0.46 ms for Unix sockets).
const BroadcastBusySlice = 200 * time.Microsecond

// broadcastBusy is load.Busy; tests replace it.
var broadcastBusy = load.Busy

// BroadcastReaderStats counts what a reader lost to overruns.
type BroadcastReaderStats struct {
	Overruns    uint64 // times the reader was lapped
	LostBytes   uint64 // ring bytes it skipped
	LostRecords uint64 // records it skipped, where known
}

// NewBroadcastReader attaches a reader to the broadcast ring at the start
// of mem. It starts at the current tail: it reads the records written
// from now on.
func NewBroadcastReader(mem []byte, opts *BroadcastReaderOptions) (*BroadcastReader, error) {
	m, err := readBroadcastMeta(mem)
	if err != nil {
		return nil, fmt.Errorf("attach broadcast reader: %w", err)
	}
	r := &BroadcastReader{
		m:      m,
		data:   mem[bcDataOff : bcDataOff+int(m.size) : bcDataOff+int(m.size)],
		tail:   word64(mem, bcOffTail),
		intent: word64(mem, bcOffIntent),
		mark:   word64(mem, bcOffMark),
		wake:   word32(mem, bcOffWake),
		closed: word32(mem, bcOffClosed),
		armed:  word32(mem, bcOffArmed),
	}
	if opts != nil {
		r.opts = *opts
	}
	refreshCPUs()
	r.policy, r.budget = resolveBroadcastWait(r.opts.Wait, r.opts.Spin)
	r.busySlices = r.opts.Wait == WaitDefault && r.opts.Spin == 0 && r.opts.Announce != nil
	r.adapt.credit.Store(creditMax)
	r.slices.credit.Store(creditMax)
	r.readyFn = r.ready
	t := atomic.LoadUint64(r.tail)
	if t%recordAlign != 0 {
		return nil, fmt.Errorf("attach broadcast reader: %w", corrupt("tail", t, t))
	}
	r.pos, r.tailCache = t, t
	r.seq, r.seqKnown = seqAt(&r.m, r.data, r.mark, r.intent, t, t, r.loadFence)
	return r, nil
}

// NewBroadcastReaderAt is NewBroadcastReader starting at position pos, a
// record boundary at or before the tail (within a lap of it), such as the
// tail as the writer's process saw it when it accepted this reader: the
// reader then gets every record written since, unless it is lapped first.
// A position that cannot be one is ErrCorrupt.
func NewBroadcastReaderAt(mem []byte, pos uint64, opts *BroadcastReaderOptions) (*BroadcastReader, error) {
	r, err := NewBroadcastReader(mem, opts)
	if err != nil {
		return nil, err
	}
	t := r.pos
	if pos%recordAlign != 0 || pos > t || t-pos > r.m.size {
		return nil, fmt.Errorf("attach broadcast reader: %w", corrupt("start position", t, pos))
	}
	if pos != t {
		r.pos, r.tailCache = pos, pos
		r.seq, r.seqKnown = seqAt(&r.m, r.data, r.mark, r.intent, pos, t, r.loadFence)
	}
	return r, nil
}

// seqAt finds the number of the record at position target (the next one
// the writer writes, if target is the tail t), so that a reader lapped
// before its first record can still count what it lost: it walks the
// records from the mark (at most a stride and two records before the
// tail) to target. It gives up (the count stays unknown) if target is
// before the mark, on anything that does not verify, or if the writer
// laps the walk.
func seqAt(m *bcMeta, data []byte, mark, intent *uint64, target, t uint64, fence func()) (uint32, bool) {
	if t == 0 {
		return 0, true // nothing written yet: the first record is number 0
	}
	mk := atomic.LoadUint64(mark)
	if mk%recordAlign != 0 || mk > target || mk >= t || t-mk > m.size || target > t {
		return 0, false
	}
	le := binary.LittleEndian
	var seq uint32
	for p := mk; ; {
		if p == target && p == t {
			break // seq: one past the last record walked
		}
		off := p & m.mask
		var hdr [headerSize]byte
		copy(hdr[:], data[off:off+headerSize])
		lw, typ, hs, sum := le.Uint32(hdr[0:]), le.Uint32(hdr[4:]), le.Uint32(hdr[8:]), le.Uint32(hdr[12:])
		n := uint64(lw & bcLenMask)
		next := p + m.size - off // padding
		if lw&bcPadFlag != 0 {
			if n != m.size-off-headerSize || sum != bcSum(m.seed, p, lw, typ, hs, 0) {
				return 0, false
			}
		} else {
			rs := recordSize(n)
			if n > m.maxP || off+rs > m.size || p+rs > t {
				return 0, false
			}
			body := data[off+headerSize : off+headerSize+n]
			if sum != bcSum(m.seed, p, lw, typ, hs, bcPayloadHash(m, body)) {
				return 0, false
			}
			next = p + rs
		}
		if p == target {
			seq = hs // padding carries the next record's number too
			break
		}
		seq = hs
		if lw&bcPadFlag == 0 {
			seq = hs + 1
		}
		if p = next; p > target {
			return 0, false // target is not a record boundary
		}
	}
	fence()
	if atomic.LoadUint64(intent) > mk+m.size {
		return 0, false
	}
	return seq, true
}

// Position returns the reader's position: the byte position of the next
// record it reads.
func (r *BroadcastReader) Position() uint64 { return r.pos }

// Lag returns how many bytes the writer has committed that the reader
// has not read yet (more than the data size once it is lapped).
func (r *BroadcastReader) Lag() uint64 { return atomic.LoadUint64(r.tail) - r.pos }

// WriterClosed reports whether the writer has closed the ring (records
// may still be waiting to be read).
func (r *BroadcastReader) WriterClosed() bool { return atomic.LoadUint32(r.closed) != 0 }

// Stats returns what the reader has lost to overruns so far.
func (r *BroadcastReader) Stats() BroadcastReaderStats { return r.stats }

// TryPeek returns the next record without copying it and without
// waiting: ErrEmpty if there is none now, ErrClosed once the writer has
// closed the ring and the reader has read everything. Data points into
// the ring (or into the batch TryReadInto copied last, if the record is
// in it), and the writer may overwrite it at any time once the reader
// is lapped: use it, then call Release, and trust what you did with it
// only if Release returns nil (on an *OverrunError, discard it).
func (r *BroadcastReader) TryPeek() (Record, error) {
	return r.peek()
}

// Release confirms that the peeked record was not overwritten while it
// was in use and moves past it. Otherwise it returns an *OverrunError
// and the reader has moved on to a recent record.
func (r *BroadcastReader) Release() error {
	if !r.peeked {
		return fmt.Errorf("%w: release without a peeked record", ErrPending)
	}
	r.peeked = false
	if !r.fromSnap {
		r.loadFence()
		if atomic.LoadUint64(r.intent) > r.pos+r.m.size {
			return r.overrun()
		}
	}
	r.pos, r.seq, r.seqKnown = r.next, r.curSeq+1, true
	return nil
}

// TryReadInto copies the next record's payload into dst (growing it if
// needed) and returns the record, whose Data is that copy, without
// waiting. Errors as TryPeek's, and an *OverrunError if the record was
// overwritten while it was copied (the copy is then not returned).
//
// It copies the committed records in batches of up to 4 KiB into the
// reader's own memory, each batch confirmed once (see refill), and reads
// small records from there: records of a confirmed batch are returned
// even if the writer laps the reader afterwards, and the next batch
// reports the overrun.
func (r *BroadcastReader) TryReadInto(dst []byte) (Record, error) {
	if !r.peeked && r.pos-r.snapPos >= uint64(len(r.snap)) {
		if err := r.refill(); err != nil {
			return Record{}, err
		}
	}
	rec, err := r.peek()
	if err != nil {
		return Record{}, err
	}
	dst = append(dst[:0], rec.Data...)
	if err := r.Release(); err != nil {
		return Record{}, err
	}
	return Record{Type: rec.Type, Data: dst}, nil
}

// ReadInto is TryReadInto that waits for a record (see Wait).
func (r *BroadcastReader) ReadInto(ctx context.Context, dst []byte) (Record, error) {
	for {
		rec, err := r.TryReadInto(dst)
		if err != ErrEmpty {
			return rec, err
		}
		if err := r.Wait(ctx); err != nil {
			return Record{}, err
		}
	}
}

func (r *BroadcastReader) ready() bool {
	return atomic.LoadUint64(r.tail) != r.pos || atomic.LoadUint32(r.closed) != 0
}

// Wait returns once the writer has committed past the reader's position
// or closed the ring, or ctx ends (its error), or Announce fails (its
// error), or the reader was woken for another reason (Interrupt, or a
// wake-up of other readers): it may return with nothing new, so look
// again, as ReadInto does. It polls as the options say, then announces
// itself (unless the writer is still armed) and sleeps; with the default
// options on a busy machine, while slices bring records, it sleeps one
// slice of BroadcastBusySlice instead, unannounced.
func (r *BroadcastReader) Wait(ctx context.Context) error {
	if r.ready() {
		return nil
	}
	if r.policy != WaitSleep {
		budget := r.budget
		if r.policy == WaitAdaptive {
			budget = r.adapt.shouldSpin(budget)
		}
		if budget > 0 && takeSpinner() {
			hit := pollFor(budget, ctx.Done(), r.readyFn)
			spinners.Add(-1)
			if r.policy == WaitAdaptive {
				r.adapt.spun(hit)
			}
			if hit {
				return nil
			}
		}
	}
	if r.busySlices && broadcastBusy() && r.slices.shouldSpin(BroadcastBusySlice) != 0 {
		// One slice, unannounced, and back to the caller, who looks
		// again: Interrupt and the caller's own checks (a subscription
		// whose connection ended) must not wait for the ring to close,
		// which a dead writer never does.
		if err := ctx.Err(); err != nil {
			return err
		}
		if r.ready() {
			return nil
		}
		start := time.Now()
		err := r.sleepSlice(ctx)
		r.sliceTook = time.Since(start)
		r.sliceOutcome()
		return err
	}
	r.slice = 0 // no slice this time: the next run of slices starts short
	if err := ctx.Err(); err != nil {
		return err
	}
	// Load the wake word before the last look: a wake-up after that
	// look changes the word, and FUTEX_WAIT then returns at once.
	v := atomic.LoadUint32(r.wake)
	if r.ready() {
		return nil
	}
	timeout := BroadcastPollSlice
	if r.opts.Announce != nil {
		// While the writer is armed (an earlier announcement, its
		// wake-ups still finding sleepers), its next write wakes this
		// reader too: no need to announce again.
		if atomic.LoadUint32(r.armed) == 0 {
			if err := r.opts.Announce(r.pos); err != nil {
				return err
			}
		}
		timeout = futex.Forever
	}
	if err := r.sleep(ctx, v, timeout); err != nil {
		return err
	}
	// Back to the caller even with nothing new (Interrupt, or a wake-up
	// for others): it looks again, and may have more to look at (a
	// subscription whose connection ended, which an armed writer's
	// reader would otherwise never hear of, as it announces nothing).
	if r.busySlices {
		// Woken to a batch's worth: the stream is dense again. (One
		// load of the tail, a hint only: peek validates it.)
		if avail := atomic.LoadUint64(r.tail) - r.pos; avail != 0 {
			r.slices.spun(avail >= richBytes)
		}
	}
	return nil
}

// sliceOutcome records what a busy-machine slice brought (see
// BroadcastBusySlice): a batch's worth or more adds to the slice credit,
// less than that halves it (a sparse stream: one wake-up per record or
// two would do), and nothing at all halves it only after drySlices such
// slices in a row. A slice finds nothing either because the writer is
// idle or because it has not had a CPU (dozens of readers on few CPUs);
// one short stretch of the second must not turn the readers to
// announcing, whose wake-ups then cost the writer's process more than
// the slices did (ringbench broadcast, 32 subscribers: 0.5-0.75 M
// messages/s each against 0.8-1.0 M).
func (r *BroadcastReader) sliceOutcome() {
	avail := atomic.LoadUint64(r.tail) - r.pos
	r.slice = nextSlice(r.slice, r.sliceTook, avail, uint64(len(r.data)))
	switch {
	case avail >= richBytes:
		r.dry = 0
		r.slices.spun(true)
	case avail > 0:
		r.dry = 0
		r.slices.spun(false)
	default:
		if r.dry++; r.dry >= drySlices {
			r.dry = 0
			r.slices.spun(false)
		}
	}
}

// nextSlice is the length of the slice after one of length cur (0:
// BroadcastBusySlice) that lasted took (0: cur), wake-up included, and
// found avail bytes in a ring of lap bytes. Each wake-up costs the same
// whatever it finds, so while a slice finds plenty (4 batches or more)
// the next is twice as long, up to busySliceMax, as long as the writer,
// at the rate this slice saw, would fill at most a quarter of the ring
// in it; a slice that would take more than a quarter at that rate is
// followed by one half as long, down to BroadcastBusySlice. The rate is
// over the time the slice really took: with dozens of readers on few
// CPUs a reader wakes late for want of a CPU, which says nothing about
// the writer's speed, and shorter slices, more wake-ups, would make the
// CPUs scarcer still. A slice that finds little keeps its length: there
// the writer had no CPU (32 subscribers on 2 CPUs: 0.11-0.32 M msgs/s
// each when such a slice halved the next, 0.44-0.52 M with 1 ms
// slices). A reader whose slices stop paying (sliceOutcome) announces
// itself again and starts over at BroadcastBusySlice. avail comes from
// the writer's tail, which a hostile writer may make anything: the
// slice stays within its bounds.
func nextSlice(cur, took time.Duration, avail, lap uint64) time.Duration {
	cur = max(cur, BroadcastBusySlice)
	if took <= 0 {
		took = cur
	}
	rate := float64(avail) / float64(took) // bytes per ns
	quarter := float64(lap / 4)
	switch {
	case rate*float64(cur) > quarter:
		return max(cur/2, BroadcastBusySlice)
	case avail >= 4*richBytes && rate*float64(2*cur) <= quarter:
		return min(2*cur, busySliceMax)
	}
	return cur
}

// busySliceMax is the longest busy-machine slice. On the AMD guest,
// where a context switch costs tens of µs, fixed slices of 1 ms instead
// of 200 µs took 8 saturated subscribers from 1.94-2.14 M to 2.86-3.00 M
// msgs/s each and 32 from 0.10-0.14 M to 0.54-0.60 M in the machine's
// slower phase, but in its quicker one, with the writer at 15 M msgs/s,
// it lapped them (8: 1.98 M each against 2.85 M), as it did on the Intel
// guest (§2.9.5): hence slices that grow only while the rate allows.
// With ipc's 8 MiB topic rings the rate allows more than 1 ms; a 4 ms
// bound, 3 interleaved pairs there: 8 subscribers 5.6-5.8 M msgs/s each,
// the slowest 5.0-5.6 M, against 5.2-5.6 M and 4.8-5.2 M with 1 ms; 32
// subscribers 0.6-1.2 M against 0.7-0.9 M; 1 subscriber alike.
const busySliceMax = 4 * time.Millisecond

// richBytes is what a wake-up must find for slices to pay: a batch
// (snapSize), some 50 records of 64 bytes. drySlices is how many empty
// slices in a row count as one that brought too little (3.2 ms).
const (
	richBytes = snapSize
	drySlices = 16
)

// sleepSlice sleeps for BroadcastBusySlice, or until ctx's deadline if
// that is sooner. It does not watch ctx's cancellation, which the
// caller's next Wait sees, a slice later at most: watching it costs
// allocations per sleep (see sleep), and a busy machine sleeps thousands
// of slices a second. It sleeps in FUTEX_WAIT on a word of the reader's
// own, not on the ring's wake word: a writer's wake-up is for readers
// that announced themselves, and one that found slice sleepers there
// would take them for such and stay armed (wakeArmed), paying a
// FUTEX_WAKE per record that only cut the slices short (ringbench
// broadcast, 8 subscribers: 3.1-4.3 M msgs/s each against 4.3-4.5 M).
// It keeps its P (futex.Wait): slices sleep on a machine that is busy by
// definition, and handing the P off for each (futex.WaitHandoff) left
// the slowest of 8 subscribers at 0.98-1.21 M msgs/s against 1.44-1.72 M
// (AMD guest, 4 runs each).
func (r *BroadcastReader) sleepSlice(ctx context.Context) error {
	timeout, err := untilDeadline(ctx, max(r.slice, BroadcastBusySlice))
	if err != nil {
		return err
	}
	if err := futex.Wait(&r.sliceWord, 0, timeout); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return ctx.Err()
}

// untilDeadline shortens timeout (negative: none) to ctx's deadline, or
// says the deadline has passed.
func untilDeadline(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		return timeout, nil
	}
	d := time.Until(dl)
	if d <= 0 {
		return 0, context.DeadlineExceeded
	}
	if timeout < 0 || d < timeout {
		timeout = d
	}
	return timeout, nil
}

// sleep waits in FUTEX_WAIT while the wake word holds v. A cancelled
// ctx wakes it with a FUTEX_WAKE of its own (readers cannot change the
// word; other sleepers wake too, look and sleep again).
func (r *BroadcastReader) sleep(ctx context.Context, v uint32, timeout time.Duration) error {
	timeout, err := untilDeadline(ctx, timeout)
	if err != nil {
		return err
	}
	if !futexWakes && ctx.Done() != nil && (timeout < 0 || timeout > BroadcastPollSlice) {
		timeout = BroadcastPollSlice // nothing can interrupt a polling Wait
	}
	if done := ctx.Done(); done != nil {
		// A FUTEX_WAKE does not change the word, so one that comes
		// before this goroutine is in FUTEX_WAIT is lost: the callback
		// wakes until the sleeper is back. It touches the ring's memory,
		// so it must be over before we return (the caller may unmap the
		// ring right after).
		back := make(chan struct{})
		ran := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			defer close(ran)
			interruptUntil(r, back)
		})
		defer func() {
			close(back)
			if !stop() {
				<-ran
			}
		}()
	}
	if err := futexSleep(r.wake, v, timeout, overloaded()); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return ctx.Err()
}

// interruptRetry is how often interruptUntil wakes a sleeper that has not
// come back: only a sleeper that was about to enter FUTEX_WAIT when woken
// needs a second wake-up.
const interruptRetry = time.Millisecond

// interruptUntil wakes r's sleeper until back is closed.
func interruptUntil(r *BroadcastReader, back <-chan struct{}) {
	t := time.NewTicker(interruptRetry)
	defer t.Stop()
	for {
		r.Interrupt()
		select {
		case <-back:
			return
		case <-t.C:
		}
	}
}

// Interrupt wakes a reader sleeping in Wait (and any other reader of the
// ring sleeping at that moment, which looks and sleeps again), for a
// goroutine that must stop it, such as one that saw the writer's process
// go away. A wake-up that comes just before the reader enters the kernel
// is lost: prefer cancelling the context Wait was given, which wakes the
// reader until it is back. Safe to call from any goroutine.
func (r *BroadcastReader) Interrupt() {
	futex.Wake(r.wake, 0) //nolint:errcheck // the address is valid and aligned by construction
}

// peek finds the next record and checks it (not yet against the intent
// after use: Release does that).
func (r *BroadcastReader) peek() (Record, error) {
	if r.err != nil {
		return Record{}, r.err
	}
	if r.peeked {
		return r.cur, nil
	}
	le := binary.LittleEndian
	padded := false // at most a padding record, then a record
	for {
		if r.pos == r.tailCache {
			t := atomic.LoadUint64(r.tail)
			if t == r.pos {
				if atomic.LoadUint32(r.closed) == 0 {
					return Record{}, ErrEmpty
				}
				// Closed: Close follows the last publish, so a tail
				// loaded after closed is final.
				if t = atomic.LoadUint64(r.tail); t == r.pos {
					return Record{}, ErrClosed
				}
			}
			if t%recordAlign != 0 || t < r.pos {
				return Record{}, r.fail(corrupt("broadcast tail", r.pos, t))
			}
			r.tailCache = t
		}
		if r.tailCache-r.pos > r.m.size {
			return Record{}, r.overrun()
		}
		off := r.pos & r.m.mask
		src, soff, inSnap := r.source(off)
		var hdr [headerSize]byte
		copy(hdr[:], src[soff:soff+headerSize]) // one read; validate the copy
		lw, typ, seq, sum := le.Uint32(hdr[0:]), le.Uint32(hdr[4:]), le.Uint32(hdr[8:]), le.Uint32(hdr[12:])
		n := uint64(lw & bcLenMask)
		if lw&bcPadFlag != 0 {
			if n != r.m.size-off-headerSize || typ != 0 || sum != bcSum(r.m.seed, r.pos, lw, typ, seq, 0) {
				return Record{}, r.suspect("broadcast padding", uint64(lw))
			}
			if padded {
				return Record{}, r.fail(corrupt("broadcast padding after padding", r.pos, 0))
			}
			padded = true
			if !inSnap {
				if err := r.confirm(r.pos); err != nil {
					return Record{}, err
				}
			}
			if r.seqKnown && seq != r.seq {
				return Record{}, r.suspect("broadcast sequence", uint64(seq))
			}
			r.pos += r.m.size - off
			continue
		}
		rs := recordSize(n)
		if n > r.m.maxP || off+rs > r.m.size || r.pos+rs > r.tailCache {
			return Record{}, r.suspect("broadcast record length", n)
		}
		if inSnap && soff+rs > uint64(len(r.snap)) {
			// Longer than the copy: read it in the ring, where the
			// header is read again (the copy may be of an older lap).
			r.snap = r.snap[:0]
			continue
		}
		data := src[soff+headerSize : soff+headerSize+n : soff+headerSize+n]
		if sum != bcSum(r.m.seed, r.pos, lw, typ, seq, bcPayloadHash(&r.m, data)) {
			return Record{}, r.suspect("broadcast checksum", uint64(sum))
		}
		if r.seqKnown && seq != r.seq {
			return Record{}, r.suspect("broadcast sequence", uint64(seq))
		}
		// The header verified; whether the record was overwritten while
		// it was read, Release tells (one load of the intent per record).
		r.cur = Record{Type: typ, Data: data}
		r.next, r.curSeq, r.peeked, r.fromSnap = r.pos+rs, seq, true, inSnap
		return r.cur, nil
	}
}

// source says where the bytes at the reader's position (ring offset off)
// are to be read: in the snapshot, if it holds at least their header,
// else in the ring.
func (r *BroadcastReader) source(off uint64) (src []byte, soff uint64, inSnap bool) {
	if d := r.pos - r.snapPos; r.pos >= r.snapPos && d+headerSize <= uint64(len(r.snap)) {
		return r.snap, d, true
	}
	return r.data, off, false
}

// snapSize is the most ring bytes refill copies at once. Read record by
// record, each header and payload was loaded from lines the writer had
// just written and each Release loaded the intent; one copy streams a
// batch's lines and one load of the intent confirms them all (ringbench
// broadcast, one subscriber: 17.6-19.3 M msgs/s record by record,
// 20.4-23.1 M in batches; docs/design.md §2.9.3). 16 KiB and 64 KiB
// batches measured alike.
const snapSize = 4096

// refill copies the committed records at the reader's position, up to
// snapSize bytes and not past the end of the data area (records never
// wrap), into the snapshot, and confirms the copy: the writer had not
// begun to overwrite any of it when the copy was done. A record longer
// than the copy is read in the ring instead (peek).
func (r *BroadcastReader) refill() error {
	r.snap = r.snap[:0]
	if r.err != nil {
		return r.err
	}
	if r.tailCache-r.pos < snapSize {
		t := atomic.LoadUint64(r.tail)
		if t%recordAlign != 0 || t < r.tailCache {
			return r.fail(corrupt("broadcast tail", r.pos, t))
		}
		r.tailCache = t
	}
	avail := r.tailCache - r.pos
	if avail == 0 || avail > r.m.size {
		return nil // empty, closed or lapped: peek says which
	}
	off := r.pos & r.m.mask
	n := min(avail, snapSize, r.m.size-off)
	if r.snap == nil {
		r.snap = make([]byte, 0, snapSize)
	}
	r.snap = append(r.snap, r.data[off:off+n]...)
	r.snapPos = r.pos
	r.loadFence()
	if atomic.LoadUint64(r.intent) > r.pos+r.m.size {
		return r.overrun()
	}
	return nil
}

// confirm is the seqlock check: the bytes read at pos so far were not
// being overwritten, or the reader is overrun.
func (r *BroadcastReader) confirm(pos uint64) error {
	r.loadFence()
	if atomic.LoadUint64(r.intent) > pos+r.m.size {
		return r.overrun()
	}
	return nil
}

// suspect handles a failed check of what the reader read: if the writer
// has lapped the reader meanwhile, the bytes were being overwritten and
// it is an overrun; otherwise the ring is corrupt.
func (r *BroadcastReader) suspect(what string, got uint64) error {
	if err := r.confirm(r.pos); err != nil {
		return err
	}
	return r.fail(corrupt(what, r.pos, got))
}

func (r *BroadcastReader) fail(err error) error {
	r.err = err
	return err
}

// overrunTries bounds the attempts to resume at the writer's mark while
// the writer keeps lapping the reader; then it resumes at the tail.
const overrunTries = 4

// overrun moves a lapped reader to the writer's mark, a recent record,
// and reports what it skipped.
func (r *BroadcastReader) overrun() error {
	r.peeked = false
	r.snap = r.snap[:0]
	le := binary.LittleEndian
	for range overrunTries {
		m := atomic.LoadUint64(r.mark)
		t := atomic.LoadUint64(r.tail)
		if t%recordAlign != 0 || t < r.pos {
			return r.fail(corrupt("broadcast tail", r.pos, t))
		}
		if m%recordAlign != 0 || m < r.pos || m >= t || t-m > r.m.size {
			continue // an older mark, or a hostile one: try again, then the tail
		}
		off := m & r.m.mask
		var hdr [headerSize]byte
		copy(hdr[:], r.data[off:off+headerSize])
		r.loadFence()
		if atomic.LoadUint64(r.intent) > m+r.m.size {
			continue // the mark's record was overwritten too
		}
		lw, typ, seq, sum := le.Uint32(hdr[0:]), le.Uint32(hdr[4:]), le.Uint32(hdr[8:]), le.Uint32(hdr[12:])
		n := uint64(lw)
		if lw&bcPadFlag != 0 || n > r.m.maxP || off+recordSize(n) > r.m.size || m+recordSize(n) > t {
			return r.fail(corrupt("broadcast mark record", m, n))
		}
		// With payload checksums the header cannot be checked without
		// the payload; reading the record checks both (and that its
		// sequence number is the one taken here).
		if r.m.flags&flagPayloadSum == 0 && sum != bcSum(r.m.seed, m, lw, typ, seq, 0) {
			return r.fail(corrupt("broadcast mark checksum", m, uint64(sum)))
		}
		e := &OverrunError{Bytes: m - r.pos, Known: r.seqKnown}
		if r.seqKnown {
			e.Records = uint64(seq - r.seq)
		}
		r.pos, r.tailCache, r.seq, r.seqKnown = m, t, seq, true
		r.count(e)
		return e
	}
	t := atomic.LoadUint64(r.tail)
	if t%recordAlign != 0 || t < r.pos {
		return r.fail(corrupt("broadcast tail", r.pos, t))
	}
	e := &OverrunError{Bytes: t - r.pos}
	r.pos, r.tailCache, r.seqKnown = t, t, false
	r.count(e)
	return e
}

func (r *BroadcastReader) count(e *OverrunError) {
	r.stats.Overruns++
	r.stats.LostBytes += e.Bytes
	r.stats.LostRecords += e.Records
}

// resolveBroadcastWait is WaitPolicy.Resolve with a reader's default:
// WaitDefault with no Spin sleeps at once (see BroadcastReaderOptions).
func resolveBroadcastWait(p WaitPolicy, spin time.Duration) (WaitPolicy, time.Duration) {
	if p == WaitDefault && spin == 0 {
		p = WaitSleep
	}
	return p.Resolve(spin)
}
