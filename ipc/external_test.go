//go:build linux

package ipc

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// epollLoop is an external poll loop, as an application with its own
// event loop would write it: level-triggered epoll over the listener, the
// connections and a stop eventfd.
type epollLoop struct {
	t     *testing.T
	srv   *Server
	l     *net.UnixListener
	epfd  int
	lfd   int
	stop  int
	mu    sync.Mutex
	conns map[int]*Conn
	ended chan error // Process errors of ended connections
	// afterProcess, if set, is called on the loop goroutine after every
	// Process call.
	afterProcess atomic.Pointer[func(*Conn)]
	again        []*Conn // requeued connections (loop goroutine only)
}

func newEpollLoop(t *testing.T) *epollLoop {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	e := &epollLoop{t: t, epfd: epfd, stop: stop, conns: map[int]*Conn{}, ended: make(chan error, 100)}
	e.add(stop)
	return e
}

func (e *epollLoop) add(fd int) {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		e.t.Errorf("epoll add %d: %v", fd, err)
	}
}

func (e *epollLoop) AddConn(c *Conn) {
	e.mu.Lock()
	e.conns[c.Fd()] = c
	e.mu.Unlock()
	e.add(c.Fd())
}

func (e *epollLoop) RemoveConn(c *Conn) {
	e.mu.Lock()
	delete(e.conns, c.Fd())
	e.mu.Unlock()
	unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, c.Fd(), nil)
}

// Requeue makes epollLoop a Requeuer: Process calls it on the loop
// goroutine, so again needs no lock.
func (e *epollLoop) Requeue(c *Conn) { e.again = append(e.again, c) }

func (e *epollLoop) run() {
	events := make([]unix.EpollEvent, 16)
	for {
		timeout := -1
		if len(e.again) > 0 {
			timeout = 0 // connections wait for another turn
		}
		n, err := unix.EpollWait(e.epfd, events, timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			e.t.Errorf("epoll_wait: %v", err)
			return
		}
		again := e.again
		e.again = nil
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			switch fd {
			case e.stop:
				return
			case e.lfd:
				if err := e.srv.AcceptReady(e.l); err != nil {
					e.t.Errorf("AcceptReady: %v", err)
				}
			default:
				e.mu.Lock()
				c := e.conns[fd]
				e.mu.Unlock()
				if c != nil {
					e.process(c)
				}
			}
		}
		for _, c := range again {
			e.mu.Lock()
			live := e.conns[c.Fd()] == c
			e.mu.Unlock()
			if live {
				e.process(c)
			}
		}
	}
}

func (e *epollLoop) process(c *Conn) {
	err := c.Process()
	if f := e.afterProcess.Load(); f != nil {
		(*f)(c)
	}
	if err != nil {
		e.ended <- err
	}
}

// startEpollServer starts a server driven by an epollLoop on a fresh
// abstract address; everything stops when the test ends.
func startEpollServer(t *testing.T, cfg Config, svc *Service) (*Server, string, *epollLoop) {
	loop := newEpollLoop(t)
	cfg.EventLoop = loop
	srv, err := NewServer(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Register(svc)
	addr := abstractAddr()
	l, err := Listen(addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	loop.srv, loop.l = srv, l
	if loop.lfd, err = ListenerFd(l); err != nil {
		t.Fatal(err)
	}
	loop.add(loop.lfd)
	var loopDone sync.WaitGroup
	loopDone.Go(loop.run)
	t.Cleanup(func() {
		srv.Close()
		unix.Write(loop.stop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		loopDone.Wait()
		l.Close()
		unix.Close(loop.epfd)
		unix.Close(loop.stop)
	})
	return srv, addr, loop
}

func TestExternalLoop(t *testing.T) {
	svc := echoService()
	disconnected := make(chan error, 10)
	svc.OnDisconnect = func(c *Conn, err error) { disconnected <- err }
	srv, addr, loop := startEpollServer(t, Config{DispatchQueue: 100000}, svc)

	ctx := testCtx(t)
	// Small response ring: responses of concurrent calls overflow it and
	// wait in the connection until the client makes room.
	cl := dial(t, addr, &ClientOptions{ResponseRingSize: MinRingSize, DispatchRingSize: MinRingSize})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			body := bytes.Repeat([]byte{byte(g)}, 1000)
			for range 50 {
				got, err := cl.Call(ctx, msgEchoZC, body)
				if err != nil || !bytes.Equal(got, body) {
					t.Errorf("call: %d bytes, %v", len(got), err)
					return
				}
			}
		})
	}
	wg.Wait()
	if _, err := cl.Call(ctx, 999, nil); !errors.Is(err, ErrUnknownMessage) {
		t.Errorf("unknown id: %v", err)
	}

	// Dispatch more than the ring holds from another goroutine: the queue
	// is flushed by Process as the client reads.
	c := srv.Conns()[0]
	const msgs = 1000
	for i := range msgs {
		if err := c.Dispatch(ctx, 9, seq(i)); err != nil {
			t.Fatal(err)
		}
	}
	recvAll(t, cl, 0, msgs)

	// The client's own poll descriptor for dispatch messages.
	efd, err := cl.DispatchFd()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Dispatch(ctx, 9, seq(0)); err != nil {
		t.Fatal(err)
	}
	pfd := []unix.PollFd{{Fd: int32(efd), Events: unix.POLLIN}}
	if _, err := unix.Poll(pfd, -1); err != nil {
		t.Fatal(err)
	}
	if m, err := cl.TryRecv(); err != nil || m.ID != 9 {
		t.Fatalf("TryRecv: %+v, %v", m, err)
	}
	if _, err := cl.TryRecv(); !errors.Is(err, ErrTryAgain) {
		t.Fatalf("TryRecv on an empty ring: %v", err)
	}

	cl.Close()
	if err := <-loop.ended; !errors.Is(err, ErrDisconnected) {
		t.Errorf("Process after the client left: %v", err)
	}
	if err := <-disconnected; !errors.Is(err, ErrDisconnected) {
		t.Errorf("OnDisconnect: %v", err)
	}
	if n := len(srv.Conns()); n != 0 {
		t.Errorf("%d connections left", n)
	}
}

// TestShutdownFinishesCall: Shutdown lets the request being handled finish
// and its response reach the caller, then ends the connection, whether
// the server runs on goroutines or in an external poll loop.
func TestShutdownFinishesCall(t *testing.T) {
	for _, external := range []bool{false, true} {
		t.Run(map[bool]string{false: "goroutines", true: "external"}[external], func(t *testing.T) {
			entered, release := make(chan struct{}), make(chan struct{})
			svc := echoService()
			svc.Handlers[msgBlock] = HandlerFunc(func(w *ResponseWriter, r *Request) {
				close(entered)
				<-release
				w.Respond([]byte("finished"))
			})
			var srv *Server
			var addr string
			if external {
				srv, addr, _ = startEpollServer(t, Config{}, svc)
			} else {
				srv, addr = startServer(t, nil, svc)
			}
			cl := dial(t, addr, nil)
			ctx := testCtx(t)
			got := make(chan error, 1)
			go func() {
				b, err := cl.Call(ctx, msgBlock, nil)
				if err == nil && string(b) != "finished" {
					err = fmt.Errorf("response %q", b)
				}
				got <- err
			}()
			<-entered
			shut := make(chan error, 1)
			go func() { shut <- srv.Shutdown(ctx) }()
			waitUntil(t, srv.isClosing, "Shutdown to begin")
			close(release)
			if err := <-got; err != nil {
				t.Fatalf("call in progress at Shutdown: %v", err)
			}
			if err := <-shut; err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			<-cl.Done()
			if _, err := cl.Call(ctx, msgEcho, nil); !errors.Is(err, ErrDisconnected) {
				t.Fatalf("call after Shutdown: %v", err)
			}
		})
	}
}
