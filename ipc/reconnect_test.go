//go:build linux

package ipc

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// eventLog collects a Reconnector's events for a test to read in order.
type eventLog struct{ ch chan Event }

func newEventLog() *eventLog { return &eventLog{ch: make(chan Event, 1024)} }

func (l *eventLog) on(e Event) { l.ch <- e }

// next returns the next event, skipping failed attempts if skipFailed,
// and checks its kind.
func (l *eventLog) next(t *testing.T, want EventKind, skipFailed bool) Event {
	t.Helper()
	ctx := testCtx(t)
	for {
		select {
		case e := <-l.ch:
			if skipFailed && e.Kind == EventDialFailed && want != EventDialFailed {
				continue
			}
			if e.Kind != want {
				t.Fatalf("event %v (%v), want %v", e.Kind, e.Err, want)
			}
			return e
		case <-ctx.Done():
			t.Fatalf("no %v event", want)
		}
	}
}

// noLeaks checks, once the test and its cleanups are done, that no
// goroutine started during the test is left (goleak retries while
// teardowns finish).
func noLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// tinyBackoff redials at once, give or take a millisecond: the tests
// wait for events, never for time.
func tinyBackoff(l *eventLog) *ReconnectOptions {
	return &ReconnectOptions{MinBackoff: 100 * time.Microsecond, MaxBackoff: time.Millisecond, OnEvent: l.on}
}

// checkGapErr checks the error of a call made while no connection is up:
// ErrReconnecting, and nothing that says the request may have gone out.
func checkGapErr(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrReconnecting) {
		t.Errorf("%s: %v, want ErrReconnecting", what, err)
	}
	for _, s := range append([]error{ErrDisconnected}, reasonSentinels...) {
		if errors.Is(err, s) {
			t.Errorf("%s: %v also matches %v", what, err, s)
		}
	}
}

// TestReconnectServerKilled kills a real server process: the call in
// flight fails with the crash, the application is told the server died,
// calls in the gap fail with ErrReconnecting, and once a new server
// process listens the Reconnector is connected again.
func TestReconnectServerKilled(t *testing.T) {
	noLeaks(t)
	addr := abstractAddr()
	ch := startChild(t, "server", addr, nil)
	ch.expect(t, "ready")
	events := newEventLog()
	r, err := NewReconnector(addr, testService, nil, tinyBackoff(events))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	ctx := testCtx(t)
	first := events.next(t, EventConnected, false).Client
	if got, err := r.Call(ctx, msgEcho, []byte("before")); err != nil || string(got) != "before" {
		t.Fatalf("call: %q, %v", got, err)
	}
	called := make(chan error, 1)
	go func() { _, err := r.Call(ctx, msgBlock, nil); called <- err }()
	if _, err := r.Recv(ctx); err != nil { // the child's handler runs
		t.Fatal(err)
	}

	ch.kill(t)
	err = <-called
	if !errors.Is(err, ErrDisconnected) || !errors.Is(err, ErrPeerDied) || errors.Is(err, ErrReconnecting) {
		t.Errorf("call in flight: %v, want ErrDisconnected and ErrPeerDied, not ErrReconnecting", err)
	}
	e := events.next(t, EventDisconnected, false)
	if !errors.Is(e.Err, ErrPeerDied) {
		t.Errorf("disconnected because %v, want ErrPeerDied", e.Err)
	}
	// Nothing listens at addr until the next child: the gap lasts.
	_, err = r.Call(ctx, msgEcho, nil)
	checkGapErr(t, "call in the gap", err)

	ch2 := startChild(t, "server", addr, nil)
	ch2.expect(t, "ready")
	second := events.next(t, EventReconnected, true).Client
	if second == nil || second == first {
		t.Fatalf("reconnected with client %p (first %p)", second, first)
	}
	if got, err := r.Call(ctx, msgEcho, []byte("after")); err != nil || string(got) != "after" {
		t.Fatalf("call after reconnecting: %q, %v", got, err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Call(ctx, msgEcho, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("call after Close: %v, want ErrClosed", err)
	}
}

// TestReconnectShutdown shuts a server down gracefully: the application
// is told so (not a crash), OnConnect restores the connection's state
// on every connection before it is handed out, and Recv waits across
// the gap for the next server's messages.
func TestReconnectShutdown(t *testing.T) {
	noLeaks(t)
	addr := abstractAddr()
	srv1, _ := startServerAt(t, addr, nil, echoService())
	events := newEventLog()
	ro := tinyBackoff(events)
	var mu sync.Mutex
	var restored []*Client
	ro.OnConnect = func(ctx context.Context, cl *Client) error {
		// What an application would resubscribe: here, one call.
		if _, err := cl.Call(ctx, msgEcho, []byte("resubscribe")); err != nil {
			return err
		}
		mu.Lock()
		restored = append(restored, cl)
		mu.Unlock()
		return nil
	}
	r, err := NewReconnector(addr, testService, nil, ro)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	ctx := testCtx(t)
	first := events.next(t, EventConnected, false).Client
	if cl, err := r.Wait(ctx); err != nil || cl != first {
		t.Fatalf("Wait: %p, %v; the event said %p", cl, err, first)
	}

	if err := srv1.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	e := events.next(t, EventDisconnected, false)
	if !errors.Is(e.Err, ErrServerShutdown) || errors.Is(e.Err, ErrPeerDied) {
		t.Errorf("disconnected because %v, want ErrServerShutdown", e.Err)
	}
	_, err = r.Call(ctx, msgEcho, nil)
	checkGapErr(t, "call in the gap", err)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = r.Wait(cancelled)
	checkGapErr(t, "Wait with an ended context", err)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with an ended context: %v, want context.Canceled", err)
	}
	recvd := make(chan error, 1)
	var msg Message
	go func() {
		var err error
		msg, err = r.Recv(ctx)
		recvd <- err
	}()

	startServerAt(t, addr, nil, echoService())
	second := events.next(t, EventReconnected, true).Client
	mu.Lock()
	if len(restored) != 2 || restored[0] != first || restored[1] != second {
		t.Errorf("OnConnect ran for %v, want [%p %p]", restored, first, second)
	}
	mu.Unlock()
	if _, err := r.Call(ctx, msgDispatch, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if err := <-recvd; err != nil || msg.ID != 100 {
		t.Fatalf("Recv across the reconnection: %+v, %v", msg, err)
	}
}

// fakeTimer replaces the backoff's timers: the test sees each wait asked
// for and decides when it ends.
type fakeTimer struct {
	asked chan time.Duration
	fire  chan time.Time
}

func newFakeTimer() *fakeTimer {
	return &fakeTimer{asked: make(chan time.Duration, 64), fire: make(chan time.Time)}
}

func (f *fakeTimer) timer(d time.Duration) (<-chan time.Time, func() bool) {
	f.asked <- d
	return f.fire, func() bool { return true }
}

// TestReconnectBackoff: with no server, the waits double from MinBackoff
// to MaxBackoff and stay there, jitter only shortens them, each failed
// attempt is reported with its wait, and Close ends a wait that would
// never end.
func TestReconnectBackoff(t *testing.T) {
	ms := time.Millisecond
	want := []time.Duration{1 * ms, 2 * ms, 4 * ms, 8 * ms, 10 * ms, 10 * ms, 10 * ms}
	for _, jitter := range []float64{-1, 0.5} {
		t.Run(map[bool]string{true: "no jitter", false: "jitter"}[jitter < 0], func(t *testing.T) {
			noLeaks(t)
			ft := newFakeTimer()
			events := newEventLog()
			r, err := NewReconnector(abstractAddr(), testService, nil, &ReconnectOptions{
				MinBackoff: 1 * ms, MaxBackoff: 10 * ms, Jitter: jitter, OnEvent: events.on, timer: ft.timer})
			if err != nil {
				t.Fatal(err)
			}
			for i, w := range want {
				e := events.next(t, EventDialFailed, false)
				d := <-ft.asked
				lo := w
				if jitter > 0 {
					lo = w - time.Duration(jitter*float64(w))
				}
				if d < lo || d > w || e.Delay != d || e.Attempt != i+1 || e.Err == nil {
					t.Errorf("attempt %d: waits %v (event: %v, attempt %d, %v), want %v..%v", i+1, d, e.Delay, e.Attempt, e.Err, lo, w)
				}
				if i < len(want)-1 {
					ft.fire <- time.Time{}
				}
			}
			_, err = r.Call(testCtx(t), msgEcho, nil)
			checkGapErr(t, "call with no server", err)
			// The last wait never ends by itself: Close must end it.
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Wait(testCtx(t)); !errors.Is(err, ErrClosed) {
				t.Errorf("Wait after Close: %v", err)
			}
			select {
			case e := <-events.ch:
				t.Errorf("event %v after Close", e.Kind)
			default:
			}
		})
	}
}

// TestReconnectFlapping: a server that drops each connection at once
// gets the waits of failed attempts, doubling up to MaxBackoff; a
// connection that lasted MaxBackoff (on the injected clock) starts the
// backoff over.
func TestReconnectFlapping(t *testing.T) {
	noLeaks(t)
	ms := time.Millisecond
	srv, addr := startServer(t, nil, echoService())
	ft := newFakeTimer()
	var clock atomic.Int64 // the injected now, in nanoseconds
	events := newEventLog()
	r, err := NewReconnector(addr, testService, nil, &ReconnectOptions{
		MinBackoff: 1 * ms, MaxBackoff: 8 * ms, Jitter: -1, OnEvent: events.on,
		timer: ft.timer, now: func() time.Time { return time.Unix(0, clock.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	drop := func(lasted time.Duration, want time.Duration) {
		t.Helper()
		clock.Add(int64(lasted))
		for _, c := range srv.Conns() {
			c.Close()
		}
		e := events.next(t, EventDisconnected, false)
		if !errors.Is(e.Err, ErrClosedByServer) {
			t.Errorf("disconnected because %v, want ErrClosedByServer", e.Err)
		}
		if d := <-ft.asked; d != want || e.Delay != d {
			t.Errorf("after a connection of %v: waits %v (event %v), want %v", lasted, d, e.Delay, want)
		}
		ft.fire <- time.Time{}
	}
	events.next(t, EventConnected, false)
	for _, w := range []time.Duration{1 * ms, 2 * ms, 4 * ms, 8 * ms, 8 * ms} {
		drop(0, w)
		events.next(t, EventReconnected, false)
	}
	drop(8*ms, 1*ms)
	events.next(t, EventReconnected, false)
}

// TestReconnectCloseDuringDial: an attempt stuck in the handshake (a
// listener that accepts and never answers) ends with Close, and so does
// a Wait on it with its context.
func TestReconnectCloseDuringDial(t *testing.T) {
	noLeaks(t)
	addr := abstractAddr()
	l, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	t.Cleanup(func() {
		l.Close()
		for c := range accepted {
			c.Close()
		}
	})
	r, err := NewReconnector(addr, testService, nil, &ReconnectOptions{DialTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	defer c.Close()
	wctx, cancel := context.WithCancel(testCtx(t))
	waited := make(chan error, 1)
	go func() { _, err := r.Wait(wctx); waited <- err }()
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) || !errors.Is(err, ErrReconnecting) {
		t.Errorf("Wait: %v, want context.Canceled and ErrReconnecting", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestReconnectOnConnectFails: a connection OnConnect refuses is closed
// and counts as a failed attempt; the next attempt connects.
func TestReconnectOnConnectFails(t *testing.T) {
	noLeaks(t)
	srv, addr := startServer(t, nil, echoService())
	events := newEventLog()
	ro := tinyBackoff(events)
	refuse := errors.New("not now")
	tries := 0
	ro.OnConnect = func(ctx context.Context, cl *Client) error {
		tries++ // run's goroutine only
		if tries == 1 {
			return refuse
		}
		return nil
	}
	r, err := NewReconnector(addr, testService, nil, ro)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if e := events.next(t, EventDialFailed, false); !errors.Is(e.Err, refuse) || e.Attempt != 1 {
		t.Errorf("failed attempt: %v (attempt %d), want the OnConnect error", e.Err, e.Attempt)
	}
	events.next(t, EventConnected, false)
	if got := srv.Stats().Connections; got != 2 {
		t.Errorf("%d connections established, want 2", got)
	}
	waitUntil(t, func() bool { return len(srv.Conns()) == 1 }, "the refused connection to close")
}

// TestReconnectOptions: settings a Reconnector cannot use are refused.
func TestReconnectOptions(t *testing.T) {
	for _, ro := range []ReconnectOptions{
		{MinBackoff: -1},
		{MinBackoff: 2 * time.Second, MaxBackoff: time.Second},
		{Jitter: 1.5},
		{DialTimeout: -1},
	} {
		if r, err := NewReconnector("@x", testService, nil, &ro); !errors.Is(err, os.ErrInvalid) {
			if r != nil {
				r.Close()
			}
			t.Errorf("%+v: %v, want os.ErrInvalid", ro, err)
		}
	}
}

// TestReconnectTopics: the Reconnector subscribes its topics again on
// each new connection, before OnConnect and before it reports the
// connection, including a topic registered while no server was up; a
// TopicSubscription's Recv reports the end of the old subscription
// once, then reads the new one.
func TestReconnectTopics(t *testing.T) {
	noLeaks(t)
	const topicA, topicB = 1, 2
	addr := abstractAddr()
	var cur atomic.Pointer[Server] // the server up, for OnConnect to look at
	// The topics and cur are set before the server listens: the
	// Reconnector may connect, and run OnConnect, at once.
	serve := func() *Server {
		srv, _ := startServerSetup(t, addr, nil, func(srv *Server) {
			for _, id := range []uint32{topicA, topicB} {
				if _, err := srv.AddTopic(TopicConfig{ID: id}); err != nil {
					t.Fatal(err)
				}
			}
			cur.Store(srv)
		}, echoService())
		return srv
	}
	srv1 := serve()
	events := newEventLog()
	ro := tinyBackoff(events)
	var subscribed [][2]int // per connection: topicA's and topicB's subscribers when OnConnect ran
	ro.OnConnect = func(ctx context.Context, cl *Client) error {
		srv := cur.Load()
		subscribed = append(subscribed, [2]int{srv.Topic(topicA).Subscribers(), srv.Topic(topicB).Subscribers()})
		return nil
	}
	r, err := NewReconnector(addr, testService, nil, ro)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	ctx := testCtx(t)
	events.next(t, EventConnected, false)
	a, err := r.Subscribe(ctx, topicA, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Subscribe(ctx, 99, nil); !errors.Is(err, ErrRejected) {
		t.Errorf("Subscribe to an unknown topic: %v, want ErrRejected", err)
	}
	if err := srv1.Publish(topicA, 7, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if m, err := a.Recv(ctx); err != nil || m.ID != 7 || string(m.Data) != "one" {
		t.Fatalf("Recv: %+v, %v", m, err)
	}

	if err := srv1.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Recv(ctx); !errors.Is(err, ErrDisconnected) {
		t.Errorf("Recv as the server shut down: %v, want ErrDisconnected", err)
	}
	events.next(t, EventDisconnected, false)
	// Registered in the gap: subscribed by the next connection.
	b, err := r.Subscribe(ctx, topicB, nil)
	if err != nil {
		t.Fatal(err)
	}
	gapCtx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := a.Recv(gapCtx); !errors.Is(err, ErrReconnecting) || !errors.Is(err, context.Canceled) {
		t.Errorf("Recv in the gap: %v, want ErrReconnecting and context.Canceled", err)
	}
	type result struct {
		m   Message
		err error
	}
	got := make(chan result, 2)
	for _, ts := range []*TopicSubscription{a, b} {
		go func() { m, err := ts.Recv(ctx); got <- result{m, err} }()
	}

	srv2 := serve()
	events.next(t, EventReconnected, true)
	// Subscriptions start with what is published after them: these
	// arrive only because both topics were subscribed before the event.
	if err := srv2.Publish(topicA, 8, []byte("two")); err != nil {
		t.Fatal(err)
	}
	if err := srv2.Publish(topicB, 9, []byte("three")); err != nil {
		t.Fatal(err)
	}
	want := map[uint16]string{8: "two", 9: "three"}
	for range 2 {
		res := <-got
		if res.err != nil || want[res.m.ID] != string(res.m.Data) {
			t.Errorf("Recv after reconnecting: %+v, %v", res.m, res.err)
		}
		delete(want, res.m.ID)
	}
	if len(subscribed) != 2 || subscribed[0] != [2]int{0, 0} || subscribed[1] != [2]int{1, 1} {
		t.Errorf("subscribers of A and B when OnConnect ran: %v, want [[0 0] [1 1]]", subscribed)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Recv(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Recv after Close: %v", err)
	}
	waitUntil(t, func() bool { return srv2.Topic(topicA).Subscribers() == 0 }, "the closed subscription to go")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Recv(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Recv after the Reconnector's Close: %v", err)
	}
}

// TestReconnectTopicReplaced: the server closes only the service
// connection, so the topic's subscription is still live when the
// Reconnector subscribes again on the new connection; Recv says once
// that what was published in between is lost, then reads the new one.
func TestReconnectTopicReplaced(t *testing.T) {
	noLeaks(t)
	const topic = 1
	srv, addr := startServer(t, nil, echoService())
	if _, err := srv.AddTopic(TopicConfig{ID: topic}); err != nil {
		t.Fatal(err)
	}
	events := newEventLog()
	r, err := NewReconnector(addr, testService, nil, tinyBackoff(events))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	ctx := testCtx(t)
	events.next(t, EventConnected, false)
	ts, err := r.Subscribe(ctx, topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Publish(topic, 1, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if m, err := ts.Recv(ctx); err != nil || string(m.Data) != "one" {
		t.Fatalf("Recv: %+v, %v", m, err)
	}
	firstConn(t, srv).Close()
	if e := events.next(t, EventDisconnected, false); !errors.Is(e.Err, ErrClosedByServer) {
		t.Errorf("disconnected because %v, want ErrClosedByServer", e.Err)
	}
	events.next(t, EventReconnected, true)
	if err := srv.Publish(topic, 2, []byte("two")); err != nil {
		t.Fatal(err)
	}
	_, err = ts.Recv(ctx)
	if !errors.Is(err, ErrDisconnected) {
		t.Errorf("first Recv after the renewal: %v, want ErrDisconnected", err)
	}
	if m, err := ts.Recv(ctx); err != nil || string(m.Data) != "two" {
		t.Fatalf("Recv of the new subscription: %+v, %v", m, err)
	}
}
