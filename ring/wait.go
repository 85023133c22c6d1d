package ring

import (
	"context"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/ringipc/ringipc/futex"
)

// spinner bounds a polling loop by time. Reading the clock every poll
// would cost more than the poll, so it looks every 64 iterations (a wait
// shorter than that never reads the clock). And now and then it yields: the processor to other goroutines (two spinners in one process
// with GOMAXPROCS=2 would starve everything else), and the OS thread to
// other processes, since a peer waiting for our core cannot answer while
// we spin on it.
type spinner struct {
	budget time.Duration
	done   <-chan struct{} // the caller's ctx.Done(), looked at with the clock
	start  time.Time
	n      int
}

func newSpinner(budget time.Duration, done <-chan struct{}) spinner {
	return spinner{budget: budget, done: done}
}

// again reports whether the caller should poll once more.
func (s *spinner) again() bool {
	if s.budget <= 0 {
		return false
	}
	s.n++
	if s.n&63 != 0 {
		return true
	}
	// Not ctx.Err(), which takes the context's lock: a receive attempt
	// on Done, with the clock, every 64 polls.
	select {
	case <-s.done:
		s.budget = 0
		return false
	default:
	}
	if s.n == 64 {
		s.start = time.Now()
		return true
	}
	if s.n&1023 == 0 {
		runtime.Gosched()
		if s.n&4095 == 0 {
			osYield()
		}
	}
	return time.Since(s.start) < s.budget
}

// sleepFutex waits on word (which the caller has set to 1 and re-checked)
// until it is cleared, ctx ends, or limit passes (limit <= 0: no limit).
// It returns ctx's error when ctx has ended and nil otherwise; callers
// re-check their condition either way.
func sleepFutex(ctx context.Context, word *uint32, limit time.Duration) error {
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
			if atomic.SwapUint32(word, 0) != 0 {
				futex.Wake(word, 0) //nolint:errcheck
			}
		})
		defer func() {
			if !stop() {
				<-ran
			}
		}()
	}
	err := futex.Wait(word, 1, timeout)
	if err == os.ErrDeadlineExceeded {
		err = nil
	}
	if err != nil {
		return err
	}
	return ctx.Err()
}

// announce sets a futex word to say "I am about to sleep".
func announce(word *uint32) { atomic.SwapUint32(word, 1) } // a Dekker store: see publishWord

// unannounce withdraws the announcement when the caller will not sleep
// after all, so the peer does not pay for a needless wake-up. Only a word
// with a single sleeper may be withdrawn: on the MPSC producers' word it
// could erase another producer's announcement and lose its wake-up.
func unannounce(word *uint32) { atomic.StoreUint32(word, 0) }
