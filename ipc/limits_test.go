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
	cl := dial(t, addr, &ClientOptions{RequestRingSize: 5000, ResponseRingSize: 1 << 20, MaxRingSize: 1 << 20})
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
	srv, addr := startServer(t, nil, svc)
	cl := dial(t, addr, &ClientOptions{RequestRingSize: 8192, ResponseRingSize: 8192, DispatchRingSize: 8192})
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
}
