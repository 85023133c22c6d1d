//go:build linux

package ipc

// Progress notes (FeatureProgress, docs/ipc.md §5.4.1): the server writes
// a large response into its segment in pieces and, after each, commits a
// note saying how much is written; the client copies those bytes out
// while the next piece goes in. The final response is an ordinary large
// record and all a client needs: a note only saves copying its bytes
// again.

import (
	"encoding/binary"
	"fmt"
)

// progressFrom is the smallest body that goes with progress notes, and
// the smallest request the client writes with non-temporal stores: two
// pieces and more. Bodies of 512 KiB to 16 MiB gained from both, 128 KiB
// and 256 KiB ones measured alike (docs/design.md §3.5).
const progressFrom = 256<<10 + 1

// progressPiece is how much of the body the server writes between two
// notes, but for the first and the last piece, which are progressEdge:
// the client starts copying sooner, and has less left to copy once the
// server is done (8 interleaved pairs against 128 KiB throughout: 1 MiB
// calls 7.8-10.6 k/s against 6.9-10.3 k/s, 4 MiB 2.0-2.3 k/s against
// 1.2-2.3 k/s, 512 KiB and 16 MiB alike).
const (
	progressPiece = 128 << 10
	progressEdge  = 32 << 10
)

// pieceEnd returns where the piece of an n-byte body (n > 2*progressEdge)
// that starts at off ends.
func pieceEnd(off, n int) int {
	if off == 0 {
		return progressEdge
	}
	if end := min(off+progressPiece, n-progressEdge); end > off {
		return end
	}
	return n
}

// notes reports whether Respond sends an n-byte body with progress notes:
// a large body of at least progressFrom bytes, within the limit, to a
// client that asked for them, from a connection served by goroutines
// (an external loop must not wait for room between pieces), before the
// handler answered.
func (w *ResponseWriter) notes(n int) bool {
	c := w.c
	return c.progress && !c.external && !w.done && !w.reserved &&
		n >= progressFrom && n > c.maxResp && n <= c.maxResponse()
}

// progress takes a note for correlation id c, of a total-byte body whose
// first len(body) bytes are written (desc: its descriptor, read once).
// The reader copies them now only into its own caller's Call or CallInto
// destination (own; no other goroutine can then abandon the call under
// it); notes for other calls are released unread. A note for no call at
// all, or without FeatureProgress, is a protocol violation, as a
// response would be.
func (cl *Client) progress(b *readBatch, own *waiter, c, total uint64, large bool, tooBig error, desc [largeDescSize]byte, body []byte, flags uint64) error {
	if cl.features&FeatureProgress == 0 || !large {
		err := fmt.Errorf("%w: progress note (response status %d) without FeatureProgress or a large body", ErrProtocol, respProgress)
		cl.kill(err)
		return err
	}
	b.lock(cl)
	known := cl.waiters.get(c) != nil || cl.orphans > 0 || cl.dead
	b.unlock(cl)
	if !known {
		err := fmt.Errorf("%w: progress note for correlation id %#x, which no call awaits", ErrProtocol, c)
		cl.kill(err)
		return err
	}
	// Released before its piece is copied: the server times how soon
	// (near.go), and the body stays until the final response's release.
	if err := cl.releaseResp(true); err != nil {
		return cl.ringErr(err)
	}
	cl.near.Store(flags&noteNear != 0)
	if own != nil && own.corr == c && tooBig == nil {
		if n := own.note(total, desc, body, cl.respIn.limit); n > 0 {
			cl.progressBytes.Add(uint64(n))
		}
	}
	return nil
}

// note copies what a progress note says is written of w's large
// response, body (the first bytes of a total-byte body, at most limit),
// into w's destination: the caller's buffer (CallInto) or one of total
// bytes (Call, allocated at the first note, as the final response would
// have), and returns how many it copied. A zero-copy or streamed call
// takes nothing from notes, and neither does a call whose notes named
// another body than its earlier ones: an honest server never does that,
// and taking them would let a server that keeps changing its mind make
// this client copy (and, for Call, allocate) a whole body per note. So a
// call copies at most one body from notes and allocates at most once.
func (w *waiter) note(total uint64, desc [largeDescSize]byte, body []byte, limit int) (copied int) {
	if w.zc || w.stream || w.unnoted || total > uint64(limit) || uint64(len(body)) > total {
		return 0
	}
	binary.LittleEndian.PutUint64(desc[:], total) // as the final record will say
	if w.have > 0 && desc != w.noted {
		w.have, w.unnoted = 0, true // the final response is copied whole
		return 0
	}
	if len(body) <= w.have {
		return 0
	}
	var dst []byte
	switch {
	case w.into:
		if total > uint64(len(w.buf)) {
			return 0 // ErrShortBuffer, once the final response says so
		}
		dst = w.buf
	default:
		if uint64(len(w.out)) != total {
			w.out = make([]byte, total)
		}
		dst = w.out
	}
	// The server's pieces are below memmove's non-temporal threshold, so
	// this copy is cached: the caller reads its answer next.
	copied = copy(dst[w.have:len(body)], body[w.have:])
	w.have, w.noted = len(body), desc
	return copied
}

// copyRest copies body into dst, whose first have bytes already hold it
// (from progress notes), and returns len(body).
func copyRest(dst, body []byte, have int) int {
	if have > 0 {
		return have + copy(dst[have:], body[have:])
	}
	return copyBody(dst, body)
}
