package ring

import (
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Asymmetric fences (docs/design.md 2.6.6): a streaming SPSC producer
// publishes its tail with a plain release store, and a consumer that
// announces a sleep makes every CPU running a registered process execute
// a full barrier (membarrier(2), MEMBARRIER_CMD_GLOBAL_EXPEDITED) before
// its re-check. The barrier the Dekker pair needs is then paid once per
// sleep by the side about to sleep, instead of once per record by the
// side that is busy.

// The membarrier commands used (linux/membarrier.h).
const (
	membarrierQuery            = 0
	membarrierGlobalExpedited  = 1 << 1
	membarrierRegisterGlobalEx = 1 << 2
)

var fences struct {
	once sync.Once
	ok   bool
	// issued counts fenceOthers calls, for tests.
	issued atomic.Uint64
}

// asymmetricFences reports whether this process takes part: the kernel
// has the global expedited membarrier, this process is registered for it
// (so a peer's barrier reaches its threads), and a first barrier worked.
// It registers on first use.
func asymmetricFences() bool {
	fences.once.Do(func() {
		q, _, e := syscall.RawSyscall(unix.SYS_MEMBARRIER, membarrierQuery, 0, 0)
		need := uintptr(membarrierGlobalExpedited | membarrierRegisterGlobalEx)
		if e != 0 || q&need != need {
			return
		}
		if _, _, e := syscall.RawSyscall(unix.SYS_MEMBARRIER, membarrierRegisterGlobalEx, 0, 0); e != 0 {
			return
		}
		if _, _, e := syscall.RawSyscall(unix.SYS_MEMBARRIER, membarrierGlobalExpedited, 0, 0); e != 0 {
			return
		}
		fences.ok = true
	})
	return fences.ok && !fencesDisabled.Load()
}

// AsymmetricFences reports whether this process takes part in asymmetric
// fences (docs/design.md 2.6.6): its streaming SPSC producers publish
// without a full barrier per record, and its consumers fence their
// producers before they sleep. It is false where the kernel lacks
// membarrier(2)'s global expedited command or a seccomp policy refuses
// it; rings then keep a full barrier on every publish. The first call
// registers the process.
func AsymmetricFences() bool { return asymmetricFences() }

// fencesDisabled turns the scheme off for rings set up after it is set
// (tests, to measure and check the fenced protocol alone).
var fencesDisabled atomic.Bool

// fenceOthers makes every running thread of every registered process
// pass a full barrier before it returns. Only asymmetricFences' callers
// call it, after its first barrier worked: the command then fails only
// for want of kernel memory, and the caller may not sleep without the
// barrier, so it tries again.
func fenceOthers() {
	fences.issued.Add(1)
	for {
		_, _, e := syscall.RawSyscall(unix.SYS_MEMBARRIER, membarrierGlobalExpedited, 0, 0)
		if e == 0 {
			return
		}
		runtime.Gosched()
	}
}
