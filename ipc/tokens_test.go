//go:build linux

package ipc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// unixPair returns two connected Unix stream sockets.
func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// TestTokenReaderBoundsFloodWork: a peer that has queued far more tokens
// than it could have been asked for. The reader used to take them 64
// bytes per syscall, without pause, for as long as the peer wrote; now it
// pauses after every small read plus one large read, so a flooding peer
// gets a bounded amount of work between pauses (on both sides: the client
// and the server share this reader).
func TestTokenReaderBoundsFloodWork(t *testing.T) {
	r, wr := unixPair(t)
	// Queue as many tokens as the socket takes, then hang up.
	unix.SetNonblock(fdOf(t, wr), true)
	chunk := bytes.Repeat([]byte{tokens[wReqCons]}, 4096)
	queued := 0
	for {
		n, err := unix.Write(fdOf(t, wr), chunk)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		queued += n
	}
	if queued < 2*(tokenSmall+tokenLarge) {
		t.Skipf("the socket buffer takes only %d bytes", queued)
	}
	wr.Close()

	w := &sockWaker{}
	w.local[wReqCons] = make(chan struct{}, 1)
	var atPause []uint64
	defer func(f func(<-chan struct{})) { tokenFloodWait = f }(tokenFloodWait)
	tokenFloodWait = func(<-chan struct{}) { atPause = append(atPause, w.tokensIn.Load()) }
	rc, err := r.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	err = readTokenLoop(rc, w, make(chan struct{}))
	if !errors.Is(err, ErrDisconnected) {
		t.Fatalf("reader ended with %v, want ErrDisconnected", err)
	}
	if got := w.tokensIn.Load(); got != uint64(queued) {
		t.Fatalf("read %d tokens, %d queued", got, queued)
	}
	want := queued / (tokenSmall + tokenLarge)
	if len(atPause) != want {
		t.Fatalf("%d pauses for %d queued tokens, want %d", len(atPause), queued, want)
	}
	prev := uint64(0)
	for _, n := range atPause {
		if n-prev != tokenSmall+tokenLarge {
			t.Fatalf("%d tokens between pauses, want %d", n-prev, tokenSmall+tokenLarge)
		}
		prev = n
	}
	select {
	case <-w.local[wReqCons]:
	default:
		t.Fatal("no wake-up delivered")
	}
}

func fdOf(t *testing.T, c *net.UnixConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return rawFd(rc)
}

// TestTokenReaderRefusesBadToken: a run of tokens with one bad byte in it
// is still a protocol violation.
func TestTokenReaderRefusesBadToken(t *testing.T) {
	w := &sockWaker{}
	w.local[wReqCons] = make(chan struct{}, 1)
	run := bytes.Repeat([]byte{tokens[wReqCons]}, 100)
	run[57] = tokens[wRespCons] // a word the server never sleeps on
	if err := w.deliverAll(run); !errors.Is(err, ErrProtocol) {
		t.Fatalf("deliverAll: %v, want ErrProtocol", err)
	}
}

// flood writes request-consumer tokens into sock, in 64 KiB writes, until
// the socket fails.
func flood(sock *quietSock, tok byte) {
	b := bytes.Repeat([]byte{tok}, 64<<10)
	for {
		if _, err := sock.writeAll(b); err != nil {
			return
		}
	}
}

// TestTokenFloodEventLoop: a client writes tokens without pause to a
// server driven by an external loop. Process used to read until a short
// read, so it never returned while the flood lasted and the loop served
// no one else; now each Process call reads a bounded amount, and an
// honest client is served meanwhile.
func TestTokenFloodEventLoop(t *testing.T) {
	_, addr, loop := startEpollServer(t, Config{}, echoService())
	flooder := dial(t, addr, nil)
	var mu sync.Mutex
	maxTurn, turns := uint64(0), 0
	last := map[*Conn]uint64{}
	hook := func(c *Conn) {
		in := c.waker.tokensIn.Load()
		mu.Lock()
		maxTurn = max(maxTurn, in-last[c])
		last[c] = in
		turns++
		mu.Unlock()
	}
	loop.afterProcess.Store(&hook)
	var flooding sync.WaitGroup
	flooding.Go(func() { flood(flooder.sock, tokens[wReqCons]) })
	honest := dial(t, addr, nil)
	ctx := testCtx(t)
	lat := make([]time.Duration, 200)
	for i := range lat {
		msg := []byte(strconv.Itoa(i))
		start := time.Now()
		got, err := honest.Call(ctx, msgEcho, msg)
		lat[i] = time.Since(start)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("honest call %d: %q, %v", i, got, err)
		}
	}
	slices.Sort(lat)
	t.Logf("honest calls under the flood: p50 %v, p99 %v", lat[len(lat)/2], lat[len(lat)*99/100])
	flooder.Close()
	flooding.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d Process turns; at most %d tokens in one", turns, maxTurn)
	if maxTurn > tokenSmall+tokenLarge {
		t.Fatalf("one Process call read %d tokens, want at most %d", maxTurn, tokenSmall+tokenLarge)
	}
}

// cpuTicks returns a process's user+system CPU time in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return u + s
}

// TestTokenFloodIdleClient: a malicious server floods an idle client
// (in its own process) with tokens. The client stays up and answers
// afterwards; the test logs what the flood cost the client in CPU (the
// reader used to spend a whole core on it).
func TestTokenFloodIdleClient(t *testing.T) {
	connected := make(chan *Conn, 1)
	svc := echoService()
	svc.OnConnect = func(c *Conn) error { connected <- c; return nil }
	_, addr := startServer(t, nil, svc)
	ch := startChild(t, roleIdleClient, addr, nil)
	ch.expect(t, "ready")
	c := <-connected
	const total = 32 << 20
	b := bytes.Repeat([]byte{tokens[wRespCons]}, 64<<10)
	cpu0, start := cpuTicks(t, ch.cmd.Process.Pid), time.Now()
	for sent := 0; sent < total; sent += len(b) {
		if _, err := c.sock.writeAll(b); err != nil {
			t.Fatal(err)
		}
	}
	cpu1, wall := cpuTicks(t, ch.cmd.Process.Pid), time.Since(start)
	t.Logf("client CPU during a %d MiB token flood: %d ticks in %v", total>>20, cpu1-cpu0, wall)
	if err := c.Dispatch(testCtx(t), 1, nil); err != nil {
		t.Fatal(err)
	}
	ch.expect(t, "ok")
}

const roleIdleClient = "idle-client"

// runIdleClient dials, waits for a dispatch message, then makes one call.
func runIdleClient(addr string) int {
	ctx := context.Background()
	cl, err := Dial(ctx, addr, testService, nil)
	if err != nil {
		fmt.Println("dial:", err)
		return exitFailed
	}
	fmt.Println("ready")
	if _, err := cl.Recv(ctx); err != nil {
		fmt.Println("recv:", err)
		return exitFailed
	}
	if _, err := cl.Call(ctx, msgEcho, []byte("x")); err != nil {
		fmt.Println("call:", err)
		return exitFailed
	}
	fmt.Println("ok")
	return 0
}

// TestTokenFloodServer: two clients flood a server (in its own process,
// goroutine mode) with tokens while an honest client calls it. The honest
// calls succeed; the test logs what the flood cost the server in CPU (two
// flooders used to cost it 1.6 cores).
func TestTokenFloodServer(t *testing.T) {
	addr := abstractAddr()
	ch := startChild(t, "server", addr, nil)
	ch.expect(t, "ready")
	const perFlooder = 32 << 20
	cpu0, start := cpuTicks(t, ch.cmd.Process.Pid), time.Now()
	var flooding sync.WaitGroup
	for range 2 {
		f := dial(t, addr, nil)
		flooding.Go(func() {
			b := bytes.Repeat([]byte{tokens[wReqCons]}, 64<<10)
			for sent := 0; sent < perFlooder; sent += len(b) {
				if _, err := f.sock.writeAll(b); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	flooded := make(chan struct{})
	go func() { flooding.Wait(); close(flooded) }()
	honest := dial(t, addr, nil)
	ctx := testCtx(t)
	calls := 0
	for done := false; !done; calls++ {
		if _, err := honest.Call(ctx, msgEcho, []byte("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-flooded:
			done = true
		default:
		}
	}
	cpu1, wall := cpuTicks(t, ch.cmd.Process.Pid), time.Since(start)
	t.Logf("server CPU during two %d MiB token floods: %d ticks in %v; %d honest calls meanwhile", perFlooder>>20, cpu1-cpu0, wall, calls)
}

// TestProcessTurnBounded: a client keeps its request ring fed from many
// goroutines while an honest client calls the same external-loop server.
// Process used to handle requests until it found the ring empty, so such
// a client could hold the loop in one call; with a Requeuer loop each
// call now handles at most MaxTurnRequests, and the honest calls are
// served in between.
func TestProcessTurnBounded(t *testing.T) {
	const perTurn = 8
	_, addr, loop := startEpollServer(t, Config{MaxTurnRequests: perTurn}, echoService())
	busy := dial(t, addr, nil)
	var mu sync.Mutex
	maxTurn, capped := uint64(0), 0
	last := map[*Conn]uint64{}
	hook := func(c *Conn) {
		calls := c.stats.calls.Load()
		mu.Lock()
		d := calls - last[c]
		maxTurn = max(maxTurn, d)
		if d == perTurn {
			capped++
		}
		last[c] = calls
		mu.Unlock()
	}
	loop.afterProcess.Store(&hook)
	ctx, stop := context.WithCancel(testCtx(t))
	var callers sync.WaitGroup
	for range 16 {
		callers.Go(func() {
			for ctx.Err() == nil {
				busy.Call(ctx, msgEcho, []byte("busy")) //nolint:errcheck // ends with ctx
			}
		})
	}
	honest := dial(t, addr, nil)
	for i := range 200 {
		if _, err := honest.Call(testCtx(t), msgEcho, []byte("x")); err != nil {
			t.Fatalf("honest call %d: %v", i, err)
		}
	}
	stop()
	callers.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("at most %d requests in one Process call; %d calls stopped at the bound", maxTurn, capped)
	if maxTurn > perTurn {
		t.Fatalf("one Process call handled %d requests, want at most %d", maxTurn, perTurn)
	}
}

// writeTokenSeen, the answer's token write on a busy machine, reports a
// full socket as unix.EAGAIN (the waker then defers the token) and
// delivers the byte once there is room, as writeToken does.
func TestWriteTokenSeenFullSocket(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	w, r := uintptr(fds[0]), fds[1]
	fill := make([]byte, 64<<10)
	for {
		if _, err := unix.Write(fds[0], fill); err == unix.EAGAIN {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	// A last partial write may have left room for a few bytes: the
	// buffer is full once a one-byte write does not fit.
	for i := 0; writeTokenSeen(w, []byte{tokens[wRespCons]}) != unix.EAGAIN; i++ {
		if i == len(fill) {
			t.Fatal("writeTokenSeen never reported the full socket")
		}
	}
	for {
		if _, err := unix.Read(r, fill); err == unix.EAGAIN {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if err := writeTokenSeen(w, []byte{tokens[wRespCons]}); err != nil {
		t.Fatalf("writeTokenSeen with room: %v", err)
	}
	var b [1]byte
	if n, err := unix.Read(r, b[:]); n != 1 || err != nil || b[0] != tokens[wRespCons] {
		t.Fatalf("read %d bytes %x, %v; want the token %#x", n, b[:n], err, tokens[wRespCons])
	}
}
