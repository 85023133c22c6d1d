//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringipc/ringipc/ring"
	"golang.org/x/sys/unix"
)

// Message ids of the cancel service (cancelService).
const (
	msgHold   = 40 // report entry, then wait for the context's end (no answer) or a release (answer "done")
	msgRecord = 41 // report that the handler ran, with the body
	msgStash  = 42 // hand the request's context out, answer at once
)

// cancelProbe is what the cancel service's handlers report.
type cancelProbe struct {
	entered  chan context.Context // msgHold: its context, on entry
	ended    chan error           // msgHold: its context's Err when it returned
	release  chan struct{}        // msgHold: answer instead of waiting on
	ran      chan string          // msgRecord: the body of each call that ran
	stashed  chan context.Context // msgStash
	disc     chan error           // OnDisconnect
	deadline chan time.Time       // msgHold: its context's deadline, if any
}

func cancelService() (*Service, *cancelProbe) {
	p := &cancelProbe{
		entered: make(chan context.Context, 16), ended: make(chan error, 16), release: make(chan struct{}, 16),
		ran: make(chan string, 16), stashed: make(chan context.Context, 16), disc: make(chan error, 16),
		deadline: make(chan time.Time, 16),
	}
	svc := echoService()
	svc.OnDisconnect = func(_ *Conn, err error) { p.disc <- err }
	svc.Handlers[msgHold] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		ctx := r.Context()
		if dl, ok := ctx.Deadline(); ok {
			p.deadline <- dl
		}
		p.entered <- ctx
		select {
		case <-ctx.Done():
			p.ended <- ctx.Err()
		case <-p.release:
			w.Respond([]byte("done"))
			p.ended <- nil
		}
	})
	svc.Handlers[msgRecord] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		p.ran <- string(r.Data)
		w.Respond(r.Data)
	})
	svc.Handlers[msgStash] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		p.stashed <- r.Context()
	})
	return svc, p
}

// TestCancelDuringHandler is the scenario: a call with a short
// deadline returns in time, and the next call on the same client is not
// stuck behind the abandoned handler, whose context ends (its deadline
// reached the server with the request, and the client's cancel record
// follows). Before FeatureCancel the handler's context ended only with
// the connection, so the second call waited for that.
func TestCancelDuringHandler(t *testing.T) {
	svc, p := cancelService()
	srv, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	if cl.Features()&FeatureCancel == 0 {
		t.Fatal("FeatureCancel not granted to the Go client")
	}
	ctx := testCtx(t)

	t.Run("deadline", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		want, _ := short.Deadline()
		if _, err := cl.Call(short, msgHold, nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("call: %v, want the deadline", err)
		}
		// Not stuck behind the abandoned handler: answered once the
		// server is done with the first request, in order.
		if got, err := cl.Call(ctx, msgEcho, []byte("next")); err != nil || string(got) != "next" {
			t.Fatalf("next call: %q, %v", got, err)
		}
		// The handler saw the call's deadline, on the clock both
		// processes share (here one process: exactly), and its context
		// ended: with the deadline, or with the cancel that followed.
		// (On a machine so loaded that the server took the request
		// only after its deadline, it skipped it instead.)
		select {
		case <-p.entered:
			if got := <-p.deadline; !got.Equal(want) {
				t.Errorf("handler's deadline %v, want %v", got, want)
			}
			if err := <-p.ended; !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				t.Errorf("handler's context ended with %v", err)
			}
		default:
			t.Log("the server took the request after its deadline: skipped")
		}
	})

	t.Run("cancel", func(t *testing.T) {
		// No deadline: only the cancel record, read by the server's
		// token reader while the handler runs, can end it.
		cctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() {
			_, err := cl.Call(cctx, msgHold, nil)
			done <- err
		}()
		hctx := <-p.entered
		if _, ok := hctx.Deadline(); ok {
			t.Error("a call without a deadline has one in its handler")
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("call: %v, want Canceled", err)
		}
		if err := <-p.ended; !errors.Is(err, context.Canceled) {
			t.Errorf("handler's context ended with %v, want Canceled", err)
		}
		if got, err := cl.Call(ctx, msgEcho, []byte("next")); err != nil || string(got) != "next" {
			t.Fatalf("next call: %q, %v", got, err)
		}
	})
	// Both handlers returned without answering: answered "cancelled".
	if st := srv.Stats(); st.Cancelled != 2 || st.ProtocolErrors != 0 {
		t.Errorf("stats: %d cancelled, %d protocol errors; want 2, 0", st.Cancelled, st.ProtocolErrors)
	}
}

// TestCancelBeforeHandler: a call queued behind a running handler is
// cancelled; its handler never runs, and the calls after it do.
func TestCancelBeforeHandler(t *testing.T) {
	svc, p := cancelService()
	srv, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	ctx := testCtx(t)

	first := make(chan error, 1)
	go func() {
		_, err := cl.Call(ctx, msgHold, nil)
		first <- err
	}()
	<-p.entered
	// Queued behind the running handler, then abandoned: its cancel
	// record is in the ring before the test lets the first one answer.
	cctx, cancel := context.WithCancel(ctx)
	queued := make(chan error, 1)
	go func() {
		_, err := cl.Call(cctx, msgRecord, []byte("cancelled"))
		queued <- err
	}()
	waitUntil(t, func() bool { return requestsOut(cl, 2) }, "the second request to go out")
	cancel()
	if err := <-queued; !errors.Is(err, context.Canceled) {
		t.Fatalf("queued call: %v", err)
	}
	p.release <- struct{}{}
	if err := <-first; err != nil {
		t.Fatalf("first call: %v", err)
	}
	if got, err := cl.Call(ctx, msgRecord, []byte("after")); err != nil || string(got) != "after" {
		t.Fatalf("call after: %q, %v", got, err)
	}
	if got := <-p.ran; got != "after" {
		t.Errorf("handler ran for %q: the cancelled call was not skipped", got)
	}
	if st := srv.Stats(); st.Cancelled != 1 || st.Calls != 3 {
		t.Errorf("stats: %d cancelled of %d calls; want 1 of 3", st.Cancelled, st.Calls)
	}
}

// TestCancelAcrossProcesses is the scenario against a server in
// another process, whose msgBlock handler waits for its context's end:
// the call's deadline and cancel reach it (on the CLOCK_MONOTONIC both
// processes share), so the next call on the same client is answered,
// where before it waited for the connection to end.
func TestCancelAcrossProcesses(t *testing.T) {
	addr := abstractAddr()
	srv := startChild(t, "server", addr, nil)
	srv.expect(t, "ready")
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	for i := range 3 {
		short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := cl.Call(short, msgBlock, nil)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("round %d: blocking call: %v", i, err)
		}
		if got, err := cl.Call(ctx, msgEcho, []byte("next")); err != nil || string(got) != "next" {
			t.Fatalf("round %d: the next call: %q, %v", i, got, err)
		}
	}
}

// requestsOut reports whether n calls of cl are in flight with their
// requests committed: a call registers while it holds the request ring
// (sendMu) and lets go of it once committed, so with n registered and
// the ring free, all n are in the ring.
func requestsOut(cl *Client, n int) bool {
	cl.mu.Lock()
	registered := cl.waiters.len()
	cl.mu.Unlock()
	if registered != n || !cl.sendMu.TryLock() {
		return false
	}
	cl.sendMu.Unlock()
	return true
}

// TestCancelAfterHandler: a cancel that arrives once its call has been
// answered is ignored (the connection and the calls after it go on), and
// a context a handler kept ends when the handler returns.
func TestCancelAfterHandler(t *testing.T) {
	svc, p := cancelService()
	srv, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	if _, err := cl.Call(ctx, msgStash, nil); err != nil {
		t.Fatal(err)
	}
	kept := <-p.stashed
	waitUntil(t, func() bool { return kept.Err() != nil }, "the kept context to end")
	if !errors.Is(kept.Err(), context.Canceled) {
		t.Errorf("kept context: %v", kept.Err())
	}
	select {
	case <-kept.Done():
	default:
		t.Error("kept context's Done is open")
	}
	// The call's correlation id is the table's first slot, first
	// sequence number: send a cancel for it now, long answered, and one
	// for a call that never was.
	cl.sendCancel(0)
	cl.sendCancel(1<<32 | 7)
	for i := range 3 {
		if _, err := cl.Call(ctx, msgRecord, []byte{byte('a' + i)}); err != nil {
			t.Fatalf("call %d after the stale cancels: %v", i, err)
		}
		<-p.ran
	}
	if st := srv.Stats(); st.Cancelled != 0 || st.ProtocolErrors != 0 || st.Calls != 4 {
		t.Errorf("stats: %d cancelled, %d protocol errors, %d calls; want 0, 0, 4", st.Cancelled, st.ProtocolErrors, st.Calls)
	}
}

// TestDeadlineAtServer: the server holds the deadline that rode with the
// request to its own clock. The client's clock offset makes the server
// see the deadline as past (or close) while the client still waits: a
// request past its deadline is skipped, one whose deadline passes while
// its handler runs has its context ended, and either way the client gets
// the server's "cancelled" as context.DeadlineExceeded.
func TestDeadlineAtServer(t *testing.T) {
	svc, p := cancelService()
	srv, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	if cl.clockOffset != 0 {
		t.Fatalf("clock offset %d within one process", cl.clockOffset)
	}
	long, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()

	cl.clockOffset = -2 * int64(time.Hour) // the server sees it an hour past
	_, err := cl.Call(long, msgRecord, []byte("late"))
	if !errors.Is(err, context.DeadlineExceeded) || long.Err() != nil {
		t.Fatalf("call past its deadline at the server: %v", err)
	}
	if st := srv.Stats(); st.Cancelled != 1 {
		t.Errorf("%d cancelled, want 1", st.Cancelled)
	}

	// Due a moment after the request goes out: its handler's context
	// ends at the deadline, on the server's timer. (On a machine so
	// loaded that the server takes the request only after the deadline,
	// it is skipped instead: the call ends the same way.)
	due, cancel2 := context.WithTimeout(context.Background(), time.Hour)
	defer cancel2()
	cl.clockOffset = -int64(time.Hour) + int64(100*time.Millisecond)
	_, err = cl.Call(due, msgHold, nil)
	if !errors.Is(err, context.DeadlineExceeded) || due.Err() != nil {
		t.Fatalf("call whose deadline passed at the server: %v", err)
	}
	select {
	case <-p.entered:
		if err := <-p.ended; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("handler's context ended with %v", err)
		}
	default:
		t.Log("the server took the request after its deadline: skipped")
	}
	if st := srv.Stats(); st.Cancelled != 2 {
		t.Errorf("%d cancelled, want 2", st.Cancelled)
	}
	select {
	case got := <-p.ran:
		t.Errorf("the skipped call's handler ran (%q)", got)
	default:
	}
	cl.clockOffset = 0
	if _, err := cl.Call(long, msgEcho, nil); err != nil {
		t.Fatal(err)
	}
}

func TestClockOffset(t *testing.T) {
	for _, tc := range []struct{ srv, sent, got, want int64 }{
		{100, 100, 200, 0},
		{150, 100, 200, 0},
		{200, 100, 200, 0},
		{1000, 100, 200, 850},
		{-500, 100, 200, -650},
	} {
		if got := clockOffset(tc.srv, tc.sent, tc.got); got != tc.want {
			t.Errorf("clockOffset(%d, %d, %d) = %d, want %d", tc.srv, tc.sent, tc.got, got, tc.want)
		}
	}
	// A deadline survives the trip to CLOCK_MONOTONIC and back.
	d := time.Now().Add(time.Minute)
	if back := monoTime(monoAt(d)); !back.Equal(d) {
		t.Errorf("deadline %v came back as %v", d, back)
	}
	if now := monoClockNow(); monoAt(time.Now())-now < 0 {
		t.Errorf("monoAt(now) before monoClockNow")
	}
}

// TestCancelRecordViolations: cancel records and deadlines are part of
// the protocol only for a client that asked for FeatureCancel, and only
// in their documented shapes.
func TestCancelRecordViolations(t *testing.T) {
	svc, p := cancelService()
	_, addr := startServer(t, nil, svc)
	small := [3]uint64{4096, 4096, 4096}
	corr := binary.LittleEndian.AppendUint64(nil, 1)
	cases := []struct {
		name     string
		features uint32
		typ      uint32
		pl       []byte
	}{
		{"cancel without the feature", 0, reqCancel, corr},
		{"deadline without the feature", 0, reqDeadline | msgEcho, make([]byte, 16)},
		{"cancel too short", FeatureCancel, reqCancel, corr[:4]},
		{"cancel too long", FeatureCancel, reqCancel, make([]byte, 16)},
		{"cancel with a message id", FeatureCancel, reqCancel | msgEcho, corr},
		{"cancel and deadline", FeatureCancel, reqCancel | reqDeadline, make([]byte, 16)},
		{"deadline with no room for it", FeatureCancel, reqDeadline | msgEcho, make([]byte, 12)},
		{"unknown type bit", FeatureCancel, 1<<19 | msgEcho, make([]byte, 8)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			peer := rawConnect(t, addr)
			peer.handshake(rawHello(1, testService, tc.features, small, 0))
			if resp, err := peer.call(msgEcho, 9, []byte("ok")); err != nil || string(resp.body) != "ok" {
				t.Fatalf("warm-up call: %+v, %v", resp, err)
			}
			next, _ := peer.writeRecord(tc.typ, tc.pl, 0)
			atomic.StoreUint64(peer.rings[0].tail(), next)
			peer.send([]byte{0x01})
			if err := <-p.disc; !errors.Is(err, ErrProtocol) {
				t.Errorf("connection ended with %v, want ErrProtocol", err)
			}
			peer.close()
		})
	}
	// Well-formed, a cancel is never answered and a deadline is read.
	peer := rawConnect(t, addr)
	peer.handshake(rawHello(1, testService, FeatureCancel, small, 0))
	next, _ := peer.writeRecord(reqCancel, corr, 0)
	atomic.StoreUint64(peer.rings[0].tail(), next)
	pl := binary.LittleEndian.AppendUint64(nil, 5)
	pl = binary.LittleEndian.AppendUint64(pl, uint64(monoClockNow()+int64(time.Hour)))
	next, _ = peer.writeRecord(reqDeadline|msgEcho, append(pl, "body"...), 0)
	atomic.StoreUint64(peer.rings[0].tail(), next)
	peer.send([]byte{0x01})
	resp, err := peer.readResponse(time.Now().Add(time.Minute))
	if err != nil || resp.corr != 5 || string(resp.body) != "body" {
		t.Fatalf("request with a deadline: %+v, %v", resp, err)
	}
	peer.close()
	if err := <-p.disc; errors.Is(err, ErrProtocol) {
		t.Errorf("well-formed records ended the connection: %v", err)
	}
}

// TestCancelAllocs: the look-ahead and the deadline cost no allocation
// per call while the handler does not ask for its context (TestAllocs
// sends deadlines: its test context has one); a handler that does costs
// one, for the context.
func TestCancelAllocs(t *testing.T) {
	svc, _ := cancelService()
	svc.Handlers[msgStash] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		if r.Context().Err() != nil {
			w.Fail(1, "done")
		}
	})
	_, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	buf := make([]byte, 64)
	for _, tc := range []struct {
		name string
		ctx  context.Context
		id   uint16
		want float64
	}{
		{"no deadline", context.Background(), msgEcho, 0},
		{"deadline", testCtx(t), msgEcho, 0},
		{"no deadline, handler asks for its context", context.Background(), msgStash, 1},
	} {
		call := func() {
			if _, err := cl.CallInto(tc.ctx, tc.id, buf[:8], buf); err != nil {
				t.Fatal(err)
			}
		}
		for range 100 {
			call()
		}
		if n := testing.AllocsPerRun(1000, call); n != tc.want {
			t.Errorf("%s: %.2f allocations per call, want %v", tc.name, n, tc.want)
		}
	}
}

// TestCancelBeforeHandlerEventLoop: with an external poll loop nobody
// reads tokens while a handler runs, but the loop still looks behind
// each request it takes: a call cancelled while queued is skipped.
func TestCancelBeforeHandlerEventLoop(t *testing.T) {
	svc, p := cancelService()
	srv, addr, _ := startEpollServer(t, Config{}, svc)
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	first := make(chan error, 1)
	go func() {
		_, err := cl.Call(ctx, msgHold, nil)
		first <- err
	}()
	<-p.entered
	cctx, cancel := context.WithCancel(ctx)
	queued := make(chan error, 1)
	go func() {
		_, err := cl.Call(cctx, msgRecord, []byte("cancelled"))
		queued <- err
	}()
	waitUntil(t, func() bool { return requestsOut(cl, 2) }, "the second request to go out")
	cancel()
	if err := <-queued; !errors.Is(err, context.Canceled) {
		t.Fatalf("queued call: %v", err)
	}
	p.release <- struct{}{}
	if err := <-first; err != nil {
		t.Fatalf("first call: %v", err)
	}
	if got, err := cl.Call(ctx, msgRecord, []byte("after")); err != nil || string(got) != "after" {
		t.Fatalf("call after: %q, %v", got, err)
	}
	if got := <-p.ran; got != "after" {
		t.Errorf("handler ran for %q: the cancelled call was not skipped", got)
	}
	if st := srv.Stats(); st.Cancelled != 1 {
		t.Errorf("%d cancelled, want 1", st.Cancelled)
	}
}

// BenchmarkCancelBookkeeping measures what FeatureCancel adds to each
// request on the server, alone: the look-ahead and bookkeeping around a
// handler (begin and end), with nothing behind the request, without and
// with a deadline. One goroutine, no peer: steadier than a round trip
// on a shared machine.
func BenchmarkCancelBookkeeping(b *testing.B) {
	srv, err := NewServer(nil)
	if err != nil {
		b.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fds[1])
	f := os.NewFile(uintptr(fds[0]), "bench")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	defer fc.Close()
	sizes := [3]uint64{MinRingSize, MinRingSize, MinRingSize}
	c, err := newConn(srv, fc.(*net.UnixConn), echoService(), Cred{}, sizes, FeatureCancel)
	if err != nil {
		b.Fatal(err)
	}
	defer c.destroy()
	mem := c.seg.Payload()
	p, err := ring.NewProducer(mem[c.reply.offs[0]:c.reply.offs[0]+ringBytes(MinRingSize)], nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := p.TryWrite(msgEcho, make([]byte, 8)); err != nil {
		b.Fatal(err)
	}
	if _, err := c.reqC.TryPeek(); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		dl    int64
		hasDL bool
	}{{"no-deadline", 0, false}, {"deadline", monoClockNow() + int64(time.Hour), true}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if c.begin(0, tc.dl, tc.hasDL) {
					b.Fatal("skipped")
				}
				c.end()
			}
		})
	}
}

// TestCancelsDroppedCounted: cancels that cannot be written at once
// (another goroutine holds the request ring) are kept, up to
// MaxQueuedCancels; the ones past that are dropped and counted, and the
// kept ones go out before the next request.
func TestCancelsDroppedCounted(t *testing.T) {
	svc, p := cancelService()
	_, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	const calls = MaxQueuedCancels + 6
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, calls)
	for range calls {
		go func() {
			_, err := cl.Call(cctx, msgHold, nil)
			done <- err
		}()
	}
	<-p.entered
	waitUntil(t, func() bool { return requestsOut(cl, calls) }, "every request to go out")
	cl.sendMu.Lock() // as a goroutine sending a long request would
	cancel()
	for range calls {
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("abandoned call: %v", err)
		}
	}
	if st := cl.Stats(); st.CancelsSent != 0 || st.CancelsDropped != calls-MaxQueuedCancels {
		t.Fatalf("with the ring held: %+v, want 0 sent, %d dropped", st, calls-MaxQueuedCancels)
	}
	cl.sendMu.Unlock()
	after := make(chan error, 1)
	go func() {
		_, err := cl.Call(ctx, msgRecord, []byte("after"))
		after <- err
	}()
	waitUntil(t, func() bool { return cl.Stats().CancelsSent == MaxQueuedCancels }, "the kept cancels to go out")
	// The handlers whose cancel was dropped run for nobody: let them end.
	for range cap(p.release) {
		p.release <- struct{}{}
	}
	if err := <-after; err != nil {
		t.Fatalf("call after: %v", err)
	}
	if st := cl.Stats(); st.CancelsSent != MaxQueuedCancels || st.CancelsDropped != calls-MaxQueuedCancels {
		t.Fatalf("at the end: %+v", st)
	}
}
