//go:build linux

package ipc

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringipc/ringipc/internal/load"
	"github.com/ringipc/ringipc/ring"
	"golang.org/x/sys/unix"
)

// sockWaker is the ring.Waker of one side of a connection. It carries
// wake-ups over the connection's socket instead of futexes, so that a
// sleeping side is a goroutine parked in Go's netpoller (through the
// reader goroutine and a channel), not an OS thread blocked in the kernel.
//
// The connection's six ring words are split between the sides: each side
// sleeps on three (local) and wakes the peer on the other three. Wake on
// a peer's word writes that word's token to the socket; the peer's reader
// hands it to deliver, which wakes the local sleeper through its channel,
// or through its bell (an eventfd the sleeper parks on itself: the
// client's response word, bell_linux.go).
// Wake on a local word (the ring does that when this side closes it)
// signals the channel, or rings the bell, directly.
//
// No token is ever dropped. A token is written without waiting; if the
// socket buffer is full (the peer has not read what we sent), the token
// is remembered in pending and a goroutine writes it as soon as the socket
// drains. A peer that never reads only parks that one goroutine, and the
// pending set holds at most one token per word.
type sockWaker struct {
	// words, local, done, rc and send are set up before the waker is
	// used and never change: read-only, shared by every goroutine of the
	// connection.
	words [numWakeWords]*uint32
	local [numWakeWords]chan struct{} // buffered 1; nil for the peer's words
	// bells replace the channel of a local word whose sleeper parks on
	// an eventfd of its own (bell_linux.go); nil for every other word.
	// Set before the reader starts.
	bells [numWakeWords]*bell
	done  <-chan struct{} // closed once the connection ends
	rc    syscall.RawConn // the socket, for raw non-blocking token writes
	send  [numWakeWords]func(uintptr)
	// bodies receive the body segments of the directions this side
	// receives large bodies on (FeatureLarge), by body token - 0x30;
	// nil where it receives none. Set before the reader starts.
	bodies [3]*bodyIn

	tokensOut atomic.Uint64
	tokensIn  atomic.Uint64

	// behind, set before the waker is used (a server connection: its
	// server's backlog.behind), makes the token that answers a caller
	// (the client's response word) go last while the server is behind
	// and the machine busy (load.Busy): the writing goroutine first yields
	// its P to the goroutines queued on it (runtime.Gosched), then writes
	// the token with a system call the Go runtime sees (writeTokenSeen)
	// rather than a raw one. nil: never.
	//
	// Why: the token wakes a client that the kernel often runs at once
	// on the writer's CPU, preempting the writer for as long as the
	// client's turn and the queue for the CPU last, milliseconds on a
	// busy machine. A raw write keeps the goroutine's P meanwhile, and
	// with it the goroutines queued on the P: on a server that is behind,
	// the loops of other connections whose requests the netpoller
	// readied in one batch. The server's other P serves newer requests
	// and never runs short of work, so it never steals those. Yielding
	// first runs the queue before the write (the yielded goroutine waits
	// on the global queue, which either P takes from), and a seen write
	// leaves its P to the runtime's monitor should the writer still be
	// preempted. docs/design.md 2.6.5 has the measurements. Only then:
	// otherwise nothing queues behind the writer, and a yield and a seen
	// system call each may wake a thread of a process with an idle P,
	// which a paced call, or a server busy a third of the time, would pay
	// on every answer.
	behind     func() bool
	answerSeen func(uintptr) // sends the answer token through writeTokenSeen

	// onReqToken, set before the waker is used (server, FeatureCancel),
	// runs on the token reader each time a run of tokens names the
	// request ring's consumer word: the client sends one after every
	// cancel record, which the server must see while a handler runs.
	onReqToken func()

	// mu guards the deferred-token state: pending is the set of words
	// (bit i: word i) whose token waits for socket space; flushing is
	// true while a flushPending goroutine runs; closed (set by close)
	// forbids starting one. wg counts that goroutine.
	mu       sync.Mutex
	pending  uint32
	flushing bool
	closed   bool
	wg       sync.WaitGroup
}

var _ ring.Waker = (*sockWaker)(nil)

// newSockWaker prepares a waker over the payload mem of a connection
// segment with rings at offs. localWords lists the word indices this side
// sleeps on.
func newSockWaker(mem []byte, offs [3]uint64, localWords []int, rc syscall.RawConn, done <-chan struct{}) *sockWaker {
	w := &sockWaker{rc: rc, done: done}
	for r := range 3 {
		w.words[2*r] = word32(mem, offs[r]+ring.ConsumerWaitOffset)
		w.words[2*r+1] = word32(mem, offs[r]+ring.ProducerWaitOffset)
	}
	for _, i := range localWords {
		w.local[i] = make(chan struct{}, 1)
	}
	for i := range numWakeWords {
		// Built once so that a wake-up allocates nothing.
		w.send[i] = w.sender(i, writeToken)
	}
	w.answerSeen = w.sender(wRespCons, writeTokenSeen)
	return w
}

// sender returns the function that writes word i's token with write.
func (w *sockWaker) sender(i int, write func(fd uintptr, b []byte) error) func(uintptr) {
	buf := []byte{tokens[i]}
	return func(fd uintptr) {
		switch err := write(fd, buf); err {
		case nil:
			w.tokensOut.Add(1)
		case unix.EAGAIN:
			w.deferToken(i)
		}
		// Other errors: the socket is broken, the connection ends.
	}
}

// answerLast says whether w's answer token goes last (see
// sockWaker.behind): the server is behind and the machine busy. A
// variable only so that tests can make answers go last on any machine;
// nothing else writes it.
var answerLast = func(w *sockWaker) bool {
	return w.behind != nil && w.behind() && load.Busy()
}

func (w *sockWaker) index(word *uint32) int {
	for i, p := range w.words {
		if p == word {
			return i
		}
	}
	return -1
}

// Wake wakes whoever sleeps on word: a local sleeper through its channel,
// the peer through a token.
func (w *sockWaker) Wake(word *uint32) {
	i := w.index(word)
	if i < 0 {
		return
	}
	if b := w.bells[i]; b != nil {
		b.ring()
		return
	}
	if ch := w.local[i]; ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
		return
	}
	select {
	case <-w.done:
		return // nobody listens any more
	default:
	}
	// Control, not Write: Write holds the descriptor's write lock, which
	// flushPending may hold while it waits for buffer space. Errors mean
	// the socket is closed: the connection is ending and its reader
	// reports that.
	if i == wRespCons && answerLast(w) {
		runtime.Gosched()
		w.rc.Control(w.answerSeen) //nolint:errcheck
		return
	}
	w.rc.Control(w.send[i]) //nolint:errcheck
}

// deferToken remembers word i's token, which did not fit in the socket
// buffer, and makes sure a goroutine sends it once the buffer drains.
func (w *sockWaker) deferToken(i int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending |= 1 << i
	if w.flushing || w.closed {
		return
	}
	w.flushing = true
	w.wg.Add(1)
	go w.flushPending()
}

// flushPending writes the deferred tokens, waiting in the netpoller for
// the socket to take them, until none is left or the socket is closed.
func (w *sockWaker) flushPending() {
	defer w.wg.Done()
	var buf [numWakeWords]byte
	for {
		w.mu.Lock()
		p := w.pending
		w.pending = 0
		if p == 0 || w.closed {
			w.flushing = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		n := 0
		for i := range numWakeWords {
			if p&(1<<i) != 0 {
				buf[n] = tokens[i]
				n++
			}
		}
		off := 0
		var werr error
		err := w.rc.Write(func(fd uintptr) bool {
			k, full, err := writeNonblock(fd, buf[off:n])
			off += k
			w.tokensOut.Add(uint64(k))
			werr = err
			return !full // full: wait until writable
		})
		if err != nil || werr != nil {
			// The socket is closed or broken: the connection is ending,
			// and its reader reports why.
			w.mu.Lock()
			w.flushing = false
			w.mu.Unlock()
			return
		}
	}
}

// close stops deferred-token delivery and waits for its goroutine. Call it
// after closing the socket (which ends a wait for buffer space).
func (w *sockWaker) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.wg.Wait()
}

// Sleep waits for a token for word, ctx, or the end of the connection. The
// connection's teardown closes every ring before it closes done, so a
// sleeper returning nil then re-checks the ring and sees it closed.
func (w *sockWaker) Sleep(ctx context.Context, word *uint32, limit time.Duration) error {
	i := w.index(word)
	if i < 0 || w.local[i] == nil {
		// Not a word this side sleeps on: a bug, but returning lets the
		// ring re-check instead of hanging.
		return nil
	}
	if b := w.bells[i]; b != nil {
		return b.sleep(ctx, limit)
	}
	var timeout <-chan time.Time
	if limit > 0 {
		t := time.NewTimer(limit)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-w.local[i]:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-w.done:
		return nil
	case <-timeout:
		return nil
	}
}
