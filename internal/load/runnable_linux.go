package load

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// loadavgPath is /proc/loadavg as the kernel takes a path: NUL-terminated.
var loadavgPath = [...]byte{'/', 'p', 'r', 'o', 'c', '/', 'l', 'o', 'a', 'd', 'a', 'v', 'g', 0}

// RunnableThreads returns the number of threads the kernel counts as
// runnable on the whole machine (the fourth field of /proc/loadavg,
// "running/total"), including the caller, or -1 if it cannot tell. It
// allocates nothing: a few system calls on a stack buffer. They are raw
// (procfs answers at once): syscall.Syscall's entersyscall wakes the Go
// runtime's monitor thread when the process was idle, which a waiter
// sampling the machine on its way to sleep would otherwise pay every
// SampleEvery waits.
func RunnableThreads() int {
	atFDCWD := unix.AT_FDCWD // a variable: the negative constant does not convert to uintptr
	fd, _, e := syscall.RawSyscall6(unix.SYS_OPENAT, uintptr(atFDCWD),
		uintptr(unsafe.Pointer(&loadavgPath[0])), unix.O_RDONLY|unix.O_CLOEXEC, 0, 0, 0)
	if e != 0 {
		return -1
	}
	var buf [128]byte
	n, _, e := syscall.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
	syscall.RawSyscall(unix.SYS_CLOSE, fd, 0, 0) //nolint:errcheck // read-only
	if e != 0 || int(n) <= 0 {
		return -1
	}
	return parseRunnable(buf[:n])
}
