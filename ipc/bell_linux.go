package ipc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// bell is how the one sleeper of a hot local word (the client's response
// ring consumer word: callers waiting for their answers) is woken by the
// connection's token reader: an eventfd of this process, in Go's
// netpoller, which the sleeper parks on itself.
//
// Why not the word's channel, as for the other words: a channel send
// readies the sleeper from the reader's goroutine, and when the process
// has an idle P the runtime then wakes a second thread to run it (wakep),
// so every response woke two threads of the client. With 32 client
// processes at 1,000 calls/s each on 2 CPUs (ringbench fanin), perf
// sched counted three busy threads per client where a socket client has
// two, and those wake-ups were a good part of the clients' CPU per call
// (docs/design.md 2.6.5 has the figures). Writing the eventfd
// readies nothing: the reader's thread, going back to the netpoller once
// it has read the tokens, finds the sleeper there (a zero-timeout poll)
// and runs it itself.
//
// The eventfd's count is never read. A ring counts itself in rung, in
// this process's memory, before it writes the eventfd; the sleeper
// compares rung with the count it last saw, before it parks and after
// each netpoller wake-up. So a sleep makes no system call of its own (it
// read the eventfd twice before: once to find it empty, once to empty
// it), and a wake-up left over from an earlier ring, which the sleeper
// already took from rung, does not end the next sleep. Every write still
// makes a new edge for the netpoller's edge-triggered registration (an
// eventfd signals its pollers on each write, readable or not), and the
// count, one per ring, cannot reach the eventfd's limit of 2^64 - 2.
// The netpoller's readiness from a write that came before the park is
// forgotten when the sleep starts (prepareRead), which is why the first
// check must be rung's.
//
// Concurrency: only the word's sleeper calls sleep (the reader role of
// the client has one holder at a time), so seen and got are its own.
// ring may be called from any goroutine. Every use of the descriptor goes
// through the os.File (RawConn), which keeps the number from being closed
// and reused under a late ring.
type bell struct {
	f  *os.File
	rc syscall.RawConn

	// rung counts the rings: added to by ring (any goroutine) before its
	// eventfd write, read by the sleeper. The Add happens before the
	// write, and the write before the netpoller's wake-up of the
	// sleeper, so a sleeper woken by a write sees its count.
	rung atomic.Uint64

	// Owned by the sleeper.
	seen uint64 // rung as of the last sleep that ended rung
	got  bool   // this sleep was rung

	// Written by the sleeper, atomic so that tests may read them:
	// timeouts counts the sleeps in a row that ended at their slice,
	// parks the times the sleeper found the bell silent and parked.
	timeouts atomic.Int32
	parks    atomic.Uint64

	readFn  func(fd uintptr) bool // built once: sleep allocates nothing
	writeFn func(fd uintptr)
}

// bellSlice and bellSlices bound how late a sleeper on a bell sees its
// context cancelled when the context has no earlier deadline: the netpoller
// cannot watch a channel, so a sleep lasts at most bellSlice, and after
// bellSlices such sleeps in a row (a long wait, where an allocation no
// longer matters) the context's cancellation rings the bell itself
// (context.AfterFunc). A deadline is always kept to the netpoller's
// precision.
const (
	bellSlice  = 2 * time.Millisecond
	bellSlices = 3
)

// bellOne is the eventfd increment a ring writes.
var bellOne = [8]byte{1}

func newBell() (*bell, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ipc-bell")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	b := &bell{f: f, rc: rc}
	b.readFn = func(uintptr) bool {
		if r := b.rung.Load(); r != b.seen {
			b.seen = r
			b.got = true
			return true
		}
		b.parks.Add(1)
		return false // not rung yet: park in the netpoller
	}
	b.writeFn = func(fd uintptr) {
		// EAGAIN only if the count would overflow: it is rung already.
		syscall.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&bellOne[0])), 8) //nolint:errcheck
	}
	return b, nil
}

// ring wakes the sleeper, or makes its next sleep return at once. After
// close it does nothing.
func (b *bell) ring() {
	b.rung.Add(1)
	b.rc.Control(b.writeFn) //nolint:errcheck // closed: nobody sleeps any more
}

// sleep waits until the bell is rung, ctx ends or limit passes (limit <=
// 0: no limit), at most bellSlice while ctx can be cancelled (see
// bellSlices). It returns ctx's error if ctx ended, else nil; it may
// return spuriously.
func (b *bell) sleep(ctx context.Context, limit time.Duration) error {
	var dl time.Time
	earlier := func(t time.Time) {
		if dl.IsZero() || t.Before(dl) {
			dl = t
		}
	}
	var now time.Time
	if limit > 0 || ctx.Done() != nil {
		now = time.Now()
	}
	if limit > 0 {
		earlier(now.Add(limit))
	}
	if d, ok := ctx.Deadline(); ok {
		earlier(d)
	}
	var stop func() bool
	if ctx.Done() != nil {
		if b.timeouts.Load() < bellSlices {
			earlier(now.Add(bellSlice))
		} else {
			stop = context.AfterFunc(ctx, b.ring)
		}
	}
	if err := b.f.SetReadDeadline(dl); err != nil {
		return ctx.Err() // closed: the connection has ended
	}
	b.got = false
	err := b.rc.Read(b.readFn)
	if stop != nil {
		stop()
	}
	switch {
	case b.got:
		b.timeouts.Store(0)
	case errors.Is(err, os.ErrDeadlineExceeded):
		b.timeouts.Add(1)
	}
	return ctx.Err()
}

// close releases the eventfd. A sleeper still in sleep returns.
func (b *bell) close() error { return b.f.Close() }
