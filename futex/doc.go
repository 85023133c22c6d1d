// Package futex waits on and wakes a 32-bit word that may live in memory
// shared between processes.
//
// The futexes are shared (FUTEX_PRIVATE_FLAG is never set) because the
// waiter and the waker are usually different processes mapping the same
// pages. Shared futexes also work on private memory, such as the Go heap,
// which is what the ring package's unit tests use.
//
// # Caveats
//
// A goroutine blocked in Wait holds an OS thread for as long as it sleeps;
// the Go runtime starts another thread for the other goroutines. Code that
// may park thousands of waiters should wait on a descriptor in the netpoller
// instead. Wait also keeps the goroutine's P until the runtime's monitor
// thread takes it back, which costs the monitor a look every 20 µs while
// the sleep lasts; WaitHandoff gives the P back as the sleep starts, at a
// cost of its own at each end (handoff_linux.go says which to use when).
//
// Wake is a raw system call (syscall.RawSyscall6): it never blocks, and
// announcing it to the runtime would wake an idle process's monitor.
//
// The word must be 4-byte aligned. Wait and Wake are safe for concurrent use
// by any number of goroutines and processes.
//
// Off Linux, and on Linux when built with the tag ringipc_futexpoll (which
// CI uses to run the ring tests the way other systems would), Wait polls
// the word with growing naps of up to a millisecond and Wake does nothing:
// correct, only slower to notice a change.
package futex
