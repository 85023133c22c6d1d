//go:build linux

package ipc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The crash matrix: SIGKILL a client process, or a server process, at a
// random point of a stream of calls, many times, and check that the
// survivor notices at once (end of file on the socket), cleans up every
// goroutine, descriptor and mapping, runs OnDisconnect exactly once, and
// leaves nothing under /dev/shm. The time from the kill to the survivor's
// notice is logged as p50 and max; it is measured, not asserted.
//
// The children are this test binary again, started with envCrashChild
// set; init runs their role before the testing package starts.

const envCrashChild = "IPC_CRASH_CHILD"

func init() {
	if role := os.Getenv(envCrashChild); role != "" {
		os.Exit(runCrashChild(role, os.Getenv(envAddr)))
	}
}

// runCrashChild is the "crash-client" role: dial, then two goroutines
// call in a loop (copying, zero-copy, in-place and dispatching calls),
// printing one line per completed operation until the parent kills us.
func runCrashChild(role, addr string) int {
	if role != "crash-client" {
		fmt.Println("unknown role", role)
		return exitFailed
	}
	ctx := context.Background()
	cl, err := Dial(ctx, addr, testService, nil)
	if err != nil {
		fmt.Println("dial:", err)
		return exitFailed
	}
	var out sync.Mutex
	report := func(s string) {
		out.Lock()
		fmt.Println(s)
		out.Unlock()
	}
	report("ready")
	fail := make(chan error, 2)
	for g := range 2 {
		go func() {
			buf := make([]byte, 64)
			for i := 0; ; i++ {
				req := fmt.Appendf(nil, "g%d-%d", g, i)
				var err error
				switch i % 4 {
				case 0:
					var got []byte
					if got, err = cl.Call(ctx, msgEcho, req); err == nil && string(got) != string(req) {
						err = errors.New("wrong echo")
					}
				case 1:
					_, err = cl.CallInto(ctx, msgEchoZC, req, buf)
				case 2:
					var p PendingCall
					if p, err = cl.Reserve(ctx, msgEcho, len(req)); err == nil {
						copy(p.Bytes(), req)
						var r Response
						if r, err = p.Send(ctx); err == nil {
							err = r.Release()
						}
					}
				case 3:
					if g == 0 { // one goroutine owns the dispatch stream
						if _, err = cl.Call(ctx, msgDispatch, []byte{2}); err == nil {
							for range 2 {
								if _, err = cl.Recv(ctx); err != nil {
									break
								}
							}
						}
					}
				}
				if err != nil {
					fail <- err
					return
				}
				report("op")
			}
		}()
	}
	fmt.Println("call:", <-fail)
	return exitFailed
}

func startCrashChild(t *testing.T, addr string) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return execChild(t, exe, nil, envCrashChild+"=crash-client", envAddr+"="+addr)
}

// skipLines reads n lines of the child's progress report.
func (c *child) skipLines(t *testing.T, n int) {
	t.Helper()
	for range n {
		if !c.lines.Scan() {
			t.Fatalf("child ended early: %v", c.lines.Err())
		}
		if s := c.lines.Text(); s != "op" {
			t.Fatalf("child: %s", s)
		}
	}
}

// crashIterations: client kills and server kills per mode.
func crashIterations() (clients, servers int) {
	if soak() {
		return 250, 60
	}
	return 40, 10
}

// shmNames lists /dev/shm.
func shmNames(t *testing.T) []string {
	ents, err := os.ReadDir("/dev/shm")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// latencies collects kill-to-notice times.
type latencies []time.Duration

func (l latencies) summary() string {
	if len(l) == 0 {
		return "none"
	}
	s := slices.Clone(l)
	slices.Sort(s)
	return fmt.Sprintf("n=%d p50=%v p90=%v max=%v", len(s), s[len(s)/2], s[len(s)*9/10], s[len(s)-1])
}

// checkBaseline compares descriptors and connection mappings with the
// baseline and looks for leaked goroutines (goleak retries with backoff
// while goroutines are still on their way out).
func checkBaseline(t *testing.T, i int, fds0, segs0 int, ignore goleak.Option) {
	t.Helper()
	fds, segs, _ := resourceCount(t)
	if fds != fds0 || segs != segs0 {
		t.Fatalf("iteration %d: descriptors %d (baseline %d), connection mappings %d (baseline %d)", i, fds, fds0, segs, segs0)
	}
	if err := goleak.Find(ignore); err != nil {
		t.Fatalf("iteration %d: %v", i, err)
	}
}

func TestCrashMatrix(t *testing.T) {
	clients, servers := crashIterations()
	shm0 := shmNames(t)
	t.Cleanup(func() {
		if got := shmNames(t); !slices.Equal(got, shm0) {
			t.Errorf("/dev/shm changed: %v -> %v", shm0, got)
		}
	})

	t.Run("client killed", func(t *testing.T) {
		type disc struct {
			id   uint64
			err  error
			when time.Time
		}
		discs := make(chan disc, 4)
		var mu sync.Mutex
		count := make(map[uint64]int)
		svc := echoService()
		svc.OnDisconnect = func(c *Conn, err error) {
			now := time.Now()
			mu.Lock()
			count[c.ID()]++
			mu.Unlock()
			discs <- disc{c.ID(), err, now}
		}
		srv, err := NewServer(nil)
		if err != nil {
			t.Fatal(err)
		}
		torn := make(chan uint64, 4)
		srv.testHookTornDown = func(c *Conn) { torn <- c.ID() }
		srv.Register(svc)
		addr := abstractAddr()
		l, err := Listen(addr, 0)
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(l) }()
		t.Cleanup(func() {
			srv.Close()
			<-served
		})
		ignore := goleak.IgnoreCurrent()
		fds0, segs0, maps0 := resourceCount(t)
		var notice latencies
		guard := time.NewTimer(0)
		for i := range clients {
			ch := startCrashChild(t, addr)
			ch.expect(t, "ready")
			// The kill point: after k completed operations, and one time
			// in three a random sliver later, inside the next one.
			ch.skipLines(t, rand.IntN(60))
			if rand.IntN(3) == 0 {
				time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
			}
			killed := time.Now()
			if err := ch.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			guard.Reset(time.Minute) // a hang guard only
			var d disc
			select {
			case d = <-discs:
			case <-guard.C:
				t.Fatalf("iteration %d: no OnDisconnect within a minute of the kill", i)
			}
			notice = append(notice, d.when.Sub(killed))
			if !errors.Is(d.err, ErrDisconnected) {
				t.Errorf("iteration %d: OnDisconnect(%v), want ErrDisconnected", i, d.err)
			}
			if id := <-torn; id != d.id {
				t.Fatalf("iteration %d: torn down %d, disconnected %d", i, id, d.id)
			}
			ch.cmd.Wait()
			checkBaseline(t, i, fds0, segs0, ignore)
		}
		mu.Lock()
		for id, n := range count {
			if n != 1 {
				t.Errorf("OnDisconnect ran %d times for connection %d", n, id)
			}
		}
		if len(count) != clients {
			t.Errorf("OnDisconnect saw %d connections, want %d", len(count), clients)
		}
		mu.Unlock()
		if st := srv.Stats(); st.Connections != uint64(clients) || st.Errors != 0 {
			t.Errorf("server stats %+v", st)
		}
		_, _, maps := resourceCount(t)
		t.Logf("%d client kills: kill -> OnDisconnect %s", clients, notice.summary())
		t.Logf("/proc/self/maps lines: %d at the start, %d at the end", maps0, maps)
		if maps > maps0+64 {
			t.Errorf("mappings grew from %d to %d lines over %d kills", maps0, maps, clients)
		}
	})

	t.Run("server killed", func(t *testing.T) {
		ignore := goleak.IgnoreCurrent()
		fds0, segs0, _ := resourceCount(t)
		var notice latencies
		for i := range servers {
			addr := abstractAddr()
			srv := startChild(t, "server", addr, nil)
			srv.expect(t, "ready")
			ctx := testCtx(t)
			// One client holds a call the server never answers; the other
			// streams calls from two goroutines and counts them.
			blocker := dial(t, addr, nil)
			blocked := make(chan error, 1)
			go func() {
				_, err := blocker.Call(ctx, msgBlock, nil)
				blocked <- err
			}()
			if _, err := blocker.Recv(ctx); err != nil { // the handler runs
				t.Fatal(err)
			}
			caller := dial(t, addr, nil)
			var ops atomic.Int64
			k := int64(rand.IntN(300))
			reached := make(chan struct{})
			callErrs := make(chan error, 2)
			for g := range 2 {
				go func() {
					for j := 0; ; j++ {
						req := fmt.Appendf(nil, "%d-%d", g, j)
						got, err := caller.Call(ctx, msgEcho, req)
						if err != nil {
							callErrs <- err
							return
						}
						if string(got) != string(req) {
							callErrs <- fmt.Errorf("echo %q for %q", got, req)
							return
						}
						if ops.Add(1) == k {
							close(reached)
						}
					}
				}()
			}
			if k > 0 {
				<-reached
			}
			if rand.IntN(3) == 0 {
				time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
			}
			killed := time.Now()
			if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			err := <-blocked
			notice = append(notice, time.Since(killed))
			if !errors.Is(err, ErrDisconnected) {
				t.Errorf("iteration %d: blocked call ended with %v, want ErrDisconnected", i, err)
			}
			for range 2 {
				if err := <-callErrs; !errors.Is(err, ErrDisconnected) {
					t.Errorf("iteration %d: call ended with %v, want ErrDisconnected", i, err)
				}
			}
			srv.cmd.Wait()
			<-caller.Done()
			if _, err := caller.Call(ctx, msgEcho, nil); !errors.Is(err, ErrDisconnected) {
				t.Errorf("iteration %d: call after the kill: %v", i, err)
			}
			blocker.Close()
			caller.Close()
			checkBaseline(t, i, fds0, segs0, ignore)
		}
		t.Logf("%d server kills: kill -> blocked call's error %s", servers, notice.summary())
	})
}
