//go:build linux

package interop

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/ringipc/ringipc/ipc"
	"golang.org/x/sys/unix"
)

// The service the C driver talks to (message ids as in
// testdata/driver.c).
const (
	svcID      = 1
	svcReject  = 2 // OnConnect refuses with code rejectCode
	rejectCode = 77

	mEcho     = 1 // the body back
	mFail     = 2 // a handler error: code 42, "no luck"
	mPanic    = 3 // the handler panics
	mHuge     = 4 // a response larger than the response ring takes
	mDispatch = 5 // body {count, size u32}: dispatch count messages, then answer
	mClose    = 6 // dispatch 3 messages, answer "bye", close the connection
	mBlock    = 7 // wait until the test releases it (or the connection ends)
	mSum      = 8 // answer {len(body), sum of its bytes} as two u64
	mStream   = 9 // try to stream a part (the error goes to server.sendErr), then echo the body
)

// server is a Go ipc.Server as the C client meets it, in one of the two
// modes a server runs in.
type server struct {
	srv     *ipc.Server
	addr    string
	running chan struct{}  // a value each time an mBlock handler starts
	release chan struct{}  // a value lets one mBlock handler answer
	ended   chan error     // OnDisconnect's error, per connection
	sendErr chan error     // what each mStream handler's Send returned
	loopErr chan error     // external mode: Process errors
	stop    func() error   // closes the server and waits for its loop
	wg      sync.WaitGroup // dispatch goroutines
}

// startServer serves the test service at addr ("" for a fresh abstract
// name) with cfg, driven by goroutines or, if eventLoop, by an epoll
// loop of the test's own. Everything stops when the test ends.
func startServer(t testing.TB, addr string, eventLoop bool, cfg ipc.Config) *server {
	t.Helper()
	if addr == "" {
		addr = abstractAddr()
	}
	s, err := newServer(addr, eventLoop, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// newServer is startServer for callers without a test: the child server
// process of the server-death tests.
func newServer(addr string, eventLoop bool, cfg ipc.Config) (*server, error) {
	s := &server{
		addr:    addr,
		running: make(chan struct{}, 16),
		release: make(chan struct{}, 16),
		ended:   make(chan error, 16),
		sendErr: make(chan error, 16),
		loopErr: make(chan error, 16),
	}
	var loop *epollLoop
	var err error
	if eventLoop {
		if loop, err = newEpollLoop(s.loopErr); err != nil {
			return nil, err
		}
		cfg.EventLoop = loop
	}
	srv, err := ipc.NewServer(&cfg)
	if err != nil {
		return nil, err
	}
	s.srv = srv
	if err := srv.Register(s.service()); err != nil {
		return nil, err
	}
	if err := srv.Register(&ipc.Service{ID: svcReject, OnConnect: func(*ipc.Conn) error { return ipc.RejectCode(rejectCode) }}); err != nil {
		return nil, err
	}
	l, err := ipc.Listen(addr, 0)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	var stopErr error
	if eventLoop {
		done, err := loop.start(srv, l)
		if err != nil {
			return nil, err
		}
		s.stop = func() error {
			once.Do(func() {
				srv.Close()
				loop.close()
				<-done
				loop.free()
				l.Close()
				s.wg.Wait()
			})
			return nil
		}
	} else {
		served := make(chan error, 1)
		go func() { served <- srv.Serve(l) }()
		s.stop = func() error {
			once.Do(func() {
				srv.Close()
				if err := <-served; !errors.Is(err, ipc.ErrServerClosed) {
					stopErr = fmt.Errorf("Serve returned %w", err)
				}
				s.wg.Wait()
			})
			return stopErr
		}
	}
	return s, nil
}

func (s *server) service() *ipc.Service {
	h := func(f func(w *ipc.ResponseWriter, r *ipc.Request)) ipc.Handler { return ipc.HandlerFunc(f) }
	return &ipc.Service{
		ID: svcID,
		OnDisconnect: func(c *ipc.Conn, err error) {
			s.ended <- err
		},
		Handlers: map[uint16]ipc.Handler{
			mEcho: h(func(w *ipc.ResponseWriter, r *ipc.Request) { w.Respond(r.Data) }),
			mFail: h(func(w *ipc.ResponseWriter, r *ipc.Request) { w.Fail(42, "no luck") }),
			mPanic: h(func(w *ipc.ResponseWriter, r *ipc.Request) {
				panic("interop: the panic the C client must see as status 4")
			}),
			mHuge: h(func(w *ipc.ResponseWriter, r *ipc.Request) {
				w.Respond(make([]byte, w.MaxBody()+1))
			}),
			mDispatch: h(func(w *ipc.ResponseWriter, r *ipc.Request) {
				if len(r.Data) != 8 {
					w.Fail(1, "want {count, size}")
					return
				}
				n := int(binary.LittleEndian.Uint32(r.Data))
				size := int(binary.LittleEndian.Uint32(r.Data[4:]))
				c := r.Conn
				s.wg.Add(1)
				go func() {
					defer s.wg.Done()
					dispatchSeq(c, n, size)
				}()
				w.Respond(nil)
			}),
			mClose: h(func(w *ipc.ResponseWriter, r *ipc.Request) {
				dispatchSeq(r.Conn, 3, 10)
				w.Respond([]byte("bye"))
				r.Conn.Close()
			}),
			mSum: h(func(w *ipc.ResponseWriter, r *ipc.Request) {
				var sum uint64
				for _, b := range r.Data {
					sum += uint64(b)
				}
				out := binary.LittleEndian.AppendUint64(nil, uint64(len(r.Data)))
				w.Respond(binary.LittleEndian.AppendUint64(out, sum))
			}),
			mStream: h(func(w *ipc.ResponseWriter, r *ipc.Request) {
				s.sendErr <- w.Send([]byte("part"))
				w.Respond(r.Data)
			}),
			mBlock: h(func(w *ipc.ResponseWriter, r *ipc.Request) {
				s.running <- struct{}{}
				select {
				case <-s.release:
					w.Respond([]byte("late"))
				case <-r.Context().Done():
				}
			}),
		},
	}
}

// dispatchSeq sends n messages of size bytes with the ids and contents
// driver.c checks, until the connection ends.
func dispatchSeq(c *ipc.Conn, n, size int) {
	b := make([]byte, size)
	for i := range n {
		fill(b, uint64(i))
		if err := c.Dispatch(context.Background(), uint16(100+i%7), b); err != nil {
			return // the connection ended (or the policy ended it)
		}
	}
}

// fill is driver.c's pat().
func fill(b []byte, seq uint64) {
	for j := range b {
		b[j] = byte(seq*31 + uint64(j)*7 + 1)
	}
}

// epollLoop drives a server's connections from one goroutine, as a C or
// Go program with its own event loop would: level-triggered epoll over
// the listener, the connections and a stop eventfd.
type epollLoop struct {
	epfd   int
	stopFd int
	errs   chan error
	mu     sync.Mutex
	conns  map[int]*ipc.Conn
}

func newEpollLoop(errs chan error) (*epollLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	e := &epollLoop{epfd: epfd, stopFd: stop, errs: errs, conns: map[int]*ipc.Conn{}}
	return e, e.watch(stop)
}

func (e *epollLoop) watch(fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll add %d: %w", fd, err)
	}
	return nil
}

// report hands an error to the test without ever blocking the loop.
func (e *epollLoop) report(err error) {
	select {
	case e.errs <- err:
	default:
	}
}

func (e *epollLoop) AddConn(c *ipc.Conn) {
	e.mu.Lock()
	e.conns[c.Fd()] = c
	e.mu.Unlock()
	if err := e.watch(c.Fd()); err != nil {
		e.report(err)
	}
}

func (e *epollLoop) RemoveConn(c *ipc.Conn) {
	e.mu.Lock()
	delete(e.conns, c.Fd())
	e.mu.Unlock()
	unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, c.Fd(), nil) //nolint:errcheck // gone already is fine
}

// start runs the loop for srv and l; the returned channel closes when it
// has stopped.
func (e *epollLoop) start(srv *ipc.Server, l *net.UnixListener) (<-chan struct{}, error) {
	lfd, err := ipc.ListenerFd(l)
	if err != nil {
		return nil, err
	}
	if err := e.watch(lfd); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		events := make([]unix.EpollEvent, 16)
		for {
			n, err := unix.EpollWait(e.epfd, events, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				e.report(fmt.Errorf("epoll_wait: %w", err))
				return
			}
			for _, ev := range events[:n] {
				switch fd := int(ev.Fd); fd {
				case e.stopFd:
					return
				case lfd:
					srv.AcceptReady(l) //nolint:errcheck // a closed listener ends with the test
				default:
					e.mu.Lock()
					c := e.conns[fd]
					e.mu.Unlock()
					if c == nil {
						continue
					}
					if err := c.Process(); err != nil {
						e.report(err)
					}
				}
			}
		}
	}()
	return done, nil
}

// close stops the loop.
func (e *epollLoop) close() {
	unix.Write(e.stopFd, []byte{1, 0, 0, 0, 0, 0, 0, 0}) //nolint:errcheck // a full counter still wakes
}

// free closes the loop's descriptors once it has stopped.
func (e *epollLoop) free() {
	unix.Close(e.epfd)
	unix.Close(e.stopFd)
}
