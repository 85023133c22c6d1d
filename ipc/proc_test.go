//go:build linux

package ipc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Cross-process tests re-execute the test binary with IPC_TEST_CHILD set
// to a role; the child runs that role instead of the tests.
const (
	envChild = "IPC_TEST_CHILD"
	envAddr  = "IPC_TEST_ADDR"

	exitRejected = 3
	exitFailed   = 4
)

func TestMain(m *testing.M) {
	if role := os.Getenv(envChild); role != "" {
		os.Exit(runChild(role, os.Getenv(envAddr)))
	}
	goleak.VerifyTestMain(m)
}

// msgStream starts a goroutine that dispatches to the caller until the
// connection ends; registered by the children's and the tests' servers.
const msgStream = 20

func runChild(role, addr string) int {
	ctx := context.Background()
	switch role {
	case "call": // dial, one echo call, report
		cl, err := Dial(ctx, addr, testService, nil)
		if errors.Is(err, ErrRejected) {
			fmt.Println("rejected")
			return exitRejected
		}
		if err != nil {
			fmt.Println("dial:", err)
			return exitFailed
		}
		got, err := cl.Call(ctx, msgEcho, []byte("hi"))
		if err != nil || string(got) != "hi" {
			fmt.Println("call:", err)
			return exitFailed
		}
		cl.Close()
		fmt.Println("ok")
		return 0
	case "block": // a call that never returns; the parent kills us
		cl, err := Dial(ctx, addr, testService, nil)
		if err != nil {
			fmt.Println("dial:", err)
			return exitFailed
		}
		fmt.Println("ready")
		cl.Call(ctx, msgBlock, nil)
		return exitFailed
	case "stream": // read dispatch messages forever; the parent kills us
		cl, err := Dial(ctx, addr, testService, &ClientOptions{DispatchRingSize: MinRingSize})
		if err != nil {
			fmt.Println("dial:", err)
			return exitFailed
		}
		if _, err := cl.Call(ctx, msgStream, nil); err != nil {
			fmt.Println("call:", err)
			return exitFailed
		}
		for i := 0; ; i++ {
			if _, err := cl.Recv(ctx); err != nil {
				fmt.Println("recv:", err)
				return exitFailed
			}
			if i == 100 {
				fmt.Println("ready")
			}
		}
	case "largecall": // a large call blocked in its handler, a large dispatch unread; the parent kills us
		cl, err := Dial(ctx, addr, testService, nil)
		if err != nil {
			fmt.Println("dial:", err)
			return exitFailed
		}
		fmt.Println("ready")
		cl.Call(ctx, msgLargeBlock, make([]byte, 2<<20))
		return exitFailed
	case "server": // serve until killed
		// PolicyBlock: msgFlood (BenchmarkDispatchProcess) outruns the
		// client's reader and must wait for it, not disconnect it.
		srv, err := NewServer(&Config{DispatchPolicy: PolicyBlock})
		if err != nil {
			fmt.Println(err)
			return exitFailed
		}
		svc := echoService()
		svc.Handlers[msgFlood] = floodHandler
		svc.Handlers[msgBlock] = HandlerFunc(func(w *ResponseWriter, r *Request) {
			r.Conn.Dispatch(r.Context(), 1, nil) // tell the client we are in
			<-r.Context().Done()
		})
		svc.Handlers[msgLargeBlock] = largeBlockHandler
		svc.Handlers[msgNotedBlock] = notedBlockHandler
		srv.Register(svc)
		l, err := Listen(addr, 0)
		if err != nil {
			fmt.Println(err)
			return exitFailed
		}
		fmt.Println("ready")
		srv.Serve(l)
		return 0
	}
	if code, ok := runAdmitChild(role, addr); ok {
		return code
	}
	if code, ok := runTopicChild(role, addr); ok {
		return code
	}
	fmt.Println("unknown role", role)
	return exitFailed
}

// child is a re-executed test binary.
type child struct {
	cmd   *exec.Cmd
	lines *bufio.Scanner
	out   io.ReadCloser
}

func startChild(t *testing.T, role, addr string, cred *syscall.Credential) *child {
	t.Helper()
	return startChildTB(t, role, addr, cred)
}

// startChildB starts a child for a benchmark and waits until it is ready.
func startChildB(b *testing.B, role, addr string) *child {
	b.Helper()
	c := startChildTB(b, role, addr, nil)
	if !c.lines.Scan() || c.lines.Text() != "ready" {
		b.Fatalf("child not ready: %v", c.lines.Err())
	}
	return c
}

func startChildTB(t testing.TB, role, addr string, cred *syscall.Credential) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		exe = worldExecutableCopy(t, exe)
	}
	var attr *syscall.SysProcAttr
	if cred != nil {
		attr = &syscall.SysProcAttr{Credential: cred}
	}
	return execChild(t, exe, attr, envChild+"="+role, envAddr+"="+addr)
}

// execChild starts the test binary exe again, its role and parameters in
// env; the test reads the child's stdout line by line, and the child is
// killed and reaped when the test ends.
func execChild(t testing.TB, exe string, attr *syscall.SysProcAttr, env ...string) *child {
	t.Helper()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), env...)
	cmd.Dir = filepath.Dir(exe)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = attr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return &child{cmd: cmd, lines: bufio.NewScanner(out), out: out}
}

// expect reads the child's next line of output and checks it.
func (c *child) expect(t *testing.T, want string) {
	t.Helper()
	if !c.lines.Scan() {
		t.Fatalf("child ended before printing %q: %v", want, c.lines.Err())
	}
	if got := strings.TrimSpace(c.lines.Text()); got != want {
		t.Fatalf("child printed %q, want %q", got, want)
	}
}

func (c *child) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.cmd.Wait()
}

// worldExecutableCopy copies the test binary where another uid can run it:
// the build directory is private to us.
func worldExecutableCopy(t testing.TB, exe string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ipc-exec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "ipc.test")
	if err := os.WriteFile(dst, src, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestAuthorizeOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a child as another uid")
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	var mu sync.Mutex
	var seen []Cred
	record := func(c Cred) {
		mu.Lock()
		seen = append(seen, c)
		mu.Unlock()
	}
	t.Run("default rejects", func(t *testing.T) {
		srv, addr := startServer(t, &Config{Authorize: func(c Cred) error {
			record(c)
			return DefaultAuthorize(c)
		}}, echoService())
		ch := startChild(t, "call", addr, nobody)
		ch.expect(t, "rejected")
		err := ch.cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitRejected {
			t.Fatalf("child: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != 1 || seen[0] != (Cred{PID: int32(ch.cmd.Process.Pid), UID: 65534, GID: 65534}) {
			t.Fatalf("Authorize saw %+v, child pid %d", seen, ch.cmd.Process.Pid)
		}
		if st := srv.Stats(); st.Rejected != 1 {
			t.Errorf("Rejected = %d", st.Rejected)
		}
		seen = nil
	})
	t.Run("permissive accepts", func(t *testing.T) {
		_, addr := startServer(t, &Config{Authorize: func(c Cred) error { record(c); return nil }}, echoService())
		ch := startChild(t, "call", addr, nobody)
		ch.expect(t, "ok")
		if err := ch.cmd.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != 1 || seen[0] != (Cred{PID: int32(ch.cmd.Process.Pid), UID: 65534, GID: 65534}) {
			t.Fatalf("Authorize saw %+v, child pid %d", seen, ch.cmd.Process.Pid)
		}
	})
	t.Run("own uid", func(t *testing.T) {
		var got Cred
		_, addr := startServer(t, &Config{Authorize: func(c Cred) error { got = c; return DefaultAuthorize(c) }}, echoService())
		ch := startChild(t, "call", addr, nil)
		ch.expect(t, "ok")
		ch.cmd.Wait()
		if got != (Cred{PID: int32(ch.cmd.Process.Pid), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}) {
			t.Fatalf("Authorize saw %+v", got)
		}
	})
}

// resourceCount counts this process's descriptors and the mappings of
// connection segments and body segments.
func resourceCount(t *testing.T) (fds, segMaps, allMaps int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(maps)), "\n")
	for _, l := range lines {
		if strings.Contains(l, "memfd:ringipc-conn") || strings.Contains(l, "memfd:ringipc-body") {
			segMaps++
		}
	}
	for _, e := range ents {
		// Not counted: descriptors gone since ReadDir, and /proc/loadavg,
		// which ring's busy-machine sample opens for a moment from any
		// goroutine that waits.
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target != "/proc/loadavg" {
			fds++
		}
	}
	return fds, segMaps, len(lines)
}

// streamService adds msgStream, which dispatches until the connection
// ends, to the echo service; wg counts its goroutines.
func streamService(wg *sync.WaitGroup) *Service {
	svc := echoService()
	svc.Handlers[msgStream] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		c := r.Conn
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				if err := c.Dispatch(context.Background(), uint16(i), []byte("tick-tock")); err != nil {
					return
				}
			}
		}()
		w.Respond(nil)
	})
	return svc
}

func TestClientKilled(t *testing.T) {
	for _, role := range []string{"block", "stream"} {
		t.Run(role, func(t *testing.T) {
			var streams sync.WaitGroup
			svc := streamService(&streams)
			entered := make(chan struct{}, 1)
			svc.Handlers[msgBlock] = HandlerFunc(func(w *ResponseWriter, r *Request) {
				entered <- struct{}{}
				<-r.Context().Done()
			})
			var disconnects sync.Map // conn id -> count
			var discCount int
			var dmu sync.Mutex
			svc.OnDisconnect = func(c *Conn, err error) {
				dmu.Lock()
				discCount++
				dmu.Unlock()
				n, _ := disconnects.LoadOrStore(c.ID(), new(int))
				*(n.(*int))++
				if !errors.Is(err, ErrDisconnected) {
					t.Errorf("OnDisconnect error %v, want ErrDisconnected", err)
				}
			}
			// PolicyBlock: the stream outruns the child's reader and
			// must wait for it until the kill, not cut it off first.
			srv, err := NewServer(&Config{DispatchPolicy: PolicyBlock})
			if err != nil {
				t.Fatal(err)
			}
			torn := make(chan struct{}, 1)
			srv.testHookTornDown = func(*Conn) { torn <- struct{}{} }
			srv.Register(svc)
			addr := abstractAddr()
			l, err := Listen(addr, 0)
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(l)
			defer srv.Close()

			fds0, seg0, maps0 := resourceCount(t)
			ch := startChild(t, role, addr, nil)
			ch.expect(t, "ready")
			if role == "block" {
				<-entered
			}
			fds1, seg1, _ := resourceCount(t)
			if seg1 <= seg0 || fds1 <= fds0 {
				t.Fatalf("connection not visible: fds %d -> %d, segment maps %d -> %d", fds0, fds1, seg0, seg1)
			}
			ch.kill(t)
			<-torn
			streams.Wait()
			fds2, seg2, maps2 := resourceCount(t)
			if fds2 != fds0 || seg2 != seg0 {
				t.Errorf("after the client died: fds %d (baseline %d), segment mappings %d (baseline %d)", fds2, fds0, seg2, seg0)
			}
			t.Logf("maps lines: baseline %d, after %d", maps0, maps2)
			dmu.Lock()
			if discCount != 1 {
				t.Errorf("OnDisconnect ran %d times", discCount)
			}
			dmu.Unlock()
			if n := len(srv.Conns()); n != 0 {
				t.Errorf("%d connections left", n)
			}
		})
	}
}

func TestServerKilled(t *testing.T) {
	addr := abstractAddr()
	ch := startChild(t, "server", addr, nil)
	ch.expect(t, "ready")
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	const calls = 4
	errs := make(chan error, calls)
	for range calls {
		go func() {
			_, err := cl.Call(ctx, msgBlock, nil)
			errs <- err
		}()
	}
	// The first handler tells us it runs before it blocks; the other
	// requests wait behind it in the request ring.
	if _, err := cl.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ch.kill(t)
	for range calls {
		if err := <-errs; !errors.Is(err, ErrDisconnected) {
			t.Errorf("blocked call ended with %v, want ErrDisconnected", err)
		}
	}
	t.Logf("blocked calls failed %v after SIGKILL", time.Since(start))
	<-cl.Done()
	if _, err := cl.Call(ctx, msgEcho, nil); !errors.Is(err, ErrDisconnected) {
		t.Errorf("call after the server died: %v", err)
	}
}
