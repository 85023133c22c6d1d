//go:build linux

package ipc

// The client's side of large bodies (large.go): requests written into
// the request body segment, responses and dispatch messages read from
// theirs.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ringipc/ringipc/ring"
)

// sendLarge sends req, larger than the request ring carries, through the
// request body segment, registered under w (which takes the reader role
// if it is free, as a ring-sized call does). The caller then waits.
func (cl *Client) sendLarge(ctx context.Context, id uint16, req []byte, w *waiter) error {
	body, err := cl.takeReqBody(ctx, len(req))
	if err != nil {
		return err
	}
	if len(req) >= progressFrom {
		// The handler reads it next: with the stores that suit where,
		// as the server last found (near.go).
		copyPiece(body, req, cl.near.Load())
	} else {
		copyBody(body, req)
	}
	err = cl.commitLarge(ctx, id, len(req), w, true)
	<-cl.largeLock
	return err
}

// takeReqBody takes largeLock, waits until the request body segment has
// room for n bytes (the server releases bodies as their handlers
// return), and returns them to fill. On error largeLock is not held.
func (cl *Client) takeReqBody(ctx context.Context, n int) ([]byte, error) {
	if err := cl.lock(ctx, cl.largeLock); err != nil {
		return nil, err
	}
	if !cl.reqOut.room(cl.reqP, n) {
		if err := cl.waitReqRoom(ctx, n); err != nil {
			<-cl.largeLock
			return nil, err
		}
	}
	body, err := cl.reqOut.segment(n, ctx, cl.done, cl.rc)
	if err != nil {
		<-cl.largeLock
		select {
		case <-cl.done:
			return nil, cl.deadErr()
		default:
		}
		return nil, err
	}
	return body, nil
}

// waitReqRoom waits, as the one waiter on the request ring's producer
// word (spaceLock), until the request body segment has room for n bytes:
// the server's release of a large request publishes the ring's head and
// wakes us.
func (cl *Client) waitReqRoom(ctx context.Context, n int) error {
	if err := cl.lock(ctx, cl.spaceLock); err != nil {
		return err
	}
	defer func() { <-cl.spaceLock }()
	err := cl.reqP.Waiter().Wait(ctx, func() bool {
		select {
		case <-cl.done:
			return true
		default:
		}
		return cl.reqOut.room(cl.reqP, n)
	})
	if err != nil {
		return cl.ringErr(err)
	}
	select {
	case <-cl.done:
		return cl.deadErr()
	default:
	}
	return nil
}

// commitLarge writes and commits the descriptor of an n-byte request
// filled in the segment, registered under w; largeLock held (the caller
// lets go of it).
func (cl *Client) commitLarge(ctx context.Context, id uint16, n int, w *waiter, takeRole bool) error {
	// The descriptor takes the body's place after the header, which
	// carries ctx's deadline as for any request (FeatureCancel).
	typ, hdr, dl := cl.requestHeader(ctx, id, largeDescSize)
	r, err := cl.reserve(ctx, typ|typeLarge, hdr+largeDescSize, w, takeRole)
	if err != nil {
		return err
	}
	if hdr != reqHdrSize {
		binary.LittleEndian.PutUint64(r.Bytes()[reqHdrSize:], uint64(dl))
	}
	cl.reqOut.desc(r.Bytes()[hdr:], n)
	end := r.End()
	if err := cl.commit(r, w); err != nil {
		return err
	}
	cl.reqOut.sent(end)
	return nil
}

// largeBody resolves a large record's descriptor (at d, read once: it
// returns what it read) to its body in the segment of in, waiting for
// the segment's token until ctx ends. A body above the client's limit is
// ErrTooLarge for that message only; anything else wrong ends the
// connection.
func (cl *Client) largeBody(ctx context.Context, in *bodyIn, d []byte) (body []byte, desc [largeDescSize]byte, err error) {
	if len(d) != largeDescSize {
		err := fmt.Errorf("%w: %s descriptor of %d bytes", ErrProtocol, in.what, len(d))
		cl.kill(err)
		return nil, desc, err
	}
	copy(desc[:], d)
	n, gen, off := getDesc(desc[:])
	body, err = in.body(n, gen, off, ctx, cl.done)
	if err != nil && errors.Is(err, ErrProtocol) {
		cl.kill(err)
	}
	return body, desc, err
}

// releaseLarge releases a large record and hands it back at once: the
// server may be waiting to write the segment again.
func releaseLarge(c *ring.Consumer) error {
	err := c.Release()
	c.Flush()
	return err
}
