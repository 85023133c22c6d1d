//go:build linux

package ipc_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ringipc/ringipc/ipc"
)

// A key-value service that pushes every change to its watchers. A
// setter's call answers the setter and fans the change out to every
// watching connection with Dispatch. Under the default policy
// (PolicyDisconnect) Dispatch never waits for a watcher: one that stops
// reading is cut off as a slow consumer once its ring and its bounded
// queue are full, so it cannot stall the setter, the handler or the
// other watchers. The fan-out uses a context of its own, never the
// setter's r.Context(): that one ends with the setter's call, and would
// cancel the change for every watcher (it matters only under
// PolicyBlock, which waits for the slowest watcher until the context
// ends). A message id the service does not know fails with
// ErrUnknownMessage.
func Example() {
	const (
		kvService  = 1
		msgWatch   = 1 // become a watcher
		msgSet     = 2 // body: "key=value"; answers how many watchers took it
		msgChanged = 7 // a dispatch message: "key=value"
	)
	var mu sync.Mutex
	watchers := map[*ipc.Conn]bool{}
	srv, err := ipc.NewServer(nil)
	if err != nil {
		log.Fatal(err)
	}
	err = srv.Register(&ipc.Service{
		ID:   kvService,
		Name: "kv",
		OnDisconnect: func(c *ipc.Conn, err error) {
			mu.Lock()
			delete(watchers, c)
			mu.Unlock()
		},
		Handlers: map[uint16]ipc.Handler{
			msgWatch: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) {
				mu.Lock()
				watchers[r.Conn] = true
				mu.Unlock()
				w.Respond(nil) //nolint:errcheck // an error means the setter left
			}),
			msgSet: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) {
				// r.Data lives in shared memory until we return, and
				// Dispatch copies it. A real service would store the
				// value first.
				mu.Lock()
				to := make([]*ipc.Conn, 0, len(watchers))
				for c := range watchers {
					to = append(to, c)
				}
				mu.Unlock()
				told := 0
				for _, c := range to {
					// Not r.Context(): see above. The error is the
					// watcher's (ErrSlowConsumer, ErrDisconnected),
					// not the setter's.
					if err := c.Dispatch(context.Background(), msgChanged, r.Data); err == nil {
						told++
					}
				}
				w.Respond([]byte{byte(told)}) //nolint:errcheck // an error means the setter left
			}),
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	// An abstract socket: no file to clean up.
	addr := fmt.Sprintf("@ringipc-example-kv-%d", os.Getpid())
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
	watcher, err := ipc.Dial(ctx, addr, kvService, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer watcher.Close()
	if _, err := watcher.Call(ctx, msgWatch, nil); err != nil {
		log.Fatal(err)
	}

	setter, err := ipc.Dial(ctx, addr, kvService, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer setter.Close()
	resp, err := setter.Call(ctx, msgSet, []byte("color=blue"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("watchers told:", resp[0])

	m, err := watcher.Recv(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("watcher got %d: %s\n", m.ID, m.Data)

	_, err = setter.Call(ctx, 99, nil)
	fmt.Println("unknown message:", errors.Is(err, ipc.ErrUnknownMessage))
	// Output:
	// watchers told: 1
	// watcher got 7: color=blue
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
// how many it lost. PolicyDisconnect (the default) would close the
// connection, and PolicyBlock would wait for room until the context
// ends.
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
