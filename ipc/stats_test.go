//go:build linux

package ipc

import (
	"errors"
	"testing"
)

// A retired connection's counters stay in the server's totals, each in
// its own field.
func TestStatsSurviveRetirement(t *testing.T) {
	svc := echoService()
	const msgPanic = 52
	svc.Handlers[msgPanic] = HandlerFunc(func(*ResponseWriter, *Request) { panic("counted") })
	srv, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	for range 3 {
		if _, err := cl.Call(ctx, msgEcho, []byte("four")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.Call(ctx, msgFail, nil); !errors.Is(err, ErrHandler) {
		t.Fatalf("failing call: %v", err)
	}
	if _, err := cl.Call(ctx, msgPanic, nil); !errors.Is(err, ErrHandlerPanic) {
		t.Fatalf("panicking call: %v", err)
	}
	if _, err := cl.Call(ctx, msgDispatch, []byte{2}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return len(srv.Conns()) == 1 }, "the connection")
	live := srv.Conns()[0].Stats()
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return len(srv.Conns()) == 0 }, "the server to retire the connection")
	st := srv.Stats()
	type pair struct {
		name       string
		live, tot  uint64
		atLeastOne bool
	}
	for _, p := range []pair{
		{"Calls", live.Calls, st.Calls, true},
		{"Responses", live.Responses, st.Responses, true},
		{"ErrorResponses", live.ErrorResponses, st.ErrorResponses, true},
		{"Dispatches", live.Dispatches, st.Dispatches, true},
		{"Dropped", live.Dropped, st.Dropped, false},
		{"FlowEvents", live.FlowEvents, st.FlowEvents, false},
		{"BytesIn", live.BytesIn, st.BytesIn, true},
		{"BytesOut", live.BytesOut, st.BytesOut, true},
		{"Errors", live.Errors, st.Errors, false},
		{"Panics", live.Panics, st.Panics, true},
	} {
		if p.tot != p.live || (p.atLeastOne && p.live == 0) {
			t.Errorf("%s: %d on the live connection, %d in the server's totals after it retired", p.name, p.live, p.tot)
		}
	}
}
