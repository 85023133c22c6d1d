//go:build linux

package ipc_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/ringipc/ringipc/ipc"
)

// An echo service: message 1 answers with the request body, and first
// tells the client, asynchronously, that a request came in.
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
				r.Conn.Dispatch(r.Context(), msgNotice, []byte(note))
				w.Respond(r.Data)
			}),
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	// An abstract socket: no file to clean up.
	addr := fmt.Sprintf("@ringipc-example-%d", os.Getpid())
	l, err := ipc.Listen(addr, 0)
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(l)
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
	fmt.Println("unknown message:", err)
	// Output:
	// response: hello
	// dispatch 7: request from this process
	// unknown message: call: ipc: unknown message id
}
