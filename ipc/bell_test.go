//go:build linux

package ipc

import (
	"bytes"
	"context"
	"errors"
	"sync"
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

// sleepUntilEnded sleeps on b until a sleep returns an error (ctx's),
// sleeping again after each that returns nil: the end of a slice or a
// spurious wake-up, which a caller sleeps through as well. With
// keepShort, every sleep starts in the slice mode (see bellSlices).
func sleepUntilEnded(b *bell, ctx context.Context, keepShort bool) <-chan error {
	ch := make(chan error, 1)
	go func() {
		for {
			if keepShort {
				b.timeouts.Store(0)
			}
			if err := b.sleep(ctx, 0); err != nil {
				ch <- err
				return
			}
		}
	}()
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

// The eventfd's count is never read, so each ring leaves it readable:
// a sleep after a taken ring must still park, and end only at its limit,
// not at once on the old count, which would make every later sleep a
// spin.
func TestBellTakenRingDoesNotEndNextSleep(t *testing.T) {
	b := newTestBell(t)
	b.ring()
	if err := b.sleep(context.Background(), 0); err != nil || !b.got {
		t.Fatalf("rung sleep: %v, rung %v", err, b.got)
	}
	if err := b.sleep(context.Background(), bellSlice/4); err != nil {
		t.Fatal(err)
	}
	if b.got || b.parks.Load() == 0 || b.timeouts.Load() != 1 {
		t.Fatalf("sleep after a taken ring: rung %v, parks %d, timeouts %d; want it parked until its limit",
			b.got, b.parks.Load(), b.timeouts.Load())
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
		// A slice may end between the park and the cancel on a loaded
		// machine: the sleeper sleeps again, as its callers do.
		done := sleepUntilEnded(b, ctx, !long)
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

// callOnBell starts a call of msgEcho with ctx on a client of a server
// that answers it only once the test ends or answer is called, and
// returns when the caller sleeps on the client's response bell: the call's
// result comes on done. b.timeouts is set to timeouts before the call.
func callOnBell(t *testing.T, ctx context.Context, timeouts int32) (srv *Server, answer func(), done <-chan callResult) {
	t.Helper()
	release := make(chan struct{})
	var once sync.Once
	answer = func() { once.Do(func() { close(release) }) }
	svc := echoService()
	svc.Handlers[msgEcho] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		<-release
		w.Respond(r.Data)
	})
	srv, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	t.Cleanup(answer) // first of the cleanups: the server's close waits for the handler
	b := cl.waker.bells[wRespCons]
	if b == nil {
		t.Fatal("the client has no response bell")
	}
	b.timeouts.Store(timeouts)
	ch := make(chan callResult, 1)
	go func() {
		resp, err := cl.Call(ctx, msgEcho, []byte("bell"))
		ch <- callResult{resp, err}
	}()
	waitUntil(t, func() bool { return b.parks.Load() > 0 }, "the caller to sleep on the bell")
	return srv, answer, ch
}

type callResult struct {
	resp []byte
	err  error
}

// A caller whose answer is late sleeps on the response bell (after its
// kernel sleep, if the machine let it have one), and the server's answer
// wakes it through the token reader: the call's context has no deadline
// and cannot be cancelled, so a lost ring would hang it.
func TestCallWakesThroughBell(t *testing.T) {
	_, answer, done := callOnBell(t, context.Background(), 0)
	answer()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(r.resp, []byte("bell")) {
		t.Fatalf("response %q", r.resp)
	}
}

// A caller asleep on the bell sees its context cancelled, and the end of
// the connection.
func TestCallInBellEnds(t *testing.T) {
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		// The AfterFunc mode: nothing but the cancel ends the sleep.
		_, _, done := callOnBell(t, ctx, bellSlices)
		cancel()
		if r := <-done; !errors.Is(r.err, context.Canceled) {
			t.Fatalf("call returned %v, want context.Canceled", r.err)
		}
	})
	t.Run("server closes", func(t *testing.T) {
		srv, _, done := callOnBell(t, context.Background(), 0)
		firstConn(t, srv).Close()
		if r := <-done; !errors.Is(r.err, ErrDisconnected) {
			t.Fatalf("call returned %v, want ErrDisconnected", r.err)
		}
	})
}
