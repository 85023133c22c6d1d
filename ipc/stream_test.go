//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
)

const (
	msgParts     = 41 // body: u32 parts, u32 part size; Send that many parts, then Respond("end")
	msgPartsGate = 42 // Send parts until the test's gate says stop (see gatedStream)
)

// partBytes is part i of a stream: its size, then a pattern from i.
func partBytes(i, size int) []byte {
	b := make([]byte, size)
	for j := range b {
		b[j] = byte(i*31 + j)
	}
	return b
}

func streamReq(parts, size int) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint32(b, uint32(parts))
	binary.LittleEndian.PutUint32(b[4:], uint32(size))
	return b
}

// fillPart writes part i of a stream into b: a pattern from i.
func fillPart(b []byte, i int) {
	for j := range b {
		b[j] = byte(i*31 + j)
	}
}

// partsService adds msgParts to the echo service: even parts go by
// Send (a copy), odd ones by ReservePart/CommitPart (in place, reserving
// more than needed). A Send error goes to sendErr (if set) and fails the
// call with code 7.
func partsService(sendErr chan<- error) *Service {
	svc := echoService()
	svc.Handlers[msgParts] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		parts := int(binary.LittleEndian.Uint32(r.Data))
		size := int(binary.LittleEndian.Uint32(r.Data[4:]))
		buf := make([]byte, size)
		for i := range parts {
			var err error
			if i%2 == 0 {
				fillPart(buf, i)
				err = w.Send(buf)
			} else {
				var b []byte
				if b, err = w.ReservePart(min(size+100, w.MaxBody())); err == nil {
					fillPart(b[:size], i)
					err = w.CommitPart(size)
				}
			}
			if err != nil {
				if sendErr != nil {
					sendErr <- err
				}
				w.Fail(7, err.Error())
				return
			}
		}
		w.Respond([]byte("end"))
	})
	return svc
}

// collect ranges over a stream, checking each part against partBytes.
func collect(t *testing.T, seq func(func([]byte, error) bool), size int) (parts int, final string, err error) {
	t.Helper()
	for b, e := range seq {
		if e != nil {
			return parts, final, e
		}
		if string(b) == "end" {
			final = "end"
			continue
		}
		if want := partBytes(parts, size); string(b) != string(want) {
			t.Fatalf("part %d: %d bytes, not the ones sent", parts, len(b))
		}
		parts++
	}
	return parts, final, nil
}

// A streamed response arrives whole and in order, parts of 0 bytes and
// of the largest body included, many times the response ring over, in
// both server modes (the event loop's queue taking what the ring cannot,
// as long as the client keeps reading).
func TestStream(t *testing.T) {
	for _, mode := range []string{"goroutines", "event loop"} {
		t.Run(mode, func(t *testing.T) {
			var addr string
			if mode == "goroutines" {
				_, addr = startServer(t, nil, partsService(nil))
			} else {
				_, addr, _ = startEpollServer(t, Config{}, partsService(nil))
			}
			// Ring-sized parts here (MaxMessage -1): large_test.go
			// streams parts larger than the ring.
			cl := dial(t, addr, &ClientOptions{ResponseRingSize: MinRingSize, MaxMessage: -1})
			if cl.Features()&FeatureStream == 0 {
				t.Fatal("FeatureStream not granted")
			}
			ctx := testCtx(t)
			max := cl.MaxResponse()
			for _, tc := range []struct{ parts, size int }{{0, 0}, {1, 0}, {3, 1}, {50, 100}, {2, max}, {20, max}} {
				if mode == "event loop" && tc.parts*tc.size > MinRingSize {
					continue // beyond what an event-loop handler may run ahead; see TestStreamEventLoopQueueBound
				}
				parts, final, err := collect(t, cl.Stream(ctx, msgParts, streamReq(tc.parts, tc.size)), tc.size)
				if err != nil || parts != tc.parts || final != "end" {
					t.Fatalf("%d parts of %d bytes: got %d parts, final %q, %v", tc.parts, tc.size, parts, final, err)
				}
			}
			// A handler that does not stream is a stream of one element.
			n := 0
			for b, err := range cl.Stream(ctx, msgEcho, []byte("plain")) {
				if err != nil || string(b) != "plain" {
					t.Fatalf("plain response through Stream: %q, %v", b, err)
				}
				n++
			}
			if n != 1 {
				t.Fatalf("plain response through Stream: %d elements", n)
			}
			// And errors end it.
			for b, err := range cl.Stream(ctx, msgFail, nil) {
				var he *HandlerError
				if b != nil || !errors.As(err, &he) || he.Code != 42 {
					t.Fatalf("failing handler through Stream: %q, %v", b, err)
				}
			}
		})
	}
}

// A plain call answered with a stream fails with ErrStreamed, and the
// connection goes on.
func TestStreamToPlainCall(t *testing.T) {
	_, addr := startServer(t, nil, partsService(nil))
	cl := dial(t, addr, &ClientOptions{ResponseRingSize: MinRingSize})
	ctx := testCtx(t)
	if _, err := cl.Call(ctx, msgParts, streamReq(30, 500)); !errors.Is(err, ErrStreamed) {
		t.Fatalf("Call of a streaming handler: %v, want ErrStreamed", err)
	}
	buf := make([]byte, 10)
	if _, err := cl.CallInto(ctx, msgParts, streamReq(3, 5), buf); !errors.Is(err, ErrStreamed) {
		t.Fatalf("CallInto of a streaming handler: %v, want ErrStreamed", err)
	}
	p, err := cl.Reserve(ctx, msgParts, 8)
	if err != nil {
		t.Fatal(err)
	}
	copy(p.Bytes(), streamReq(3, 5))
	if _, err := p.Send(ctx); !errors.Is(err, ErrStreamed) {
		t.Fatalf("zero-copy call of a streaming handler: %v, want ErrStreamed", err)
	}
	if got, err := cl.Call(ctx, msgEcho, []byte("after")); err != nil || string(got) != "after" {
		t.Fatalf("call after: %q, %v", got, err)
	}
}

// A client that did not ask for FeatureStream (as the C client does not)
// makes Send fail with ErrNoStream, sends nothing, and the handler can
// still answer.
func TestStreamNotNegotiated(t *testing.T) {
	saved := defaultFeatures
	defaultFeatures = 0
	t.Cleanup(func() { defaultFeatures = saved })
	sendErr := make(chan error, 1)
	_, addr := startServer(t, nil, partsService(sendErr))
	cl := dial(t, addr, nil)
	if cl.Features()&FeatureStream != 0 {
		t.Fatal("FeatureStream granted though not asked for")
	}
	ctx := testCtx(t)
	_, err := cl.Call(ctx, msgParts, streamReq(1, 10))
	if serr := <-sendErr; !errors.Is(serr, ErrNoStream) {
		t.Fatalf("Send to a client without FeatureStream: %v, want ErrNoStream", serr)
	}
	var he *HandlerError
	if !errors.As(err, &he) || he.Code != 7 {
		t.Fatalf("the handler's answer after the refused Send: %v", err)
	}
	if got, err := cl.Call(ctx, msgEcho, []byte("x")); err != nil || string(got) != "x" {
		t.Fatalf("call after: %q, %v", got, err)
	}
}

// Send's limits: a part of the largest body goes, one byte more is
// ErrTooLarge and sends nothing; Send after the final response is
// ErrResponded.
func TestStreamSendLimits(t *testing.T) {
	errs := make(chan error, 3)
	svc := echoService()
	svc.Handlers[msgParts] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		errs <- w.Send(make([]byte, w.MaxBody()))
		errs <- w.Send(make([]byte, w.MaxBody()+1))
		w.Respond(nil)
		errs <- w.Send(nil)
	})
	_, addr := startServer(t, nil, svc)
	cl := dial(t, addr, &ClientOptions{MaxMessage: -1}) // the ring's limit
	ctx := testCtx(t)
	var sizes []int
	for b, err := range cl.Stream(ctx, msgParts, nil) {
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(b))
	}
	if len(sizes) != 1 || sizes[0] != cl.MaxResponse() {
		t.Fatalf("parts received: %v, want one of %d bytes", sizes, cl.MaxResponse())
	}
	if err := <-errs; err != nil {
		t.Fatalf("part of MaxBody bytes: %v", err)
	}
	if err := <-errs; !errors.Is(err, ErrTooLarge) {
		t.Fatalf("part of MaxBody+1 bytes: %v, want ErrTooLarge", err)
	}
	if err := <-errs; !errors.Is(err, ErrResponded) {
		t.Fatalf("Send after Respond: %v, want ErrResponded", err)
	}
}

// gatedStream adds msgPartsGate: it sends 1000-byte parts, counting
// them in sent, until stop is closed, then sends one more and responds.
func gatedStream(sent *atomic.Int64, stop <-chan struct{}) *Service {
	svc := echoService()
	svc.Handlers[msgPartsGate] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		for i := 0; ; i++ {
			select {
			case <-stop:
				w.Send(partBytes(i, 1000))
				w.Respond([]byte("end"))
				return
			default:
			}
			if err := w.Send(partBytes(i, 1000)); err != nil {
				return
			}
			sent.Add(1)
		}
	})
	return svc
}

// Back-pressure: while the client's loop holds a part, the handler can
// get no further than the response ring holds; the client buffers
// nothing. Then the client stops midway (break): the rest of the stream
// is discarded, and the connection serves the next calls.
func TestStreamBackPressureAndBreak(t *testing.T) {
	var sent atomic.Int64
	stop := make(chan struct{})
	_, addr := startServer(t, nil, gatedStream(&sent, stop))
	cl := dial(t, addr, &ClientOptions{ResponseRingSize: MinRingSize})
	ctx := testCtx(t)
	// A 4 KiB ring holds at most 4 parts of 1000 bytes (1024-byte
	// records): a handler that got further would be buffered somewhere.
	const ringHolds = MinRingSize / 1024
	got := 0
	for b, err := range cl.Stream(ctx, msgPartsGate, nil) {
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != string(partBytes(got, 1000)) {
			t.Fatalf("part %d is not the one sent", got)
		}
		got++
		if got == 1 {
			// Holding part 0: the handler fills the ring behind it.
			waitUntil(t, func() bool { return sent.Load() >= ringHolds-1 }, "the ring filled")
			if n := sent.Load(); n > ringHolds {
				t.Fatalf("the handler sent %d parts while the client held the first; the ring holds %d", n, ringHolds)
			}
		}
		if got == 10 {
			break // midway: the handler is still sending
		}
	}
	if got != 10 {
		t.Fatalf("got %d parts before the break, want 10", got)
	}
	close(stop)
	// The connection works on: the rest of the stream (and its final
	// response) is discarded by the client as it comes.
	for i := range 20 {
		msg := fmt.Sprint("after ", i)
		if b, err := cl.Call(ctx, msgEcho, []byte(msg)); err != nil || string(b) != msg {
			t.Fatalf("call after a broken stream: %q, %v", b, err)
		}
	}
	waitUntil(t, func() bool {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		return cl.waiters.len() == 0 && cl.orphans == 0
	}, "the broken stream's waiter freed")
}

// A stream whose context ends while it waits for the next part ends with
// the context's error; the rest is discarded and the connection goes on.
func TestStreamContextMidway(t *testing.T) {
	var sent atomic.Int64
	stop := make(chan struct{})
	_, addr := startServer(t, nil, gatedStream(&sent, stop))
	cl := dial(t, addr, &ClientOptions{ResponseRingSize: MinRingSize})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	got := 0
	var end error
	for b, err := range cl.Stream(ctx, msgPartsGate, nil) {
		if err != nil {
			end = err
			break
		}
		if string(b) != string(partBytes(got, 1000)) {
			t.Fatalf("part %d is not the one sent", got)
		}
		got++
		if got == 3 {
			cancel()
		}
	}
	if !errors.Is(end, context.Canceled) {
		t.Fatalf("stream after its context ended: %d parts, then %v", got, end)
	}
	close(stop)
	tctx := testCtx(t)
	for i := range 20 {
		msg := fmt.Sprint("after ", i)
		if b, err := cl.Call(tctx, msgEcho, []byte(msg)); err != nil || string(b) != msg {
			t.Fatalf("call after a cancelled stream: %q, %v", b, err)
		}
	}
}

// Other goroutines' calls during a stream are answered once it ends,
// and the stream is not disturbed by them (under -race: the reader role
// moves between the stream and the background reader).
func TestStreamWithConcurrentCalls(t *testing.T) {
	_, addr := startServer(t, nil, partsService(nil))
	cl := dial(t, addr, &ClientOptions{ResponseRingSize: MinRingSize})
	ctx := testCtx(t)
	errc := make(chan error, 4)
	for g := range 4 {
		go func() {
			for i := range 50 {
				msg := fmt.Sprint(g, " ", i)
				if b, err := cl.Call(ctx, msgEcho, []byte(msg)); err != nil || string(b) != msg {
					errc <- fmt.Errorf("call %q: %q, %v", msg, b, err)
					return
				}
			}
			errc <- nil
		}()
	}
	for range 10 {
		parts, final, err := collect(t, cl.Stream(ctx, msgParts, streamReq(40, 300)), 300)
		if err != nil || parts != 40 || final != "end" {
			t.Fatalf("stream beside calls: %d parts, final %q, %v", parts, final, err)
		}
	}
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// On an event-loop server, a handler that runs ahead of its client by
// more than one response ring of parts gets ErrTryAgain (it cannot wait
// inside Process); what it sent before arrives.
func TestStreamEventLoopQueueBound(t *testing.T) {
	sendErr := make(chan error, 1)
	_, addr, _ := startEpollServer(t, Config{}, partsService(sendErr))
	cl := dial(t, addr, &ClientOptions{ResponseRingSize: MinRingSize})
	ctx := testCtx(t)
	got := 0
	var end error
	for b, err := range cl.Stream(ctx, msgParts, streamReq(100, 1000)) {
		if err != nil {
			end = err
			break
		}
		if got == 0 {
			// Hold the first part until the handler gave up.
			if err := <-sendErr; !errors.Is(err, ErrTryAgain) {
				t.Fatalf("Send beyond the event loop's bound: %v, want ErrTryAgain", err)
			}
		}
		if string(b) != string(partBytes(got, 1000)) {
			t.Fatalf("part %d is not the one sent", got)
		}
		got++
	}
	var he *HandlerError
	if !errors.As(end, &he) || he.Code != 7 {
		t.Fatalf("after %d parts: %v, want the handler's failure", got, end)
	}
	// The ring (4 parts) and the queue (one ring's worth: 4 more).
	if got < MinRingSize/1024 || got > 2*MinRingSize/1024 {
		t.Fatalf("%d parts arrived, want between one and two rings' worth", got)
	}
}

// Parts cost no allocation, on either side: a stream of many parts
// allocates what one of a single part does (the sequence's closures, the
// handler's buffer).
func TestStreamAllocs(t *testing.T) {
	_, addr := startServer(t, nil, partsService(nil))
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	var bad error
	run := func(parts int) func() {
		req := streamReq(parts, 64)
		return func() {
			n := 0
			for _, err := range cl.Stream(ctx, msgParts, req) {
				if err != nil {
					bad = err
					return
				}
				n++
			}
			if n != parts+1 {
				bad = errors.New("wrong number of parts")
			}
		}
	}
	few, many := run(1), run(101)
	for range 20 {
		few()
		many()
	}
	a1 := testing.AllocsPerRun(50, few)
	a101 := testing.AllocsPerRun(50, many)
	if bad != nil {
		t.Fatal(bad)
	}
	// Both sides run in this process: 100 more parts cost neither. The
	// counts are the whole process's, so a goroutine of an earlier test
	// still winding down (go test -count=3) may add a few to either; one
	// allocation per part would add a hundred.
	if a101 > a1+10 {
		t.Errorf("a stream of 101 parts costs %.0f allocations, one of 1 part %.0f: want the same", a101, a1)
	}
}

// A hostile server's stream parts: on a connection that did not grant
// FeatureStream, or for a call no one made, a part is a protocol
// violation that ends the connection; the client does not read such
// parts for as long as the server writes them.
func TestHostileServerStreamParts(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grant uint32
		corr  uint64
	}{
		{"without FeatureStream", 0, 0},
		{"for no call", FeatureStream, orphanCorr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeServer(t, [3]uint64{4096, 4096, 4096}, func(r *reply) { r.features = tc.grant })
			cl, err := f.dial(nil)
			if err != nil {
				t.Fatal(err)
			}
			pl := make([]byte, respHdrSize+4)
			binary.LittleEndian.PutUint64(pl, tc.corr) // the first call's id is 0
			if err := f.resp.TryWrite(respStreamPart, pl); err != nil {
				t.Fatal(err)
			}
			var end error
			for _, err := range cl.Stream(testCtx(t), msgParts, nil) {
				end = err
			}
			if !errors.Is(end, ErrProtocol) {
				t.Fatalf("stream behind the part: %v, want ErrProtocol", end)
			}
			<-cl.Done()
			if !errors.Is(cl.Err(), ErrProtocol) {
				t.Errorf("connection ended with %v, want ErrProtocol", cl.Err())
			}
		})
	}
}

const msgPartsForever = 43 // Send 100-byte parts until Send fails; the error goes to the test

// A client that stops reading a stream, by a break or by its context,
// cancels the call (FeatureCancel): the handler's Send then fails with
// context.Canceled, the call is answered cancelled (which the client
// discards), and the connection goes on.
func TestStreamCancelReachesHandler(t *testing.T) {
	for _, how := range []string{"break", "context"} {
		t.Run(how, func(t *testing.T) {
			sendErr := make(chan error, 1)
			svc := echoService()
			svc.Handlers[msgPartsForever] = HandlerFunc(func(w *ResponseWriter, r *Request) {
				part := make([]byte, 100)
				for {
					if err := w.Send(part); err != nil {
						sendErr <- err
						return
					}
				}
			})
			srv, addr := startServer(t, nil, svc)
			cl := dial(t, addr, &ClientOptions{ResponseRingSize: MinRingSize})
			if cl.Features()&FeatureCancel == 0 {
				t.Fatal("FeatureCancel not granted")
			}
			ctx, cancel := context.WithCancel(testCtx(t))
			defer cancel()
			got := 0
			for _, err := range cl.Stream(ctx, msgPartsForever, nil) {
				if err != nil {
					if how == "context" && errors.Is(err, context.Canceled) {
						break
					}
					t.Fatal(err)
				}
				got++
				if got == 3 {
					if how == "break" {
						break
					}
					cancel()
				}
			}
			tctx := testCtx(t)
			select {
			case err := <-sendErr:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("the handler's Send after the client stopped: %v, want context.Canceled", err)
				}
			case <-tctx.Done():
				t.Fatal("the handler's Send never failed after the client stopped reading")
			}
			waitUntil(t, func() bool { return srv.Stats().Cancelled == 1 }, "the call answered cancelled")
			if b, err := cl.Call(tctx, msgEcho, []byte("after")); err != nil || string(b) != "after" {
				t.Fatalf("call after a cancelled stream: %q, %v", b, err)
			}
			waitUntil(t, func() bool {
				cl.mu.Lock()
				defer cl.mu.Unlock()
				return cl.waiters.len() == 0 && cl.orphans == 0
			}, "the stream's waiter freed")
		})
	}
}
