package futex

import (
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

func TestWaitValueChangedReturnsAtOnce(t *testing.T) {
	var w uint32 = 1
	if err := Wait(&w, 0, Forever); err != nil {
		t.Fatalf("Wait with a stale value: %v", err)
	}
}

func TestWaitTimeout(t *testing.T) {
	var w uint32
	err := Wait(&w, 0, time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Wait: got %v, want os.ErrDeadlineExceeded", err)
	}
}

func TestWakeReleasesWaiter(t *testing.T) {
	var w uint32
	done := make(chan error, 1)
	go func() {
		for atomic.LoadUint32(&w) == 0 {
			if err := Wait(&w, 0, Forever); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	// The waiter may or may not be asleep yet; the store makes both cases
	// end: an early Wait sees the new value, a sleeping one is woken.
	atomic.StoreUint32(&w, 1)
	if _, err := Wake(&w, 1); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
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
