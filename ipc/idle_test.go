//go:build linux

package ipc

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func threadCount(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestIdleConnections: sleeping connections park in the netpoller, so a
// thousand of them hold neither threads nor CPU. Server and clients share
// this process, which makes the counts an upper bound for the server.
func TestIdleConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	const conns = 1000
	_, addr := startServer(t, &Config{RingSize: MinRingSize, MaxHandshakes: 16}, echoService())
	opts := &ClientOptions{RequestRingSize: MinRingSize, ResponseRingSize: MinRingSize, DispatchRingSize: MinRingSize}
	ctx := testCtx(t)
	threads0 := threadCount(t)
	clients := make([]*Client, 0, conns)
	for range conns {
		cl := dial(t, addr, opts)
		if _, err := cl.Call(ctx, msgEcho, []byte("x")); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, cl)
	}
	// Every server loop and every client now sleeps on its socket.
	cpu0 := cpuTime(t)
	start := time.Now()
	time.Sleep(time.Second) // the measurement window, not a synchronisation
	cpu := cpuTime(t) - cpu0
	wall := time.Since(start)
	threads := threadCount(t)
	t.Logf("%d idle connections: %d threads (%d before dialing), %v CPU in %v idle",
		conns, threads, threads0, cpu, wall.Round(time.Millisecond))
	if threads >= 100 {
		t.Errorf("%d OS threads for %d idle connections, want < 100", threads, conns)
	}
	if cpu > wall/4 {
		t.Errorf("idle connections used %v CPU in %v", cpu, wall)
	}
	// They still work.
	for _, cl := range clients[:10] {
		if _, err := cl.Call(ctx, msgEcho, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
}
