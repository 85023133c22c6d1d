//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Children of the admission tests (see runChild).
const (
	// roleSquat opens IPC_TEST_N sockets to the server and never sends a
	// hello; it prints "connected", then reads each socket's reply (or
	// end of file) and prints the statuses seen, "status:count ..." in
	// status order ("eof" for none), then waits to be killed.
	roleSquat = "squat"
	// roleLowFD serves with RLIMIT_NOFILE lowered to IPC_TEST_N once it
	// listens; it prints "ready", then "accept-retry" once Serve has
	// retried a failed accept, and "serve: <err>" if Serve returns.
	roleLowFD = "lowfd-server"
	envN      = "IPC_TEST_N"
)

func runAdmitChild(role, addr string) (int, bool) {
	n, _ := strconv.Atoi(os.Getenv(envN))
	switch role {
	case roleIdleClient:
		return runIdleClient(addr), true
	case roleSquat:
		conns := make([]net.Conn, 0, n)
		for range n {
			c, err := net.Dial("unix", addr)
			if err != nil {
				fmt.Println("dial:", err)
				return exitFailed, true
			}
			conns = append(conns, c)
		}
		fmt.Println("connected")
		seen := map[string]int{}
		for _, c := range conns {
			var rb [replySize]byte
			if _, err := readFull(c, rb[:]); err != nil {
				seen["eof"]++
				continue
			}
			seen[strconv.Itoa(int(binary.LittleEndian.Uint32(rb[12:])))]++
		}
		fmt.Println(statusSummary(seen))
		select {}
	case roleLowFD:
		// Silent sockets, which hold their descriptors, exhaust it; the
		// per-uid handshake bound would stop them first.
		srv, err := NewServer(&Config{HandshakeTimeout: time.Hour, MaxHandshakesPerUID: 1 << 20})
		if err != nil {
			fmt.Println(err)
			return exitFailed, true
		}
		srv.Register(echoService())
		l, err := Listen(addr, 0)
		if err != nil {
			fmt.Println(err)
			return exitFailed, true
		}
		var lim unix.Rlimit
		unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
		lim.Cur = uint64(n)
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			fmt.Println("setrlimit:", err)
			return exitFailed, true
		}
		go func() {
			for srv.Stats().AcceptErrors == 0 {
				time.Sleep(time.Millisecond)
			}
			fmt.Println("accept-retry")
		}()
		fmt.Println("ready")
		fmt.Println("serve:", srv.Serve(l))
		select {}
	}
	return 0, false
}

func statusSummary(seen map[string]int) string {
	var parts []string
	for k, v := range seen {
		parts = append(parts, fmt.Sprintf("%s:%d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func startSquatter(t *testing.T, addr string, n int, cred *syscall.Credential) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var attr *syscall.SysProcAttr
	if cred != nil {
		exe = worldExecutableCopy(t, exe)
		attr = &syscall.SysProcAttr{Credential: cred}
	}
	return execChild(t, exe, attr, envChild+"="+roleSquat, envAddr+"="+addr, envN+"="+strconv.Itoa(n))
}

// TestRejectedPeersTakeNoHandshakeSlot: a user the server does not
// authorize opens many sockets and never sends a hello. They used to hold
// every handshake slot for the whole handshake timeout, so that honest
// clients could not connect; now each is judged at accept and refused at
// once, and an honest Dial made while they are all open succeeds.
func TestRejectedPeersTakeNoHandshakeSlot(t *testing.T) {
	const squatters = 200 // > MaxHandshakes (64)
	self := int32(os.Getpid())
	cases := []struct {
		name      string
		authorize func(Cred) error
		cred      *syscall.Credential
	}{
		// Any test process can run this one: only the test's own pid is
		// authorized, the squatting child is not.
		{"other pid", func(c Cred) error {
			if c.PID == self {
				return nil
			}
			return ErrRejected
		}, nil},
		{"other uid", DefaultAuthorize, &syscall.Credential{Uid: 65534, Gid: 65534}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.cred != nil && os.Geteuid() != 0 {
				t.Skip("needs root to start a child as another uid")
			}
			// Silent handshakes would hold their slots far longer than
			// the test's hang guard.
			srv, addr := startServer(t, &Config{Authorize: tc.authorize, HandshakeTimeout: time.Hour}, echoService())
			ch := startSquatter(t, addr, squatters, tc.cred)
			ch.expect(t, "connected")
			cl := dial(t, addr, nil)
			if _, err := cl.Call(testCtx(t), msgEcho, []byte("x")); err != nil {
				t.Fatal(err)
			}
			ch.expect(t, fmt.Sprintf("%d:%d", statusUnauthorized, squatters))
			if st := srv.Stats(); st.Rejected != squatters || st.HandshakeTimeouts != 0 {
				t.Errorf("Rejected %d, HandshakeTimeouts %d; want %d, 0", st.Rejected, st.HandshakeTimeouts, squatters)
			}
		})
	}
}

// handshakes is how many handshakes the server has in progress.
func handshakes(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.handshake)
}

// replyStatus reads the server's reply on a raw socket.
func replyStatus(t *testing.T, c net.Conn) (status, code uint32) {
	t.Helper()
	var rb [replySize]byte
	if _, err := readFull(c, rb[:]); err != nil {
		t.Fatalf("no reply: %v", err)
	}
	return binary.LittleEndian.Uint32(rb[12:]), binary.LittleEndian.Uint32(rb[20:])
}

func wantLimit(t *testing.T, err error, code uint32) {
	t.Helper()
	var rej *RejectError
	if !errors.Is(err, ErrLimit) || !errors.Is(err, ErrRejected) || !errors.As(err, &rej) || rej.Code != code {
		t.Fatalf("got %v, want ErrLimit with code %d", err, code)
	}
}

// TestHandshakesPerUID: one authorized uid cannot hold more than
// MaxHandshakesPerUID handshake slots with silent sockets.
func TestHandshakesPerUID(t *testing.T) {
	srv, addr := startServer(t, &Config{MaxHandshakesPerUID: 2, HandshakeTimeout: time.Hour}, echoService())
	a, b := rawDial(t, addr), rawDial(t, addr)
	_ = b
	waitUntil(t, func() bool { return handshakes(srv) == 2 }, "two handshakes")
	if st, code := replyStatus(t, rawDial(t, addr)); st != statusLimit || code != LimitHandshakesPerUID {
		t.Fatalf("third silent socket: status %d code %d", st, code)
	}
	// Dial takes a full house for a moment's business and tries again
	// until its context ends...
	ctx, cancel := context.WithCancel(testCtx(t))
	go func() {
		waitUntil(t, func() bool { return srv.Stats().Limited >= 4 }, "Dial retrying")
		cancel()
	}()
	_, err := Dial(ctx, addr, testService, nil)
	wantLimit(t, err, LimitHandshakesPerUID)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial: %v, want the context's error too", err)
	}
	// ...or until a slot frees.
	dialed := make(chan error, 1)
	limited := srv.Stats().Limited
	go func() {
		cl, err := Dial(testCtx(t), addr, testService, nil)
		if err == nil {
			cl.Close()
		}
		dialed <- err
	}()
	waitUntil(t, func() bool { return srv.Stats().Limited > limited }, "Dial refused once")
	a.Close()
	if err := <-dialed; err != nil {
		t.Fatalf("Dial once a slot freed: %v", err)
	}
}

// TestHandshakesOtherUIDSquats: another authorized uid opening far more
// silent sockets than MaxHandshakes takes only its per-uid share.
func TestHandshakesOtherUIDSquats(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a child as another uid")
	}
	const squatters = 100
	srv, addr := startServer(t, &Config{Authorize: func(Cred) error { return nil }, HandshakeTimeout: time.Hour}, echoService())
	ch := startSquatter(t, addr, squatters, &syscall.Credential{Uid: 65534, Gid: 65534})
	ch.expect(t, "connected")
	limited := squatters - DefaultMaxHandshakesPerUID
	waitUntil(t, func() bool { return srv.Stats().Limited == uint64(limited) }, "the squatter's surplus refused")
	if n := handshakes(srv); n != DefaultMaxHandshakesPerUID {
		t.Fatalf("%d handshakes in progress, want %d", n, DefaultMaxHandshakesPerUID)
	}
	cl := dial(t, addr, nil)
	if _, err := cl.Call(testCtx(t), msgEcho, []byte("x")); err != nil {
		t.Fatal(err)
	}
	ch.kill(t)
}

// TestAcceptReadyNoSpin: with every handshake slot taken, AcceptReady
// used to leave the surplus in the backlog, so the listener stayed
// readable and a level-triggered loop spun. Now it refuses the surplus,
// and the listener polls idle afterwards.
func TestAcceptReadyNoSpin(t *testing.T) {
	srv, err := NewServer(&Config{EventLoop: nopLoop{}, MaxHandshakes: 2, HandshakeTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	srv.Register(echoService())
	defer srv.Close()
	addr := abstractAddr()
	l, err := Listen(addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	lfd, _ := ListenerFd(l)
	var socks []net.Conn
	for range 5 {
		socks = append(socks, rawDial(t, addr))
	}
	turns := 0
	for ; readable(t, lfd) && turns < 10; turns++ {
		if err := srv.AcceptReady(l); err != nil {
			t.Fatal(err)
		}
	}
	if turns != 1 {
		t.Fatalf("listener still readable after %d AcceptReady turns", turns)
	}
	if n := handshakes(srv); n != 2 {
		t.Fatalf("%d handshakes, want 2", n)
	}
	for _, c := range socks[2:] {
		if st, code := replyStatus(t, c); st != statusLimit || code != LimitHandshakes {
			t.Fatalf("surplus socket: status %d code %d", st, code)
		}
	}
}

type nopLoop struct{}

func (nopLoop) AddConn(*Conn)    {}
func (nopLoop) RemoveConn(*Conn) {}

func readable(t *testing.T, fd int) bool {
	t.Helper()
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(p, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return n > 0
	}
}

// TestServeSurvivesEMFILE: a client opens sockets until the server runs
// out of descriptors. Serve used to return on EMFILE and close the
// listener for good; now it retries, and once the attacker's sockets are
// gone an honest Dial works.
func TestServeSurvivesEMFILE(t *testing.T) {
	addr := abstractAddr()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const fdLimit = 32
	ch := execChild(t, exe, nil, envChild+"="+roleLowFD, envAddr+"="+addr, envN+"="+strconv.Itoa(fdLimit))
	ch.expect(t, "ready")
	var socks []net.Conn
	for range 2 * fdLimit { // more than the server has descriptors
		c, err := net.Dial("unix", addr)
		if err != nil {
			t.Fatal(err)
		}
		socks = append(socks, c)
	}
	ch.expect(t, "accept-retry")
	for _, c := range socks {
		c.Close()
	}
	cl := dial(t, addr, nil)
	if _, err := cl.Call(testCtx(t), msgEcho, []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// TestMaxConns: connections past MaxConns, or past MaxConnsPerUID for one
// uid, are refused with their limit code until one goes away.
func TestMaxConns(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		code uint32
	}{
		{"total", Config{MaxConns: 2}, LimitConns},
		{"per uid", Config{MaxConnsPerUID: 2}, LimitConnsPerUID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, addr := startServer(t, &tc.cfg, echoService())
			first := dial(t, addr, nil)
			dial(t, addr, nil)
			_, err := Dial(testCtx(t), addr, testService, nil)
			wantLimit(t, err, tc.code)
			first.Close()
			waitUntil(t, func() bool { return len(srv.Conns()) == 1 }, "a connection gone")
			dial(t, addr, nil)
		})
	}
}

// TestMaxMemory: a handshake whose rings would take the server past its
// memory budget is refused with LimitMemory.
func TestMaxMemory(t *testing.T) {
	_, one := layout([3]uint64{DefaultRingSize, DefaultRingSize, DefaultRingSize}, ringBytes)
	srv, addr := startServer(t, &Config{MaxMemory: int64(one) + int64(one)/2}, echoService())
	first := dial(t, addr, nil)
	_, err := Dial(testCtx(t), addr, testService, nil)
	wantLimit(t, err, LimitMemory)
	first.Close()
	waitUntil(t, func() bool { return len(srv.Conns()) == 0 }, "the connection gone")
	dial(t, addr, nil)
}

// TestRingMemoryUntouched: a client asking for the largest rings used to
// make the server touch every page of them (ring.Init cleared memory a
// fresh memfd already reads as zero): 48 MiB per connection before
// OnConnect could refuse it. Now the server allocates only the pages of
// the control areas: the memfd's allocated blocks say so.
func TestRingMemoryUntouched(t *testing.T) {
	type seg struct{ size, allocated int64 }
	connected := make(chan seg, 1)
	svc := echoService()
	// Measured in OnConnect, where a service would refuse the client:
	// whatever the server spent by then, it spent for anyone.
	svc.OnConnect = func(c *Conn) error {
		var st unix.Stat_t
		if err := unix.Fstat(int(c.seg.File().Fd()), &st); err != nil {
			return err
		}
		connected <- seg{int64(c.seg.Size()), st.Blocks * 512}
		return nil
	}
	_, addr := startServer(t, nil, svc)
	max := DefaultMaxRingSize
	cl := dial(t, addr, &ClientOptions{RequestRingSize: max, ResponseRingSize: max, DispatchRingSize: max})
	got := <-connected
	t.Logf("segment %d bytes, %d allocated at OnConnect", got.size, got.allocated)
	if got.allocated >= int64(max) {
		t.Fatalf("%d bytes of the %d-byte segment allocated, want a few pages", got.allocated, got.size)
	}
	// The rings work (a record crosses each data area).
	if _, err := cl.Call(testCtx(t), msgEcho, []byte("x")); err != nil {
		t.Fatal(err)
	}
}
