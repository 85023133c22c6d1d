//go:build linux

package ipc

import (
	"bytes"
	"errors"
	"testing"
)

// Body segments count against Config.MaxMemory: a dispatch or a response
// whose segment would pass the budget fails with ErrLimit and the
// connection goes on; a request whose segment the server would have to
// map past it ends the connection; and a connection's segments are given
// back when it ends.
func TestMaxMemoryBodies(t *testing.T) {
	_, rings := layout([3]uint64{DefaultRingSize, DefaultRingSize, DefaultRingSize}, ringBytes)
	const msgBig = 63
	svc := echoService()
	svc.Handlers[msgBig] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		if err := w.Respond(make([]byte, 1<<20)); err != nil {
			if !errors.Is(err, ErrLimit) {
				t.Errorf("a response past the budget: %v, want ErrLimit", err)
			}
			w.Fail(7, err.Error())
		}
	})
	// Room for the rings and one 2 MiB body segment: a 300 KiB body's.
	srv, addr := startServer(t, &Config{MaxMemory: int64(rings) + 2<<20}, svc)
	ctx := testCtx(t)

	cl := dial(t, addr, nil)
	c := firstConn(t, srv)
	small := pattern(300<<10, 1)
	if _, err := c.DispatchWith(ctx, 1, small, DispatchOptions{Policy: PolicyBlock}); err != nil {
		t.Fatalf("a 300 KiB dispatch within the budget: %v", err)
	}
	if m, err := cl.Recv(ctx); err != nil || !bytes.Equal(m.Data, small) {
		t.Fatalf("received %d bytes, %v", len(m.Data), err)
	}
	// A 3 MiB body needs a larger segment, which passes the budget.
	if _, err := c.DispatchWith(ctx, 1, make([]byte, 3<<20), DispatchOptions{Policy: PolicyBlock}); !errors.Is(err, ErrLimit) {
		t.Fatalf("a 3 MiB dispatch past the budget: %v, want ErrLimit", err)
	}
	// So does a response segment; the handler fails the call instead.
	var he *HandlerError
	if _, err := cl.Call(ctx, msgBig, nil); !errors.As(err, &he) || he.Code != 7 {
		t.Fatalf("a 1 MiB response past the budget: %v, want the handler's failure", err)
	}
	if got, err := cl.Call(ctx, msgEcho, []byte("still here")); err != nil || string(got) != "still here" {
		t.Fatalf("a call after refused bodies: %q, %v", got, err)
	}
	// A request segment the server would map past the budget ends the
	// connection.
	if _, err := cl.Call(ctx, msgEcho, make([]byte, 1<<20)); err == nil {
		t.Fatal("a 1 MiB request past the server's budget was answered")
	}
	<-cl.Done()
	waitUntil(t, func() bool { return len(srv.Conns()) == 0 }, "the connection gone")

	// Its 2 MiB went back with it: a new connection gets them.
	dial(t, addr, nil)
	c = firstConn(t, srv)
	if _, err := c.DispatchWith(ctx, 1, small, DispatchOptions{Policy: PolicyBlock}); err != nil {
		t.Fatalf("a 300 KiB dispatch on a new connection: %v", err)
	}
}
