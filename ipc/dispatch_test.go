//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"
)

// dispatchSetup connects a client that does not read its dispatch ring
// (MinRingSize) to a server whose dispatch queue holds 4 messages.
func dispatchSetup(t *testing.T, policy Policy, onDisc func(*Conn, error)) (*Client, *Conn) {
	t.Helper()
	svc := echoService()
	if onDisc != nil {
		svc.OnDisconnect = onDisc
	}
	srv, addr := startServer(t, &Config{DispatchQueue: 4, DispatchPolicy: policy}, svc)
	cl := dial(t, addr, &ClientOptions{DispatchRingSize: MinRingSize})
	conns := srv.Conns()
	if len(conns) != 1 {
		t.Fatalf("%d connections", len(conns))
	}
	return cl, conns[0]
}

// fillUntilBlocked dispatches numbered messages until one blocks (a short
// deadline ends its wait) and returns how many went through.
func fillUntilBlocked(t *testing.T, ctx context.Context, c *Conn) int {
	t.Helper()
	sent := 0
	for {
		dctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		err := c.Dispatch(dctx, 9, seq(sent))
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return sent
		}
		if err != nil {
			t.Fatal(err)
		}
		sent++
	}
}

func seq(i int) []byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	return b[:]
}

// recvAll reads n messages and checks they are first..first+n-1 in
// order, each of id 9.
func recvAll(t *testing.T, cl *Client, first, n int) {
	t.Helper()
	ctx := testCtx(t)
	for i := first; i < first+n; i++ {
		m, err := cl.Recv(ctx)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if got := binary.LittleEndian.Uint64(m.Data); got != uint64(i) || m.ID != 9 {
			t.Fatalf("message %d: id %d seq %d", i, m.ID, got)
		}
	}
}

func TestDispatchBlock(t *testing.T) {
	cl, c := dispatchSetup(t, PolicyBlock, nil)
	ctx := testCtx(t)
	sent := fillUntilBlocked(t, ctx, c)
	fc := cl.FlowControl()
	if !fc.Active || fc.Queued != 4 || fc.Events != 1 {
		t.Errorf("flow control %+v, want active with 4 queued", fc)
	}
	if st := c.Stats(); st.QueueDepth != 4 || st.FlowEvents != 1 {
		t.Errorf("stats %+v", st)
	}
	// A blocked Dispatch completes once the client reads.
	blocked := make(chan error)
	go func() { blocked <- c.Dispatch(ctx, 9, seq(sent)) }()
	recvAll(t, cl, 0, sent+1)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	if fc := cl.FlowControl(); fc.Active || fc.Queued != 0 {
		t.Errorf("flow control after draining: %+v", fc)
	}
	t.Logf("%d messages fit in ring and queue", sent)
}

func TestDispatchDrop(t *testing.T) {
	cl, c := dispatchSetup(t, PolicyDrop, nil)
	ctx := testCtx(t)
	sent, dropped := 0, 0
	for range 1000 {
		err := c.Dispatch(ctx, 9, seq(sent))
		switch {
		case err == nil:
			sent++
		case errors.Is(err, ErrDropped):
			dropped++
		default:
			t.Fatal(err)
		}
	}
	if dropped == 0 {
		t.Fatal("nothing dropped")
	}
	fc := cl.FlowControl()
	if fc.Dropped != uint64(dropped) || !fc.Active {
		t.Errorf("flow control %+v, want %d dropped", fc, dropped)
	}
	if st := c.Stats(); st.Dropped != uint64(dropped) {
		t.Errorf("stats dropped %d, want %d", st.Dropped, dropped)
	}
	recvAll(t, cl, 0, sent)
	// Dispatch works again once the client has caught up and the
	// server's queue has drained: the flusher takes entries off the
	// queue only after it has committed them, so for a moment after the
	// client read the last one the queue may still count them full.
	waitUntil(t, func() bool { fc := cl.FlowControl(); return !fc.Active && fc.Queued == 0 }, "the dispatch queue to drain")
	if err := c.Dispatch(ctx, 9, seq(sent)); err != nil {
		t.Fatal(err)
	}
	recvAll(t, cl, sent, 1)
}

func TestDispatchDisconnect(t *testing.T) {
	var mu sync.Mutex
	var discErr error
	discDone := make(chan struct{})
	cl, c := dispatchSetup(t, PolicyDisconnect, func(_ *Conn, err error) {
		mu.Lock()
		discErr = err
		mu.Unlock()
		close(discDone)
	})
	ctx := testCtx(t)
	var err error
	accepted := 0
	for ; ; accepted++ {
		if err = c.Dispatch(ctx, 9, seq(accepted)); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrSlowConsumer) {
		t.Fatalf("Dispatch: %v, want ErrSlowConsumer", err)
	}
	<-discDone
	// Counted as a slow consumer, not a violation; what was accepted but
	// never reached the ring is counted lost.
	st := c.Stats()
	if st.SlowConsumers != 1 || st.ProtocolErrors != 0 || st.Errors != 1 {
		t.Errorf("slow consumers %d, protocol errors %d, errors %d; want 1, 0, 1", st.SlowConsumers, st.ProtocolErrors, st.Errors)
	}
	if st.LostDispatches == 0 || st.LostDispatches != uint64(accepted)-st.Dispatches {
		t.Errorf("%d dispatches accepted, %d written, %d counted lost", accepted, st.Dispatches, st.LostDispatches)
	}
	mu.Lock()
	if !errors.Is(discErr, ErrSlowConsumer) {
		t.Errorf("OnDisconnect got %v", discErr)
	}
	mu.Unlock()
	<-cl.Done()
	if _, err := cl.Call(ctx, msgEcho, nil); !errors.Is(err, ErrDisconnected) {
		t.Errorf("call after disconnect: %v", err)
	}
	if err := c.Dispatch(ctx, 9, nil); !errors.Is(err, ErrDisconnected) {
		t.Errorf("dispatch after disconnect: %v", err)
	}
}

func TestDispatchHandler(t *testing.T) {
	_, addr := startServer(t, nil, echoService())
	got := make(chan Message, 300)
	cl := dial(t, addr, &ClientOptions{OnDispatch: func(id uint16, body []byte) {
		got <- Message{ID: id, Data: append([]byte(nil), body...)}
	}})
	ctx := testCtx(t)
	if _, err := cl.Call(ctx, msgDispatch, []byte{200}); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		m := <-got
		if m.ID != uint16(100+i) || len(m.Data) != 1 || m.Data[0] != byte(i) {
			t.Fatalf("message %d: %+v", i, m)
		}
	}
	if _, err := cl.Recv(ctx); err == nil {
		t.Fatal("Recv worked with OnDispatch set")
	}
}

// With no queue (DispatchQueue < 0) a blocked Dispatch waits for ring
// space itself, and completes once the client reads.
func TestDispatchBlockWithoutQueue(t *testing.T) {
	srv, addr := startServer(t, &Config{DispatchQueue: -1, DispatchPolicy: PolicyBlock}, echoService())
	cl := dial(t, addr, &ClientOptions{DispatchRingSize: MinRingSize})
	c := srv.Conns()[0]
	ctx := testCtx(t)
	sent := fillUntilBlocked(t, ctx, c)
	if fc := cl.FlowControl(); fc.Queued != 0 {
		t.Errorf("flow control %+v: nothing may be queued", fc)
	}
	blocked := make(chan error)
	go func() { blocked <- c.Dispatch(ctx, 9, seq(sent)) }()
	recvAll(t, cl, 0, sent+1)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
}

// The dispatch loop lingers while lingering finds messages, stops after
// a few that find none, and then lingers only to probe, one time in
// lingerProbeEvery.
func TestDispatchLingerDecisions(t *testing.T) {
	var l linger
	// A sparse stream from the start: only probes.
	probes := 0
	for range 10 * lingerProbeEvery {
		if l.should() {
			probes++
			l.result(false)
		}
	}
	if probes != 10 {
		t.Fatalf("%d lingers in %d sparse waits, want 10 probes", probes, 10*lingerProbeEvery)
	}
	// A probe finds a message: the stream is dense again.
	for !l.should() {
	}
	l.result(true)
	for range 100 {
		if !l.should() {
			t.Fatal("stopped lingering while lingers found messages")
		}
		l.result(true)
	}
	// The stream thins out: lingering stops after a few misses.
	misses := 0
	for l.should() {
		l.result(false)
		if misses++; misses > 3 {
			t.Fatalf("still lingering after %d misses", misses)
		}
	}
}
