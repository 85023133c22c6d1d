//go:build linux

package ipc

import (
	"context"
	"os"
)

// What the tests need of the package's internals and nothing in it uses.

// selfCred is this process's own credentials.
func selfCred() Cred {
	return Cred{PID: int32(os.Getpid()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
}

// sleep waits for a token for local word i, ctx, or the end of the
// connection, as Sleep does without a limit.
func (w *sockWaker) sleep(ctx context.Context, i int) error {
	select {
	case <-w.local[i]:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-w.done:
		return nil
	}
}

// deliverOne routes one token from the peer, as the token reader does.
func (w *sockWaker) deliverOne(b byte) error { return w.deliverAll([]byte{b}) }

// isFlushing reports whether a goroutine waits to write deferred tokens:
// one found the socket buffer full.
func (w *sockWaker) isFlushing() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushing
}

// writeAll writes all of b to the socket, waiting for room as it must:
// for tests that play a peer writing raw bytes after the handshake.
func (q *quietSock) writeAll(b []byte) (int, error) {
	off := 0
	var werr error
	err := q.Write(func(fd uintptr) bool {
		n, full, err := writeNonblock(fd, b[off:])
		off += n
		werr = err
		return !full
	})
	if err == nil {
		err = werr
	}
	return off, err
}
