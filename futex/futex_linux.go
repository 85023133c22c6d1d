//go:build linux && !ringipc_futexpoll

package futex

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
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
	return wait(addr, val, timeout, false)
}

// WaitHandoff is Wait for a sleep expected to last: the goroutine's P
// (its share of GOMAXPROCS) goes back to the scheduler when the system
// call starts rather than when the runtime's monitor notices it blocked
// (see handoff_linux.go). That costs a little at each end (the
// scheduler's lock, and the monitor is woken on the way out) and saves
// the monitor's looks at the blocked P, one every 20 µs. Wait keeps the
// P: cheaper for a sleep of a few tens of µs, dearer the longer it
// lasts.
func WaitHandoff(addr *uint32, val uint32, timeout time.Duration) error {
	return wait(addr, val, timeout, true)
}

func wait(addr *uint32, val uint32, timeout time.Duration, handoff bool) error {
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
		var e syscall.Errno
		if handoff {
			e = futexWaitHandoff(addr, val, tsp)
			runtime.KeepAlive(tsp)
		} else {
			_, _, e = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)),
				opWait, uintptr(val), uintptr(unsafe.Pointer(tsp)), 0, 0)
		}
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
	// Raw: FUTEX_WAKE never blocks, and syscall.Syscall6's entersyscall
	// would wake this process's runtime monitor if the process was idle
	// (see handoff_linux.go), a context switch per wake-up.
	r, _, e := syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)),
		opWake, uintptr(n), 0, 0, 0)
	if e != 0 {
		return 0, fmt.Errorf("futex wake: %w", e)
	}
	return int(r), nil
}
