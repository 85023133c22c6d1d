//go:build linux

package ipc

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

// Ring sizes that are not powers of two round up, on both sides, and
// what the server granted (rounded, clamped, or its default) is visible
// to the client.
func TestRingSizesRoundUpAndShow(t *testing.T) {
	_, addr := startServer(t, &Config{RingSize: 5000, MaxRingSize: 40000}, echoService())
	// 5000 rounds up to 8192, 40000 to 65536.
	cl := dial(t, addr, &ClientOptions{RequestRingSize: 5000, ResponseRingSize: 1 << 20, MaxRingSize: 1 << 20, MaxMessage: -1})
	req, resp, disp := cl.RingSizes()
	if req != 8192 || resp != 65536 || disp != 8192 {
		t.Errorf("RingSizes %d, %d, %d; want 8192 (rounded up), 65536 (clamped to the rounded MaxRingSize), 8192 (the rounded default)", req, resp, disp)
	}
	if cl.MaxRequest() != MaxRequestBody(req) || cl.MaxResponse() != MaxResponseBody(resp) || cl.MaxDispatch() != MaxDispatchBody(disp) {
		t.Errorf("limits %d/%d/%d disagree with the ring sizes", cl.MaxRequest(), cl.MaxResponse(), cl.MaxDispatch())
	}
	if _, err := cl.Call(testCtx(t), msgEcho, make([]byte, cl.MaxRequest())); err != nil {
		t.Errorf("a request of MaxRequest: %v", err)
	}
}

// Every too-large error wraps ErrTooLarge and names the size, the limit
// and what raises the limit.
func TestTooLargeErrorsSayLimitAndFix(t *testing.T) {
	svc := echoService()
	const msgBig = 52
	svc.Handlers[msgBig] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		w.Respond(make([]byte, w.MaxBody()+10))
	})
	srv, addr := startServer(t, &Config{MaxMessage: 1 << 20}, svc)
	cl := dial(t, addr, &ClientOptions{RequestRingSize: 8192, ResponseRingSize: 8192, DispatchRingSize: 8192, MaxMessage: -1})
	ctx := testCtx(t)
	check := func(what string, err error, size, limit int, fix string) {
		t.Helper()
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("%s: %v, want ErrTooLarge", what, err)
		}
		msg := err.Error()
		for _, want := range []string{strconv.Itoa(size), strconv.Itoa(limit), fix} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: %q does not say %q", what, msg, want)
			}
		}
	}
	_, err := cl.Call(ctx, msgEcho, make([]byte, cl.MaxRequest()+1))
	check("request", err, cl.MaxRequest()+1, cl.MaxRequest(), "RequestRingSize")
	_, err = cl.Reserve(ctx, msgEcho, cl.MaxRequest()+1)
	check("zero-copy request", err, cl.MaxRequest()+1, cl.MaxRequest(), "RequestRingSize")
	_, err = cl.Call(ctx, msgBig, nil)
	check("response", err, cl.MaxResponse()+10, cl.MaxResponse(), "ResponseRingSize")
	c := firstConn(t, srv)
	err = c.Dispatch(ctx, 9, make([]byte, c.MaxDispatch()+1))
	check("dispatch", err, c.MaxDispatch()+1, c.MaxDispatch(), "DispatchRingSize")

	// With large bodies the limits are the MaxMessage settings, and so
	// are the fixes. The client's own limit is below the server's.
	const own = 1<<20 - 4096
	cl = dial(t, addr, &ClientOptions{MaxMessage: own})
	if cl.MaxRequest() != own {
		t.Errorf("MaxRequest %d, want the client's MaxMessage %d", cl.MaxRequest(), own)
	}
	_, err = cl.Call(ctx, msgEcho, make([]byte, own+1))
	check("large request", err, own+1, own, "ClientOptions.MaxMessage")
	_, err = cl.Call(ctx, msgBig, nil)
	check("large response", err, 1<<20+10, 1<<20, "Config.MaxMessage")
	waitUntil(t, func() bool { return len(srv.Conns()) == 2 }, "the second connection")
	for _, c := range srv.Conns() {
		if c.Large() {
			err = c.Dispatch(ctx, 9, make([]byte, 1<<20+1))
			check("large dispatch", err, 1<<20+1, 1<<20, "Config.MaxMessage")
			// Within the server's limit, above the client's: the client
			// refuses it as it arrives, and goes on.
			if err := c.Dispatch(ctx, 9, make([]byte, own+1)); err != nil {
				t.Fatal(err)
			}
			_, err = cl.Recv(ctx)
			check("dispatch above the client's limit", err, own+1, own, "ClientOptions.MaxMessage")
		}
	}
	if got, err := cl.Call(ctx, msgEcho, []byte("on")); err != nil || string(got) != "on" {
		t.Errorf("after the refusals: %q, %v", got, err)
	}
}
