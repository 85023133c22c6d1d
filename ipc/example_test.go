//go:build linux

package ipc_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ringipc/ringipc/ipc"
)

// An echo service: message 1 answers with the request body, and first
// tells the client, asynchronously, that a request came in. A message id
// the service does not know fails with ErrUnknownMessage.
func Example() {
	const (
		echoService = 1
		msgEcho     = 1
		msgNotice   = 7 // a dispatch message
	)
	srv, err := ipc.NewServer(nil)
	if err != nil {
		log.Fatal(err)
	}
	err = srv.Register(&ipc.Service{
		ID:   echoService,
		Name: "echo",
		Handlers: map[uint16]ipc.Handler{
			msgEcho: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) {
				// r.Data lives in shared memory until we return.
				note := fmt.Sprintf("request from pid %d", r.Conn.Cred().PID)
				if r.Conn.Cred().PID == int32(os.Getpid()) {
					note = "request from this process"
				}
				if err := r.Conn.Dispatch(r.Context(), msgNotice, []byte(note)); err != nil {
					w.Fail(1, err.Error()) //nolint:errcheck // the connection is ending
					return
				}
				if err := w.Respond(r.Data); err != nil {
					log.Print(err) // the connection ended
				}
			}),
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	// An abstract socket: no file to clean up.
	addr := fmt.Sprintf("@ringipc-example-echo-%d", os.Getpid())
	l, err := ipc.Listen(addr, 0)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := srv.Serve(l); !errors.Is(err, ipc.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	defer srv.Close()

	ctx := context.Background()
	cl, err := ipc.Dial(ctx, addr, echoService, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	resp, err := cl.Call(ctx, msgEcho, []byte("hello"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("response: %s\n", resp)
	m, err := cl.Recv(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("dispatch %d: %s\n", m.ID, m.Data)

	_, err = cl.Call(ctx, 99, nil)
	fmt.Println("unknown message:", errors.Is(err, ipc.ErrUnknownMessage))
	// Output:
	// response: hello
	// dispatch 7: request from this process
	// unknown message: true
}

// A zero-copy call: the client writes its request in place in the request
// ring (Reserve, Bytes, Send), the handler reads it there and writes its
// response in place in the response ring (ResponseWriter.Reserve,
// Commit), and the client reads the response in place until Release.
func Example_zeroCopy() {
	const upperService, msgUpper = 2, 1
	srv, err := ipc.NewServer(nil)
	if err != nil {
		log.Fatal(err)
	}
	err = srv.Register(&ipc.Service{ID: upperService, Handlers: map[uint16]ipc.Handler{
		msgUpper: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) {
			out, err := w.Reserve(len(r.Data))
			if err != nil {
				w.Fail(1, err.Error()) //nolint:errcheck // nothing more to tell
				return
			}
			for i, b := range r.Data {
				if 'a' <= b && b <= 'z' {
					b -= 'a' - 'A'
				}
				out[i] = b
			}
			if err := w.Commit(); err != nil {
				log.Print(err)
			}
		}),
	}})
	if err != nil {
		log.Fatal(err)
	}
	addr := fmt.Sprintf("@ringipc-example-zerocopy-%d", os.Getpid())
	l, err := ipc.Listen(addr, 0)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := srv.Serve(l); !errors.Is(err, ipc.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	defer srv.Close()

	ctx := context.Background()
	cl, err := ipc.Dial(ctx, addr, upperService, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	msg := "hello, shared memory"
	pc, err := cl.Reserve(ctx, msgUpper, len(msg))
	if err != nil {
		log.Fatal(err)
	}
	copy(pc.Bytes(), msg) // or build the request right there
	resp, err := pc.Send(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", resp.Data) // a view of the response ring
	if err := resp.Release(); err != nil {
		log.Fatal(err)
	}
	// Output: HELLO, SHARED MEMORY
}

// Flow control of dispatch messages: a client that does not read fills
// its dispatch ring; with no queue (DispatchQueue < 0) and PolicyDrop,
// Dispatch then drops the message and says so, and the client can read
// how many it lost. PolicyBlock (the default) would wait for room, and
// PolicyDisconnect would close the connection.
func Example_flowControl() {
	const newsService, msgNews = 3, 1
	srv, err := ipc.NewServer(&ipc.Config{DispatchQueue: -1, DispatchPolicy: ipc.PolicyDrop})
	if err != nil {
		log.Fatal(err)
	}
	conns := make(chan *ipc.Conn, 1)
	err = srv.Register(&ipc.Service{ID: newsService, OnConnect: func(c *ipc.Conn) error {
		conns <- c
		return nil
	}})
	if err != nil {
		log.Fatal(err)
	}
	addr := fmt.Sprintf("@ringipc-example-flow-%d", os.Getpid())
	l, err := ipc.Listen(addr, 0)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := srv.Serve(l); !errors.Is(err, ipc.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	defer srv.Close()

	ctx := context.Background()
	cl, err := ipc.Dial(ctx, addr, newsService, &ipc.ClientOptions{DispatchRingSize: ipc.MinRingSize})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	// The server side: send until a message is dropped.
	conn := <-conns
	body := []byte(strings.Repeat("news ", 20))
	sent := 0
	for {
		err := conn.Dispatch(ctx, msgNews, body)
		if errors.Is(err, ipc.ErrDropped) {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		sent++
	}
	fc := cl.FlowControl()
	fmt.Println("dropped:", fc.Dropped)

	// The client reads what did arrive.
	got := 0
	for {
		_, err := cl.TryRecv()
		if errors.Is(err, ipc.ErrTryAgain) {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		got++
	}
	fmt.Println("every message sent arrived:", got == sent)
	// Output:
	// dropped: 1
	// every message sent arrived: true
}

// A client in an external poll loop: DispatchFd polls readable while
// dispatch messages may be waiting, and TryRecv drains them until
// ErrTryAgain, which re-arms the descriptor. (The server side of an
// external loop is Example_eventLoop.)
func ExampleClient_DispatchFd() {
	const tickService, msgTick = 4, 1
	srv, err := ipc.NewServer(nil)
	if err != nil {
		log.Fatal(err)
	}
	conns := make(chan *ipc.Conn, 1)
	err = srv.Register(&ipc.Service{ID: tickService, OnConnect: func(c *ipc.Conn) error {
		conns <- c
		return nil
	}})
	if err != nil {
		log.Fatal(err)
	}
	addr := fmt.Sprintf("@ringipc-example-dispatchfd-%d", os.Getpid())
	l, err := ipc.Listen(addr, 0)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := srv.Serve(l); !errors.Is(err, ipc.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	defer srv.Close()

	ctx := context.Background()
	cl, err := ipc.Dial(ctx, addr, tickService, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	fd, err := cl.DispatchFd()
	if err != nil {
		log.Fatal(err)
	}
	conn := <-conns
	for i := range 3 {
		if err := conn.Dispatch(ctx, msgTick, fmt.Appendf(nil, "tick %d", i)); err != nil {
			log.Fatal(err)
		}
	}

	// The application's loop: poll, then drain.
	for got := 0; got < 3; {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			log.Fatal(err)
		}
		for {
			m, err := cl.TryRecv()
			if errors.Is(err, ipc.ErrTryAgain) {
				break
			}
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("%d: %s\n", m.ID, m.Data)
			got++
		}
	}
	// Output:
	// 1: tick 0
	// 1: tick 1
	// 1: tick 2
}
