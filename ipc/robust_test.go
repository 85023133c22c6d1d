//go:build linux

package ipc

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringipc/ringipc/ring"
	"golang.org/x/sys/unix"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestHandlerPanic: a panicking handler costs its call an
// ErrHandlerPanic response, is logged and counted, and the connection
// goes on serving.
func TestHandlerPanic(t *testing.T) {
	const (
		msgPanic        = 30 // panics before answering
		msgPanicReserve = 31 // panics holding a reservation
		msgPanicLate    = 32 // answers, then panics
	)
	svc := echoService()
	svc.Handlers[msgPanic] = HandlerFunc(func(w *ResponseWriter, r *Request) { panic("kaboom") })
	svc.Handlers[msgPanicReserve] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		b, _ := w.Reserve(8)
		copy(b, "partial!")
		panic(errors.New("kaboom with a reservation"))
	})
	svc.Handlers[msgPanicLate] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		w.Respond([]byte("answered"))
		panic("kaboom after answering")
	})
	var logs syncBuffer
	srv, addr := startServer(t, &Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, svc)
	cl := dial(t, addr, nil)
	ctx := testCtx(t)

	for _, id := range []uint16{msgPanic, msgPanicReserve} {
		if _, err := cl.Call(ctx, id, nil); !errors.Is(err, ErrHandlerPanic) {
			t.Errorf("message %d: %v, want ErrHandlerPanic", id, err)
		}
		buf := make([]byte, 16)
		if _, err := cl.CallInto(ctx, id, nil, buf); !errors.Is(err, ErrHandlerPanic) {
			t.Errorf("message %d (CallInto): %v, want ErrHandlerPanic", id, err)
		}
	}
	if got, err := cl.Call(ctx, msgPanicLate, nil); err != nil || string(got) != "answered" {
		t.Errorf("answer before the panic: %q, %v", got, err)
	}
	if got, err := cl.Call(ctx, msgEcho, []byte("alive")); err != nil || string(got) != "alive" {
		t.Fatalf("after the panics: %q, %v", got, err)
	}
	st := srv.Conns()[0].Stats()
	if st.Panics != 5 {
		t.Errorf("Stats.Panics = %d, want 5", st.Panics)
	}
	if st.ErrorResponses != 4 {
		t.Errorf("Stats.ErrorResponses = %d, want 4", st.ErrorResponses)
	}
	out := logs.String()
	for _, want := range []string{"handler panicked", "kaboom with a reservation", "robust_test.go"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// socketPair returns the two ends of a connected Unix stream socket pair.
func socketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ends [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		ends[i] = c.(*net.UnixConn)
	}
	return ends[0], ends[1]
}

// TestTokenBufferFull: a wake-up whose token finds the socket buffer full
// (the peer's reader is behind, here on tokens for another word) still
// arrives once the peer reads.
func TestTokenBufferFull(t *testing.T) {
	a, b := socketPair(t)
	mem := make([]byte, 3*1024)
	offs := [3]uint64{0, 1024, 2048}
	doneA, doneB := make(chan struct{}), make(chan struct{})
	rcA, _ := a.SyscallConn()
	rcB, _ := b.SyscallConn()
	// a is the client's end, b the server's; both see the same words.
	wa := newSockWaker(mem, offs, []int{wReqProd, wRespCons, wDispCons}, rcA, doneA)
	wb := newSockWaker(mem, offs, []int{wReqCons, wRespProd, wDispProd}, rcB, doneB)
	var readers sync.WaitGroup
	t.Cleanup(func() {
		a.Close()
		b.Close()
		close(doneA)
		close(doneB)
		wa.close()
		wb.close()
		readers.Wait()
	})

	// Fill the buffer with tokens for another of b's words, as a burst
	// of wake-ups would while b's reader is descheduled.
	rcA.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
		for writeToken(fd, []byte{tokRespProd}) == nil {
		}
	})
	// b's loop announces that it sleeps on the request ring...
	atomic.SwapUint32(wb.words[wReqCons], ring.WordWaker)
	ctx := testCtx(t)
	woke := make(chan error, 1)
	go func() { woke <- wb.sleep(ctx, wReqCons) }()
	// ...and a publishes a request and wakes it, as the ring would.
	if atomic.SwapUint32(wa.words[wReqCons], 0) != 1 {
		t.Fatal("word not armed")
	}
	wa.Wake(wa.words[wReqCons])
	if !wa.isFlushing() {
		t.Fatal("no token deferred: the buffer was not full")
	}
	// Only now does b's reader catch up.
	readers.Go(func() {
		var buf [64]byte
		for {
			n, err := b.Read(buf[:])
			for _, tok := range buf[:n] {
				if err := wb.deliverOne(tok); err != nil {
					t.Error(err)
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	select {
	case err := <-woke:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the wake-up was lost")
	}
}

// TestAbandonedCallsFullRing: calls abandoned while their responses do
// not fit the response ring, with no other call waiting, must not leave
// the server blocked on that ring.
func TestAbandonedCallsFullRing(t *testing.T) {
	const calls = 8 // 8 responses of 1500 bytes; the ring holds 2
	release := make(chan struct{})
	svc := echoService()
	svc.Handlers[msgBlock] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		<-release
		w.Respond(make([]byte, 1500))
	})
	srv, addr := startServer(t, nil, svc)
	cl := dial(t, addr, &ClientOptions{ResponseRingSize: MinRingSize})
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, calls)
	for range calls {
		go func() {
			_, err := cl.Call(ctx, msgBlock, nil)
			errs <- err
		}()
	}
	// Abandon them only once every request is out.
	waitUntil(t, func() bool {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		return cl.waiters.len() == calls
	}, "every call in flight")
	cancel()
	for range calls {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("abandoned call: %v", err)
		}
	}
	close(release)
	conn := srv.Conns()[0]
	waitUntil(t, func() bool { return conn.Stats().Responses == calls },
		"the server to write every response (not blocked on the response ring)")
	// The background reader stops once every orphan has arrived.
	waitUntil(t, func() bool {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		return cl.orphans == 0 && !cl.reading
	}, "the orphaned responses to be drained")
	if got, err := cl.Call(testCtx(t), msgEcho, []byte("next")); err != nil || string(got) != "next" {
		t.Fatalf("next call: %q, %v", got, err)
	}
}
