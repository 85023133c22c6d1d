//go:build linux

package ipc

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func newTestBell(t *testing.T) *bell {
	t.Helper()
	b, err := newBell()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.close() })
	return b
}

// sleepAsync starts b.sleep(ctx, 0) and returns what it returns.
func sleepAsync(b *bell, ctx context.Context) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- b.sleep(ctx, 0) }()
	return ch
}

// A ring before the sleep is kept: the sleep returns at once, which a
// lost ring would turn into a hang (the sleep has no deadline).
func TestBellRingBeforeSleep(t *testing.T) {
	b := newTestBell(t)
	b.ring()
	if err := b.sleep(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if b.parks.Load() != 0 {
		t.Fatalf("parked %d times with a ring waiting", b.parks.Load())
	}
}

// A sleeper parked in the netpoller wakes when rung from another
// goroutine.
func TestBellWakesParkedSleeper(t *testing.T) {
	b := newTestBell(t)
	for i := range 100 {
		done := sleepAsync(b, context.Background())
		waitUntil(t, func() bool { return b.parks.Load() > uint64(i) }, "the sleeper to park")
		b.ring()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// A context that can be cancelled but has no deadline ends the sleep in
// both modes: within a slice while the sleeps have been short, by
// context.AfterFunc once bellSlices sleeps in a row ran out.
func TestBellCancel(t *testing.T) {
	for _, long := range []bool{false, true} {
		b := newTestBell(t)
		if long {
			b.timeouts.Store(bellSlices)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := sleepAsync(b, ctx)
		waitUntil(t, func() bool { return b.parks.Load() > 0 }, "the sleeper to park")
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("long %v: sleep returned %v, want context.Canceled", long, err)
		}
	}
}

// Slices that end count up to the AfterFunc mode, and a ring resets them.
func TestBellSliceCount(t *testing.T) {
	b := newTestBell(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for b.timeouts.Load() < bellSlices {
		if err := b.sleep(ctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	b.ring()
	if err := b.sleep(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if n := b.timeouts.Load(); n != 0 {
		t.Fatalf("%d timeouts after a ring, want 0", n)
	}
}

// A deadline and a limit end the sleep too.
func TestBellDeadlineAndLimit(t *testing.T) {
	b := newTestBell(t)
	ctx, cancel := context.WithTimeout(context.Background(), bellSlice/2)
	defer cancel()
	var err error
	for err == nil {
		err = b.sleep(ctx, 0)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("sleep returned %v, want context.DeadlineExceeded", err)
	}
	if err := b.sleep(context.Background(), bellSlice/4); err != nil {
		t.Fatalf("limited sleep returned %v", err)
	}
}

// Closing the bell ends a parked sleep, and a late ring does nothing.
func TestBellClose(t *testing.T) {
	b, err := newBell()
	if err != nil {
		t.Fatal(err)
	}
	done := sleepAsync(b, context.Background())
	waitUntil(t, func() bool { return b.parks.Load() > 0 }, "the sleeper to park")
	if err := b.close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b.ring()
	if err := b.sleep(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
}

// A rung sleep allocates nothing, with or without a cancellable context.
func TestBellAllocs(t *testing.T) {
	b := newTestBell(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, c := range []context.Context{context.Background(), ctx} {
		if n := testing.AllocsPerRun(100, func() {
			b.ring()
			b.sleep(c, 0) //nolint:errcheck
		}); n != 0 {
			t.Fatalf("%v allocs per ring and sleep, want 0", n)
		}
	}
}

// respBell returns the client's response bell, failing if it has none.
func respBell(t *testing.T, cl *Client) *bell {
	t.Helper()
	b := cl.waker.bells[wRespCons]
	if b == nil {
		t.Fatal("the client has no response bell")
	}
	return b
}

// blockingService answers msgEcho only once release is closed.
func blockingService(release <-chan struct{}) *Service {
	svc := echoService()
	svc.Handlers[msgEcho] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		<-release
		w.Respond(r.Data)
	})
	return svc
}

// A caller whose answer is late sleeps on the response bell (after its
// kernel sleep, if the machine let it have one), and the server's answer
// wakes it through the token reader: the call's context has no deadline
// and cannot be cancelled, so a lost ring would hang it.
func TestCallWakesThroughBell(t *testing.T) {
	release := make(chan struct{})
	_, addr := startServer(t, nil, blockingService(release))
	cl := dial(t, addr, nil)
	b := respBell(t, cl)
	done := make(chan error, 1)
	var resp []byte
	go func() {
		var err error
		resp, err = cl.Call(context.Background(), msgEcho, []byte("bell"))
		done <- err
	}()
	waitUntil(t, func() bool { return b.parks.Load() > 0 }, "the caller to sleep on the bell")
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp, []byte("bell")) {
		t.Fatalf("response %q", resp)
	}
}

// A caller asleep on the bell sees its context cancelled, and the end of
// the connection.
func TestCallInBellEnds(t *testing.T) {
	t.Run("cancel", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		_, addr := startServer(t, nil, blockingService(release))
		cl := dial(t, addr, nil)
		b := respBell(t, cl)
		b.timeouts.Store(bellSlices) // the AfterFunc mode: nothing but the cancel ends the sleep
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := cl.Call(ctx, msgEcho, nil)
			done <- err
		}()
		waitUntil(t, func() bool { return b.parks.Load() > 0 }, "the caller to sleep on the bell")
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("call returned %v, want context.Canceled", err)
		}
	})
	t.Run("server closes", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		srv, addr := startServer(t, nil, blockingService(release))
		cl := dial(t, addr, nil)
		b := respBell(t, cl)
		done := make(chan error, 1)
		go func() {
			_, err := cl.Call(context.Background(), msgEcho, nil)
			done <- err
		}()
		waitUntil(t, func() bool { return b.parks.Load() > 0 }, "the caller to sleep on the bell")
		firstConn(t, srv).Close()
		if err := <-done; !errors.Is(err, ErrDisconnected) {
			t.Fatalf("call returned %v, want ErrDisconnected", err)
		}
	})
}
