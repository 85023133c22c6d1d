//go:build linux

package ipc_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ringipc/ringipc/ipc"
)

// epollLoop is an application's own event loop, here a level-triggered
// epoll set holding the listener, every connection the server hands it
// (it is the server's Config.EventLoop) and a descriptor that stops it.
type epollLoop struct {
	epfd, stopfd int
	srv          *ipc.Server
	l            *net.UnixListener
	lfd          int

	mu    sync.Mutex
	conns map[int]*ipc.Conn // by descriptor

	again []*ipc.Conn // connections owed another turn; the loop goroutine's only
}

// Requeue makes the loop an ipc.Requeuer: Process, which calls it on the
// loop's goroutine, handles at most Config.MaxTurnRequests requests per
// call, and asks for another turn when more may wait, so that no client
// can hold the loop.
func (e *epollLoop) Requeue(c *ipc.Conn) { e.again = append(e.again, c) }

// process gives c a turn. An error means the connection has ended and is
// torn down; RemoveConn has taken it out of the set.
func (e *epollLoop) process(c *ipc.Conn) {
	if err := c.Process(); err != nil && !errors.Is(err, ipc.ErrDisconnected) {
		log.Print(err)
	}
}

func (e *epollLoop) watch(fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	return unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
}

// AddConn is called by the server once a connection is established.
func (e *epollLoop) AddConn(c *ipc.Conn) {
	e.mu.Lock()
	e.conns[c.Fd()] = c
	e.mu.Unlock()
	if err := e.watch(c.Fd()); err != nil {
		log.Print(err)
		c.Close()
	}
}

// RemoveConn is called once the connection has ended, before its
// descriptor is closed.
func (e *epollLoop) RemoveConn(c *ipc.Conn) {
	e.mu.Lock()
	delete(e.conns, c.Fd())
	e.mu.Unlock()
	if err := unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, c.Fd(), nil); err != nil {
		log.Print(err)
	}
}

// run is the loop: the listener's readiness means AcceptReady, a
// connection's means Process, which handles the requests available (up to
// its per-turn bound) and never blocks (handlers aside). Connections owed
// another turn get it after the ready ones, without waiting in epoll.
func (e *epollLoop) run() {
	events := make([]unix.EpollEvent, 16)
	for {
		timeout := -1
		if len(e.again) > 0 {
			timeout = 0
		}
		n, err := unix.EpollWait(e.epfd, events, timeout)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		again := e.again
		e.again = nil
		for _, ev := range events[:n] {
			switch fd := int(ev.Fd); fd {
			case e.stopfd:
				return
			case e.lfd:
				if err := e.srv.AcceptReady(e.l); err != nil {
					log.Print(err)
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

// A server driven by the application's own poll loop instead of its
// goroutines (Config.EventLoop): the loop polls the listener (ListenerFd)
// and each connection (Conn.Fd), and calls AcceptReady and Process. The
// handlers run inside Process, on the loop's goroutine.
func Example_eventLoop() {
	const echoService, msgEcho = 5, 1
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		log.Fatal(err)
	}
	defer unix.Close(epfd)
	stopfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		log.Fatal(err)
	}
	defer unix.Close(stopfd)
	loop := &epollLoop{epfd: epfd, stopfd: stopfd, conns: map[int]*ipc.Conn{}}

	srv, err := ipc.NewServer(&ipc.Config{EventLoop: loop})
	if err != nil {
		log.Fatal(err)
	}
	err = srv.Register(&ipc.Service{ID: echoService, Handlers: map[uint16]ipc.Handler{
		msgEcho: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) {
			if err := w.Respond(r.Data); err != nil {
				log.Print(err)
			}
		}),
	}})
	if err != nil {
		log.Fatal(err)
	}
	addr := fmt.Sprintf("@ringipc-example-eventloop-%d", os.Getpid())
	if loop.l, err = ipc.Listen(addr, 0); err != nil {
		log.Fatal(err)
	}
	defer loop.l.Close()
	if loop.lfd, err = ipc.ListenerFd(loop.l); err != nil {
		log.Fatal(err)
	}
	loop.srv = srv
	for _, fd := range []int{stopfd, loop.lfd} {
		if err := loop.watch(fd); err != nil {
			log.Fatal(err)
		}
	}
	var running sync.WaitGroup
	running.Go(loop.run)
	defer func() {
		// Close the server first: it tears every connection down while
		// the loop still runs, then the loop stops.
		if err := srv.Close(); err != nil {
			log.Print(err)
		}
		if _, err := unix.Write(stopfd, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
			log.Fatal(err)
		}
		running.Wait()
	}()

	ctx := context.Background()
	cl, err := ipc.Dial(ctx, addr, echoService, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	resp, err := cl.Call(ctx, msgEcho, []byte("served from the poll loop"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", resp)
	// Output: served from the poll loop
}
