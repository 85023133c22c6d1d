//go:build linux

package ipc

import (
	"errors"
	"testing"
)

// The exported body limits are what a live connection with rings of
// those sizes and no large bodies (MaxMessage -1) reports, and what it
// carries: a body of the limit goes through each ring, one byte more is
// ErrTooLarge.
func TestBodyLimits(t *testing.T) {
	const reqSize, respSize, dispSize = 8 << 10, 16 << 10, 4 << 10
	maxBody := make(chan int, 1)
	svc := echoService()
	const msgMaxBody = 51
	svc.Handlers[msgMaxBody] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		maxBody <- w.MaxBody()
		w.Respond(make([]byte, w.MaxBody()))
	})
	srv, addr := startServer(t, nil, svc)
	cl := dial(t, addr, &ClientOptions{RequestRingSize: reqSize, ResponseRingSize: respSize, DispatchRingSize: dispSize, MaxMessage: -1})
	ctx := testCtx(t)

	if got, want := cl.MaxRequest(), MaxRequestBody(reqSize); got != want {
		t.Errorf("MaxRequest %d, MaxRequestBody %d", got, want)
	}
	if _, err := cl.Call(ctx, msgEcho, make([]byte, MaxRequestBody(reqSize)+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("request of MaxRequestBody+1: %v, want ErrTooLarge", err)
	}
	resp, err := cl.Call(ctx, msgMaxBody, make([]byte, MaxRequestBody(reqSize)))
	if err != nil || len(resp) != MaxResponseBody(respSize) {
		t.Errorf("request of MaxRequestBody answered with %d bytes (%v), want MaxResponseBody %d", len(resp), err, MaxResponseBody(respSize))
	}
	if got := <-maxBody; got != MaxResponseBody(respSize) {
		t.Errorf("ResponseWriter.MaxBody %d, MaxResponseBody %d", got, MaxResponseBody(respSize))
	}

	waitUntil(t, func() bool { return len(srv.Conns()) == 1 }, "the connection")
	c := srv.Conns()[0]
	if got, want := c.MaxDispatch(), MaxDispatchBody(dispSize); got != want {
		t.Errorf("MaxDispatch %d, MaxDispatchBody %d", got, want)
	}
	if err := c.Dispatch(ctx, 9, make([]byte, MaxDispatchBody(dispSize)+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("dispatch of MaxDispatchBody+1: %v, want ErrTooLarge", err)
	}
	if err := c.Dispatch(ctx, 9, make([]byte, MaxDispatchBody(dispSize))); err != nil {
		t.Fatal(err)
	}
	if m, err := cl.Recv(ctx); err != nil || len(m.Data) != MaxDispatchBody(dispSize) {
		t.Errorf("dispatch of MaxDispatchBody: %d bytes, %v", len(m.Data), err)
	}
}
