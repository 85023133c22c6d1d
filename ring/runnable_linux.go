package ring

import "golang.org/x/sys/unix"

// runnableThreads returns the number of threads the kernel counts as
// runnable on the whole machine (the fourth field of /proc/loadavg,
// "running/total"), including the caller, or -1 if it cannot tell. It
// allocates nothing: a few system calls on a stack buffer.
func runnableThreads() int {
	fd, err := unix.Open("/proc/loadavg", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	var buf [128]byte
	n, err := unix.Read(fd, buf[:])
	unix.Close(fd) //nolint:errcheck // read-only
	if err != nil || n <= 0 {
		return -1
	}
	return parseRunnable(buf[:n])
}
