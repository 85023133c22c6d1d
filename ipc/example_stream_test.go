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

// A LIST whose answer may be larger than one response: the handler
// streams it in parts (ResponseWriter.Send) from one snapshot, and the
// client ranges over them (Client.Stream). The response ring is the flow
// control: Send waits while the client has not read, and the client
// reads a part only when its loop asks for the next.
func ExampleClient_Stream() {
	const listService, msgList = 3, 1
	entries := []string{"alpha", "beta", "gamma", "delta"}
	srv, err := ipc.NewServer(nil)
	if err != nil {
		log.Fatal(err)
	}
	err = srv.Register(&ipc.Service{ID: listService, Handlers: map[uint16]ipc.Handler{
		msgList: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) {
			for _, e := range entries {
				if err := w.Send([]byte(e)); err != nil {
					// ErrNoStream: a client that takes no streams (the C
					// client); else the connection ended.
					w.Fail(1, err.Error()) //nolint:errcheck // nothing more to tell
					return
				}
			}
			// Returning ends the stream with an empty final response;
			// Respond(body) would add body as its last piece.
		}),
	}})
	if err != nil {
		log.Fatal(err)
	}
	addr := fmt.Sprintf("@ringipc-example-list-%d", os.Getpid())
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
	cl, err := ipc.Dial(ctx, addr, listService, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	for part, err := range cl.Stream(ctx, msgList, nil) {
		if err != nil {
			log.Fatal(err)
		}
		// part is a view of the response ring until the next turn.
		fmt.Println(string(part))
		if string(part) == "gamma" {
			break // the client discards the rest; the connection goes on
		}
	}
	resp, err := cl.Call(ctx, 99, nil)
	fmt.Println(resp, errors.Is(err, ipc.ErrUnknownMessage))
	// Output:
	// alpha
	// beta
	// gamma
	// [] true
}
