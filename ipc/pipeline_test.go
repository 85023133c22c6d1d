//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

func TestPipelining(t *testing.T) {
	srv, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, &ClientOptions{RequestRingSize: MinRingSize, ResponseRingSize: MinRingSize})
	ctx := testCtx(t)
	const goroutines, calls = 64, 200
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			var req, buf [16]byte
			for i := range calls {
				binary.LittleEndian.PutUint64(req[0:], uint64(g))
				binary.LittleEndian.PutUint64(req[8:], uint64(i))
				var got []byte
				var err error
				switch i % 3 {
				case 0:
					got, err = cl.Call(ctx, msgEcho, req[:])
				case 1:
					var n int
					n, err = cl.CallInto(ctx, msgEchoZC, req[:], buf[:])
					got = buf[:n]
				case 2:
					var p PendingCall
					if p, err = cl.Reserve(ctx, msgEcho, len(req)); err == nil {
						copy(p.Bytes(), req[:])
						var r Response
						if r, err = p.Send(ctx); err == nil {
							got = append([]byte(nil), r.Data...)
							r.Release()
						}
					}
				}
				if err != nil {
					errs <- err
					return
				}
				if string(got) != string(req[:]) {
					errs <- errors.New("response matched to the wrong request")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	cs := srv.Conns()[0].Stats()
	if cs.Calls != goroutines*calls || cs.Responses != goroutines*calls {
		t.Errorf("server counted %d calls, %d responses; want %d", cs.Calls, cs.Responses, goroutines*calls)
	}
}

// lateService is echoService whose msgBlock handler answers "late" once
// release is closed.
func lateService() (*Service, chan struct{}) {
	release := make(chan struct{})
	svc := echoService()
	svc.Handlers[msgBlock] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		<-release
		w.Respond([]byte("late"))
	})
	return svc, release
}

// TestAbandonedCall: a call whose context ends is abandoned; its late
// response is skipped by the next reader.
func TestAbandonedCall(t *testing.T) {
	svc, release := lateService()
	_, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := cl.Call(ctx, msgBlock, nil)
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	close(release)
	got, err := cl.Call(testCtx(t), msgEcho, []byte("next"))
	if err != nil || string(got) != "next" {
		t.Fatalf("next call: %q, %v", got, err)
	}
}

func TestNonBlockingFull(t *testing.T) {
	release := make(chan struct{})
	svc := echoService()
	svc.Handlers[msgBlock] = HandlerFunc(func(w *ResponseWriter, r *Request) { <-release })
	_, addr := startServer(t, nil, svc)
	cl := dial(t, addr, &ClientOptions{RequestRingSize: MinRingSize, NonBlocking: true})
	ctx := testCtx(t)
	// The first request blocks the server; fill the ring behind it.
	var wg sync.WaitGroup
	results := make(chan error, 1000)
	for {
		p, err := cl.Reserve(ctx, msgBlock, 100)
		if errors.Is(err, ErrTryAgain) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			r, err := p.Send(ctx)
			if err == nil {
				r.Release()
			}
			results <- err
		})
	}
	if _, err := cl.Call(ctx, msgEcho, make([]byte, 100)); !errors.Is(err, ErrTryAgain) {
		t.Fatalf("call on a full ring: %v, want ErrTryAgain", err)
	}
	close(release)
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestHandshakeTimeout(t *testing.T) {
	srv, addr := startServer(t, &Config{HandshakeTimeout: 2 * time.Second, MaxHandshakes: 4}, echoService())
	// Three silent clients hold three of the four handshake slots.
	var silent []net.Conn
	for range 3 {
		silent = append(silent, rawDial(t, addr))
	}
	ctx := testCtx(t)
	for range 10 {
		cl, err := Dial(ctx, addr, testService, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := cl.Call(ctx, msgEcho, []byte("x")); err != nil || string(got) != "x" {
			t.Fatalf("call: %q, %v", got, err)
		}
		cl.Close()
	}
	for _, c := range silent {
		// The server hangs up without a reply.
		n, err := io.Copy(io.Discard, c)
		if err != nil || n != 0 {
			t.Fatalf("silent client got %d bytes, %v", n, err)
		}
	}
	if st := srv.Stats(); st.HandshakeTimeouts != 3 {
		t.Errorf("HandshakeTimeouts = %d, want 3", st.HandshakeTimeouts)
	}
}

func TestShutdown(t *testing.T) {
	var disconnects sync.WaitGroup
	svc := echoService()
	svc.OnConnect = func(*Conn) error { disconnects.Add(1); return nil }
	svc.OnDisconnect = func(c *Conn, err error) {
		if !errors.Is(err, ErrServerClosed) {
			t.Errorf("OnDisconnect: %v", err)
		}
		disconnects.Done()
	}
	srv, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	if _, err := cl.Call(ctx, msgEcho, nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	disconnects.Wait()
	<-cl.Done()
	if _, err := cl.Call(ctx, msgEcho, nil); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("call after Shutdown: %v", err)
	}
	if _, err := Dial(ctx, addr, testService, nil); err == nil {
		t.Fatal("Dial after Shutdown succeeded")
	}
}

func TestAllocs(t *testing.T) {
	for _, timing := range []bool{false, true} {
		t.Run(fmt.Sprintf("timing=%v", timing), func(t *testing.T) { testAllocs(t, timing) })
	}
}

func testAllocs(t *testing.T, timing bool) {
	_, addr := startServer(t, &Config{Timing: timing}, echoService())
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	req := make([]byte, 64)
	buf := make([]byte, 64)
	call := func() {
		if _, err := cl.CallInto(ctx, msgEcho, req, buf); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 {
		call() // warm up the waiter pool and the map
	}
	// The server's loop runs in this process too, so this counts the
	// server's dispatch path and the client's CallInto together.
	if n := testing.AllocsPerRun(1000, call); n != 0 {
		t.Errorf("%.2f allocations per CallInto round trip, want 0", n)
	}
	zc := func() {
		p, err := cl.Reserve(ctx, msgEchoZC, 64)
		if err != nil {
			t.Fatal(err)
		}
		r, err := p.Send(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r.Release()
	}
	if n := testing.AllocsPerRun(1000, zc); n != 0 {
		t.Errorf("%.2f allocations per zero-copy round trip, want 0", n)
	}
}

// TestReaderGivesUp: the caller that holds the reader role abandons its
// call while another caller waits behind it; the role must pass on, so
// that the other call still gets its response (and the orphan is read).
func TestReaderGivesUp(t *testing.T) {
	svc, release := lateService()
	_, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error)
	go func() {
		_, err := cl.Call(ctx, msgBlock, nil)
		first <- err
	}()
	// The first caller found the role free: it reads, parked in the
	// response ring, while the server is held in its handler.
	waitUntil(t, func() bool {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		return cl.waiters.len() == 1 && cl.reading
	}, "the first call to take the reader role")
	second := make(chan error)
	go func() {
		got, err := cl.Call(testCtx(t), msgEcho, []byte("second"))
		if err == nil && string(got) != "second" {
			err = fmt.Errorf("second call got %q", got)
		}
		second <- err
	}()
	waitUntil(t, func() bool {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		return cl.waiters.len() == 2
	}, "the second call to wait behind the reader")
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned call: %v", err)
	}
	close(release)
	if err := <-second; err != nil {
		t.Fatalf("call behind the reader that gave up: %v", err)
	}
	waitUntil(t, func() bool {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		return cl.orphans == 0 && !cl.reading
	}, "the orphan to be read and the role freed")
}

// TestZeroCopyHoldsRole: a zero-copy response holds the reader role until
// Release; calls answered meanwhile get their responses after it.
func TestZeroCopyHoldsRole(t *testing.T) {
	_, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	p, err := cl.Reserve(ctx, msgEcho, 3)
	if err != nil {
		t.Fatal(err)
	}
	copy(p.Bytes(), "zc!")
	r, err := p.Send(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const others = 8
	done := make(chan error, others)
	for i := range others {
		go func() {
			req := fmt.Appendf(nil, "call %d", i)
			got, err := cl.Call(ctx, msgEcho, req)
			if err == nil && string(got) != string(req) {
				err = fmt.Errorf("got %q for %q", got, req)
			}
			done <- err
		}()
	}
	waitUntil(t, func() bool {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		return cl.waiters.len() == others
	}, "every other call to be sent")
	select {
	case err := <-done:
		t.Fatalf("a call returned while a zero-copy response held the role: %v", err)
	default:
	}
	if string(r.Data) != "zc!" {
		t.Fatalf("zero-copy response %q", r.Data)
	}
	if err := r.Release(); err != nil {
		t.Fatal(err)
	}
	for range others {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// A caller that is not the reader takes a signal that is already in
// without parking, and counts itself out of the woken callers; with
// none in it gives up after its turns. Neither allocates.
func TestSignalledSoon(t *testing.T) {
	cl := &Client{}
	w := getWaiter()
	defer putWaiter(w)
	if cl.signalledSoon(w) {
		t.Fatal("signalledSoon took a signal nobody sent")
	}
	cl.signal(w)
	if !cl.signalledSoon(w) {
		t.Fatal("signalledSoon missed a signal sent before it")
	}
	if n := cl.woken.Load(); n != 0 {
		t.Fatalf("woken = %d after the signal was taken, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { cl.signalledSoon(w) }); n != 0 {
		t.Errorf("signalledSoon allocates %.1f times", n)
	}
}

// A signal given before its caller parks is a swap the caller sees, with
// no token in the channel; one given to a parked caller is a token it
// receives. Either way the waiter ends with no signal left over for its
// next call, and the woken count back at zero.
func TestWaiterSignalStates(t *testing.T) {
	cl := &Client{}
	w := getWaiter()
	defer putWaiter(w)
	settled := func(when string) {
		t.Helper()
		if s := w.sig.Load(); s != sigNone {
			t.Fatalf("%s: sig = %d, want sigNone", when, s)
		}
		if len(w.ch) != 0 {
			t.Fatalf("%s: a token left in the channel", when)
		}
		if n := cl.woken.Load(); n != 0 {
			t.Fatalf("%s: woken = %d, want 0", when, n)
		}
	}

	// Given first: received (not parked) takes it without the channel.
	cl.signal(w)
	if len(w.ch) != 0 {
		t.Fatal("a signal to a caller that had not parked sent a token")
	}
	cl.received(w, false)
	settled("given, then received")

	// Parked first: the signal sends the token the caller waits for.
	if !w.sig.CompareAndSwap(sigNone, sigParked) {
		t.Fatal("could not park")
	}
	go cl.signal(w)
	cl.received(w, true)
	settled("parked, then given")

	// Parked, and given before it gave up (abandon): the token is still
	// owed to it, though sig no longer says parked.
	if !w.sig.CompareAndSwap(sigNone, sigParked) {
		t.Fatal("could not park")
	}
	cl.signal(w)
	if s := w.sig.Load(); s != sigGiven {
		t.Fatalf("sig = %d after the signal, want sigGiven", s)
	}
	cl.received(w, true)
	settled("parked, given, received after giving up")

	// The caller's wait against a signal from another goroutine, which
	// comes during its turns or after it parked, whichever the scheduler
	// makes of it: either way it ends the wait and leaves nothing behind.
	for range 100 {
		go cl.signal(w)
		if err := cl.wait(context.Background(), w); err != nil {
			t.Fatal(err)
		}
		settled("wait")
	}
}
