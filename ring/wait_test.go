package ring

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// waitPolicies are the policies every wait test runs under: sleep at
// once, adaptive, and a fixed budget short enough that many waits still
// go through the sleeping path.
var waitPolicies = []struct {
	name string
	opts Options
}{
	{"sleep", Options{Wait: WaitSleep}},
	{"adaptive", Options{Wait: WaitAdaptive}},
	{"spin", Options{Wait: WaitSpin, Spin: time.Microsecond}},
}

func TestWaitPolicyResolve(t *testing.T) {
	for _, tc := range []struct {
		p      WaitPolicy
		spin   time.Duration
		want   WaitPolicy
		budget time.Duration
	}{
		{WaitDefault, 0, WaitAdaptive, AdaptiveSpin},
		{WaitDefault, -time.Nanosecond, WaitSleep, 0},
		{WaitDefault, time.Millisecond, WaitSpin, time.Millisecond},
		{WaitAdaptive, 0, WaitAdaptive, AdaptiveSpin},
		{WaitAdaptive, 10 * time.Microsecond, WaitAdaptive, 10 * time.Microsecond},
		{WaitSpin, 0, WaitSpin, DefaultSpin},
		{WaitSpin, time.Microsecond, WaitSpin, time.Microsecond},
		{WaitSleep, time.Millisecond, WaitSleep, 0},
		{WaitPolicy(99), 0, WaitSpin, DefaultSpin},
	} {
		got, budget := tc.p.Resolve(tc.spin)
		if got != tc.want || budget != tc.budget {
			t.Errorf("%v.Resolve(%v) = %v, %v; want %v, %v", tc.p, tc.spin, got, budget, tc.want, tc.budget)
		}
	}
}

// The adaptive policy fed synthetic outcomes: it polls while polling
// pays, stops after a few waits that polling did not catch, comes back
// after a short sleep, and probes now and then.
func TestAdaptiveDecisions(t *testing.T) {
	const budget = 50 * time.Microsecond
	var a adaptive
	a.credit.Store(creditMax) // as Waiter.init leaves it

	// A dense peer: every poll is caught.
	for range 100 {
		if a.shouldSpin(budget) != budget {
			t.Fatal("did not poll while polls were caught")
		}
		a.spun(true)
	}
	// One missed poll (a peer preempted once) does not stop polling.
	a.spun(false)
	if a.shouldSpin(budget) != budget {
		t.Fatal("one missed poll stopped polling")
	}
	a.spun(true)
	// The peer goes idle: every poll runs out, and polling stops after
	// a few.
	polls := 0
	for a.shouldSpin(budget) != 0 {
		a.spun(false)
		polls++
		if polls > 3 {
			t.Fatalf("still polling after %d missed polls", polls)
		}
	}
	// Idle: sleep at once, except one probe in probeEvery.
	spins := 0
	for range 10 * probeEvery {
		if b := a.shouldSpin(budget); b != 0 {
			if b != probeSpin {
				t.Fatalf("a probe polls for %v, want %v", b, probeSpin)
			}
			spins++
			a.spun(false)
		}
	}
	if spins != 10 {
		t.Fatalf("%d probes in %d idle waits, want 10", spins, 10*probeEvery)
	}
	// The peer comes back: the next probe catches it, and the waits
	// after it poll again.
	for a.shouldSpin(budget) == 0 {
	}
	a.spun(true)
	for range creditMax {
		if a.shouldSpin(budget) != budget {
			t.Fatal("no poll after a caught probe")
		}
	}
}

// A sparse peer that now and then answers within a probe (a client
// behind its schedule) costs one missed poll per caught probe, not the
// several that a refilled credit would take to drain.
func TestAdaptiveProbeCaughtByChance(t *testing.T) {
	const budget = 50 * time.Microsecond
	var a adaptive // credit 0: the side sleeps
	polls, probes := 0, 0
	for range 100 * probeEvery {
		switch b := a.shouldSpin(budget); b {
		case 0:
		case probeSpin:
			probes++
			a.spun(true) // every probe is caught
		case budget:
			polls++
			a.spun(false) // and every wait after it is sparse again
		default:
			t.Fatalf("polls for %v", b)
		}
	}
	if probes == 0 || polls > probes {
		t.Fatalf("%d full polls after %d caught probes, want at most one each", polls, probes)
	}
}

// At most as many goroutines poll as there are CPUs, and one CPU is left
// free of kernel sleepers.
func TestWaitCaps(t *testing.T) {
	n := int(cpus.Load())
	if n < 1 {
		t.Fatalf("cpus %d", n)
	}
	base := int(spinners.Load())
	taken := 0
	for takeSpinner() {
		taken++
		if taken > n {
			break
		}
	}
	if base+taken != n {
		t.Errorf("%d spinners allowed with %d running and %d CPUs", taken, base, n)
	}
	spinners.Add(-int32(taken))

	base = int(kernelSleepers.Load())
	taken = 0
	for takeKernelSleeper() {
		taken++
		if taken > n {
			break
		}
	}
	if base+taken != n-1 {
		t.Errorf("%d kernel sleepers allowed with %d running and %d CPUs", taken, base, n)
	}
	kernelSleepers.Add(-int32(taken))
}

// With every spinner place taken, an adaptive wait sleeps at once even
// with full credit: a record committed later still wakes it.
func TestAdaptiveYieldsToSpinnerCap(t *testing.T) {
	p, c, _ := newPair(t, Geometry{DataSize: 1024}, 0, &Options{Wait: WaitAdaptive, Spin: time.Hour})
	held := 0
	for takeSpinner() {
		held++
	}
	defer spinners.Add(-int32(held))
	done := make(chan error, 1)
	go func() {
		_, err := c.Peek(context.Background())
		done <- err
	}()
	// The consumer announces itself only on the sleeping path: with a
	// budget of an hour it would not get there by polling.
	for atomic.LoadUint32(c.w.word) == WordIdle {
		time.Sleep(time.Millisecond)
	}
	if err := p.TryWrite(0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// recWaker records Wake calls.
type recWaker struct{ woke atomic.Int32 }

func (w *recWaker) Sleep(context.Context, *uint32, time.Duration) error { return nil }
func (w *recWaker) Wake(*uint32)                                        { w.woke.Add(1) }

// setOverloaded makes the waits of the rest of the test see the machine
// as overloaded or not, whatever it is doing: a test of the kernel sleep
// must get one on a machine that CI loads with other tests.
func setOverloaded(t *testing.T, v bool) {
	old := overloaded
	overloaded = func() bool { return v }
	t.Cleanup(func() { overloaded = old })
}

// The waker acts on the value it swaps out of the word: nothing for
// WordIdle, a FUTEX_WAKE (not the Waker) for WordFutex, the Waker for
// WordWaker and for values the protocol does not know.
func TestWakeByWordValue(t *testing.T) {
	for _, tc := range []struct {
		v         uint32
		viaWaker  bool
		wokeAtAll bool
	}{
		{WordIdle, false, false},
		{WordWaker, true, true},
		{WordFutex, false, true},
		{7, true, true},
	} {
		w := &recWaker{}
		p, _, mem := newPair(t, Geometry{DataSize: 1024}, 0, &Options{Waker: w})
		word := word32(mem, ConsumerWaitOffset)
		atomic.StoreUint32(word, tc.v)
		if err := p.TryWrite(0, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if got := atomic.LoadUint32(word); got != WordIdle {
			t.Errorf("value %d: word %d after the wake, want 0", tc.v, got)
		}
		if got := w.woke.Load() == 1; got != tc.viaWaker {
			t.Errorf("value %d: Waker called %d times, want it called: %v", tc.v, w.woke.Load(), tc.viaWaker)
		}
	}
}

// A goroutine blocked in FUTEX_WAIT through WaitKernel is woken by the
// peer's commit although the handles use a Waker (which would never
// reach it), by Close, and by its context.
func TestWaitKernel(t *testing.T) {
	setOverloaded(t, false)
	// A kernel sleeper needs a second CPU (takeKernelSleeper); with
	// GOMAXPROCS 1 (go test -cpu 1) WaitKernel sleeps as Wait does.
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: no goroutine may sleep in FUTEX_WAIT")
	}
	defer func(n int) { runtime.GOMAXPROCS(n); refreshCPUs() }(runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0))))
	w := &recWaker{}
	p, c, mem := newPair(t, Geometry{DataSize: 1024}, 0, &Options{Wait: WaitSleep, Waker: w})
	word := word32(mem, ConsumerWaitOffset)
	ready := func() bool {
		_, err := c.TryPeek()
		return err != ErrEmpty
	}
	// waitFor starts a wait and returns once the word shows a sleeper:
	// WordFutex if in, 0 for any value but WordIdle.
	waitFor := func(ctx context.Context, in uint32) chan error {
		done := make(chan error, 1)
		go func() { done <- c.Waiter().WaitKernel(ctx, ready) }()
		for v := atomic.LoadUint32(word); v == WordIdle || in != 0 && v != in; v = atomic.LoadUint32(word) {
			runtime.Gosched()
		}
		return done
	}

	// A cancelled context ends the wait, in the kernel (at the end of a
	// slice) or past it.
	ctx, cancel := context.WithCancel(context.Background())
	done := waitFor(ctx, 0)
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("cancelled wait: %v", err)
	}

	// The wake-ups below are the kernel sleeper's: hold it in FUTEX_WAIT
	// until woken. In 2 ms slices a loaded machine could let it give the
	// kernel up for the Waker before the test looked, or before the
	// commit, and the test then hung or saw the Waker used.
	defer func(d time.Duration) { kernelSlice = d }(kernelSlice)
	kernelSlice = time.Minute

	done = waitFor(context.Background(), WordFutex)
	if err := p.TryWrite(0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if w.woke.Load() != 0 {
		t.Error("the Waker was used for a kernel sleeper")
	}
	if _, _, err := c.TryReadInto(make([]byte, 8)); err != nil {
		t.Fatal(err)
	}

	done = waitFor(context.Background(), WordFutex)
	p.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := c.TryPeek(); err != ErrClosed {
		t.Fatalf("TryPeek after Close: %v", err)
	}
}

// On an overloaded machine WaitKernel does not sleep in the kernel: the
// word says the Waker's sleep (WordWaker), and the peer's commit wakes
// it through the Waker.
func TestWaitKernelOverloaded(t *testing.T) {
	setOverloaded(t, true)
	w := &chanWaker{ch: make(chan struct{}, 1)}
	p, c, mem := newPair(t, Geometry{DataSize: 1024}, 0, &Options{Wait: WaitSleep, Waker: w})
	word := word32(mem, ConsumerWaitOffset)
	done := make(chan error, 1)
	go func() {
		done <- c.Waiter().WaitKernel(context.Background(), func() bool {
			_, err := c.TryPeek()
			return err != ErrEmpty
		})
	}()
	for atomic.LoadUint32(word) == WordIdle {
		runtime.Gosched()
	}
	if v := atomic.LoadUint32(word); v != WordWaker {
		t.Fatalf("an overloaded machine's sleeper announced %d, want WordWaker (%d)", v, WordWaker)
	}
	if err := p.TryWrite(0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// chanWaker is a Waker whose sleepers wait on one channel.
type chanWaker struct{ ch chan struct{} }

func (w *chanWaker) Sleep(ctx context.Context, _ *uint32, _ time.Duration) error {
	select {
	case <-w.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *chanWaker) Wake(*uint32) {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// A peer that scribbles a foreign value into a kernel sleeper's word
// without waking it (a FUTEX_WAIT then returns at once) does not make it
// spin: after a few tries the wait sleeps through the Waker.
func TestWaitKernelScribbledWord(t *testing.T) {
	setOverloaded(t, false)
	w := &scribbleWaker{}
	_, c, mem := newPair(t, Geometry{DataSize: 1024}, 0, &Options{Wait: WaitSleep, Waker: w})
	w.word = word32(mem, ConsumerWaitOffset)
	checks := 0
	err := c.Waiter().WaitKernel(context.Background(), func() bool {
		checks++
		// The "peer" rewrites the word right after every re-check.
		atomic.StoreUint32(w.word, 7)
		return w.slept.Load()
	})
	if err != nil {
		t.Fatal(err)
	}
	if !w.slept.Load() {
		t.Fatal("never fell back to the Waker")
	}
	if checks > 2*kernelTries+4 {
		t.Fatalf("%d re-checks: the wait spun on the scribbled word", checks)
	}
}

// scribbleWaker's Sleep notes that it was reached and returns.
type scribbleWaker struct {
	word  *uint32
	slept atomic.Bool
}

func (w *scribbleWaker) Sleep(context.Context, *uint32, time.Duration) error {
	w.slept.Store(true)
	return nil
}
func (w *scribbleWaker) Wake(*uint32) {}

// A kernel sleeper's FUTEX_WAIT has no timeout: the process's watcher
// wakes it when its sleep has lasted its length, even if a peer cleared
// its word without waking it, and it goes on through the Waker; once no
// sleeper is left the watcher exits.
func TestKernelSleepWatcher(t *testing.T) {
	setOverloaded(t, false)
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: no goroutine may sleep in FUTEX_WAIT")
	}
	defer func(n int) { runtime.GOMAXPROCS(n); refreshCPUs() }(runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0))))
	defer func(d time.Duration) { kernelSlice = d }(kernelSlice)
	kernelSlice = time.Millisecond
	defer func(f func() bool) { watchable = f }(watchable)
	watchable = func() bool { return true } // even on a busy machine

	w := &scribbleWaker{}
	p, c, mem := newPair(t, Geometry{DataSize: 1024}, 0, &Options{Wait: WaitSleep, Waker: w})
	word := word32(mem, ConsumerWaitOffset)
	inKernel := make(chan bool, 1)
	go func() {
		// Nothing is ever written: only the watcher can end the kernel
		// sleep, and then the Waker's Sleep ends the wait.
		err := c.Waiter().WaitKernel(context.Background(), w.slept.Load)
		if err != nil {
			t.Error(err)
		}
		inKernel <- true
	}()
	// A peer that clears the word without a FUTEX_WAKE (a hostile one,
	// or one that woke through a token) must not keep it there either.
	cleared := false
	giveUp := time.After(time.Minute)
	for done := false; !done; {
		select {
		case <-inKernel:
			done = true
		case <-giveUp:
			t.Error("the kernel sleeper was never woken")
			p.Close() // wakes it, so that its goroutine ends
			<-inKernel
			return
		default:
			if !cleared && atomic.CompareAndSwapUint32(word, WordFutex, WordIdle) {
				cleared = true
			}
			runtime.Gosched()
		}
	}
	if !w.slept.Load() {
		t.Fatal("the wait ended without reaching the Waker")
	}
	if !cleared {
		t.Log("the sleeper was not seen in the kernel (a loaded machine may hide it)")
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		watch.mu.Lock()
		running, n := watch.running, watch.n
		watch.mu.Unlock()
		if !running && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watcher still runs with %d sleepers after the last left", n)
		}
	}
}

// A context deadline due before the kernel sleep ends is timed by the
// kernel, watched or not: the wait ends with it, though the watcher, or
// a slice's timeout, would end the sleep only an hour later.
func TestKernelSleepDeadline(t *testing.T) {
	setOverloaded(t, false)
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: no goroutine may sleep in FUTEX_WAIT")
	}
	defer func(n int) { runtime.GOMAXPROCS(n); refreshCPUs() }(runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0))))
	defer func(d time.Duration) { kernelSlice = d }(kernelSlice)
	kernelSlice = time.Hour
	defer func(f func() bool) { watchable = f }(watchable)
	for _, watched := range []bool{true, false} {
		watchable = func() bool { return watched }
		_, c, _ := newPair(t, Geometry{DataSize: 1024}, 0, &Options{Wait: WaitSleep, Waker: &recWaker{}})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		err := c.Waiter().WaitKernel(ctx, func() bool {
			_, err := c.TryPeek()
			return err != ErrEmpty
		})
		cancel()
		if err != context.DeadlineExceeded {
			t.Fatalf("watched %v: WaitKernel past its deadline: %v", watched, err)
		}
	}
}
