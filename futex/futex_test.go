package futex

import (
	"errors"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// waits are the two ways to sleep, which every behaviour test runs.
var waits = []struct {
	name string
	wait func(*uint32, uint32, time.Duration) error
}{
	{"Wait", Wait},
	{"WaitHandoff", WaitHandoff},
}

func TestWaitValueChangedReturnsAtOnce(t *testing.T) {
	for _, tc := range waits {
		var w uint32 = 1
		if err := tc.wait(&w, 0, Forever); err != nil {
			t.Fatalf("%s with a stale value: %v", tc.name, err)
		}
	}
}

func TestWaitTimeout(t *testing.T) {
	for _, tc := range waits {
		var w uint32
		err := tc.wait(&w, 0, time.Millisecond)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s: got %v, want os.ErrDeadlineExceeded", tc.name, err)
		}
	}
}

func TestWakeReleasesWaiter(t *testing.T) {
	for _, tc := range waits {
		var w uint32
		done := make(chan error, 1)
		go func() {
			for atomic.LoadUint32(&w) == 0 {
				if err := tc.wait(&w, 0, Forever); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		// The waiter may or may not be asleep yet; the store makes both
		// cases end: an early wait sees the new value, a sleeping one is
		// woken.
		atomic.StoreUint32(&w, 1)
		if _, err := Wake(&w, 1); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
	}
}

// TestWaitHandoffUnderGC has sleepers go in and out of WaitHandoff while
// the garbage collector stops the world over and over, and the scheduler
// hands their Ps around: the runtime must find each sleeper's frame as
// it left it (exitsyscall throws otherwise) and every wake-up must land.
func TestWaitHandoffUnderGC(t *testing.T) {
	const sleepers, rounds = 4, 300
	var words [sleepers]uint32
	errs := make(chan error, sleepers)
	stop := make(chan struct{})
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		for {
			select {
			case <-stop:
				return
			default:
				runtime.GC()
			}
		}
	}()
	for i := range sleepers {
		go func() {
			for r := uint32(0); r < rounds; r++ {
				for atomic.LoadUint32(&words[i]) == r {
					if err := WaitHandoff(&words[i], r, Forever); err != nil {
						errs <- err
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for r := 1; r <= rounds; r++ {
		for i := range sleepers {
			atomic.StoreUint32(&words[i], uint32(r))
			if _, err := Wake(&words[i], 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	for range sleepers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-gcDone
}

func TestUnaligned(t *testing.T) {
	var word uint64 // 8-byte aligned, so one byte in is misaligned
	p := (*uint32)(unsafe.Add(unsafe.Pointer(&word), 1))
	if err := Wait(p, 0, 0); !errors.Is(err, ErrUnaligned) {
		t.Fatalf("Wait unaligned: %v", err)
	}
	if _, err := Wake(p, 1); !errors.Is(err, ErrUnaligned) {
		t.Fatalf("Wake unaligned: %v", err)
	}
}
