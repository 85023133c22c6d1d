//go:build linux

package ipc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

const msgCommitN = 40 // body: u32 reserve, i32 n; Reserve(reserve), CommitN(n)

// commitNService answers msgCommitN with a reservation of the size asked
// for, filled with a pattern, committed with CommitN(n). A refused
// CommitN is reported on refused (and the handler then commits the
// reservation whole, to show that it was still its own).
func commitNService(refused chan<- error) *Service {
	svc := echoService()
	svc.Handlers[msgCommitN] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		reserve := int(binary.LittleEndian.Uint32(r.Data))
		n := int(int32(binary.LittleEndian.Uint32(r.Data[4:])))
		b, err := w.Reserve(reserve)
		if err != nil {
			w.Fail(1, err.Error())
			return
		}
		for i := range b {
			b[i] = byte(i * 7)
		}
		if err := w.CommitN(n); err != nil {
			refused <- err
			if err := w.Commit(); err != nil {
				panic(err)
			}
		}
	})
	return svc
}

func commitNReq(reserve, n int) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint32(b, uint32(reserve))
	binary.LittleEndian.PutUint32(b[4:], uint32(int32(n)))
	return b
}

func checkPattern(t *testing.T, got []byte, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("body of %d bytes, want %d", len(got), n)
	}
	for i, c := range got {
		if c != byte(i*7) {
			t.Fatalf("byte %d is %d, want %d", i, c, byte(i*7))
		}
	}
}

// ResponseWriter.CommitN at its boundaries, in both server modes: 0 bytes,
// some, all, the whole body limit; one more than reserved and -1 are
// ErrTooLarge and send nothing, and the reservation is still the
// handler's.
func TestResponseCommitN(t *testing.T) {
	for _, mode := range []string{"goroutines", "event loop"} {
		t.Run(mode, func(t *testing.T) {
			refused := make(chan error, 1)
			var addr string
			if mode == "goroutines" {
				_, addr = startServer(t, nil, commitNService(refused))
			} else {
				_, addr, _ = startEpollServer(t, Config{}, commitNService(refused))
			}
			cl := dial(t, addr, &ClientOptions{MaxMessage: -1}) // ring-sized bodies
			ctx := testCtx(t)
			max := cl.MaxResponse()
			for _, tc := range []struct{ reserve, n int }{
				{0, 0}, {100, 0}, {100, 1}, {100, 99}, {100, 100}, {max, 17}, {max, max},
			} {
				got, err := cl.Call(ctx, msgCommitN, commitNReq(tc.reserve, tc.n))
				if err != nil {
					t.Fatalf("reserve %d, CommitN(%d): %v", tc.reserve, tc.n, err)
				}
				checkPattern(t, got, tc.n)
			}
			for _, tc := range []struct{ reserve, n int }{{100, 101}, {0, 1}, {max, max + 1}, {10, -1}} {
				got, err := cl.Call(ctx, msgCommitN, commitNReq(tc.reserve, tc.n))
				if err != nil {
					t.Fatal(err)
				}
				if err := <-refused; !errors.Is(err, ErrTooLarge) {
					t.Fatalf("reserve %d, CommitN(%d): %v, want ErrTooLarge", tc.reserve, tc.n, err)
				}
				// The handler then committed the reservation whole.
				checkPattern(t, got, tc.reserve)
			}
		})
	}
}

// Random reservations and partial commits on both sides, through small
// rings many times over (records wrap at every size), with a few callers
// at once so that the server's responses queue behind each other.
func TestCommitNRandomWraps(t *testing.T) {
	refused := make(chan error, 1)
	_, addr := startServer(t, nil, commitNService(refused))
	// Ring-sized bodies (MaxMessage -1): the limits below are the rings'.
	cl := dial(t, addr, &ClientOptions{RequestRingSize: MinRingSize, ResponseRingSize: MinRingSize, MaxMessage: -1})
	ctx := testCtx(t)
	errc := make(chan error, 3)
	for g := range 3 {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(g), 5))
			for range 300 {
				reserve := rng.IntN(cl.MaxResponse() + 1)
				n := rng.IntN(reserve + 1)
				req := commitNReq(reserve, n)
				p, err := cl.Reserve(ctx, msgCommitN, 8+rng.IntN(cl.MaxRequest()-8+1))
				if err != nil {
					errc <- err
					return
				}
				copy(p.Bytes(), req)
				r, err := p.SendN(ctx, len(req))
				if err != nil {
					errc <- err
					return
				}
				ok := len(r.Data) == n
				for i := 0; ok && i < n; i++ {
					ok = r.Data[i] == byte(i*7)
				}
				r.Release()
				if !ok {
					errc <- fmt.Errorf("reserve %d, commit %d: a response of %d bytes, not the pattern", reserve, n, len(r.Data))
					return
				}
			}
			errc <- nil
		}()
	}
	for range 3 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// In event-loop mode a response the full response ring cannot take now
// waits in the connection's queue; CommitN shortens it there too.
func TestResponseCommitNQueued(t *testing.T) {
	refused := make(chan error, 1)
	srv, addr, _ := startEpollServer(t, Config{}, commitNService(refused))
	cl := dial(t, addr, &ClientOptions{ResponseRingSize: MinRingSize, MaxMessage: -1})
	ctx := testCtx(t)
	max := cl.MaxResponse()
	// A held zero-copy response of the largest body fills half the
	// response ring; a second one, unread behind it, the other half.
	p, err := cl.Reserve(ctx, msgEchoZC, max)
	if err != nil {
		t.Fatal(err)
	}
	held, err := p.Send(ctx)
	if err != nil {
		t.Fatal(err)
	}
	responses := func() uint64 { return srv.Stats().Responses }
	filler := make(chan error, 1)
	go func() {
		_, err := cl.Call(ctx, msgEcho, make([]byte, max))
		filler <- err
	}()
	waitUntil(t, func() bool { return responses() == 2 }, "the filler's response in the ring")
	type result struct {
		b   []byte
		err error
	}
	queued := make(chan result, 1)
	go func() {
		b, err := cl.Call(ctx, msgCommitN, commitNReq(max, 33))
		queued <- result{b, err}
	}()
	// Counted when committed into the connection's queue.
	waitUntil(t, func() bool { return responses() == 3 }, "the CommitN response queued")
	if err := held.Release(); err != nil {
		t.Fatal(err)
	}
	if err := <-filler; err != nil {
		t.Fatal(err)
	}
	r := <-queued
	if r.err != nil {
		t.Fatal(r.err)
	}
	checkPattern(t, r.b, 33)
}

// PendingCall.SendN at its boundaries: the server sees exactly the bytes
// sent; a count out of range is ErrTooLarge and leaves the call live.
func TestPendingCallSendN(t *testing.T) {
	_, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, &ClientOptions{MaxMessage: -1}) // ring-sized bodies
	ctx := testCtx(t)
	max := min(cl.MaxRequest(), cl.MaxResponse()) // echoed
	for _, tc := range []struct{ reserve, n int }{{0, 0}, {100, 0}, {100, 50}, {100, 100}, {max, 1}, {max, max}} {
		p, err := cl.Reserve(ctx, msgEcho, tc.reserve)
		if err != nil {
			t.Fatal(err)
		}
		b := p.Bytes()
		for i := range b {
			b[i] = byte(i * 7)
		}
		for _, bad := range []int{tc.reserve + 1, -1} {
			if _, err := p.SendN(ctx, bad); !errors.Is(err, ErrTooLarge) {
				t.Fatalf("SendN(%d) of %d reserved: %v, want ErrTooLarge", bad, tc.reserve, err)
			}
		}
		r, err := p.SendN(ctx, tc.n)
		if err != nil {
			t.Fatalf("SendN(%d) of %d reserved: %v", tc.n, tc.reserve, err)
		}
		checkPattern(t, r.Data, tc.n)
		if err := r.Release(); err != nil {
			t.Fatal(err)
		}
		if _, err := p.SendN(ctx, 0); !errors.Is(err, ErrCallDone) {
			t.Fatalf("SendN after SendN: %v, want ErrCallDone", err)
		}
	}
}

// Partial commits on both sides allocate nothing.
func TestCommitNAllocs(t *testing.T) {
	refused := make(chan error, 1)
	_, addr := startServer(t, nil, commitNService(refused))
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	req := commitNReq(1000, 64)
	buf := make([]byte, 1000)
	// One call per measured run, as in TestAllocs: under -race sync.Pool
	// drops some of what it is given on purpose, which a run of two
	// calls rounds up to an allocation.
	var bad error // set by a run that went wrong; formatting in the run would allocate
	zc := func() {
		p, err := cl.Reserve(ctx, msgCommitN, 100)
		if err != nil {
			bad = err
			return
		}
		copy(p.Bytes(), req)
		r, err := p.SendN(ctx, len(req))
		if err != nil {
			bad = err
			return
		}
		if len(r.Data) != 64 {
			bad = errors.New("SendN: response not of 64 bytes")
		}
		r.Release()
	}
	into := func() {
		if n, err := cl.CallInto(ctx, msgCommitN, req, buf); err != nil || n != 64 {
			bad = errors.New("CallInto: error or response not of 64 bytes")
		}
	}
	for range 100 {
		zc()
		into()
	}
	if n := testing.AllocsPerRun(300, zc); n != 0 {
		t.Errorf("%.2f allocations per SendN round trip (the handler's CommitN included), want 0", n)
	}
	if n := testing.AllocsPerRun(300, into); n != 0 {
		t.Errorf("%.2f allocations per CallInto round trip (the handler's CommitN included), want 0", n)
	}
	if bad != nil {
		t.Fatal(bad)
	}
}
