//go:build linux

package ipc

import (
	"errors"
	"sync"
	"testing"
)

// msgLargeBlock takes a large request, reserves a large response in the
// response body segment, dispatches a large message (which tells the
// client it is in), and waits until the connection ends: a peer killed
// now dies with a large message of each direction in flight.
const msgLargeBlock = 60

var largeBlockHandler = HandlerFunc(func(w *ResponseWriter, r *Request) { largeBlock(w, r, nil) })

// largeBlock is msgLargeBlock's handler; in, if set, is called once the
// dispatch message is out.
func largeBlock(w *ResponseWriter, r *Request, in func()) {
	if len(r.Data) < 1<<20 {
		w.Fail(1, "want a large request")
		return
	}
	body, err := w.Reserve(3 << 20)
	if err != nil {
		return
	}
	clear(body)
	r.Conn.Dispatch(r.Context(), 1, make([]byte, 2<<20))
	if in != nil {
		in()
	}
	<-r.Context().Done()
}

// A client SIGKILLed with a large request in its handler, a large
// response reserved and a large dispatch message unread leaves the server
// nothing: descriptors and segment mappings (connection and body
// segments) are back to what they were, and OnDisconnect ran once.
func TestLargeClientKilled(t *testing.T) {
	svc := echoService()
	entered := make(chan struct{}, 1)
	svc.Handlers[msgLargeBlock] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		largeBlock(w, r, func() { entered <- struct{}{} })
	})
	var discs int
	var mu sync.Mutex
	svc.OnDisconnect = func(c *Conn, err error) {
		mu.Lock()
		discs++
		mu.Unlock()
		if !errors.Is(err, ErrDisconnected) {
			t.Errorf("OnDisconnect: %v, want ErrDisconnected", err)
		}
	}
	srv, err := NewServer(nil)
	if err != nil {
		t.Fatal(err)
	}
	torn := make(chan struct{}, 1)
	srv.testHookTornDown = func(*Conn) { torn <- struct{}{} }
	srv.Register(svc)
	addr := abstractAddr()
	l, err := Listen(addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()

	fds0, seg0, _ := resourceCount(t)
	ch := startChild(t, "largecall", addr, nil)
	ch.expect(t, "ready")
	<-entered
	if bodyMapped(t) < 3<<20 {
		t.Fatalf("%d bytes of body segments mapped, want the request and response segments", bodyMapped(t))
	}
	ch.kill(t)
	<-torn
	fds, seg, _ := resourceCount(t)
	if fds != fds0 || seg != seg0 || bodyMapped(t) != 0 {
		t.Errorf("after the client died: fds %d (baseline %d), segment mappings %d (baseline %d), %d bytes of body segments mapped",
			fds, fds0, seg, seg0, bodyMapped(t))
	}
	mu.Lock()
	if discs != 1 {
		t.Errorf("OnDisconnect ran %d times", discs)
	}
	mu.Unlock()
}

// A server SIGKILLed with a large response reserved and a large dispatch
// message held by the client fails the client's call with
// ErrDisconnected, and Close leaves the client nothing.
func TestLargeServerKilled(t *testing.T) {
	ch, cl, fds0, seg0 := dialServerChild(t)
	ctx := testCtx(t)
	done := make(chan error, 1)
	go func() {
		_, err := cl.Call(ctx, msgLargeBlock, make([]byte, 2<<20))
		done <- err
	}()
	m, err := cl.Recv(ctx)
	if err != nil || len(m.Data) != 2<<20 {
		t.Fatalf("large dispatch: %d bytes, %v", len(m.Data), err)
	}
	killServer(t, ch, cl, done, fds0, seg0)
}

// dialServerChild starts a server child process and dials it, and
// returns the client's descriptor and segment mapping counts from before
// it dialled.
func dialServerChild(t *testing.T) (ch *child, cl *Client, fds0, seg0 int) {
	t.Helper()
	addr := abstractAddr()
	ch = startChild(t, "server", addr, nil)
	ch.expect(t, "ready")
	fds0, seg0, _ = resourceCount(t)
	cl, err := Dial(testCtx(t), addr, testService, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ch, cl, fds0, seg0
}

// killServer kills the server child ch while cl has a call in flight
// (its error comes on done), and checks that the call fails with
// ErrDisconnected and that, once cl is closed, the client holds no more
// descriptors or segment mappings than it did before it dialled (fds0,
// seg0) and no body segment.
func killServer(t *testing.T, ch *child, cl *Client, done <-chan error, fds0, seg0 int) {
	t.Helper()
	ch.kill(t)
	if err := <-done; !errors.Is(err, ErrDisconnected) {
		t.Errorf("call: %v, want ErrDisconnected", err)
	}
	cl.Close()
	// Reaping the child closed its pipe (and pidfd): fewer descriptors
	// than the baseline is right.
	fds, seg, _ := resourceCount(t)
	if fds > fds0 || seg != seg0 || bodyMapped(t) != 0 {
		t.Errorf("after the server died: fds %d (baseline %d), segment mappings %d (baseline %d), %d bytes of body segments mapped",
			fds, fds0, seg, seg0, bodyMapped(t))
	}
}

// msgNotedBlock answers with a 4 MiB body through Respond, and stops for
// good after its second progress note: a server killed now dies halfway
// through an answer the caller is copying out.
const msgNotedBlock = 61

var notedBlockHandler = HandlerFunc(func(w *ResponseWriter, r *Request) {
	notes := 0
	r.Conn.testHookNoted = func() {
		if notes++; notes == 2 {
			<-r.Context().Done()
		}
	}
	w.Respond(make([]byte, 4<<20))
})

// A server SIGKILLed halfway through a large answer whose first pieces
// the caller has copied out from progress notes fails the call with
// ErrDisconnected, and Close leaves the client nothing.
func TestProgressServerKilled(t *testing.T) {
	ch, cl, fds0, seg0 := dialServerChild(t)
	// The server stops after its second note.
	killServer(t, ch, cl, callUntilNoted(t, testCtx(t), cl, msgNotedBlock), fds0, seg0)
}
