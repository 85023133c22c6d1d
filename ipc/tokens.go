//go:build linux

package ipc

import (
	"fmt"
	"io"
	"net"
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
// peer broke the protocol), and each word named is signalled once.
func (w *sockWaker) deliverAll(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	var seen uint32
	last := -1
	for _, t := range b {
		if int(t) == last {
			continue
		}
		i := tokenIndex(t)
		if i < 0 || w.local[i] == nil {
			return fmt.Errorf("%w: wake token %#x", ErrProtocol, t)
		}
		seen |= 1 << i
		last = int(t)
	}
	w.tokensIn.Add(uint64(len(b)))
	if seen&(1<<wReqCons) != 0 && w.onReqToken != nil {
		w.onReqToken()
	}
	for i := range numWakeWords {
		if seen&(1<<i) != 0 {
			select {
			case w.local[i] <- struct{}{}:
			default:
			}
		}
	}
	return nil
}

// readTokenLoop is a side's token reader goroutine: it reads tokens until
// the socket ends or the peer breaks the protocol, and returns why the
// connection ends (end of file or a reset is the peer leaving or dying).
// done is closed when the connection ends for another reason.
func readTokenLoop(nc *net.UnixConn, rc syscall.RawConn, w *sockWaker, done <-chan struct{}) error {
	var small [tokenSmall]byte
	for {
		n, err := nc.Read(small[:])
		if derr := w.deliverAll(small[:n]); derr != nil {
			return derr
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrDisconnected, err)
		}
		if n < len(small) {
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
	n, eof, rerr := readTokens(rc, buf[:])
	if derr := w.deliverAll(buf[:n]); derr != nil {
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
	n, eof, err := readTokens(c.rc, c.tokBuf[:])
	if derr := c.waker.deliverAll(c.tokBuf[:n]); derr != nil {
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
