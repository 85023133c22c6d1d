package ring

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringipc/ringipc/futex"
)

// The kernel sleep's watch. A FUTEX_WAIT with a timeout arms a
// high-resolution timer and cancels it on wake-up: two reprogrammings of
// the CPU's timer, which in a virtual machine are two exits to the
// hypervisor. On the 2-vCPU KVM guest this was measured on, that made a
// 64-byte call at 10,000/s take 12-19 µs (p50) where the same round trip
// on bare futexes takes 4 µs; without the timeout it took 4.4-4.8 µs.
// So a kernel sleeper on a machine with a CPU to spare (load.Busy
// false) waits without a timeout and is registered here instead, with
// the time its kernel sleep ends (until). One goroutine per process
// sleeps until the earliest such time and then wakes (as a peer
// would: swap the word to WordIdle, FUTEX_WAKE) the sleepers whose time
// has come, which give up the kernel for the Waker. A context deadline
// due before until is timed by the kernel, precisely; a cancellation is
// seen when the kernel sleep ends (at most kernelTries*kernelSlice), and
// from then on by the Waker, which watches the context.
//
// On a busy machine (32 client processes calling one server at 1,000/s
// each on 2 CPUs, ringbench fanin) the watcher measured worse than the
// timeouts: p50 241-341 µs and p99 2.3-2.9 ms against 193-275 µs and
// 2.1-2.6 ms in the same build, three interleaved runs. A sleeper there
// times its slices in the kernel as before.
//
// The watcher wakes once per kernel sleep that lasts its whole length
// (an idle peer), or about once per length while sleepers come and go
// (a peer that calls every millisecond: sleepers register 6 ms ahead,
// and the watcher finds most of them gone). It exits once none is left,
// and the next sleeper starts it again, so an idle process has no
// goroutine of ring's. The sleepers are few (takeKernelSleeper allows
// one fewer than the CPUs), so the table is small and a mutex guards it.
var watch struct {
	mu      sync.Mutex
	slots   []watchSlot   // len: the CPUs; a free slot has a nil word
	n       int           // slots in use
	running bool          // a watcher goroutine runs
	wakeAt  time.Duration // when it wakes next (since watchBase)
	poke    chan struct{} // buffered 1: a sleeper is due before wakeAt
	timer   *time.Timer   // the watcher's, kept for the next one: starting a watcher allocates nothing
}

// watchSlot is one registered kernel sleeper.
type watchSlot struct {
	word  *uint32       // nil: the slot is free
	until time.Duration // since watchBase: wake it then
}

// watchBase is the origin of watchSlot.until (a monotonic reading).
var watchBase = time.Now()

func watchNow() time.Duration { return time.Since(watchBase) }

// watchAdd registers a kernel sleeper on word until the given time, and
// returns its slot for watchRemove, or -1 if the table is full (the
// caller then sleeps with a timeout instead).
func watchAdd(word *uint32, until time.Duration) int {
	watch.mu.Lock()
	defer watch.mu.Unlock()
	if watch.slots == nil {
		watch.slots = make([]watchSlot, max(runtime.NumCPU(), 2))
		watch.poke = make(chan struct{}, 1)
	}
	for i := range watch.slots {
		if watch.slots[i].word != nil {
			continue
		}
		watch.slots[i] = watchSlot{word: word, until: until}
		watch.n++
		switch {
		case !watch.running:
			watch.running, watch.wakeAt = true, until
			d := max(until-watchNow(), 0)
			if watch.timer == nil {
				watch.timer = time.NewTimer(d)
			} else {
				watch.timer.Reset(d) // the last watcher has returned; a firing it left is dropped
			}
			go watcher()
		case until < watch.wakeAt:
			// Only when kernelSlice changed (tests): sleepers register
			// in the order of their untils otherwise.
			watch.wakeAt = until
			select {
			case watch.poke <- struct{}{}:
			default:
			}
		}
		return i
	}
	return -1
}

// watchRemove frees slot i (nothing for -1): once it returns, the
// watcher no longer touches the sleeper's word.
func watchRemove(i int) {
	if i < 0 {
		return
	}
	watch.mu.Lock()
	watch.slots[i] = watchSlot{}
	watch.n--
	watch.mu.Unlock()
}

// watcher sleeps until the earliest registered until, wakes the sleepers
// that are due, and goes on until none is registered. The timer is
// watch.timer, which only the running watcher resets once started.
func watcher() {
	t := watch.timer
	for {
		select {
		case <-t.C:
		case <-watch.poke:
		}
		next, ok := watchDue()
		if !ok {
			return
		}
		t.Reset(max(next-watchNow(), 0))
	}
}

// watchDue wakes the sleepers whose time has come and returns when the
// next one is due; ok is false, and the watcher is over (running false
// before the lock is let go), if none is left.
func watchDue() (next time.Duration, ok bool) {
	watch.mu.Lock()
	defer watch.mu.Unlock()
	now := watchNow()
	next = -1
	for i := range watch.slots {
		s := &watch.slots[i]
		if s.word == nil {
			continue
		}
		if now < s.until {
			if next < 0 || s.until < next {
				next = s.until
			}
			continue
		}
		// Wake as a peer does, but whatever the word holds: a peer may
		// have cleared it without a FUTEX_WAKE (a hostile one, or one
		// that woke us with a token), and the sleeper must not stay. A
		// sleeper that has not yet blocked finds the word changed and
		// does not block; one woken twice re-checks the ring either way.
		atomic.SwapUint32(s.word, WordIdle)
		futex.Wake(s.word, 0) //nolint:errcheck // the address is valid and aligned by construction
		// Due sleepers stay registered until they leave; look again a
		// tick later in case one has not (a wake-up lost to a word the
		// peer scribbled over).
		if next < 0 || now+time.Millisecond < next {
			next = now + time.Millisecond
		}
	}
	if watch.n == 0 {
		watch.running = false
		return 0, false
	}
	watch.wakeAt = next
	return next, true
}
