//go:build linux

package ipc

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// dispatchZCPair is a server whose one connection the test drives
// directly, and its client, with 4 KiB dispatch rings (three 1200-byte
// messages leave no room for a fourth of 1000) and PolicyBlock.
func dispatchZCPair(t *testing.T) (*Conn, *Client) {
	t.Helper()
	srv, addr := startServer(t, &Config{DispatchPolicy: PolicyBlock}, echoService())
	cl := dial(t, addr, &ClientOptions{DispatchRingSize: MinRingSize})
	return firstConn(t, srv), cl
}

func recvBody(t *testing.T, cl *Client, ctx context.Context) Message {
	t.Helper()
	m, err := cl.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// abortThenDispatch reserves n bytes as message 10 and aborts them, then
// dispatches "after" as message 11: the client must see only the latter.
func abortThenDispatch(t *testing.T, c *Conn, ctx context.Context, n int) {
	t.Helper()
	a, err := c.ReserveDispatch(ctx, 10, n)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := c.Dispatch(ctx, 11, []byte("after")); err != nil {
		t.Fatal(err)
	}
}

// ReserveDispatch writes a message in place; CommitN sends part of it;
// Abort sends nothing; a handle ends once; sizes beyond the limit fail.
func TestReserveDispatch(t *testing.T) {
	c, cl := dispatchZCPair(t)
	ctx := testCtx(t)
	d, err := c.ReserveDispatch(ctx, 9, 100)
	if err != nil {
		t.Fatal(err)
	}
	fillPart(d.Bytes(), 1)
	stale := d
	if err := d.CommitN(101); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("CommitN(101) of 100: %v, want ErrTooLarge", err)
	}
	if err := d.CommitN(60); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{d.Commit(), stale.Commit(), stale.Abort(), d.CommitN(0)} {
		if !errors.Is(err, ErrCallDone) {
			t.Fatalf("a second end: %v, want ErrCallDone", err)
		}
	}
	if d.Bytes() != nil {
		t.Fatal("Bytes after Commit is not nil")
	}
	abortThenDispatch(t, c, ctx, 50)
	m := recvBody(t, cl, ctx)
	want := make([]byte, 60)
	fillPart(want, 1)
	if m.ID != 9 || string(m.Data) != string(want) {
		t.Fatalf("first message: id %d, %d bytes", m.ID, len(m.Data))
	}
	if m := recvBody(t, cl, ctx); m.ID != 11 || string(m.Data) != "after" {
		t.Fatalf("after an aborted reservation: id %d, %q", m.ID, m.Data)
	}
	if _, err := c.ReserveDispatch(ctx, 1, c.MaxDispatch()+1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("reserve above the limit: %v, want ErrTooLarge", err)
	}
	var zero DispatchReservation
	if err := zero.Commit(); !errors.Is(err, ErrCallDone) {
		t.Fatalf("Commit of a zero DispatchReservation: %v", err)
	}
}

// On a full ring ReserveDispatch waits, owning the producer: a Dispatch
// meanwhile queues behind it, and once the client reads, the messages
// arrive in order (the ring's, the reserved one, the queued one). A wait
// whose context ends gives the producer back. Messages queued first make
// ReserveDispatch fail with ErrTryAgain rather than overtake them.
func TestReserveDispatchFullRing(t *testing.T) {
	c, cl := dispatchZCPair(t)
	ctx := testCtx(t)
	body := make([]byte, 1200)
	fill := func() {
		for i := range 3 {
			body[0] = byte(i)
			if r, err := c.DispatchWith(ctx, 1, body, DispatchOptions{}); err != nil || r != DispatchWritten {
				t.Fatalf("filling message %d: %v, %v", i, r, err)
			}
		}
	}
	fill()
	held := func() bool {
		c.qMu.Lock()
		defer c.qMu.Unlock()
		return c.zcHeld
	}

	// A wait that ends with its context gives the producer back.
	short, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.ReserveDispatch(short, 2, 1000)
		done <- err
	}()
	waitUntil(t, held, "ReserveDispatch waiting")
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("ReserveDispatch whose context ended: %v", err)
	}
	if held() {
		t.Fatal("the producer still held after the wait ended")
	}

	type res struct {
		d   DispatchReservation
		err error
	}
	got := make(chan res, 1)
	go func() {
		d, err := c.ReserveDispatch(ctx, 2, 1000)
		got <- res{d, err}
	}()
	waitUntil(t, held, "ReserveDispatch waiting")
	// Dispatch must not touch the ring now: it queues.
	if r, err := c.DispatchWith(ctx, 3, []byte("queued"), DispatchOptions{}); err != nil || r != DispatchQueued {
		t.Fatalf("Dispatch during ReserveDispatch's wait: %v, %v; want DispatchQueued", r, err)
	}
	for i := range 3 {
		if m := recvBody(t, cl, ctx); m.ID != 1 || m.Data[0] != byte(i) {
			t.Fatalf("message %d: id %d", i, m.ID)
		}
	}
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	copy(r.d.Bytes(), "in place")
	if err := r.d.CommitN(8); err != nil {
		t.Fatal(err)
	}
	if m := recvBody(t, cl, ctx); m.ID != 2 || string(m.Data) != "in place" {
		t.Fatalf("the reserved message: id %d, %q", m.ID, m.Data)
	}
	if m := recvBody(t, cl, ctx); m.ID != 3 || string(m.Data) != "queued" {
		t.Fatalf("the queued message: id %d, %q", m.ID, m.Data)
	}

	// Queued messages go first. The flusher takes an entry off the queue
	// only after the client could already read it, and a Dispatch while
	// the queue is not empty queues: wait for the queue to drain before
	// filling the ring directly again.
	waitUntil(t, func() bool {
		c.qMu.Lock()
		defer c.qMu.Unlock()
		return c.q.len() == 0 && !c.flushing
	}, "the flusher to finish")
	fill()
	if r, err := c.DispatchWith(ctx, 4, make([]byte, 1000), DispatchOptions{}); err != nil || r != DispatchQueued {
		t.Fatalf("Dispatch on a full ring: %v, %v", r, err)
	}
	if _, err := c.ReserveDispatch(ctx, 5, 10); !errors.Is(err, ErrTryAgain) {
		t.Fatalf("ReserveDispatch behind queued messages: %v, want ErrTryAgain", err)
	}
	for range 4 {
		recvBody(t, cl, ctx)
	}
}

// A zero-copy dispatch allocates nothing, on either side (the client
// takes the messages in place with OnDispatch).
func TestReserveDispatchAllocs(t *testing.T) {
	srv, addr := startServer(t, &Config{DispatchPolicy: PolicyBlock}, echoService())
	var got atomic.Uint64
	dial(t, addr, &ClientOptions{OnDispatch: func(id uint16, body []byte) { got.Add(1) }})
	c := firstConn(t, srv)
	ctx := testCtx(t)
	var bad error
	send := func() {
		d, err := c.ReserveDispatch(ctx, 1, 64)
		if err != nil {
			bad = err
			return
		}
		d.Bytes()[0] = 1
		if err := d.Commit(); err != nil {
			bad = err
		}
	}
	for range 100 {
		send()
	}
	if n := testing.AllocsPerRun(300, send); n != 0 {
		t.Errorf("%.2f allocations per ReserveDispatch+Commit, want 0", n)
	}
	if bad != nil {
		t.Fatal(bad)
	}
	waitUntil(t, func() bool { return got.Load() == 100+1+300 }, "every message received") // AllocsPerRun warms up with one more
}

// A reservation larger than the dispatch ring is made in the dispatch
// body segment: Commit and CommitN send the body in place, Abort sends
// nothing, a Dispatch meanwhile queues behind it, and an ended handle
// stays ended.
func TestReserveDispatchLarge(t *testing.T) {
	c, cl := dispatchZCPair(t)
	ctx := testCtx(t)
	d, err := c.ReserveDispatch(ctx, 7, 100000)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Bytes()) != 100000 {
		t.Fatalf("Bytes: %d bytes, want 100000", len(d.Bytes()))
	}
	copy(d.Bytes(), pattern(100000, 1))
	// A Dispatch while the reservation lives goes behind it.
	queued := make(chan error, 1)
	go func() { queued <- c.Dispatch(ctx, 8, []byte("behind")) }()
	waitUntil(t, func() bool { return c.Stats().QueueDepth == 1 }, "the Dispatch queued")
	if err := d.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-queued; err != nil {
		t.Fatal(err)
	}
	if m := recvBody(t, cl, ctx); m.ID != 7 || string(m.Data) != string(pattern(100000, 1)) {
		t.Fatalf("the large reservation: id %d, %d bytes", m.ID, len(m.Data))
	}
	if m := recvBody(t, cl, ctx); m.ID != 8 || string(m.Data) != "behind" {
		t.Fatalf("the Dispatch behind it: id %d, %q", m.ID, m.Data)
	}
	if err := d.Commit(); !errors.Is(err, ErrCallDone) || d.Bytes() != nil {
		t.Fatalf("a second Commit: %v", err)
	}

	// CommitN of part of a larger one; then an aborted one sends nothing.
	d, err = c.ReserveDispatch(ctx, 9, 300000)
	if err != nil {
		t.Fatal(err)
	}
	copy(d.Bytes(), pattern(300000, 2))
	if err := d.CommitN(300001); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("CommitN past the reservation: %v, want ErrTooLarge", err)
	}
	if err := d.CommitN(150000); err != nil {
		t.Fatal(err)
	}
	abortThenDispatch(t, c, ctx, 50000)
	if m := recvBody(t, cl, ctx); m.ID != 9 || string(m.Data) != string(pattern(300000, 2)[:150000]) {
		t.Fatalf("CommitN(150000): id %d, %d bytes", m.ID, len(m.Data))
	}
	if m := recvBody(t, cl, ctx); m.ID != 11 || string(m.Data) != "after" {
		t.Fatalf("after an aborted large reservation: id %d, %q", m.ID, m.Data)
	}
	if _, err := c.ReserveDispatch(ctx, 1, c.MaxDispatch()+1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("reserve above MaxDispatch: %v, want ErrTooLarge", err)
	}
}

// A large reservation outlives its connection safely: the connection's
// end waits for it (the body is in a mapping the teardown unmaps), and
// its Commit then fails.
func TestReserveDispatchLargeConnectionEnds(t *testing.T) {
	srv, addr := startServer(t, &Config{DispatchPolicy: PolicyBlock}, echoService())
	cl := dial(t, addr, &ClientOptions{DispatchRingSize: MinRingSize})
	c := firstConn(t, srv)
	ctx := testCtx(t)
	d, err := c.ReserveDispatch(ctx, 7, 100000)
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
	<-c.Done()
	copy(d.Bytes(), pattern(100000, 3)) // still mapped: the teardown waits
	if err := d.Commit(); err == nil {
		t.Fatal("Commit on a connection that ended succeeded")
	}
	waitUntil(t, func() bool { return len(srv.Conns()) == 0 }, "the connection torn down")
}

// An event loop must not wait, so its ReserveDispatch stays within the
// dispatch ring: a larger one is ErrTooLarge, and says to use Dispatch.
func TestReserveDispatchLargeEventLoop(t *testing.T) {
	srv, addr, _ := startEpollServer(t, Config{}, echoService())
	dial(t, addr, &ClientOptions{DispatchRingSize: MinRingSize})
	c := firstConn(t, srv)
	if _, err := c.ReserveDispatch(testCtx(t), 7, 100000); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a large reservation on an event loop: %v, want ErrTooLarge", err)
	}
}
