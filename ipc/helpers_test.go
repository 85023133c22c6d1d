//go:build linux

package ipc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// Message ids of the test service.
const (
	msgEcho     = 1 // echo the body (copy)
	msgEchoZC   = 2 // echo the body through Reserve/Commit
	msgFail     = 3 // Fail(42, "boom")
	msgBlock    = 4 // wait until the connection ends
	msgDispatch = 5 // body: u8 count; dispatch that many messages, then respond
	msgPrivate  = 6 // respond with the connection's private data (a string)
	testService = 7
)

func echoService() *Service {
	return &Service{
		ID:   testService,
		Name: "echo",
		Handlers: map[uint16]Handler{
			msgEcho: HandlerFunc(func(w *ResponseWriter, r *Request) { w.Respond(r.Data) }),
			msgEchoZC: HandlerFunc(func(w *ResponseWriter, r *Request) {
				b, err := w.Reserve(len(r.Data))
				if err != nil {
					return
				}
				copy(b, r.Data)
				w.Commit()
			}),
			msgFail: HandlerFunc(func(w *ResponseWriter, r *Request) { w.Fail(42, "boom") }),
			msgBlock: HandlerFunc(func(w *ResponseWriter, r *Request) {
				<-r.Context().Done()
			}),
			msgDispatch: HandlerFunc(func(w *ResponseWriter, r *Request) {
				n := 0
				if len(r.Data) > 0 {
					n = int(r.Data[0])
				}
				for i := range n {
					if err := r.Conn.Dispatch(r.Context(), uint16(100+i), []byte{byte(i)}); err != nil {
						w.Fail(1, err.Error())
						return
					}
				}
				w.Respond(nil)
			}),
			msgPrivate: HandlerFunc(func(w *ResponseWriter, r *Request) {
				s, _ := r.Conn.Private().(string)
				w.Respond([]byte(s))
			}),
		},
	}
}

// abstractAddr returns a fresh abstract socket name.
func abstractAddr() string {
	var b [8]byte
	rand.Read(b[:])
	return "@ringipc-test-" + hex.EncodeToString(b[:])
}

// startServer serves svcs on a fresh abstract address until the test
// ends.
func startServer(t testing.TB, cfg *Config, svcs ...*Service) (*Server, string) {
	t.Helper()
	return startServerAt(t, abstractAddr(), cfg, svcs...)
}

func startServerAt(t testing.TB, addr string, cfg *Config, svcs ...*Service) (*Server, string) {
	t.Helper()
	return startServerSetup(t, addr, cfg, nil, svcs...)
}

// startServerSetup is startServerAt that runs setup (if not nil) on the
// server before it listens: what a client connecting at once must find.
func startServerSetup(t testing.TB, addr string, cfg *Config, setup func(*Server), svcs ...*Service) (*Server, string) {
	t.Helper()
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if err := srv.Register(s); err != nil {
			t.Fatal(err)
		}
	}
	if setup != nil {
		setup(srv)
	}
	l, err := Listen(addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return srv, addr
}

func dial(t testing.TB, addr string, opts *ClientOptions) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := Dial(ctx, addr, testService, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// testCtx is a context for operations that must succeed: its long
// timeout only turns a hang into a failure.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// waitUntil polls cond until it holds, failing the test only if the
// test's hang guard (testCtx) runs out first: the condition, not the
// pause between looks, is what the test waits for.
func waitUntil(t testing.TB, cond func() bool, what string) {
	t.Helper()
	ctx := testCtx(t)
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waited a minute for %s", what)
		case <-time.After(time.Millisecond):
		}
	}
}

func rawDial(t testing.TB, addr string) *net.UnixConn {
	t.Helper()
	c, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

func readFull(c net.Conn, b []byte) (int, error) { return io.ReadFull(c, b) }

// firstConn returns the server side of srv's only connection.
func firstConn(t testing.TB, srv *Server) *Conn {
	t.Helper()
	conns := srv.Conns()
	if len(conns) != 1 {
		t.Fatalf("%d connections", len(conns))
	}
	return conns[0]
}
