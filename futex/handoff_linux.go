//go:build linux && !ringipc_futexpoll

package futex

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// WaitHandoff's FUTEX_WAIT tells the Go runtime that it will block before
// it starts, the way the runtime's own blocking sleeps do (notetsleepg):
// entersyscallblock hands the goroutine's P to the scheduler at once, and
// exitsyscall takes an idle one back when the wait ends. Wait's plain
// syscall.Syscall6 keeps the P in its system-call state instead, and
// while it does, the runtime's monitor thread (sysmon) cannot sleep: it
// looks at the P every 20 µs for the first millisecond of the wait, then
// at doubling intervals, each look a wake-up and a context switch of its
// own. With 32 client processes calling one server at 1,000/s each on 2
// vCPUs (ringbench fanin), where a call waits milliseconds, those looks
// were a third of the machine's context switches. A thread blocked here
// holds no P, so the scheduler and garbage collector never wait for it,
// and a process whose goroutines all sleep lets its monitor sleep too.
//
// The hand-off is not free: if no other thread of the process is in the
// netpoller, the scheduler wakes one to sit there, and taking an idle P
// back on the way out wakes the monitor. For a wait of a few tens of µs
// (a 64-byte call at 1,000/s on an idle machine) that made the call's
// p50 40 -> 134-153 µs and its CPU 223-255 -> 305-342 µs, so the ring
// package hands off only on a machine with no CPU to spare, where a wait
// lasts as long as the peer waits for one.
//
// Both runtime functions are ones the runtime keeps reachable by
// linkname for code outside it (go.dev/issue/67401), with the signature
// it promises not to change; syscall.Syscall6 is this same sequence with
// entersyscall.

//go:linkname entersyscallblock runtime.entersyscallblock
func entersyscallblock()

//go:linkname exitsyscall runtime.exitsyscall
func exitsyscall()

// futexWaitHandoff makes one FUTEX_WAIT with the P handed off. ts may be nil (no
// timeout). It must not grow the stack between entering and leaving the
// system-call state, hence nosplit, and it must be the frame that calls
// both, since exitsyscall checks the frame entersyscallblock saved.
// addr is shared memory, not Go heap, and the caller keeps ts alive.
//
//go:nosplit
//go:norace
func futexWaitHandoff(addr *uint32, val uint32, ts *unix.Timespec) syscall.Errno {
	entersyscallblock()
	_, _, e := syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)),
		opWait, uintptr(val), uintptr(unsafe.Pointer(ts)), 0, 0)
	exitsyscall()
	return e
}
