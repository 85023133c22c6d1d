//go:build linux

package ipc

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"
)

// Token reading, the same on both sides (Client.readLoop, Conn.readLoop,
// Conn.Process).
//
// An honest peer sends a token only for a sleep this side announced, so
// it never has more than a few outstanding: a reader that finds its small
// buffer full faces a burst it did not ask for. It then takes one large
// buffer without waiting, and if that comes back full too the peer is
// flooding: the goroutine reader pauses before it reads again, and an
// external loop's Process reads no more this turn (the descriptor stays
// readable, so the loop comes back after serving the others). Either way
// a flooding peer gets at most tokenLarge bytes of work per pause or per
// turn, and only its own connection's wake-ups wait. Tokens are idempotent
// (one wakes the sleeper as well as a thousand), so a run of them is
// checked byte by byte but signals each word once.
const (
	tokenSmall = 128      // bytes read per wake-up; more than an honest peer has outstanding
	tokenLarge = 64 << 10 // bytes read at once from a peer that sent more
	// floodPause is how long a goroutine reader waits after a full large
	// read: it bounds a flooding peer's cost to ~64 KiB of tokens per
	// millisecond, and the delay it adds to that connection's own
	// wake-ups and end-of-file.
	floodPause = time.Millisecond
)

var tokenBufs = sync.Pool{New: func() any { return new([tokenLarge]byte) }}

// tokenFloodWait pauses a flooded goroutine reader; tests replace it.
var tokenFloodWait = func(done <-chan struct{}) {
	t := time.NewTimer(floodPause)
	defer t.Stop()
	select {
	case <-t.C:
	case <-done:
	}
}

// deliverAll routes a run of tokens from the peer to the local sleepers:
// every byte must be a token for a word this side sleeps on (else the
// peer broke the protocol), and each word named is signalled once. It is
// deliver for reads that can carry no descriptor.
func (w *sockWaker) deliverAll(b []byte) error { return w.deliver(b, nil) }

// deliver is deliverAll for a run that may end with a body token
// (FeatureLarge) and the one descriptor that came with it, which goes to
// that direction's bodyIn. A body token this side does not receive, or
// a count of descriptors other than that of body tokens, is a protocol
// violation; the descriptors are then closed.
func (w *sockWaker) deliver(b []byte, fds []int) error {
	if len(b) == 0 {
		closeFds(fds)
		return nil
	}
	var seen uint32
	last := -1
	var body *bodyIn
	bodies := 0
	for _, t := range b {
		if d, ok := isBodyToken(t); ok {
			if body = w.bodies[d]; body == nil {
				closeFds(fds)
				return fmt.Errorf("%w: body token %#x", ErrProtocol, t)
			}
			bodies++
			continue
		}
		if int(t) == last {
			continue
		}
		i := tokenIndex(t)
		if i < 0 || w.local[i] == nil {
			closeFds(fds)
			return fmt.Errorf("%w: wake token %#x", ErrProtocol, t)
		}
		seen |= 1 << i
		last = int(t)
	}
	if bodies != len(fds) || bodies > 1 {
		closeFds(fds)
		return fmt.Errorf("%w: %d body tokens with %d descriptors", ErrProtocol, bodies, len(fds))
	}
	if body != nil {
		body.stage(fds[0])
	}
	w.tokensIn.Add(uint64(len(b)))
	if seen&(1<<wReqCons) != 0 && w.onReqToken != nil {
		w.onReqToken()
	}
	for i := range numWakeWords {
		if seen&(1<<i) == 0 {
			continue
		}
		if b := w.bells[i]; b != nil {
			b.ring()
		} else {
			select {
			case w.local[i] <- struct{}{}:
			default:
			}
		}
	}
	return nil
}

// tokenOOB is the control buffer of a token read: room for a few
// descriptors, so that a peer sending more than the one a body token
// carries is seen doing it (and its descriptors closed).
const tokenOOB = 64

// readTokenLoop is a side's token reader goroutine: it reads tokens until
// the socket ends or the peer breaks the protocol, and returns why the
// connection ends (end of file or a reset is the peer leaving or dying).
// done is closed when the connection ends for another reason.
func readTokenLoop(rc syscall.RawConn, w *sockWaker, done <-chan struct{}) error {
	var small [tokenSmall]byte
	var oob [tokenOOB]byte
	// recvmsg, not read: a body token's descriptor would be closed by
	// the kernel on a read. A read stops after a message that carries
	// descriptors, so those belong to its last byte.
	tr := newTokenReader(rc, small[:], oob[:])
	drained := false
	for {
		n, fds, err := tr.next(drained)
		if errors.Is(err, ErrProtocol) {
			return err
		}
		if derr := w.deliver(small[:n], fds); derr != nil {
			return derr
		}
		if err == nil && n == 0 {
			err = io.EOF
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrDisconnected, err)
		}
		if drained = n < len(small); drained {
			continue
		}
		full, err := readTokensLarge(rc, w)
		if err != nil {
			return err
		}
		if full {
			tokenFloodWait(done)
		}
	}
}

// readTokensLarge reads one large buffer of tokens without waiting and
// delivers them; full says the buffer was filled (the peer floods). An
// error ends the connection.
func readTokensLarge(rc syscall.RawConn, w *sockWaker) (full bool, err error) {
	buf := tokenBufs.Get().(*[tokenLarge]byte)
	defer tokenBufs.Put(buf)
	var oob [tokenOOB]byte
	n, fds, eof, rerr := recvTokens(rc, buf[:], oob[:])
	if rerr != nil && !eof {
		return false, rerr
	}
	if derr := w.deliver(buf[:n], fds); derr != nil {
		return false, derr
	}
	if eof {
		if rerr == nil {
			rerr = io.EOF
		}
		return false, fmt.Errorf("%w: %w", ErrDisconnected, rerr)
	}
	return n == len(buf), nil
}

// readTokensTurn is one external-loop turn's token reading: a small read
// and, if that is full, one large one; never more, so a flooding peer
// cannot keep Process from returning. Tokens left in the socket keep the
// descriptor readable for the next turn.
func (c *Conn) readTokensTurn() error {
	var oob [tokenOOB]byte
	n, fds, eof, err := recvTokens(c.rc, c.tokBuf[:], oob[:])
	if err != nil && !eof {
		return err
	}
	if derr := c.waker.deliver(c.tokBuf[:n], fds); derr != nil {
		return derr
	}
	if eof {
		if err == nil {
			err = io.EOF
		}
		return fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	if n < len(c.tokBuf) {
		return nil
	}
	_, err = readTokensLarge(c.rc, c.waker)
	return err
}
