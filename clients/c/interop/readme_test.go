//go:build linux

package interop

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringipc/ringipc/ipc"
)

// TestReadmeExample compiles the C example of clients/c/README.md as it
// stands and runs it against a service that answers "pong", dispatches
// three messages and closes the connection: the example must print the
// reply and every message, then end.
func TestReadmeExample(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "```c\n")
	code, _, ok2 := strings.Cut(rest, "```\n")
	if !ok || !ok2 {
		t.Fatal("no ```c block in clients/c/README.md")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "example.c")
	if err := os.WriteFile(src, []byte(code), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := compile(t, dir, "example", append(lib, src)...)

	srv, err := ipc.NewServer(nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.Register(&ipc.Service{ID: 1, Handlers: map[uint16]ipc.Handler{
		1: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) {
			w.Respond([]byte("pong"))
			for i, s := range []string{"one", "two", "three"} {
				r.Conn.Dispatch(context.Background(), uint16(i+1), []byte(s))
			}
			r.Conn.Close()
		}),
	}})
	addr := abstractAddr()
	l, err := ipc.Listen(addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, ipc.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, addr).CombinedOutput()
	if err != nil {
		t.Fatalf("example: %v\n%s", err, out)
	}
	want := "reply: pong\nmessage 1: one\nmessage 2: two\nmessage 3: three\n"
	if string(out) != want {
		t.Fatalf("example printed\n%s\nwant\n%s", out, want)
	}
}
