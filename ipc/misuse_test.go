//go:build linux

package ipc

import (
	"errors"
	"net"
	"os"
	"testing"
)

// Every error an exported method returns for misuse is an exported
// sentinel (or a standard one), testable with errors.Is.
func TestMisuseErrors(t *testing.T) {
	type outcome struct{ second, commit error }
	answered := make(chan outcome, 1)
	svc := echoService()
	const msgTwice = 50
	svc.Handlers[msgTwice] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		var o outcome
		if err := w.Respond([]byte("first")); err != nil {
			t.Errorf("first Respond: %v", err)
		}
		o.second = w.Respond([]byte("second"))
		o.commit = w.Commit()
		answered <- o
	})
	srv, addr := startServer(t, nil, svc)
	ctx := testCtx(t)

	t.Run("Register", func(t *testing.T) {
		if err := srv.Register(nil); !errors.Is(err, os.ErrInvalid) {
			t.Errorf("Register(nil): %v, want os.ErrInvalid", err)
		}
		if err := srv.Register(echoService()); !errors.Is(err, os.ErrExist) {
			t.Errorf("Register of a used id: %v, want os.ErrExist", err)
		}
	})
	t.Run("ResponseWriter", func(t *testing.T) {
		cl := dial(t, addr, nil)
		if got, err := cl.Call(ctx, msgTwice, nil); err != nil || string(got) != "first" {
			t.Fatalf("call: %q, %v", got, err)
		}
		o := <-answered
		if !errors.Is(o.second, ErrResponded) {
			t.Errorf("second Respond: %v, want ErrResponded", o.second)
		}
		if !errors.Is(o.commit, ErrNotReserved) {
			t.Errorf("Commit without Reserve: %v, want ErrNotReserved", o.commit)
		}
	})
	t.Run("OnDispatch", func(t *testing.T) {
		cl := dial(t, addr, &ClientOptions{OnDispatch: func(uint16, []byte) {}})
		if _, err := cl.Recv(ctx); !errors.Is(err, ErrOnDispatch) {
			t.Errorf("Recv: %v, want ErrOnDispatch", err)
		}
		if _, err := cl.TryRecv(); !errors.Is(err, ErrOnDispatch) {
			t.Errorf("TryRecv: %v, want ErrOnDispatch", err)
		}
		if _, err := cl.DispatchFd(); !errors.Is(err, ErrOnDispatch) {
			t.Errorf("DispatchFd: %v, want ErrOnDispatch", err)
		}
	})
	t.Run("Process without EventLoop", func(t *testing.T) {
		dial(t, addr, nil)
		waitUntil(t, func() bool { return len(srv.Conns()) > 0 }, "a connection")
		if err := srv.Conns()[0].Process(); !errors.Is(err, ErrNoEventLoop) {
			t.Errorf("Process: %v, want ErrNoEventLoop", err)
		}
	})
	t.Run("Process inside Process", func(t *testing.T) {
		nested := make(chan error, 1)
		svc := echoService()
		svc.Handlers[msgTwice] = HandlerFunc(func(w *ResponseWriter, r *Request) {
			nested <- r.Conn.Process() // the handler runs inside Process
			w.Respond(nil)
		})
		_, addr, _ := startEpollServer(t, Config{}, svc)
		cl := dial(t, addr, nil)
		if _, err := cl.Call(ctx, msgTwice, nil); err != nil {
			t.Fatal(err)
		}
		if err := <-nested; !errors.Is(err, ErrConcurrentProcess) {
			t.Errorf("Process from a handler: %v, want ErrConcurrentProcess", err)
		}
	})
}

// Arguments a method cannot take are errors matching os.ErrInvalid.
func TestInvalidArguments(t *testing.T) {
	for name, cfg := range map[string]Config{
		"ring size below the min": {RingSize: 1000},
		"ring size above the max": {RingSize: 1 << 20, MaxRingSize: 1 << 16},
		"unknown policy":          {DispatchPolicy: 9},
	} {
		if _, err := NewServer(&cfg); !errors.Is(err, os.ErrInvalid) {
			t.Errorf("NewServer, %s: %v, want os.ErrInvalid", name, err)
		}
	}
	srv, addr := startServer(t, nil, echoService())
	if err := srv.Serve(notUnixListener{}); !errors.Is(err, os.ErrInvalid) {
		t.Errorf("Serve of a non-Unix listener: %v, want os.ErrInvalid", err)
	}
	if _, err := Listen("", 0); !errors.Is(err, os.ErrInvalid) {
		t.Errorf("Listen of an empty address: %v, want os.ErrInvalid", err)
	}
	ctx := testCtx(t)
	for name, opts := range map[string]ClientOptions{
		"negative ring size":          {RequestRingSize: -1},
		"ring size above MaxRingSize": {RequestRingSize: 1 << 20, MaxRingSize: 1 << 16},
		"rounded above MaxRingSize":   {RequestRingSize: 40000, MaxRingSize: 1 << 15},
		"MaxRingSize below the min":   {MaxRingSize: 1000},
	} {
		if cl, err := Dial(ctx, addr, testService, &opts); !errors.Is(err, os.ErrInvalid) {
			t.Errorf("Dial, %s: %v, want os.ErrInvalid", name, err)
			if err == nil {
				cl.Close()
			}
		}
	}
}

// notUnixListener is a net.Listener that Serve must refuse.
type notUnixListener struct{}

func (notUnixListener) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (notUnixListener) Close() error              { return nil }
func (notUnixListener) Addr() net.Addr            { return &net.UnixAddr{} }

// Close and Shutdown report what releasing resources failed with, and
// nothing when nothing failed: no resource is released twice.
func TestCloseReportsNothingSpurious(t *testing.T) {
	for _, how := range []string{"Close", "Shutdown"} {
		t.Run(how, func(t *testing.T) {
			srv, err := NewServer(nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Register(echoService()); err != nil {
				t.Fatal(err)
			}
			addr := abstractAddr()
			l, err := Listen(addr, 0)
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(l) }()
			cl := dial(t, addr, nil)
			if _, err := cl.DispatchFd(); err != nil {
				t.Fatal(err)
			}
			if _, err := cl.Call(testCtx(t), msgEcho, []byte("x")); err != nil {
				t.Fatal(err)
			}
			if how == "Close" {
				err = srv.Close()
			} else {
				err = srv.Shutdown(testCtx(t))
			}
			if err != nil {
				t.Errorf("server %s: %v", how, err)
			}
			if err := <-served; !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
			if err := cl.Close(); err != nil {
				t.Errorf("client Close: %v", err)
			}
			if err := cl.Close(); err != nil {
				t.Errorf("second client Close: %v", err)
			}
		})
	}
}
