package ring

import "golang.org/x/sys/unix"

// osYield gives the core to another runnable thread, if any: Gosched only
// yields among goroutines, but a spinning peer process may be waiting for
// this very core.
func osYield() {
	unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) //nolint:errcheck // cannot fail
}
