//go:build linux

package ipc

import (
	"context"
	"errors"
	"testing"
)

// TestDispatchQueueBytes: clients that never read their dispatch
// messages. The queue was bounded in entries only (1024 messages of up to
// the ring's maximum each); now the bytes it holds are bounded per
// connection and for the server as a whole, and the policy applies past
// either bound.
func TestDispatchQueueBytes(t *testing.T) {
	const (
		clients  = 4
		msg      = 1024
		perConn  = 16 * msg
		total    = 40 * msg // less than clients*perConn
		attempts = 64       // messages offered per client, far above both bounds
	)
	srv, addr := startServer(t, &Config{
		DispatchPolicy:     PolicyDrop,
		DispatchQueueBytes: perConn,
		MaxQueuedBytes:     total,
	}, echoService())
	for range clients {
		dial(t, addr, &ClientOptions{DispatchRingSize: MinRingSize}) // never read
	}
	waitUntil(t, func() bool { return len(srv.Conns()) == clients }, "every client connected")
	body := make([]byte, msg)
	ctx := context.Background()
	for _, c := range srv.Conns() {
		dropped := 0
		for range attempts {
			err := c.Dispatch(ctx, 1, body)
			if errors.Is(err, ErrDropped) {
				dropped++
			} else if err != nil {
				t.Fatal(err)
			}
		}
		st := c.Stats()
		if st.QueueBytes > perConn {
			t.Errorf("connection %d queues %d bytes, more than its %d", c.ID(), st.QueueBytes, perConn)
		}
		if dropped == 0 {
			t.Errorf("connection %d: nothing dropped", c.ID())
		}
	}
	st := srv.Stats()
	t.Logf("server queues %d bytes in %d messages; %d dropped", st.QueueBytes, st.QueueDepth, st.Dropped)
	if st.QueueBytes != total {
		// More: the budget leaks; less: the last connections were not
		// refused by the server's budget but by something else.
		t.Fatalf("server queues %d bytes, want its budget of %d", st.QueueBytes, total)
	}
	if got := srv.queued.Load(); got != int64(st.QueueBytes) {
		t.Fatalf("server counts %d queued bytes, connections hold %d", got, st.QueueBytes)
	}
	// Connections that end give their queued bytes back.
	for _, c := range srv.Conns() {
		c.Close()
	}
	waitUntil(t, func() bool { return len(srv.Conns()) == 0 }, "connections torn down")
	if got := srv.queued.Load(); got != 0 {
		t.Fatalf("%d queued bytes still counted after every connection ended", got)
	}
}
