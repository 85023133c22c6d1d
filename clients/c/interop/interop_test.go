//go:build linux

package interop

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringipc/ringipc/ipc"
	"go.uber.org/goleak"
)

// The server-death tests re-execute the test binary as a server process
// (envServer = its address, envMode = "goroutines" or "eventloop") and
// SIGKILL it under the C client.
const (
	envServer = "RINGIPC_INTEROP_SERVER"
	envMode   = "RINGIPC_INTEROP_MODE"
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(envServer); addr != "" {
		os.Exit(runServerProcess(addr, os.Getenv(envMode) == "eventloop"))
	}
	goleak.VerifyTestMain(m)
}

// runServerProcess serves until it is killed, saying "listening" once it
// is and "running" each time a blocking handler starts.
func runServerProcess(addr string, eventLoop bool) int {
	s, err := newServer(addr, eventLoop, ipc.Config{})
	if err != nil {
		fmt.Println("server:", err)
		return 1
	}
	fmt.Println("listening")
	for range s.running {
		fmt.Println("running")
	}
	return 0
}

func abstractAddr() string {
	var b [8]byte
	rand.Read(b[:])
	return "@ringipc-interop-" + hex.EncodeToString(b[:])
}

// hangGuard bounds a whole scenario: a hang becomes a failure, never a
// stuck test run. It is no speed goal.
const hangGuard = 2 * time.Minute

// compile builds a C program from srcs (relative to this directory) with
// the machine's cc into dir, or skips the test if there is no compiler.
func compile(t *testing.T, dir, name string, srcs ...string) string {
	t.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler: cc is not on PATH; the C client's interop tests need one (.ci/run installs gcc)")
	}
	out := filepath.Join(dir, name)
	// Warnings are shown, not fatal: a newer compiler on the CI machine
	// may know new ones, and this builds with gcc 12 -Wall -Wextra -Werror.
	args := append([]string{"-std=c11", "-O2", "-Wall", "-Wextra", "-I..", "-o", out}, srcs...)
	msg, err := exec.Command(cc, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("cc %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	if len(msg) > 0 {
		t.Logf("cc %s:\n%s", strings.Join(args, " "), msg)
	}
	return out
}

// lib is the client library's sources, which every C program links.
var lib = []string{"../ringipc.c", "../xxh64.c"}

// proc is a running C program (or server process) whose output lines the
// test follows.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *syncBuffer
	ctx    context.Context
	all    []string
}

func start(t *testing.T, name string, args []string, env ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{t: t, cmd: cmd, lines: make(chan string, 64), stderr: new(syncBuffer), ctx: ctx}
	cmd.Stderr = p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait() //nolint:errcheck // killed, or already waited for
	})
	return p
}

// syncBuffer is a program's stderr, read by the test while exec's copying
// goroutine may still write it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// line returns the next output line, failing if the program ends or the
// hang guard runs out first.
func (p *proc) line() string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("%s ended after %q; stderr:\n%s", p.cmd.Path, p.all, p.stderr)
		}
		p.all = append(p.all, l)
		return l
	case <-p.ctx.Done():
		p.t.Fatalf("%s: no output line within %v after %q; stderr:\n%s", p.cmd.Path, hangGuard, p.all, p.stderr)
	}
	return ""
}

// expect reads the next line and checks that it starts with prefix.
func (p *proc) expect(prefix string) string {
	p.t.Helper()
	l := p.line()
	if !strings.HasPrefix(l, prefix) {
		p.t.Fatalf("got line %q, want %q...; stderr:\n%s", l, prefix, p.stderr)
	}
	return l
}

// finish reads lines up to "ok" and waits for a clean exit.
func (p *proc) finish() {
	p.t.Helper()
	for p.line() != "ok" {
	}
	if err := p.cmd.Wait(); err != nil {
		p.t.Fatalf("%s: %v; output %q; stderr:\n%s", p.cmd.Path, err, p.all, p.stderr)
	}
}

// driverArgs builds the driver's command line.
func driverArgs(addr, scenario string, kv ...string) []string {
	return append([]string{addr, scenario}, kv...)
}

// ended waits for the server's OnDisconnect of the driver's connection.
func (s *server) waitEnded(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.ended:
		return err
	case <-time.After(hangGuard):
		t.Fatal("the server never saw the connection end")
	}
	return nil
}

var modes = []struct {
	name      string
	eventLoop bool
}{{"goroutines", false}, {"eventloop", true}}

// TestInterop runs the C client (clients/c, built here with the machine's
// cc) against the Go server in both of its modes: every call path and
// status, payload checksums on and off, rings small enough to wrap many
// times, dispatch with flow control through the client's event-loop API,
// and every way a connection ends.
func TestInterop(t *testing.T) {
	driver := compile(t, t.TempDir(), "driver", append(lib, "testdata/driver.c")...)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			for _, sums := range []string{"0", "1"} {
				t.Run("calls/sums="+sums, func(t *testing.T) {
					s := startServer(t, "", m.eventLoop, ipc.Config{})
					p := start(t, driver, driverArgs(s.addr, "calls", "sums="+sums, "req=4096", "resp=4096", "disp=4096", "n=3000"))
					p.expect("connected req 4096 resp 4096 disp 4096 max_req 2024")
					p.expect("calls 3000 ")
					p.finish()
					if st := s.srv.Stats(); st.Calls < 3000 {
						t.Errorf("server counted %d calls", st.Calls)
					}
				})
				t.Run("calls-default-rings/sums="+sums, func(t *testing.T) {
					s := startServer(t, "", m.eventLoop, ipc.Config{})
					// extra: the client is told to ask for the features it
					// lacks too (stream, cancel, large, progress), and must
					// not pass them on.
					extra := fmt.Sprint(ipc.FeatureStream | ipc.FeatureCancel | ipc.FeatureLarge | ipc.FeatureProgress)
					p := start(t, driver, driverArgs(s.addr, "calls", "sums="+sums, "n=300", "extra="+extra))
					p.expect("connected req 65536 ")
					p.expect("calls 300 ")
					p.finish()
				})
				t.Run("dispatch/sums="+sums, func(t *testing.T) {
					// PolicyBlock: the C reader must get every message,
					// however far the Go producer runs ahead of it.
					s := startServer(t, "", m.eventLoop, ipc.Config{DispatchPolicy: ipc.PolicyBlock})
					p := start(t, driver, driverArgs(s.addr, "dispatch", "sums="+sums, "disp=4096", "n=3000", "size=200"))
					p.expect("connected ")
					p.expect("dispatch 3000 ")
					p.finish()
				})
			}
			t.Run("sleeping", func(t *testing.T) {
				// No spinning on either side: every wait sleeps and
				// every wake-up is a token.
				s := startServer(t, "", m.eventLoop, ipc.Config{Spin: -1, DispatchPolicy: ipc.PolicyBlock})
				p := start(t, driver, driverArgs(s.addr, "calls", "spin=-1", "req=4096", "resp=4096", "n=500"))
				p.expect("connected ")
				p.expect("calls 500 ")
				p.finish()
				d := start(t, driver, driverArgs(s.addr, "dispatch", "spin=-1", "disp=4096", "n=2000", "size=300"))
				d.expect("connected ")
				d.expect("dispatch 2000 ")
				d.finish()
				s.waitEnded(t)
				s.waitEnded(t)
				if st := s.srv.Stats(); st.TokensIn == 0 || st.TokensOut == 0 {
					t.Errorf("tokens in %d, out %d: the sleeping path was not taken", st.TokensIn, st.TokensOut)
				}
			})
			t.Run("stream-refused", func(t *testing.T) {
				// The C client asks for no streamed responses: a Go
				// handler's Send fails with ErrNoStream and nothing
				// reaches the wire, and its ordinary response does.
				s := startServer(t, "", m.eventLoop, ipc.Config{})
				start(t, driver, []string{s.addr, "expect", "expect=ok,ok", "msg=9"}).finish()
				for range 2 {
					if err := <-s.sendErr; !errors.Is(err, ipc.ErrNoStream) {
						t.Errorf("Send to the C client: %v, want ErrNoStream", err)
					}
				}
			})
			t.Run("reject", func(t *testing.T) {
				s := startServer(t, "", m.eventLoop, ipc.Config{})
				start(t, driver, driverArgs(s.addr, "reject")).finish()
			})
			t.Run("limit", func(t *testing.T) {
				s := startServer(t, "", m.eventLoop, ipc.Config{MaxConnsPerUID: 1})
				start(t, driver, driverArgs(s.addr, "limit")).finish()
				if st := s.srv.Stats(); st.Limited == 0 {
					t.Errorf("the server counted no limit refusal: %+v", st)
				}
			})
			t.Run("handshake-slots-full", func(t *testing.T) {
				// One silent connection holds the uid's only handshake
				// slot: the client is refused with status 7, detail 2,
				// and tries again until the slot is free.
				s := startServer(t, "", m.eventLoop, ipc.Config{MaxHandshakesPerUID: 1})
				silent, err := net.Dial("unix", s.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer silent.Close()
				p := start(t, driver, driverArgs(s.addr, "calls", "n=10"))
				for s.srv.Stats().Limited == 0 {
					select {
					case <-p.ctx.Done():
						t.Fatal("the client was never refused")
					case <-time.After(time.Millisecond):
					}
				}
				silent.Close()
				p.expect("connected ")
				p.expect("calls 10 ")
				p.finish()
			})
			t.Run("client-close", func(t *testing.T) {
				s := startServer(t, "", m.eventLoop, ipc.Config{})
				p := start(t, driver, driverArgs(s.addr, "client-close"))
				p.expect("connected ")
				p.expect("closing")
				p.finish()
				if err := s.waitEnded(t); !errors.Is(err, ipc.ErrDisconnected) {
					t.Errorf("OnDisconnect: %v, want ErrDisconnected", err)
				}
			})
			t.Run("server-close", func(t *testing.T) {
				s := startServer(t, "", m.eventLoop, ipc.Config{})
				p := start(t, driver, driverArgs(s.addr, "server-close", "reason=1"))
				p.expect("connected ")
				p.expect("reason 3") // Conn.Close
				p.finish()
			})
			t.Run("timeout", func(t *testing.T) {
				s := startServer(t, "", m.eventLoop, ipc.Config{})
				p := start(t, driver, driverArgs(s.addr, "timeout"))
				p.expect("connected ")
				p.expect("timedout")
				<-s.running
				s.release <- struct{}{}
				fmt.Fprintln(p.stdin, "go")
				p.finish()
			})
			t.Run("shutdown", func(t *testing.T) {
				s := startServer(t, "", m.eventLoop, ipc.Config{})
				p := start(t, driver, driverArgs(s.addr, "shutdown", "reason=1"))
				p.expect("connected ")
				p.expect("sent")
				<-s.running // the first request is in its handler
				shut := make(chan error, 1)
				go func() { shut <- s.srv.Shutdown(context.Background()) }()
				if !m.eventLoop {
					// Let the handler go only once Shutdown has begun,
					// so that the other two requests wait in the ring
					// while it drains. (The event loop is inside the
					// blocked handler, so there they wait either way,
					// and connecting would only fill the backlog.)
					waitRefused(t, s.addr)
				}
				s.release <- struct{}{}
				p.expect("reason 1")
				p.finish()
				if err := <-shut; err != nil {
					t.Errorf("Shutdown: %v", err)
				}
			})
			t.Run("violation", func(t *testing.T) {
				s := startServer(t, "", m.eventLoop, ipc.Config{})
				p := start(t, driver, driverArgs(s.addr, "violation", "reason=1"))
				p.expect("connected ")
				p.expect("reason 5")
				p.finish()
				if err := s.waitEnded(t); !errors.Is(err, ipc.ErrProtocol) {
					t.Errorf("OnDisconnect: %v, want ErrProtocol", err)
				}
			})
			t.Run("slow-consumer", func(t *testing.T) {
				s := startServer(t, "", m.eventLoop, ipc.Config{DispatchPolicy: ipc.PolicyDisconnect, DispatchQueue: -1})
				p := start(t, driver, driverArgs(s.addr, "slow", "disp=4096", "n=100000", "size=100", "reason=1"))
				p.expect("connected ")
				p.expect("slow ")
				p.expect("reason 4")
				p.finish()
				if err := s.waitEnded(t); !errors.Is(err, ipc.ErrSlowConsumer) {
					t.Errorf("OnDisconnect: %v, want ErrSlowConsumer", err)
				}
			})
			t.Run("server-dies", func(t *testing.T) {
				addr := abstractAddr()
				exe, err := os.Executable()
				if err != nil {
					t.Fatal(err)
				}
				srv := start(t, exe, []string{"-test.run=^$"}, envServer+"="+addr, envMode+"="+m.name)
				srv.expect("listening")
				p := start(t, driver, driverArgs(addr, "die", "reason=1"))
				p.expect("connected ")
				p.expect("blocking")
				srv.expect("running")
				if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				p.expect("reason 0") // died: nothing written
				p.finish()
			})
		})
	}
	t.Run("path-address", func(t *testing.T) {
		addr := filepath.Join(t.TempDir(), "svc.sock")
		s := startServer(t, addr, false, ipc.Config{})
		p := start(t, driver, driverArgs(s.addr, "calls", "n=200"))
		p.expect("connected ")
		p.expect("calls 200 ")
		p.finish()
	})
}

// waitRefused waits until connecting to addr is refused: the server has
// closed its listener.
func waitRefused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		c, err := net.Dial("unix", addr)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the server kept accepting")
		}
		time.Sleep(time.Millisecond)
	}
}
