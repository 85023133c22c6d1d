//go:build linux

package ipc

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
)

// reasonSentinels are the errors a close reason adds on the client; a
// test checks that exactly the expected one is there.
var reasonSentinels = []error{ErrServerShutdown, ErrServerClosed, ErrClosedByServer, ErrSlowConsumer, ErrProtocol, ErrPeerDied}

func checkReason(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, ErrDisconnected) {
		t.Errorf("%s: %v, want ErrDisconnected", what, err)
	}
	for _, s := range reasonSentinels {
		if got := errors.Is(err, s); got != (s == want) {
			t.Errorf("%s: %v; errors.Is(%v) = %v", what, err, s, got)
		}
	}
}

// TestCloseReason ends a connection each way the server can choose and
// checks what the client is told: the call in flight, Err, and a call
// after the end.
func TestCloseReason(t *testing.T) {
	cases := []struct {
		name string
		end  func(t *testing.T, srv *Server, c *Conn, cl *Client)
		want error
	}{
		{"Shutdown", func(t *testing.T, srv *Server, _ *Conn, _ *Client) {
			// Shutdown lets the running handler answer (the release
			// below), then ends the connection.
			go srv.Shutdown(testCtx(t)) //nolint:errcheck
		}, ErrServerShutdown},
		{"Server.Close", func(t *testing.T, srv *Server, _ *Conn, _ *Client) { srv.Close() }, ErrServerClosed},
		{"Shutdown past its deadline", func(t *testing.T, srv *Server, _ *Conn, _ *Client) {
			// The handler does not return, so Shutdown falls back to
			// Close: no longer graceful, and the client is told so.
			ctx, cancel := context.WithCancel(testCtx(t))
			cancel()
			if err := srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
				t.Errorf("Shutdown: %v, want context.Canceled", err)
			}
		}, ErrServerClosed},
		{"Conn.Close", func(t *testing.T, _ *Server, c *Conn, _ *Client) { c.Close() }, ErrClosedByServer},
		{"protocol", func(t *testing.T, _ *Server, _ *Conn, cl *Client) {
			// A token for a word only a client sleeps on: the server
			// ends the connection as a protocol violation.
			if _, err := cl.sock.writeAll([]byte{tokDispCons}); err != nil {
				t.Fatal(err)
			}
		}, ErrProtocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			svc := echoService()
			entered := make(chan struct{}, 1)
			release := make(chan struct{})
			svc.Handlers[msgBlock] = HandlerFunc(func(w *ResponseWriter, r *Request) {
				entered <- struct{}{}
				select {
				case <-release:
					w.Respond(nil)
				case <-r.Context().Done():
				}
			})
			var discErr error
			discDone := make(chan struct{})
			svc.OnDisconnect = func(_ *Conn, err error) { discErr = err; close(discDone) }
			srv, addr := startServer(t, nil, svc)
			cl := dial(t, addr, nil)
			ctx := testCtx(t)
			if cl.Features()&FeatureCloseReason == 0 {
				t.Fatalf("FeatureCloseReason not granted: %#x", cl.Features())
			}
			called := make(chan error, 1)
			go func() { _, err := cl.Call(ctx, msgBlock, nil); called <- err }()
			<-entered
			tc.end(t, srv, firstConn(t, srv), cl)
			if tc.want == ErrServerShutdown {
				close(release)
				if err := <-called; err != nil {
					t.Errorf("the call Shutdown let its handler answer: %v", err)
				}
			} else {
				checkReason(t, "the call in flight", <-called, tc.want)
			}
			<-cl.Done()
			checkReason(t, "Err", cl.Err(), tc.want)
			_, err := cl.Call(ctx, msgEcho, nil)
			checkReason(t, "a call after the end", err, tc.want)
			<-discDone
			if tc.name == "Shutdown" && !(errors.Is(discErr, ErrServerShutdown) && errors.Is(discErr, ErrServerClosed)) {
				t.Errorf("OnDisconnect after Shutdown: %v, want ErrServerShutdown and ErrServerClosed", discErr)
			}
		})
	}
}

// TestCloseReasonSlowConsumer: PolicyDisconnect tells the client why.
func TestCloseReasonSlowConsumer(t *testing.T) {
	cl, c := dispatchSetup(t, PolicyDisconnect, nil)
	ctx := testCtx(t)
	for i := 0; ; i++ {
		if err := c.Dispatch(ctx, 9, seq(i)); err != nil {
			break
		}
	}
	<-cl.Done()
	checkReason(t, "Err", cl.Err(), ErrSlowConsumer)
}

// TestCloseReasonServerKilled: a server process killed with SIGKILL
// writes no reason, and the client says it died, to the call in flight
// as to Err.
func TestCloseReasonServerKilled(t *testing.T) {
	addr := abstractAddr()
	ch := startChild(t, "server", addr, nil)
	ch.expect(t, "ready")
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	called := make(chan error, 1)
	go func() { _, err := cl.Call(ctx, msgBlock, nil); called <- err }()
	if _, err := cl.Recv(ctx); err != nil { // the handler runs
		t.Fatal(err)
	}
	ch.kill(t)
	checkReason(t, "the call in flight", <-called, ErrPeerDied)
	<-cl.Done()
	checkReason(t, "Err", cl.Err(), ErrPeerDied)
}

// TestCloseReasonNotAsked: a client that does not ask for
// FeatureCloseReason (as the C client) is told nothing, and the server
// writes nothing into the word.
func TestCloseReasonNotAsked(t *testing.T) {
	saved := defaultFeatures
	defaultFeatures = 0
	t.Cleanup(func() { defaultFeatures = saved })
	srv, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, nil)
	if cl.Features()&FeatureCloseReason != 0 {
		t.Fatalf("granted %#x without asking", cl.Features())
	}
	// Holding dispLock keeps the client's teardown from unmapping the
	// segment while the test reads the word.
	cl.dispLock <- struct{}{}
	firstConn(t, srv).Close()
	<-cl.Done()
	if got := atomic.LoadUint32(word32(cl.ctl, ctlCloseReason)); got != 0 {
		t.Errorf("close reason word %d on a connection that did not ask", got)
	}
	<-cl.dispLock
	checkReason(t, "Err", cl.Err(), nil)
}

// TestCloseReasonUnknown: a reason the protocol does not define (a
// hostile or newer server) names no sentinel, only its number.
func TestCloseReasonUnknown(t *testing.T) {
	srv, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, nil)
	c := firstConn(t, srv)
	atomic.StoreUint32(word32(c.ctl, ctlCloseReason), 99)
	c.kill(ErrDisconnected) // an end with no reason of its own keeps the 99
	<-cl.Done()
	err := cl.Err()
	checkReason(t, "Err", err, nil)
	if !strings.Contains(err.Error(), "close reason 99") {
		t.Errorf("Err %q does not say the reason's number", err)
	}
}
