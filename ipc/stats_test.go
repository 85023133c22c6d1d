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

// ServiceStats breaks the counters down per service, counts the open
// connections and the refused handshakes of each, and with Config.Timing
// records one handler and one queueing time per handled call.
func TestServiceStats(t *testing.T) {
	const refusing = testService + 1
	refuse := &Service{ID: refusing, Name: "refusing", OnConnect: func(*Conn) error { return errors.New("no") }}
	srv, addr := startServer(t, &Config{Timing: true}, echoService(), refuse)
	ctx := testCtx(t)
	if _, err := Dial(ctx, addr, refusing, nil); err == nil {
		t.Fatal("the refusing service accepted a connection")
	}
	cl := dial(t, addr, nil)
	const calls = 5
	for range calls {
		if _, err := cl.Call(ctx, msgEcho, []byte("four")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.Call(ctx, msgFail, nil); !errors.Is(err, ErrHandler) {
		t.Fatalf("failing call: %v", err)
	}
	waitUntil(t, func() bool { return len(srv.Conns()) == 1 }, "the connection")
	// A call is timed once its handler has returned, after the response
	// that ended the call was published: the last may not be in yet.
	waitUntil(t, func() bool {
		ss := srv.ServiceStats()
		return len(ss) > 0 && ss[0].Handler.Count == calls+1 && ss[0].Queue.Count == calls+1
	}, "the last call's timing")
	check := func(when string, open uint64) {
		t.Helper()
		ss := srv.ServiceStats()
		if len(ss) != 2 || ss[0].ID != testService || ss[1].ID != refusing || ss[1].Name != "refusing" {
			t.Fatalf("%s: services %+v", when, ss)
		}
		echo, ref := ss[0], ss[1]
		if st := srv.Stats(); st.Open != open || echo.Stats.Open != open {
			t.Errorf("%s: %d open on the server, %d on the service, want %d", when, st.Open, echo.Stats.Open, open)
		}
		if echo.Stats.Calls != calls+1 || echo.Stats.ErrorResponses != 1 || echo.Stats.BytesIn != 4*calls || echo.Stats.Rejected != 0 {
			t.Errorf("%s: echo service %+v", when, echo.Stats)
		}
		if ref.Stats.Rejected != 1 || ref.Stats.Calls != 0 || ref.Stats.Open != 0 {
			t.Errorf("%s: refusing service %+v", when, ref.Stats)
		}
		for _, h := range []struct {
			name string
			h    Histogram
		}{{"handler", echo.Handler}, {"queue", echo.Queue}} {
			var n uint64
			for _, c := range h.h.Counts {
				n += c
			}
			if h.h.Count != calls+1 || n != h.h.Count {
				t.Errorf("%s: %s histogram holds %d (buckets %d), want %d", when, h.name, h.h.Count, n, calls+1)
			}
		}
		if ref.Handler.Count != 0 {
			t.Errorf("%s: refusing service timed %d calls", when, ref.Handler.Count)
		}
	}
	check("live", 1)
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return len(srv.Conns()) == 0 }, "the server to retire the connection")
	check("retired", 0)
}

// Without Config.Timing nothing reads the clock and the histograms stay
// empty.
func TestServiceStatsTimingOff(t *testing.T) {
	srv, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, nil)
	if _, err := cl.Call(testCtx(t), msgEcho, nil); err != nil {
		t.Fatal(err)
	}
	ss := srv.ServiceStats()
	if len(ss) != 1 || ss[0].Stats.Calls != 1 || ss[0].Handler.Count != 0 || ss[0].Queue.Count != 0 {
		t.Errorf("service stats %+v", ss)
	}
}
