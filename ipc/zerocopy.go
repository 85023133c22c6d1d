//go:build linux

package ipc

// Zero-copy calls: a PendingCall writes its request in place in the
// request ring, and its Response is a view of the response ring that
// carries the reader role (call.go) until Release.

import (
	"context"
	"fmt"

	"github.com/ringipc/ringipc/ring"
)

// A zero-copy call's handles each end with exactly one call: Send or
// Abort for a PendingCall, Release for a Response. zcStage says which
// handle of a waiter is live.
type zcStage uint8

const (
	zcNone     zcStage = iota
	zcReserved         // a PendingCall awaits Send or Abort
	zcSent             // Send is waiting for the response
	zcResponse         // a Response awaits Release
)

// PendingCall is a request being written in place in the request ring
// (Client.Reserve). It holds the request ring: fill it and Send or Abort
// promptly, from the goroutine that reserved it; other calls of the
// Client wait for it whatever their contexts say.
//
// A PendingCall ends with exactly one Send or Abort. Later calls on it,
// or on a copy of it, return ErrCallDone (Bytes returns nil) and do
// nothing else. The zero value is a PendingCall that has ended.
type PendingCall struct {
	cl  *Client
	w   *waiter
	gen uint64
	r   ring.Reservation
	// A body larger than the request ring (FeatureLarge) is written in
	// the request body segment, whose largeLock the PendingCall holds;
	// its descriptor is reserved only at Send.
	body []byte
	id   uint16
}

// Response is a zero-copy response: Data is a view of the response ring,
// valid until Release. While it is held no other call of this Client can
// receive its response, so release it promptly.
//
// A Response ends with exactly one Release; a later Release, on it or on
// a copy of it, returns ErrCallDone and does nothing else. The zero value
// is a Response that has ended.
type Response struct {
	Data []byte
	cl   *Client
	w    *waiter
	gen  uint64
}

// live reports whether w, taken with gen, is still the waiter of the
// handle, at stage.
func live(w *waiter, gen uint64, stage zcStage) bool {
	return w != nil && w.gen.Load() == gen && w.stage == stage
}

// Reserve starts a zero-copy call of message id with an n-byte body.
func (cl *Client) Reserve(ctx context.Context, id uint16, n int) (PendingCall, error) {
	if n < 0 || n > cl.maxReq {
		return PendingCall{}, cl.reqTooLarge(n)
	}
	if n > cl.ringReq {
		body, err := cl.takeReqBody(ctx, n)
		if err != nil {
			return PendingCall{}, err
		}
		w := getWaiter()
		w.zc = true
		w.stage = zcReserved
		return PendingCall{cl: cl, w: w, gen: w.gen.Load(), body: body, id: id}, nil
	}
	w := getWaiter()
	w.zc = true
	// No deadline rides here: the context that bounds the call is Send's.
	r, err := cl.reserve(ctx, uint32(id), reqHdrSize+n, w, false)
	if err != nil {
		putWaiter(w)
		return PendingCall{}, err
	}
	w.stage = zcReserved
	return PendingCall{cl: cl, w: w, gen: w.gen.Load(), r: r}, nil
}

// Bytes returns the request body to fill in, or nil once the PendingCall
// has ended.
func (p *PendingCall) Bytes() []byte {
	if !live(p.w, p.gen, zcReserved) {
		return nil
	}
	if p.body != nil {
		return p.body
	}
	return p.r.Bytes()[reqHdrSize:]
}

// Send publishes the request and waits for the response, returned as a
// view that must be Released. Whatever it returns, the PendingCall has
// ended.
func (p *PendingCall) Send(ctx context.Context) (Response, error) {
	if !live(p.w, p.gen, zcReserved) {
		return Response{}, fmt.Errorf("send: %w", ErrCallDone)
	}
	return p.send(ctx, p.reserved())
}

// reserved is the body length Reserve asked for.
func (p *PendingCall) reserved() int {
	if p.body != nil {
		return len(p.body)
	}
	return len(p.r.Bytes()) - reqHdrSize
}

// SendN is Send with only the first n bytes of the body reserved, for a
// request written in place before its size was known; the rest of the
// space goes back to the request ring (ring.Reservation.CommitN). An n
// outside 0..the length reserved is an error matching ErrTooLarge that
// sends nothing and leaves the PendingCall live, to Send or Abort;
// otherwise the PendingCall has ended, as after Send.
func (p *PendingCall) SendN(ctx context.Context, n int) (Response, error) {
	if !live(p.w, p.gen, zcReserved) {
		return Response{}, fmt.Errorf("send: %w", ErrCallDone)
	}
	if r := p.reserved(); n < 0 || n > r {
		return Response{}, fmt.Errorf("send %d bytes of a %d-byte reservation: %w", n, r, ErrTooLarge)
	}
	return p.send(ctx, n)
}

func (p *PendingCall) send(ctx context.Context, n int) (Response, error) {
	cl, w := p.cl, p.w
	w.stage = zcSent
	var err error
	if p.body != nil {
		err = cl.commitLarge(ctx, p.id, n, w, false)
		<-cl.largeLock
	} else {
		err = cl.commitN(p.r, w, reqHdrSize+n)
	}
	if err != nil {
		putWaiter(w)
		return Response{}, err
	}
	// Not taken in Reserve: holding the role while the caller fills in
	// the request would hold up every other caller's response.
	cl.takeRoleIfFree(w)
	if err := cl.wait(ctx, w); err != nil {
		putWaiter(w)
		return Response{}, err
	}
	w.stage = zcResponse
	return Response{Data: w.view, cl: cl, w: w, gen: p.gen}, nil
}

// Abort gives the reserved request back unsent. It returns ErrCallDone,
// and does nothing, if the PendingCall has ended (Send or Abort before).
func (p *PendingCall) Abort() error {
	cl, w := p.cl, p.w
	if !live(w, p.gen, zcReserved) {
		return fmt.Errorf("abort: %w", ErrCallDone)
	}
	w.stage = zcNone
	if p.body != nil {
		// Nothing was registered or reserved in the ring yet.
		<-cl.largeLock
		putWaiter(w)
		return nil
	}
	p.r.Abort() //nolint:errcheck // the only outstanding reservation
	cl.sendMu.Unlock()
	cl.unregister(w)
	putWaiter(w)
	return nil
}

// Release ends the response's view and lets other calls read theirs. It
// returns ErrCallDone, and does nothing, if the Response was released
// before.
func (r *Response) Release() error {
	cl, w := r.cl, r.w
	if !live(w, r.gen, zcResponse) {
		return fmt.Errorf("release: %w", ErrCallDone)
	}
	w.stage = zcNone
	err := cl.releaseResp(w.large)
	cl.releaseRole()
	putWaiter(w)
	r.Data = nil
	if err != nil {
		return cl.ringErr(err)
	}
	return nil
}
