//go:build linux

package ipc_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/ringipc/ringipc/ipc"
)

// A client that outlives its server: the Reconnector redials after a
// graceful shutdown and tells the application why the connection ended.
// OnConnect is where state kept per connection (subscriptions, a
// session) is restored; a call made between connections fails at once
// with ErrReconnecting, and nothing is sent again behind the caller's
// back.
func ExampleReconnector() {
	const (
		service = 1
		msgEcho = 1
	)
	addr := fmt.Sprintf("@ringipc-example-reconnect-%d", os.Getpid())
	serve := func() *ipc.Server {
		srv, err := ipc.NewServer(nil)
		if err != nil {
			log.Fatal(err)
		}
		echo := ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) { w.Respond(r.Data) }) //nolint:errcheck
		if err := srv.Register(&ipc.Service{ID: service, Handlers: map[uint16]ipc.Handler{msgEcho: echo}}); err != nil {
			log.Fatal(err)
		}
		l, err := ipc.Listen(addr, 0)
		if err != nil {
			log.Fatal(err)
		}
		go srv.Serve(l) //nolint:errcheck // ErrServerClosed
		return srv
	}
	srv := serve()

	connected := make(chan struct{}, 1)
	down := make(chan struct{}, 1)
	r, err := ipc.NewReconnector(addr, service, nil, &ipc.ReconnectOptions{
		OnConnect: func(ctx context.Context, cl *ipc.Client) error {
			_, err := cl.Call(ctx, msgEcho, []byte("subscribe again")) // restore state
			return err
		},
		OnEvent: func(e ipc.Event) {
			switch e.Kind {
			case ipc.EventConnected, ipc.EventReconnected:
				fmt.Println(e.Kind)
				connected <- struct{}{}
			case ipc.EventDisconnected:
				switch {
				case errors.Is(e.Err, ipc.ErrServerShutdown):
					fmt.Println("disconnected: the server shut down")
				case errors.Is(e.Err, ipc.ErrPeerDied):
					fmt.Println("disconnected: the server died")
				default:
					fmt.Println("disconnected:", e.Err)
				}
				down <- struct{}{}
			}
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	<-connected

	if err := srv.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	<-down
	if _, err := r.Call(ctx, msgEcho, []byte("lost?")); errors.Is(err, ipc.ErrReconnecting) {
		fmt.Println("call between servers: not sent")
	}

	srv = serve()
	<-connected
	resp, err := r.Call(ctx, msgEcho, []byte("hello again"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", resp)
	r.Close() // no more events once it returns
	srv.Close()
	// Output:
	// connected
	// disconnected: the server shut down
	// call between servers: not sent
	// reconnected
	// hello again
}
