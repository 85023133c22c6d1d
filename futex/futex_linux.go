//go:build linux && !ringipc_futexpoll

package futex

import (
	"fmt"
	"math"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Futex operations from linux/futex.h; the private flag is left out on
// purpose, since waiter and waker live in different processes.
const (
	opWait = 0 // FUTEX_WAIT
	opWake = 1 // FUTEX_WAKE
)

// Wait sleeps while *addr holds val, for at most timeout (Forever for no
// limit) measured on the monotonic clock. It returns nil when woken, when
// *addr no longer holds val (at once, without sleeping), or on a spurious
// wake-up: callers re-check their condition in a loop. It returns
// os.ErrDeadlineExceeded when the timeout expires. EINTR is retried with the
// time that remains.
func Wait(addr *uint32, val uint32, timeout time.Duration) error {
	if uintptr(unsafe.Pointer(addr))%4 != 0 {
		return ErrUnaligned
	}
	var deadline time.Time
	if timeout >= 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		var tsp *unix.Timespec
		var ts unix.Timespec
		if timeout >= 0 {
			left := time.Until(deadline)
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			ts = unix.NsecToTimespec(left.Nanoseconds())
			tsp = &ts
		}
		// FUTEX_WAIT takes a relative timeout on CLOCK_MONOTONIC.
		_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)),
			opWait, uintptr(val), uintptr(unsafe.Pointer(tsp)), 0, 0)
		switch e {
		case 0, unix.EAGAIN:
			return nil
		case unix.EINTR:
			if atomic.LoadUint32(addr) != val {
				return nil
			}
			continue
		case unix.ETIMEDOUT:
			return os.ErrDeadlineExceeded
		default:
			return fmt.Errorf("futex wait: %w", e)
		}
	}
}

// Wake wakes at most n waiters sleeping on addr (n <= 0 wakes all of them)
// and returns how many it woke.
func Wake(addr *uint32, n int) (int, error) {
	if uintptr(unsafe.Pointer(addr))%4 != 0 {
		return 0, ErrUnaligned
	}
	if n <= 0 || n > math.MaxInt32 {
		n = math.MaxInt32
	}
	r, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)),
		opWake, uintptr(n), 0, 0, 0)
	if e != 0 {
		return 0, fmt.Errorf("futex wake: %w", e)
	}
	return int(r), nil
}
