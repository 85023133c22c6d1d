//go:build linux

package ipc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"golang.org/x/sys/unix"
)

// pattern fills a body whose every byte depends on its size and place, so
// a body from the wrong message or the wrong offset shows.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ byte(i>>9) ^ seed
	}
	return b
}

// Bodies at every boundary of the default 64 KiB rings and of a small
// MaxMessage go through requests, responses (copied, CallInto, zero
// copy) and dispatch; one byte above the maximum is ErrTooLarge with
// nothing sent, in both modes of the server.
func TestLargeBoundaries(t *testing.T) {
	for _, external := range []bool{false, true} {
		name := "goroutines"
		if external {
			name = "eventloop"
		}
		t.Run(name, func(t *testing.T) {
			const maxMsg = 3<<20 + 123
			cfg := Config{MaxMessage: maxMsg}
			var srv *Server
			var addr string
			if external {
				srv, addr, _ = startEpollServer(t, cfg, echoService())
			} else {
				srv, addr = startServer(t, &cfg, echoService())
			}
			cl := dial(t, addr, nil)
			if !cl.Large() {
				t.Fatal("FeatureLarge not granted")
			}
			if cl.MaxRequest() != maxMsg || cl.MaxResponse() != DefaultMaxMessage || cl.MaxDispatch() != DefaultMaxMessage {
				t.Fatalf("limits %d/%d/%d, want %d (the server's) and %d", cl.MaxRequest(), cl.MaxResponse(), cl.MaxDispatch(), maxMsg, DefaultMaxMessage)
			}
			c := firstConn(t, srv)
			ctx := testCtx(t)
			ring := DefaultRingSize
			sizes := []int{0, 1, ring/2 - 1, ring / 2, ring/2 + 1, MaxRequestBody(ring), MaxRequestBody(ring) + 1,
				MaxResponseBody(ring), MaxResponseBody(ring) + 1, MaxDispatchBody(ring), MaxDispatchBody(ring) + 1,
				ring, 1 << 20, 1<<20 + 1, maxMsg - 1, maxMsg, 1000}
			buf := make([]byte, maxMsg)
			for i, n := range sizes {
				req := pattern(n, byte(i))
				got, err := cl.Call(ctx, msgEcho, req)
				if err != nil || !bytes.Equal(got, req) {
					t.Fatalf("Call of %d bytes: %d bytes back, %v", n, len(got), err)
				}
				m, err := cl.CallInto(ctx, msgEchoZC, req, buf)
				if err != nil || !bytes.Equal(buf[:m], req) {
					t.Fatalf("CallInto of %d bytes (zero-copy handler): %d bytes back, %v", n, m, err)
				}
				p, err := cl.Reserve(ctx, msgEcho, n)
				if err != nil {
					t.Fatalf("Reserve %d: %v", n, err)
				}
				copy(p.Bytes(), req)
				resp, err := p.Send(ctx)
				if err != nil || !bytes.Equal(resp.Data, req) {
					t.Fatalf("zero-copy call of %d bytes: %d bytes back, %v", n, len(resp.Data), err)
				}
				resp.Release()
				if err := c.Dispatch(ctx, 7, req); err != nil {
					t.Fatalf("Dispatch of %d bytes: %v", n, err)
				}
				msg, err := cl.Recv(ctx)
				if err != nil || msg.ID != 7 || !bytes.Equal(msg.Data, req) {
					t.Fatalf("Recv of %d bytes: %d bytes, id %d, %v", n, len(msg.Data), msg.ID, err)
				}
			}
			if _, err := cl.Call(ctx, msgEcho, make([]byte, maxMsg+1)); !errors.Is(err, ErrTooLarge) {
				t.Errorf("request of the server's MaxMessage+1: %v, want ErrTooLarge", err)
			}
			if err := c.Dispatch(ctx, 7, make([]byte, maxMsg+1)); !errors.Is(err, ErrTooLarge) {
				t.Errorf("dispatch of MaxMessage+1: %v, want ErrTooLarge", err)
			}
			if got, err := cl.Call(ctx, msgEcho, []byte("still up")); err != nil || string(got) != "still up" {
				t.Errorf("after the refusals: %q, %v", got, err)
			}
		})
	}
}

// Random sizes on both sides of the ring limit, from several goroutines
// at once, so that large and ring-sized messages interleave and the ring
// wraps under the descriptors.
func TestLargeRandomConcurrent(t *testing.T) {
	_, addr := startServer(t, &Config{MaxMessage: 1 << 20}, echoService())
	cl := dial(t, addr, &ClientOptions{RequestRingSize: 8192, ResponseRingSize: 8192})
	ctx := testCtx(t)
	errs := make(chan error, 4)
	for g := range 4 {
		go func() {
			r := rand.New(rand.NewPCG(uint64(g), 12))
			for i := range 60 {
				n := r.IntN(3 * 8192)
				if i%7 == 0 {
					n = r.IntN(1 << 20)
				}
				req := pattern(n, byte(i+g))
				got, err := cl.Call(ctx, msgEcho, req)
				if err != nil || !bytes.Equal(got, req) {
					errs <- fmt.Errorf("goroutine %d call %d of %d bytes: %d back, %w", g, i, n, len(got), err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// A large body costs at most its destination buffer: CallInto (request
// and response of 1 MiB) allocates nothing once the segments exist, Call
// only the result, and a large dispatch message only Recv's copy.
func TestLargeAllocs(t *testing.T) {
	srv, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, nil)
	c := firstConn(t, srv)
	ctx := testCtx(t)
	req := pattern(1<<20, 1)
	buf := make([]byte, 1<<20)
	into := func() {
		if n, err := cl.CallInto(ctx, msgEchoZC, req, buf); err != nil || n != len(req) {
			t.Fatal(n, err)
		}
	}
	call := func() {
		if _, err := cl.Call(ctx, msgEcho, req); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() {
		if err := c.Dispatch(ctx, 3, req); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Recv(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		into()
		call()
		recv()
	}
	// Under the race detector a dropped pooled waiter (a waiter and its
	// channel) comes on top now and then.
	slack := 0.0
	if raceOn {
		slack = 2
	}
	if n := testing.AllocsPerRun(50, into); n > slack {
		t.Errorf("%.2f allocations per 1 MiB CallInto round trip, want 0", n)
	}
	if n := testing.AllocsPerRun(50, call); n > 1+slack {
		t.Errorf("%.2f allocations per 1 MiB Call, want 1 (the response)", n)
	}
	if n := testing.AllocsPerRun(50, recv); n > 1 {
		t.Errorf("%.2f allocations per 1 MiB Dispatch and Recv, want 1 (the message)", n)
	}
}

// A large reservation committed short (CommitN, SendN) sends the first n
// bytes, through the body segment or, short enough, still through it.
func TestLargeCommitN(t *testing.T) {
	svc := echoService()
	const msgShort = 61
	svc.Handlers[msgShort] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		b, err := w.Reserve(2 << 20)
		if err != nil {
			return
		}
		n := copy(b, r.Data)
		w.CommitN(n)
	})
	_, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	for _, n := range []int{0, 100, 700000} {
		req := pattern(n, 9)
		p, err := cl.Reserve(ctx, msgShort, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		copy(p.Bytes(), req)
		resp, err := p.SendN(ctx, n)
		if err != nil || !bytes.Equal(resp.Data, req) {
			t.Fatalf("SendN %d of a 1 MiB reservation, CommitN of 2 MiB: %d bytes back, %v", n, len(resp.Data), err)
		}
		resp.Release()
	}
}

// BenchmarkLargeCall is a CallInto of a 1 MiB request echoed back
// through the body segments of the default 64 KiB rings.
func BenchmarkLargeCall(b *testing.B) {
	_, addr := startServer(b, nil, echoService())
	cl := dial(b, addr, nil)
	ctx := context.Background()
	req := pattern(1<<20, 3)
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cl.CallInto(ctx, msgEchoZC, req, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// A Dispatch of a large message waiting for the client to release the
// last one ends when the connection does (it holds the dispatch queue's
// lock meanwhile, which the connection's end also needs).
func TestLargeDispatchEndsWithConnection(t *testing.T) {
	srv, addr := startServer(t, &Config{MaxMessage: 4 << 20}, echoService())
	cl := dial(t, addr, nil)
	c := firstConn(t, srv)
	ctx := testCtx(t)
	errs := make(chan error, 1)
	go func() {
		// 4 MiB bodies fill the 4 MiB segment one at a time; the client
		// never reads, so the second waits for the first's release.
		for {
			if _, err := c.DispatchWith(ctx, 1, make([]byte, 4<<20), DispatchOptions{Policy: PolicyBlock}); err != nil {
				errs <- err
				return
			}
		}
	}()
	waitUntil(t, func() bool { return c.Stats().Dispatches >= 1 }, "the first large dispatch")
	cl.Close()
	if err := <-errs; !errors.Is(err, ErrDisconnected) {
		t.Errorf("the waiting Dispatch ended with %v, want ErrDisconnected", err)
	}
}

// Streamed responses carry parts larger than the ring, and a large
// request starts a stream: each part comes whole and in order.
func TestLargeStreamParts(t *testing.T) {
	svc := echoService()
	const msgParts = 62
	sizes := []int{10, 100000, 1 << 20, 5, 3 << 20}
	svc.Handlers[msgParts] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		for i, n := range sizes {
			if err := w.Send(pattern(n, byte(i))); err != nil {
				w.Fail(1, err.Error())
				return
			}
		}
		w.Respond(r.Data) // the final response echoes the request
	})
	_, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	req := pattern(2<<20, 77)
	i := 0
	for part, err := range cl.Stream(ctx, msgParts, req) {
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		want := req
		if i < len(sizes) {
			want = pattern(sizes[i], byte(i))
		}
		if !bytes.Equal(part, want) {
			t.Fatalf("part %d: %d bytes, want %d", i, len(part), len(want))
		}
		i++
	}
	if i != len(sizes)+1 {
		t.Fatalf("%d parts and final body, want %d", i, len(sizes)+1)
	}
	// Stopping midway discards the rest, large parts included.
	for range cl.Stream(ctx, msgParts, nil) {
		break
	}
	if got, err := cl.Call(ctx, msgEcho, req); err != nil || !bytes.Equal(got, req) {
		t.Fatalf("a call after a stream given up: %d bytes, %v", len(got), err)
	}
}

// BenchmarkBodySegment compares, for a 1 MiB body, filling a fresh memfd
// (create, size, map, write: the page faults of a segment per message)
// with filling the same mapped segment again (what a connection's body
// segment costs after its first message): docs/design.md §3.
func BenchmarkBodySegment(b *testing.B) {
	const n = 1 << 20
	body := pattern(n, 5)
	b.Run("fresh", func(b *testing.B) {
		b.SetBytes(n)
		for b.Loop() {
			fd, err := unix.MemfdCreate("ringipc-body", unix.MFD_CLOEXEC)
			if err != nil {
				b.Fatal(err)
			}
			unix.Ftruncate(fd, n)
			mem, err := unix.Mmap(fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				b.Fatal(err)
			}
			copy(mem, body)
			unix.Munmap(mem)
			unix.Close(fd)
		}
	})
	b.Run("reused", func(b *testing.B) {
		fd, err := unix.MemfdCreate("ringipc-body", unix.MFD_CLOEXEC)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fd)
		unix.Ftruncate(fd, n)
		mem, err := unix.Mmap(fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Munmap(mem)
		b.SetBytes(n)
		for b.Loop() {
			copy(mem, body)
		}
	})
}

// A large message the client has no room for (it has not released the
// bodies before) falls under the dispatch policy like a full ring and
// queue: PolicyDrop drops it, PolicyDisconnect ends the connection; only
// PolicyBlock waits (TestLargeDispatchEndsWithConnection).
func TestLargeDispatchPolicy(t *testing.T) {
	srv, addr := startServer(t, &Config{MaxMessage: 4 << 20}, echoService())
	cl := dial(t, addr, nil)
	c := firstConn(t, srv)
	ctx := testCtx(t)
	body := make([]byte, 4<<20) // one fills the segment
	if _, err := c.DispatchWith(ctx, 1, body, DispatchOptions{Policy: PolicyDrop}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DispatchWith(ctx, 2, body, DispatchOptions{Policy: PolicyDrop}); !errors.Is(err, ErrDropped) {
		t.Errorf("a second large message, unread first, PolicyDrop: %v, want ErrDropped", err)
	}
	if fc := cl.FlowControl(); fc.Dropped != 1 {
		t.Errorf("FlowControl.Dropped %d, want 1", fc.Dropped)
	}
	if m, err := cl.Recv(ctx); err != nil || m.ID != 1 || len(m.Data) != len(body) {
		t.Fatalf("Recv: id %d, %d bytes, %v", m.ID, len(m.Data), err)
	}
	// Released: room again.
	if _, err := c.DispatchWith(ctx, 3, body, DispatchOptions{Policy: PolicyDrop}); err != nil {
		t.Fatalf("after the client read the first: %v", err)
	}
	if _, err := c.DispatchWith(ctx, 4, body, DispatchOptions{Policy: PolicyDisconnect}); !errors.Is(err, ErrSlowConsumer) {
		t.Errorf("PolicyDisconnect: %v, want ErrSlowConsumer", err)
	}
	<-cl.Done()
}

// A large call's deadline reaches its handler, as a ring-sized call's
// does (FeatureCancel): the descriptor record carries it.
func TestLargeCallDeadline(t *testing.T) {
	svc := echoService()
	const msgDeadline = 63
	svc.Handlers[msgDeadline] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		_, ok := r.Context().Deadline()
		if !ok || len(r.Data) != 1<<20 {
			w.Fail(1, fmt.Sprintf("deadline %v, %d bytes", ok, len(r.Data)))
			return
		}
		w.Respond([]byte("has a deadline"))
	})
	_, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	ctx := testCtx(t) // has a deadline
	if _, ok := ctx.Deadline(); !ok {
		t.Fatal("the test context has no deadline")
	}
	got, err := cl.Call(ctx, msgDeadline, make([]byte, 1<<20))
	if err != nil || string(got) != "has a deadline" {
		t.Fatalf("large call with a deadline: %q, %v", got, err)
	}
}
