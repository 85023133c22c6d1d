package ipc

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The system calls of the wake-token path that cannot block are made raw.
//
// syscall.Syscall, and x/sys/unix's wrappers, tell the Go runtime that a
// system call starts (entersyscall). If every P of the process was idle
// until then, that also wakes the runtime's monitor thread (sysmon), which
// then looks at the process every 20 µs until it is idle again. A process
// that wakes once per call to send one token and read another paid that
// context switch, and the monitor's own, on every call: with 32 client
// processes calling one server 1,000 times a second each on 2 vCPUs
// (ringbench fanin), the monitors' wake-ups were a quarter of the
// clients' context switches. The calls below return at once (the
// descriptors are non-blocking, epoll_wait is given a zero timeout), so
// they need no hand-over of the P and are made the way the runtime makes
// its own: raw.
//
// One exception: on a busy machine, the token of a server's answer is
// written through syscall.Syscall (writeTokenSeen, sockWaker.behind).

// rawWrite is write(2) on a non-blocking descriptor.
func rawWrite(fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := syscall.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(p), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawRecvmsg is recvmsg(2) on a non-blocking descriptor.
func rawRecvmsg(fd int, msg *unix.Msghdr, flags int) (int, error) {
	n, _, e := syscall.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(msg)), uintptr(flags))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawEpollPoll is epoll_wait(2) with a zero timeout: the events ready now.
func rawEpollPoll(ep int, evs []unix.EpollEvent) (int, error) {
	n, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
