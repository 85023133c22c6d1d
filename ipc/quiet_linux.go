package ipc

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// quietSock is a connection's socket once its handshake is over, polled
// for reading only.
//
// Why not the net.UnixConn: Go's netpoller registers every socket for
// reading and writing. A Unix socket signals "writable" to its pollers
// each time the peer reads something it sent (the kernel frees the
// sender's buffer space and wakes whoever polls the sender for room), so
// every wake token this side sent woke this side's netpoller again when
// the peer read it: a thread of this process woken for nothing, once per
// token. With 32 client processes calling a server 1,000 times a second
// each on 2 CPUs, the server's token reads spent ~7% of the machine in
// those wake-ups of the clients (perf: recvmsg, sock_wfree,
// unix_write_space, try_to_wake_up), as much as the wake-ups the clients
// were waiting for. So after the handshake the socket leaves the
// netpoller (quiet), and a private epoll instance, registered for input
// only, stands between them: the epoll descriptor, which never reports
// itself writable, is what the netpoller watches. Waiting for room (a
// peer that stopped reading) takes a one-shot epoll instance of its own.
//
// quietSock is a syscall.RawConn for the code that used the socket's:
// Control runs f on the descriptor, Read and Write run f until it
// reports true, waiting for input or room between tries. Every method is
// safe for concurrent use; Close makes the others return net.ErrClosed
// and closes the descriptor once none of them uses it.
type quietSock struct {
	// mu is held shared around every use of the descriptor, exclusively
	// to change it (quiet, Close): a descriptor is never closed, and its
	// number reused, under a running f.
	mu     sync.RWMutex
	uc     *net.UnixConn // before quiet: the handshake's connection; nil after
	ucRC   syscall.RawConn
	fd     int // our duplicate of the socket, the same before and after quiet; -1 once closed
	closed bool

	// in is the input poller, created by quiet(true) or else by the
	// first Read that waits; inMu guards its creation and Close's
	// closing of it.
	inMu sync.Mutex
	in   *epollWait
}

var _ syscall.RawConn = (*quietSock)(nil)

// newQuietSock wraps uc, still in the netpoller for the rest of the
// handshake, and duplicates its descriptor: the one Control shows from
// now on, so that a number taken before quiet (Conn.Fd in OnConnect)
// stays the connection's.
func newQuietSock(uc *net.UnixConn) (*quietSock, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("dup", derr)
	}
	return &quietSock{uc: uc, ucRC: rc, fd: fd}, nil
}

// quiet takes the socket out of Go's netpoller: it closes the
// net.UnixConn, whose close deregisters it (EPOLL_CTL_DEL) while our
// duplicate keeps the socket open. Call it before any Read or Write
// waits: one waiting in the net.UnixConn would see it closed. With poll,
// it creates the input poller at once (a side whose goroutine reads the
// socket), so that the connection's descriptors are all there once it
// runs; without, the first Read that waits does (an external loop polls
// the socket itself).
func (q *quietSock) quiet(poll bool) error {
	q.inMu.Lock() // before mu, as in input
	defer q.inMu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return net.ErrClosed
	}
	if q.uc == nil {
		return nil
	}
	if poll {
		in, err := newEpollWait(q.fd, unix.EPOLLIN|unix.EPOLLRDHUP)
		if err != nil {
			return err
		}
		q.in = in
	}
	q.uc.Close() //nolint:errcheck // the duplicate holds the socket
	q.uc, q.ucRC = nil, nil
	return nil
}

// release closes the duplicate of a socket that never went quiet and
// leaves the net.UnixConn to its owner: for a connection that failed
// before it started, whose handshake code closes (or replies on) the
// socket.
func (q *quietSock) release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.uc == nil {
		return
	}
	q.closed = true
	unix.Close(q.fd)
	q.uc, q.ucRC, q.fd = nil, nil, -1
}

// Control runs f on the socket's descriptor.
func (q *quietSock) Control(f func(fd uintptr)) error {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		return net.ErrClosed
	}
	f(uintptr(q.fd))
	return nil
}

// try runs f on the descriptor once: done is f's answer.
func (q *quietSock) try(f func(fd uintptr) bool) (done bool, err error) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		return false, net.ErrClosed
	}
	return f(uintptr(q.fd)), nil
}

// Read runs f until it reports true, waiting for input between tries
// (f reports false after EAGAIN).
func (q *quietSock) Read(f func(fd uintptr) bool) error {
	if rc := q.netConn(); rc != nil {
		return rc.Read(f)
	}
	done, err := q.try(f)
	if err != nil || done {
		return err
	}
	return q.ReadNext(f)
}

// ReadNext is Read for a reader whose last read came back short, which
// drained the socket then: it waits for input before its first try. The
// wait's first check asks the level-triggered input poller, which
// reports input that came since, so the try that could only say EAGAIN
// is saved: two system calls per wake token instead of three.
func (q *quietSock) ReadNext(f func(fd uintptr) bool) error {
	if rc := q.netConn(); rc != nil {
		return rc.Read(f)
	}
	for {
		in, err := q.input()
		if err != nil {
			return err
		}
		if err := in.wait(); err != nil {
			return net.ErrClosed
		}
		done, err := q.try(f)
		if err != nil || done {
			return err
		}
	}
}

// Write runs f until it reports true, waiting for room between tries.
// Only a peer that stopped reading fills the socket, so each wait
// creates the one-shot poller it needs and closes it after.
func (q *quietSock) Write(f func(fd uintptr) bool) error {
	if rc := q.netConn(); rc != nil {
		return rc.Write(f)
	}
	return q.write(f, nil, roomWaitSlice)
}

// write is Write after quiet that also gives up, with errWriteStopped,
// when stop (if not nil) reports true before a wait for room. Waits for
// room last slice at most, so a stop comes into effect within that.
func (q *quietSock) write(f func(fd uintptr) bool, stop func() bool, slice time.Duration) error {
	for {
		done, err := q.try(f)
		if err != nil || done {
			return err
		}
		if stop != nil && stop() {
			return errWriteStopped
		}
		if err := q.waitRoom(slice); err != nil {
			return err
		}
	}
}

var errWriteStopped = errors.New("ipc: write stopped")

func (q *quietSock) waitRoom(slice time.Duration) error {
	q.mu.RLock()
	if q.closed {
		q.mu.RUnlock()
		return net.ErrClosed
	}
	out, err := newEpollWait(q.fd, unix.EPOLLOUT)
	q.mu.RUnlock()
	if err != nil {
		return err
	}
	defer out.close()
	// Close does not know this poller: give up after a while so that a
	// closed socket is noticed (try then says so).
	return out.waitFor(slice)
}

// roomWaitSlice bounds one wait for room in the socket in Write, which
// tries again after it.
const roomWaitSlice = 50 * time.Millisecond

// netConn returns the net.UnixConn's RawConn before quiet, nil after.
func (q *quietSock) netConn() syscall.RawConn {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.uc != nil && !q.closed {
		return q.ucRC
	}
	return nil
}

// input returns the input poller, creating it on first use.
func (q *quietSock) input() (*epollWait, error) {
	q.inMu.Lock()
	defer q.inMu.Unlock()
	if q.in != nil {
		return q.in, nil
	}
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		return nil, net.ErrClosed
	}
	in, err := newEpollWait(q.fd, unix.EPOLLIN|unix.EPOLLRDHUP)
	if err != nil {
		return nil, err
	}
	q.in = in
	return in, nil
}

// Close closes the socket. A Read waiting for input returns
// net.ErrClosed; the descriptor is closed once no f runs on it.
func (q *quietSock) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return net.ErrClosed
	}
	q.closed = true
	uc, fd := q.uc, q.fd
	q.uc, q.ucRC, q.fd = nil, nil, -1
	q.mu.Unlock()
	var uerr error
	if uc != nil {
		uerr = uc.Close()
	}
	q.inMu.Lock()
	in := q.in
	q.in = nil
	q.inMu.Unlock()
	if in != nil {
		in.close()
	}
	return errors.Join(uerr, os.NewSyscallError("close", ignoreEINTR(unix.Close(fd))))
}

func ignoreEINTR(err error) error {
	if err == unix.EINTR {
		return nil
	}
	return err
}

// epollWait is a private epoll instance watching one socket for events,
// itself watched by Go's netpoller: wait parks the goroutine until the
// instance has an event to report, without taking an OS thread.
type epollWait struct {
	f     *os.File // the epoll descriptor, pollable
	rc    syscall.RawConn
	evs   [1]unix.EpollEvent // wait's scratch, kept here so waiting allocates nothing
	ready func(fd uintptr) bool
	// fresh is set by wait before it polls: the first readiness check of
	// a wait asks the instance (epoll_wait, zero timeout), the later
	// ones, which follow a netpoller wake-up, take it at its word.
	fresh atomic.Bool
}

// newEpollWait creates an instance watching sock for events
// (level-triggered). The caller keeps sock open while it does.
func newEpollWait(sock int, events uint32) (*epollWait, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(sock)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, sock, &ev); err != nil {
		unix.Close(ep)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	// Non-blocking, so that os.NewFile hands it to the netpoller.
	if err := unix.SetNonblock(ep, true); err != nil {
		unix.Close(ep)
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(ep), "ipc-epoll")
	// Only a descriptor in the netpoller takes a deadline: one that is
	// not would make wait block a thread, or fail.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	w := &epollWait{f: f, rc: rc}
	w.ready = func(fd uintptr) bool {
		// The netpoller forgets earlier readiness when a wait starts,
		// so its first check must ask the instance: input that came
		// before would make no new edge. After the netpoller woke us,
		// the caller's own try (a recvmsg, a write) tells whether the
		// wake-up was real and waits again if not: one system call
		// fewer per wake token.
		if !w.fresh.Swap(false) {
			return true
		}
		n, err := rawEpollPoll(int(fd), w.evs[:])
		// An error other than EINTR (none is expected) ends the wait
		// too: the caller's try then says what the socket has.
		return n > 0 || (err != nil && err != unix.EINTR)
	}
	return w, nil
}

// wait returns once the socket has an event (it may have been consumed
// since: callers try again and wait again), or with an error once close
// was called.
func (w *epollWait) wait() error {
	w.fresh.Store(true)
	return w.rc.Read(w.ready)
}

// waitFor is wait for at most d: nil when d passes too.
func (w *epollWait) waitFor(d time.Duration) error {
	if err := w.f.SetReadDeadline(time.Now().Add(d)); err != nil {
		return err
	}
	if err := w.wait(); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return nil
}

func (w *epollWait) close() { w.f.Close() }
