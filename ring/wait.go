package ring

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ringipc/ringipc/futex"
	"github.com/ringipc/ringipc/internal/load"
	"github.com/ringipc/ringipc/internal/spin"
)

// Waiting. Each side of a ring that finds nothing to do (a consumer with
// no record, a producer with no room) waits on its wait word, and the
// other side wakes it after it publishes. The protocol (docs/design.md,
// "Sleeping and waking", holds the lost-wake-up argument):
//
//	sleeper: store a non-zero value in its word (Arm), re-check the
//	         ring, sleep only if there is still nothing to do; the wake
//	         clears the word.
//	waker:   publish (tail or head), load the word; if non-zero, swap it
//	         to zero and, if the swap returned non-zero, wake the sleeper
//	         in the way that value names.
//
// Waiter is that protocol for one word, with the polling before it
// (WaitPolicy). The ring's blocking calls use it; so may loops that wait
// outside them (an event loop arms the word before it polls a descriptor,
// ipc plugs in its socket tokens as a Waker).

// Values of a wait word. A sleeper stores the value that names how it
// wants to be woken; the waker swaps the word to WordIdle and acts on the
// value it got back. Any other value (a peer scribbling) is treated as
// WordWaker: it costs the peer a wake-up of its own, never a hang or a
// spin on our side.
const (
	// WordIdle: nobody sleeps on the word.
	WordIdle uint32 = 0
	// WordWaker: the sleeper waits to be woken through the side's
	// Options.Waker (a FUTEX_WAKE on the word when it has none).
	WordWaker uint32 = 1
	// WordFutex: the sleeper is (about to be) blocked in FUTEX_WAIT on
	// the word itself, expecting the value WordFutex: the waker issues
	// a FUTEX_WAKE on the word, whatever Waker it has.
	WordFutex uint32 = 2
)

// Offsets of the two wait words from the start of a ring's memory, for
// code that waits or wakes outside a handle (see Waiter). Both are
// 32-bit little-endian words, each on a 128-byte line of its own.
const (
	// ConsumerWaitOffset is the consumer's word: it sleeps there for
	// records, producers wake it after they publish a tail.
	ConsumerWaitOffset = offConsWait
	// ProducerWaitOffset is the producers' word: they sleep there for
	// room, the consumer wakes them after it publishes a head.
	ProducerWaitOffset = offProdWait
)

// WaitPolicy says whether a side polls before it sleeps.
type WaitPolicy uint8

const (
	// WaitDefault leaves the choice to the Spin duration of the options
	// that carry it, for compatibility: 0 means WaitAdaptive, a positive
	// Spin means WaitSpin with that budget, a negative one WaitSleep.
	WaitDefault WaitPolicy = iota
	// WaitAdaptive polls, for the budget (AdaptiveSpin, or Spin when
	// positive), only while its recent polls caught the end of their
	// waits (a missed poll halves its credit, a caught one refills it,
	// and one sleeping wait in 16 probes), and only while fewer
	// goroutines of the process poll than it has CPUs to poll on; else
	// it sleeps at once. A dense stream keeps both sides polling (no
	// system call per record); a sparse one sleeps at once and pays one
	// wake-up per record instead of a wasted poll.
	WaitAdaptive
	// WaitSpin polls for the whole budget (Spin, DefaultSpin when 0) on
	// every wait before it sleeps.
	WaitSpin
	// WaitSleep never polls: it sleeps at once.
	WaitSleep
)

func (p WaitPolicy) String() string {
	switch p {
	case WaitDefault:
		return "default"
	case WaitAdaptive:
		return "adaptive"
	case WaitSpin:
		return "spin"
	case WaitSleep:
		return "sleep"
	}
	return "WaitPolicy(" + strconv.Itoa(int(p)) + ")"
}

// Resolve returns the policy and budget that p and spin (an Options.Spin)
// stand for: WaitDefault is replaced by what spin says, and the budget is
// the one the policy polls for (0 for WaitSleep).
func (p WaitPolicy) Resolve(spin time.Duration) (WaitPolicy, time.Duration) {
	if p == WaitDefault {
		switch {
		case spin < 0:
			p = WaitSleep
		case spin > 0:
			p = WaitSpin
		default:
			p = WaitAdaptive
		}
	}
	switch p {
	case WaitSleep:
		return p, 0
	case WaitAdaptive:
		if spin <= 0 {
			spin = AdaptiveSpin
		}
		return p, spin
	default:
		if spin <= 0 {
			spin = DefaultSpin
		}
		return WaitSpin, spin
	}
}

// DefaultSpin is the budget of WaitSpin when Spin is 0. Waking a
// sleeping peer costs 25-55 µs, sometimes more, on the virtual machines
// this was tuned on. With a fixed budget below that, two sides fall into
// a lockstep in which each gives up just before the other answers, and
// every message pays a full wake-up (measured: ping-pong p50 110 µs at a
// 50 µs budget, 0.26 µs at 200 µs).
const DefaultSpin = 200 * time.Microsecond

// AdaptiveSpin is the budget of WaitAdaptive when Spin is 0: how long a
// side whose polls have been paying polls before it sleeps. It is short
// because a missed poll costs more than its budget on a loaded machine;
// docs/design.md 2.6.1 has the measurements that chose it. The polling
// loop reads the clock first after pollsPerCheck polls, and the budget
// counts from there: it was 50 µs while those polls paused ten times
// each, which made about 63 µs of polling on the AMD guest (57 µs on the
// Xeon). Since they pause once (quickPause) they take about 2 µs, and
// 50 µs cost 1 MiB calls, whose caller polls for each piece's note, a
// median 3.4x the socket against 4.7x (4 interleaved pairs); 62 µs
// gave 4.8x.
const AdaptiveSpin = 62 * time.Microsecond

// ReplySpin is the budget of an adaptive WaitReply whose request woke a
// sleeping peer: the answer is the peer's wake-up plus its handling
// away (25-80 µs on the machines this was tuned on). Polling through it
// costs less CPU than sleeping and being woken (measured: a 1,000/s call
// went from 66 µs p50 and 174 µs of CPU to 32 µs and 132 µs), but only
// while the machine has a CPU to spare: when more threads are runnable
// than there are CPUs (dozens of client processes on few CPUs), the
// poll takes the CPU the peer needs to answer, so the reply wait sleeps
// at once (see load.Busy).
const ReplySpin = 200 * time.Microsecond

// overloaded is load.Overloaded (at least twice as many runnable threads
// as CPUs, so that a sleeper can expect to wait for a CPU, milliseconds,
// not for its peer's wake-up): a variable only so that tests can make
// sleepers hand off their P on any machine; nothing else writes it.
var overloaded = load.Overloaded

// The adaptive policy's memory: credit > 0 means the next wait polls. A
// wait that polling caught adds one, up to creditMax, one that polling
// missed halves it: two or three missed polls in a row (a peer that went idle)
// stop polling, one (a peer preempted once) does not. A missed poll
// wastes its whole budget, and on a loaded machine the CPU it burns also
// counts against the process with the scheduler, which then runs it
// later than a sleeper it wakes. Every probeEvery-th wait that would
// sleep polls anyway, for probeSpin at most: that is how a side that
// sleeps finds out that polling pays again, at a cost of about
// probeSpin/probeEvery (1.25 µs) per wait of a side whose peer is idle. How long a
// sleeping wait lasted says nothing reliable (it includes the sleeper's
// own wake-up, and a sender that is behind its schedule sends at once
// after a fast wake-up, which looks dense but is not), so the policy
// reads no clock at all.
const (
	creditMax  = 4
	probeEvery = 16
	probeSpin  = 5 * time.Microsecond
)

// adaptive is WaitAdaptive's state for one wait word. Its fields are
// atomics because several goroutines may wait on one word (the producers
// of an MPSC ring); races between them only blur the history.
type adaptive struct {
	credit atomic.Int32  // > 0: poll on the next wait
	sleeps atomic.Uint32 // waits that slept at once, for probing
}

// shouldSpin decides whether the next wait polls first, and for how
// long: budget, probeSpin for a probe, 0 if it does not.
func (a *adaptive) shouldSpin(budget time.Duration) time.Duration {
	if a.credit.Load() > 0 {
		return budget
	}
	if a.sleeps.Add(1)%probeEvery == 0 {
		return min(budget, probeSpin)
	}
	return 0
}

// spun records a wait that polled: hit if polling saw its end. A caught
// poll adds one to the credit rather than filling it: one probe caught
// by chance (a sparse client behind its schedule sends again at once)
// then costs one missed poll, not the creditMax-1 it took to drain a full
// credit. That was the fan-in regime (32 clients at 1,000 calls/s on 2
// CPUs): the server's connections polled for about 6% of the machine's
// CPU, and ipc's p50 stood at twice the socket's.
func (a *adaptive) spun(hit bool) {
	c := a.credit.Load()
	if hit {
		a.credit.Store(min(c+1, creditMax))
		return
	}
	a.credit.Store(c / 2)
}

// Process-wide counts of the goroutines that poll (spinners) and that
// sleep in FUTEX_WAIT holding their thread and P (kernelSleepers), and
// the CPUs there are for them (cpus, refreshed by each new handle).
var (
	spinners       atomic.Int32
	kernelSleepers atomic.Int32
	cpus           atomic.Int32
)

func init() { refreshCPUs() }

func refreshCPUs() {
	cpus.Store(int32(min(runtime.GOMAXPROCS(0), runtime.NumCPU())))
}

// takeSpinner reserves one of the process's polling places: there are as
// many as CPUs, since a poller beyond that only takes the CPU from the
// goroutine (or process) that would end its wait.
func takeSpinner() bool {
	if spinners.Add(1) > cpus.Load() {
		spinners.Add(-1)
		return false
	}
	return true
}

// takeKernelSleeper reserves a place to sleep in FUTEX_WAIT. Such a
// sleeper keeps its P until the runtime's monitor takes it back (up to
// milliseconds when the process is idle), so one P is always left free of
// them for the goroutines the netpoller and timers wake.
func takeKernelSleeper() bool {
	if kernelSleepers.Add(1) > cpus.Load()-1 {
		kernelSleepers.Add(-1)
		return false
	}
	return true
}

// Waiter waits on one wait word of a ring by the ring's protocol, with
// the handle's WaitPolicy and Waker. A Consumer's Waiter is its own
// (Consumer.Waiter); a Producer's is shared by every producer of the
// ring's word (Producer.Waiter).
//
// It is for loops that wait outside the ring's blocking calls. Either let
// Wait run the whole protocol around a readiness check, or, in an event
// loop that polls a descriptor the Waker signals: Arm, re-check the ring,
// and only then poll; Disarm if the re-check found work.
type Waiter struct {
	word   *uint32
	waker  Waker
	policy WaitPolicy // resolved: WaitAdaptive, WaitSpin or WaitSleep
	budget time.Duration
	multi  bool // several sleepers share the word: never withdraw it
	adapt  adaptive
	// fence is the producer's unfenced word when this is the consumer of
	// an SPSC ring whose process fences for its producer (set once, at
	// attach): after announcing a sleep, the waiter loads it and, if
	// set, fences the producer's CPU before its re-check. nil otherwise.
	fence *uint32
}

func (w *Waiter) init(word *uint32, opts *Options, multi bool) {
	refreshCPUs()
	w.word, w.multi, w.waker = word, multi, opts.Waker
	w.policy, w.budget = opts.Wait.Resolve(opts.Spin)
	w.adapt.credit.Store(creditMax)
}

// Word returns the wait word.
func (w *Waiter) Word() *uint32 { return w.word }

// Policy returns the resolved policy (WaitAdaptive, WaitSpin or
// WaitSleep) and its polling budget.
func (w *Waiter) Policy() (WaitPolicy, time.Duration) { return w.policy, w.budget }

// Poll calls ready until it reports true (true) or budget passes
// (false), without sleeping and whatever the policy: for a caller that
// has something else to do when the wait is not over soon.
func (w *Waiter) Poll(budget time.Duration, ready func() bool) bool {
	return pollFor(budget, nil, ready)
}

// Arm announces that the caller is about to sleep until woken through the
// Waker (WordWaker). The caller must re-check the ring after Arm and
// before it sleeps, and Disarm if the re-check found work.
func (w *Waiter) Arm() {
	w.announce(WordWaker)
}

// announce stores v in the word, the store half of a Dekker pair
// (announce, then re-check): with Swap, not Store, since under the race
// detector Store is only a release store that may pass the re-check (see
// publishWord). On a consumer's word whose producer publishes without
// full barriers it then fences the producer's CPU (docs/design.md
// 2.6.6): after that, the producer's tail store is visible to the
// re-check, or the producer's next load of the word sees the
// announcement. Every announcement goes through here.
func (w *Waiter) announce(v uint32) {
	atomic.SwapUint32(w.word, v)
	if w.fence != nil && atomic.LoadUint32(w.fence) != 0 {
		fenceOthers()
	}
}

// Disarm withdraws an announcement that turned out needless, so the peer
// does not pay for a wake-up (withdrawing late costs at most one
// spurious wake-up, which the next sleep absorbs). On a word shared by
// several sleepers (the producers of an MPSC ring) it does nothing: it
// could erase another's announcement and lose its wake-up.
func (w *Waiter) Disarm() {
	if !w.multi {
		atomic.StoreUint32(w.word, WordIdle)
	}
}

// Sleep blocks after Arm and a re-check: through the Waker, or in
// FUTEX_WAIT when there is none, until woken, ctx ends or limit passes
// (limit <= 0: no limit). It returns ctx's error if ctx ended, else nil;
// spurious returns are allowed, so callers re-check.
func (w *Waiter) Sleep(ctx context.Context, limit time.Duration) error {
	if w.waker != nil {
		return w.waker.Sleep(ctx, w.word, limit)
	}
	return sleepFutex(ctx, w.word, WordWaker, limit)
}

// Wait returns once ready reports true, polling first as the policy says,
// then sleeping by the protocol (Arm, ready, Sleep). It returns ctx's
// error if ctx ends first. ready is called from the waiting goroutine
// only; it should be cheap (one look at the ring) and must report true
// when the ring is closed, or Wait sleeps until ctx ends.
func (w *Waiter) Wait(ctx context.Context, ready func() bool) error {
	return w.wait(ctx, ready, false, spinHistory)
}

// WaitKernel is Wait that sleeps blocked in FUTEX_WAIT on the word
// (WordFutex), which the peer wakes with one system call and which wakes
// the goroutine without the netpoller or a goroutine hand-off: the
// cheapest wake-up there is. The sleeper holds an OS thread (and, until
// the runtime takes it back, its P) while it sleeps, so it does so for a
// few milliseconds at most (kernelSlice, kernelTries), and at most one
// goroutine fewer than the process's CPUs sleeps so at a time; the rest
// of a longer wait, any wait beyond that count, and every wait on an
// overloaded machine (twice as many runnable threads as CPUs, where the
// netpoller's sleep costs less) sleeps as Wait does.
// A cancelled ctx is seen when the kernel sleep ends (within 6 ms; 2 ms
// on a busy machine), a ctx deadline on time.
func (w *Waiter) WaitKernel(ctx context.Context, ready func() bool) error {
	return w.wait(ctx, ready, true, spinHistory)
}

// WaitReply is WaitKernel for a caller that waits for the answer to what
// it has just published to the peer (a response to its request), which
// tells it more than history: peerAsleep is whether that publish found
// the peer asleep and woke it (Producer.ConsumerWasAsleep). A peer that
// was asleep answers after its wake-up, tens of µs away: WaitAdaptive
// polls through it for up to ReplySpin, which costs less CPU than
// being woken, unless the machine has no CPU to spare (load.Busy),
// when it sleeps at once. A peer that was awake may
// answer within its handling time: WaitAdaptive decides from history as
// WaitKernel does. WaitSpin and WaitSleep wait as in WaitKernel.
func (w *Waiter) WaitReply(ctx context.Context, ready func() bool, peerAsleep bool) error {
	how := spinHistory
	if peerAsleep {
		how = spinReply
	}
	return w.wait(ctx, ready, true, how)
}

// How an adaptive wait decides whether to poll.
const (
	spinHistory = iota // from the Waiter's recent waits
	spinReply          // from history, for the longer ReplySpin budget
)

func (w *Waiter) wait(ctx context.Context, ready func() bool, kernel bool, how int) error {
	if ready() {
		return nil
	}
	if w.spin(ctx.Done(), ready, how) {
		return nil
	}
	// On an overloaded machine a wait lasts until the peer gets a CPU,
	// and the Waker's sleep, a goroutine parked in the netpoller, costs
	// the least: no thread held, no P handed back and forth, and a
	// wake-up through the netpoller wakes no runtime monitor (fan-in on
	// the AMD guest, 3 interleaved pairs: 20.3-21.4 k calls/s at 92-95 µs
	// per call against 12.8-14.9 k/s at 126-148 µs with kernel sleeps
	// handing off their P, p99 10.8-10.9 ms against 14.2-16.5 ms).
	if kernel && !overloaded() && takeKernelSleeper() {
		done, err := w.sleepKernel(ctx, ready)
		kernelSleepers.Add(-1)
		if done {
			return err
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		w.Arm()
		if ready() {
			w.Disarm()
			return nil
		}
		if err := w.Sleep(ctx, 0); err != nil {
			w.Disarm()
			return err
		}
		if ready() {
			return nil
		}
	}
}

// A kernel sleep (WaitKernel, WaitReply) lasts at most
// kernelTries*kernelSlice, and at most kernelTries FUTEX_WAITs that did
// not end the wait; then it goes on through the Waker. So a thread (and
// maybe a P) is held for a bounded time per wait: a connection that goes
// idle ends up parked in the netpoller, and a peer that scribbles the
// word (FUTEX_WAIT then returns at once) costs a few re-checks, not a
// spin. On a machine with a CPU to spare the FUTEX_WAIT has no timeout
// (see kernelwatch.go for why): the process's watcher wakes a sleeper
// whose time is up; a context deadline due before then is timed by the
// kernel, precisely, and a cancellation is seen when the kernel sleep
// ends, then by the Waker. On a busy machine each FUTEX_WAIT is timed,
// kernelSlice at most, and a cancellation is seen at a slice's end.
const kernelTries = 3

// watchable says whether a kernel sleep goes without a timeout, watched
// (kernelwatch.go): on a machine with a CPU to spare. A variable only so
// that tests can make it true on a busy machine; nothing else writes it.
var watchable = func() bool { return !load.Busy() }

// kernelSlice is a third of a kernel sleep's length. A variable only so
// that a test can hold a sleeper in the kernel until it is woken;
// nothing else writes it.
var kernelSlice = 2 * time.Millisecond

// sleepKernel is WaitKernel's sleep: done is false if it gave up, leaving
// the rest of the wait to the Waker.
func (w *Waiter) sleepKernel(ctx context.Context, ready func() bool) (done bool, err error) {
	until := watchNow() + kernelTries*kernelSlice
	dl, hasDL := ctx.Deadline()
	for range kernelTries {
		if err := ctx.Err(); err != nil {
			return true, err
		}
		left := until - watchNow()
		if left <= 0 {
			return false, nil
		}
		var dlLeft time.Duration
		if hasDL {
			if dlLeft = time.Until(dl); dlLeft <= 0 {
				return true, context.DeadlineExceeded
			}
		}
		// The watcher ends the sleep at until. Without it (a machine
		// with more runnable threads than CPUs, where timed slices
		// measured better: kernelwatch.go; or a full table) the kernel
		// times each slice. A deadline due sooner is timed either way.
		slot := -1
		if watchable() {
			slot = watchAdd(w.word, until)
		}
		timeout := futex.Forever
		if slot < 0 {
			timeout = min(left, kernelSlice)
		}
		if hasDL && (timeout == futex.Forever || dlLeft < timeout) {
			timeout = dlLeft
		}
		w.announce(WordFutex)
		if ready() {
			watchRemove(slot)
			w.Disarm()
			return true, nil
		}
		err := futexSleep(w.word, WordFutex, timeout, overloaded())
		watchRemove(slot)
		if err != nil && err != os.ErrDeadlineExceeded {
			w.Disarm()
			return true, err
		}
		if ready() {
			return true, nil
		}
	}
	return false, nil
}

// spin polls ready as the policy says, and reports whether it saw true.
func (w *Waiter) spin(done <-chan struct{}, ready func() bool, how int) bool {
	switch w.policy {
	case WaitSleep:
		return false
	case WaitAdaptive:
		budget := w.budget
		if how == spinReply {
			if load.Busy() {
				return false
			}
			budget = max(budget, ReplySpin)
		}
		budget = w.adapt.shouldSpin(budget)
		if budget == 0 || !takeSpinner() {
			return false
		}
		hit := pollFor(budget, done, ready)
		spinners.Add(-1)
		w.adapt.spun(hit)
		return hit
	}
	return pollFor(w.budget, done, ready)
}

// pollFor calls ready until it reports true (true), or budget passes or
// done is closed (false).
func pollFor(budget time.Duration, done <-chan struct{}, ready func() bool) bool {
	for sp := (spinner{budget: budget, done: done}); sp.again(); {
		if ready() {
			return true
		}
	}
	return false
}

// The polling loop's cadence. Reading the clock every poll would cost
// more than the poll (one atomic load of the peer's position), so it
// looks at the clock and at the context every pollsPerCheck polls, and a
// wait shorter than that never reads the clock. Now and then it yields:
// the P to other goroutines (a connection is a handful of goroutines that
// may all poll, and a poller that keeps its P starves the one that would
// end its wait), not every poll either (Gosched takes the scheduler's
// lock, and with an idle P wakes a thread); and more rarely the OS thread
// to other processes, since a peer process waiting for our core cannot
// answer while we poll on it.
//
// Between two polls it pauses (the CPU's spin-wait hint, pollPause
// times, about 110 ns on this project's Xeon): each poll pulls the
// line holding the peer's position into our cache, and the peer's next
// publication, a locked instruction, then stalls until it gets the line
// back. Polling flat out made every publication of a busy peer pay that
// round; pausing let a saturated 64-byte call go from 1.07-1.08 M to
// 1.47-1.50 M calls/s and ring ping-pong from 1.60-1.68 M to 1.78-1.88 M
// (ringbench, two interleaved runs of each build), paced and fan-in rows
// unchanged. With ten, pollsPerCheck polls took about 7 µs there:
// checking the clock (and so yielding) every 16 polls instead tripled
// ping-pong's p99.
//
// But a pause also delays seeing the publication, by half of it on
// average, on each side of a round trip, and a PAUSE's length varies:
// on the AMD guest one takes about 20 ns, ten about 195 ns. So the first
// pollsPerCheck polls of a wait, where a peer that is answering right
// now is found, pause quickPause times, and only a wait that goes on
// past them (a peer busy elsewhere, fan-in's waits) pauses pollPause.
// On the AMD guest's slower phase (ringbench, 2026-12-03, 7 interleaved
// pairs of invocations) that took a saturated call from a median 32x
// the socket (30-34x) to 40x (34-44x), and ring ping-pong from 37x to
// 45x; pipelined calls, streams and dispatch did not move. One pause
// throughout did as much for those rows but put fan-in's p99 from 0.93x
// to 1.03x the socket's (8 pairs). With quick first polls only, fan-in's
// p99 read a median 0.82x against 0.87-0.88x (two sets of 6 pairs) and
// its p50 0.80-0.88x against 0.64-0.79x. They also shortened the
// polling of every wait by about 11 µs, since the budget counts from the
// first clock read (AdaptiveSpin says what that cost and how it is
// made up).
const (
	pollsPerCheck = 64
	quickPause    = 1
	pollPause     = 10
	yieldEvery    = 2 * time.Microsecond
	osYieldEvery  = 16 // Goscheds per sched_yield
)

// spinner bounds a polling loop by time.
type spinner struct {
	budget time.Duration
	done   <-chan struct{} // the caller's ctx.Done(): polling stops when closed
	start  time.Time
	yield  time.Duration // since start, when to yield next
	n      int
	yields int
}

// again reports whether the caller should poll once more.
func (s *spinner) again() bool {
	if s.budget <= 0 {
		return false
	}
	s.n++
	if s.n%pollsPerCheck != 0 {
		if s.n < pollsPerCheck {
			spin.Pause(quickPause)
		} else {
			spin.Pause(pollPause)
		}
		return true
	}
	// Not ctx.Err(), which takes the context's lock: a receive attempt.
	select {
	case <-s.done:
		s.budget = 0
		return false
	default:
	}
	if s.n == pollsPerCheck {
		s.start = time.Now()
		s.yield = yieldEvery
		return true
	}
	d := time.Since(s.start)
	if d >= s.yield {
		runtime.Gosched()
		s.yields++
		if s.yields%osYieldEvery == 0 {
			osYield()
		}
		s.yield = d + yieldEvery
	}
	return d < s.budget
}

// futexSleep is a FUTEX_WAIT that keeps the goroutine's P (futex.Wait),
// or with handoff (the callers pass overloaded's answer) hands it
// back to the scheduler for the sleep (futex.WaitHandoff). On an
// overloaded machine a sleep lasts as long as the peer waits for a CPU,
// milliseconds, and a kept P has the runtime's monitor thread look at it
// every 20 µs meanwhile: with 32 client processes calling one server at
// 1,000/s each on 2 vCPUs (ringbench fanin), kernel sleeps that handed
// off took the CPU per call from 220-260 to 120-124 µs and the calls
// served from 7.0-8.2 k/s to 14.0-14.5 k/s (two interleaved runs; those
// waits now sleep in the netpoller there, see wait). On an idle machine
// a sleep is a peer's wake-up, tens of µs, where the hand-off's own
// costs (futex/handoff_linux.go) tripled a paced call's p50. The sleeps
// that still hand off: a futex Waker's, an announced broadcast reader's,
// and a kernel sleep's later slices once the machine got overloaded.
func futexSleep(word *uint32, val uint32, timeout time.Duration, handoff bool) error {
	if handoff {
		return futex.WaitHandoff(word, val, timeout)
	}
	return futex.Wait(word, val, timeout)
}

// sleepFutex waits on word, which the caller has set to val and
// re-checked, until it no longer holds val (a waker cleared it), ctx
// ends, or limit passes (limit <= 0: no limit). It returns ctx's error
// when ctx has ended and nil otherwise; callers re-check their condition
// either way.
func sleepFutex(ctx context.Context, word *uint32, val uint32, limit time.Duration) error {
	timeout := futex.Forever
	if limit > 0 {
		timeout = limit
	}
	if dl, ok := ctx.Deadline(); ok {
		d := time.Until(dl)
		if d <= 0 {
			return context.DeadlineExceeded
		}
		if timeout < 0 || d < timeout {
			timeout = d
		}
	}
	if done := ctx.Done(); done != nil {
		// A cancellation must reach a thread blocked in the kernel: clear
		// the word and wake, as a peer would. Other sleepers on the same
		// word wake too, re-check and sleep again.
		// The callback touches the ring's memory, so it must be over
		// before we return: the caller may unmap the ring right after.
		ran := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			defer close(ran)
			if atomic.SwapUint32(word, WordIdle) != WordIdle {
				futex.Wake(word, 0) //nolint:errcheck
			}
		})
		defer func() {
			if !stop() {
				<-ran
			}
		}()
	}
	err := futexSleep(word, val, timeout, overloaded())
	if err == os.ErrDeadlineExceeded {
		err = nil
	}
	if err != nil {
		return err
	}
	return ctx.Err()
}
