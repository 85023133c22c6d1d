//go:build linux

package ipc

// Cancellation and deadlines on the client (FeatureCancel; cancel.go is
// the server's side). A call sends its context's deadline with its
// request, and a call whose context ends after its request went out
// tells the server with a cancel record, so that the server skips the
// handler or ends its Request.Context instead of working for nobody.

import (
	"context"
	"encoding/binary"
	"fmt"
)

// MaxQueuedCancels bounds the cancel records a Client keeps for later
// when it cannot write them at once (the request ring is full, or
// another goroutine is sending); one more is dropped, and counted in
// ClientStats.CancelsDropped. A cancel is advice:
// its call has already failed with its context's error, and a cancel
// that never reaches the server costs that server only the work of a
// handler nobody waits for, which it would have done anyway without
// FeatureCancel. Blocking the caller, whose context has just ended, to
// deliver it would be worse.
const MaxQueuedCancels = 64

// errCallCancelled is the error of a call the server answered
// "cancelled" while the call still waited: the server saw the call's
// deadline pass (on the clock both share) before the client's own timer
// ended the call. A call the client cancelled waits for nothing.
var errCallCancelled = fmt.Errorf("ipc: the server gave up the call at its deadline: %w", context.DeadlineExceeded)

// requestHeader is the Type word, the header size and the deadline (in
// the server's CLOCK_MONOTONIC) of a request with an n-byte body: with
// FeatureCancel and a deadline in ctx, the deadline rides in the
// request, unless the body leaves no room for it (a deadline is advice
// too: the call still ends with its context).
func (cl *Client) requestHeader(ctx context.Context, id uint16, n int) (typ uint32, hdr int, dl int64) {
	if cl.cancelOn {
		if d, ok := ctx.Deadline(); ok && n <= cl.ringReq-(reqDeadlineHdrSize-reqHdrSize) {
			return uint32(id) | reqDeadline, reqDeadlineHdrSize, monoAt(d) + cl.clockOffset
		}
	}
	return uint32(id), reqHdrSize, 0
}

// sendCancel tells the server that the call with correlation id corr was
// abandoned after its request went out, without waiting: if another
// goroutine holds the request ring (sendMu) or the ring is full, the
// cancel is kept for the next request to send first (at most
// MaxQueuedCancels). After the record it sends the request ring's
// consumer token whether or not the server sleeps, since the server must
// notice a cancel while its loop runs a handler, not only when it waits
// for requests.
func (cl *Client) sendCancel(corr uint64) {
	if !cl.sendMu.TryLock() {
		cl.queueCancel(corr)
		return
	}
	if cl.sendGone {
		cl.sendMu.Unlock()
		return
	}
	if cl.cancelsQueued.Load() != 0 {
		cl.flushCancels()
	}
	sent := cl.writeCancel(corr)
	cl.sendMu.Unlock()
	if !sent {
		cl.queueCancel(corr)
		return
	}
	cl.nudgeServer()
}

// writeCancel writes one cancel record if the ring has room; sendMu held.
func (cl *Client) writeCancel(corr uint64) bool {
	r, err := cl.reqP.TryReserve(reqCancel, cancelRecordSize)
	if err != nil {
		return false
	}
	binary.LittleEndian.PutUint64(r.Bytes(), corr)
	if r.Commit() != nil {
		return false
	}
	cl.cancelsSent.Add(1)
	return true
}

// queueCancel keeps a cancel for later, or drops it if the queue is full.
func (cl *Client) queueCancel(corr uint64) {
	cl.cancelMu.Lock()
	if cl.cancelN < len(cl.cancelQ) {
		cl.cancelQ[cl.cancelN] = corr
		cl.cancelN++
		cl.cancelsQueued.Store(int32(cl.cancelN))
	} else {
		cl.cancelsDropped.Add(1)
	}
	cl.cancelMu.Unlock()
}

// flushCancels writes the kept cancels that fit, oldest first; sendMu
// held. The Go client never reuses a correlation id within 2^32 calls
// (calltable.go), so a cancel that goes out late cannot name a later
// call.
func (cl *Client) flushCancels() {
	cl.cancelMu.Lock()
	sent := 0
	for sent < cl.cancelN && cl.writeCancel(cl.cancelQ[sent]) {
		sent++
	}
	copy(cl.cancelQ[:], cl.cancelQ[sent:cl.cancelN])
	cl.cancelN -= sent
	cl.cancelsQueued.Store(int32(cl.cancelN))
	cl.cancelMu.Unlock()
	if sent > 0 {
		cl.nudgeServer()
	}
}

// nudgeServer sends the request ring's consumer token (§6 lets a side
// send any token it may send at any time).
func (cl *Client) nudgeServer() { cl.waker.Wake(cl.waker.words[wReqCons]) }
