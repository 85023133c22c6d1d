//go:build !linux || ringipc_futexpoll

package futex

import (
	"os"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"
)

// Off Linux there is no futex, and no portable way to sleep on a word
// another process may change. Wait therefore polls: it re-reads the word
// yieldPolls times with runtime.Gosched in between, then after naps that
// grow from pollMin to pollMax, so it ends within about pollMax of the
// change, in this process or another mapping the same memory. Wake has
// nothing to wake and reports 0 waiters. This keeps the ring package
// (which works on any []byte) usable and testable on every platform; it
// is correct, only slower to notice a change.
const (
	yieldPolls = 100
	pollMin    = 10 * time.Microsecond
	pollMax    = time.Millisecond
)

// Wait returns nil once *addr no longer holds val, or os.ErrDeadlineExceeded
// after timeout (Forever for no limit). See the note above on polling.
func Wait(addr *uint32, val uint32, timeout time.Duration) error {
	if uintptr(unsafe.Pointer(addr))%4 != 0 {
		return ErrUnaligned
	}
	var deadline time.Time
	if timeout >= 0 {
		deadline = time.Now().Add(timeout)
	}
	// A change often comes within microseconds (the peer was running):
	// look a few times, yielding in between, before napping.
	for range yieldPolls {
		if atomic.LoadUint32(addr) != val {
			return nil
		}
		runtime.Gosched()
	}
	nap := pollMin
	for atomic.LoadUint32(addr) == val {
		d := nap
		if timeout >= 0 {
			left := time.Until(deadline)
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			d = min(d, left)
		}
		time.Sleep(d)
		nap = min(2*nap, pollMax)
	}
	return nil
}

// Wake returns 0: a polling Wait needs no wake-up.
func Wake(addr *uint32, n int) (int, error) {
	if uintptr(unsafe.Pointer(addr))%4 != 0 {
		return 0, ErrUnaligned
	}
	return 0, nil
}

// WaitHandoff is Wait: a polling wait holds no P while it naps.
func WaitHandoff(addr *uint32, val uint32, timeout time.Duration) error {
	return Wait(addr, val, timeout)
}
