// Package load samples how busy the machine is, for the waiting and
// waking code of ring and ipc: a sleeper or a waker chooses its system
// calls by it.
//
// The measure is the kernel's count of runnable threads on the whole
// machine (the fourth field of /proc/loadavg, "running/total"), taken
// against the CPUs the process may use. It is sampled once every
// SampleEvery calls of Busy or Overloaded, process-wide, so that a
// caller on a hot path pays a fraction of a µs; between samples the
// answers are the last sample's. Off Linux, or if the file cannot be
// read, every answer is false.
//
// All functions are safe for concurrent use and allocate nothing.
package load

import (
	"runtime"
	"sync/atomic"
)

// SampleEvery is how many calls of Busy and Overloaded share one sample.
const SampleEvery = 32

var (
	calls    atomic.Uint32
	busyLast atomic.Bool
	overLast atomic.Bool
)

// Busy reports whether the machine had more runnable threads than CPUs
// when last sampled: a poller would take a CPU that a runnable thread
// needs.
func Busy() bool {
	sample()
	return busyLast.Load()
}

// Overloaded is Busy with a higher bar: at least twice as many runnable
// threads as CPUs, so that a thread woken or preempted can expect to
// wait for a CPU for milliseconds, not microseconds. A paced call
// between two processes on 2 CPUs reads 3 runnable threads now and then
// (the two sides and a runtime thread), which is busy but not this.
func Overloaded() bool {
	sample()
	return overLast.Load()
}

func sample() {
	if calls.Add(1)%SampleEvery == 1 {
		r := RunnableThreads()
		n := runtime.NumCPU()
		busyLast.Store(r > n)
		overLast.Store(r >= 2*n)
	}
}

// parseRunnable reads the running count of a /proc/loadavg line
// ("0.10 0.20 0.30 2/345 6789"), -1 if the line is not of that form.
func parseRunnable(b []byte) int {
	field := 0
	for i := 0; i < len(b); i++ {
		if b[i] == ' ' {
			field++
			continue
		}
		if field == 3 {
			n, digits := 0, 0
			for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
				n = n*10 + int(b[i]-'0')
				digits++
				if digits > 9 {
					return -1
				}
			}
			if digits == 0 || i >= len(b) || b[i] != '/' {
				return -1
			}
			return n
		}
	}
	return -1
}
