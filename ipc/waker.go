package ipc

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringipc/ringipc/ring"
)

// sockWaker is the ring.Waker of one side of a connection. It carries
// wake-ups over the connection's socket instead of futexes, so that a
// sleeping side is a goroutine parked in Go's netpoller (through the
// reader goroutine and a channel), not an OS thread blocked in the kernel.
//
// The connection's six ring words are split between the sides: each side
// sleeps on three (local) and wakes the peer on the other three. Wake on
// a peer's word writes that word's token to the socket; the peer's reader
// hands it to deliver, which wakes the local sleeper through its channel.
// Wake on a local word (the ring does that when this side closes it)
// signals the channel directly.
type sockWaker struct {
	// words and local are set up before the waker is used and never
	// change: read-only, shared by every goroutine of the connection.
	words [numWakeWords]*uint32
	local [numWakeWords]chan struct{} // buffered 1; nil for the peer's words
	done  <-chan struct{}             // closed once the connection ends

	rc   syscall.RawConn // the socket, for raw non-blocking token writes
	send [numWakeWords]func(uintptr) bool
	tok  [numWakeWords][1]byte

	tokensOut atomic.Uint64
	tokensIn  atomic.Uint64
	lost      atomic.Uint64 // tokens the socket buffer had no room for
}

var _ ring.Waker = (*sockWaker)(nil)

// newSockWaker prepares a waker over the payload mem of a connection
// segment with rings at offs. localWords lists the word indices this side
// sleeps on.
func newSockWaker(mem []byte, offs [3]uint64, localWords []int, rc syscall.RawConn, done <-chan struct{}) *sockWaker {
	w := &sockWaker{rc: rc, done: done}
	for r := range 3 {
		w.words[2*r] = word32(mem, offs[r]+ringConsWait)
		w.words[2*r+1] = word32(mem, offs[r]+ringProdWait)
	}
	for _, i := range localWords {
		w.local[i] = make(chan struct{}, 1)
	}
	for i := range numWakeWords {
		w.tok[i][0] = tokens[i]
		buf := w.tok[i][:]
		// Built once so that a wake-up allocates nothing.
		w.send[i] = func(fd uintptr) bool {
			if writeToken(fd, buf) {
				w.tokensOut.Add(1)
			} else {
				w.lost.Add(1)
			}
			return true
		}
	}
	return w
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
	// Errors mean the socket is closed: the connection is ending and its
	// reader reports that.
	w.rc.Write(w.send[i]) //nolint:errcheck
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

// deliver routes a token that arrived from the peer to the local
// sleeper. A token for a word this side never sleeps on breaks the
// protocol.
func (w *sockWaker) deliver(b byte) error {
	i := tokenIndex(b)
	if i < 0 || w.local[i] == nil {
		return fmt.Errorf("%w: wake token %#x", ErrProtocol, b)
	}
	w.tokensIn.Add(1)
	select {
	case w.local[i] <- struct{}{}:
	default:
	}
	return nil
}

// arm announces, as the ring does before it sleeps, that this side waits
// on word i, for callers (the external poll loop) that wait outside the
// ring. They re-check the ring after arming.
func (w *sockWaker) arm(i int) { atomic.StoreUint32(w.words[i], 1) }

// disarm withdraws an announcement that turned out needless.
func (w *sockWaker) disarm(i int) { atomic.StoreUint32(w.words[i], 0) }
