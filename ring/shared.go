package ring

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/ringipc/ringipc/futex"
)

// Options tune a handle; they are local to the process, not part of the
// ring's layout. The zero value is ready to use.
type Options struct {
	// Wait is how a blocked call waits: whether it polls the ring before
	// it sleeps (see WaitPolicy). The zero value, WaitDefault, lets Spin
	// decide, as it did before Wait existed.
	Wait WaitPolicy
	// Spin is the polling budget: of WaitSpin (0 means DefaultSpin), and
	// of WaitAdaptive (0 means AdaptiveSpin). With Wait left at
	// WaitDefault, 0 means WaitAdaptive, a positive value WaitSpin with
	// that budget, and a negative value WaitSleep (sleep at once).
	Spin time.Duration
	// Liveness decides whether the producer owning a stuck MPSC claim is
	// still alive. Nil means ProcessAlive (the operating system's view).
	// Tests replace it; so may programs whose producers live in another
	// PID namespace.
	Liveness func(Owner) bool
	// Waker carries wake-ups between the sides. Nil means futexes on the
	// ring's own words. Both sides of a ring must use the same kind.
	Waker Waker
}

// Waker is how a side that has announced it sleeps is put to sleep and
// woken. The ring decides when: a sleeper stores WordWaker in its wait
// word and re-checks the ring before it calls Sleep; a waker swaps the
// word to WordIdle and calls Wake only if it held WordWaker (or a value
// the protocol does not know; WordFutex gets a FUTEX_WAKE instead). An
// implementation only moves the signal, for example through a descriptor
// in Go's netpoller, so that a sleeping side holds no OS thread.
type Waker interface {
	// Sleep blocks until Wake is called for word (or was called since
	// the word was set), ctx ends, or limit passes (limit <= 0: no
	// limit). It returns ctx's error if ctx ended and nil otherwise;
	// spurious returns are allowed.
	Sleep(ctx context.Context, word *uint32, limit time.Duration) error
	// Wake wakes whoever sleeps on word.
	Wake(word *uint32)
}

// shared is a handle's view of the ring: the validated meta copy and
// pointers to the words both sides touch.
type shared struct {
	m    meta
	mem  []byte
	data []byte // the data area, len == m.size

	// closed: 0 while open; Close stores 1 (once, any side) before it
	// clears and wakes both futex words, so a sleeper that announced
	// itself either sees closed on its re-check or is woken.
	closed *uint32
	// tail: SPSC: the producer's publish position, stored after the
	// record's bytes; that store synchronizes before the consumer's load
	// that observes it. MPSC: the claim position, advanced by CAS after
	// the claim word at the old tail was set.
	tail *uint64
	// head: the consumer's position, stored after it is done with (and,
	// in MPSC, zeroed) every byte below it; the store synchronizes before
	// a producer's load that observes it, handing the space back.
	head *uint64
	// consWait: 1 while the consumer sleeps or is about to. The consumer
	// stores 1 then re-checks for records; a producer publishes then
	// loads it, and if set swaps it to 0 and wakes (Dekker: sequentially
	// consistent atomics guarantee one side sees the other).
	consWait *uint32
	// prodWait: the same for producers waiting for space; the consumer
	// publishes head, then loads it.
	prodWait *uint32
	// unfenced (SPSC): 1 while the producer may publish tail with a
	// plain release store, not a full barrier. The producer sets it with
	// a full barrier before the first such store and clears it after the
	// last; a consumer that announces a sleep loads it after its
	// announcement and, if set, fences the producer's CPU itself
	// (fenceOthers) before its re-check (docs/design.md 2.6.6).
	unfenced *uint32
	// fences (SPSC): 1 while the consumer is one that does that (its
	// process can fence others); stored by the consumer when it
	// attaches, loaded by the producer before it sets unfenced.
	fences *uint32

	opts Options
}

func attach(mem []byte, opts *Options) (shared, error) {
	m, err := readMeta(mem)
	if err != nil {
		return shared{}, err
	}
	s := shared{
		m:        m,
		mem:      mem,
		data:     mem[m.dOff : m.dOff+int(m.size) : m.dOff+int(m.size)],
		closed:   word32(mem, offClosed),
		tail:     word64(mem, offTail),
		head:     word64(mem, offHead),
		consWait: word32(mem, offConsWait),
		prodWait: word32(mem, offProdWait),
		unfenced: word32(mem, offUnfenced),
		fences:   word32(mem, offFences),
	}
	if opts != nil {
		s.opts = *opts
	}
	return s, nil
}

// publishWord stores v into a shared word that the other side will look
// at, where the caller then loads the other side's word: the store half
// of a Dekker pair (publish, then look for a sleeper; announce sleep, then
// look for work). It must not pass the load that follows. sync/atomic's
// Store is an XCHG on amd64 and would do, but under the race detector it
// is only a release store (a plain MOV), which the processor may order
// after the load, and the pair then loses wake-ups. Swap is a full
// barrier in both builds and costs the same as Store in a normal one.
func publishWord(w *uint64, v uint64) { atomic.SwapUint64(w, v) }

// wake wakes whoever announced on a wait word that it sleeps, in the way
// the word's value names (see WordIdle). Callers have just published
// (the store half of the Dekker pair), so the load below is the other
// half. A plain load first: while nobody sleeps, which is always while
// both sides are busy, waking costs no locked instruction and no system
// call. Clearing the word before waking means a sleeper that has
// announced itself but not yet blocked finds it changed and does not
// sleep. It reports whether it found a sleeper.
func (s *shared) wake(w *uint32) bool {
	if atomic.LoadUint32(w) == WordIdle {
		return false
	}
	switch atomic.SwapUint32(w, WordIdle) {
	case WordIdle:
		return false
	case WordFutex:
		futex.Wake(w, 0) //nolint:errcheck // the address is valid and aligned by construction
	default:
		if s.opts.Waker != nil {
			s.opts.Waker.Wake(w)
		} else {
			futex.Wake(w, 0) //nolint:errcheck
		}
	}
	return true
}

func (s *shared) isClosed() bool { return atomic.LoadUint32(s.closed) != 0 }

// markClosed closes the ring for every side and wakes every sleeper.
func (s *shared) markClosed() {
	atomic.SwapUint32(s.closed, 1) // a Dekker store: see publishWord
	// Wake in every way whatever the words hold: a sleeper that announced
	// before the store above may be asleep in the kernel or in any Waker,
	// and a closing ring is worth a few needless wake-ups.
	for _, w := range [2]*uint32{s.consWait, s.prodWait} {
		atomic.StoreUint32(w, WordIdle)
		futex.Wake(w, 0) //nolint:errcheck
		if s.opts.Waker != nil {
			s.opts.Waker.Wake(w)
		}
	}
}
