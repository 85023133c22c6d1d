//go:build linux

package ipc

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// epollWatches returns, for each epoll instance of this process, the
// event mask it watches fd with (from /proc/self/fdinfo).
func epollWatches(t *testing.T, fd int) []uint32 {
	t.Helper()
	links, err := filepath.Glob("/proc/self/fd/*")
	if err != nil {
		t.Fatal(err)
	}
	var masks []uint32
	for _, l := range links {
		if target, err := os.Readlink(l); err != nil || target != "anon_inode:[eventpoll]" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + filepath.Base(l))
		if err != nil {
			continue // closed meanwhile
		}
		// "tfd:       12 events:   80002005 data: ..."
		for _, line := range strings.Split(string(info), "\n") {
			f := strings.Fields(line)
			if len(f) < 4 || f[0] != "tfd:" || f[2] != "events:" {
				continue
			}
			if n, err := strconv.Atoi(f[1]); err != nil || n != fd {
				continue
			}
			m, err := strconv.ParseUint(f[3], 16, 32)
			if err != nil {
				t.Fatalf("fdinfo line %q: %v", line, err)
			}
			masks = append(masks, uint32(m))
		}
	}
	return masks
}

// TestQuietSocketNotPolledForOutput: once connected, neither side's
// socket, nor a subscriber's, is watched for output by any epoll
// instance of the process (Go's netpoller watches every socket it owns
// for output, which woke the process each time the peer read one of our
// tokens or sleep announcements), and each is watched for input by
// exactly one.
func TestQuietSocketNotPolledForOutput(t *testing.T) {
	srv, addr := startServer(t, nil, echoService())
	if _, err := srv.AddTopic(TopicConfig{ID: testTopic}); err != nil {
		t.Fatal(err)
	}
	cl := dial(t, addr, nil)
	sub := subscribe(t, addr, testTopic, nil)
	ctx := testCtx(t)
	// A call, so that the server has started serving the connection
	// (and made its socket quiet), and both readers have waited.
	if _, err := cl.Call(ctx, msgEcho, []byte("x")); err != nil {
		t.Fatal(err)
	}
	c := firstConn(t, srv)
	for side, fd := range map[string]int{"client": rawFd(cl.rc), "server": rawFd(c.rc), "subscriber": rawFd(sub.sock)} {
		if fd < 0 {
			t.Fatalf("%s: no descriptor", side)
		}
		// The reader may not have reached its first wait yet.
		var masks []uint32
		waitUntil(t, func() bool { masks = epollWatches(t, fd); return len(masks) > 0 }, side+"'s socket in an epoll set")
		if len(masks) != 1 {
			t.Errorf("%s: socket watched by %d epoll instances (%#x), want 1", side, len(masks), masks)
		}
		for _, m := range masks {
			if m&unix.EPOLLOUT != 0 {
				t.Errorf("%s: socket watched for output (events %#x)", side, m)
			}
			if m&unix.EPOLLIN == 0 {
				t.Errorf("%s: socket not watched for input (events %#x)", side, m)
			}
		}
	}
}

// quietPair returns a quiet socket and its peer's plain end.
func quietPair(t *testing.T) (*quietSock, *os.File) {
	t.Helper()
	nc, peerFd := fuzzSocketPair(t)
	peer := os.NewFile(uintptr(peerFd), "peer")
	t.Cleanup(func() { peer.Close() })
	q, err := newQuietSock(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.quiet(true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q, peer
}

// TestQuietSockWriteWaitsForRoom: a write to a full socket waits until
// the peer reads, then goes on, and nothing is lost.
func TestQuietSockWriteWaitsForRoom(t *testing.T) {
	q, peer := quietPair(t)
	// Fill the socket until it refuses more.
	chunk := bytes.Repeat([]byte{'a'}, 4096)
	filled := 0
	for {
		var n int
		var werr error
		if err := q.Control(func(fd uintptr) { n, werr = unix.Write(int(fd), chunk) }); err != nil {
			t.Fatal(err)
		}
		if werr == unix.EAGAIN {
			break
		}
		if werr != nil {
			t.Fatal(werr)
		}
		filled += n
	}
	tail := bytes.Repeat([]byte{'b'}, 256<<10)
	var wg sync.WaitGroup
	var wn int
	var werr error
	wg.Go(func() { wn, werr = q.writeAll(tail) })
	got, err := io.ReadAll(io.LimitReader(peer, int64(filled+len(tail))))
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if werr != nil || wn != len(tail) {
		t.Fatalf("write of %d bytes after the socket filled: %d, %v", len(tail), wn, werr)
	}
	if len(got) != filled+len(tail) || !bytes.Equal(got[filled:], tail) || bytes.ContainsRune(got[:filled], 'b') {
		t.Fatalf("peer read %d bytes, want %d: %d 'a' then %d 'b'", len(got), filled+len(tail), filled, len(tail))
	}
}

// TestQuietSockReadWaitsAndCloses: a Read with nothing to read waits
// until the peer writes; a Read waiting when Close comes returns
// net.ErrClosed; after Close every method does.
func TestQuietSockReadWaitsAndCloses(t *testing.T) {
	q, peer := quietPair(t)
	var buf [8]byte
	read := func(fd uintptr) bool {
		_, err := unix.Read(int(fd), buf[:])
		return err != unix.EAGAIN
	}
	var wg sync.WaitGroup
	var rerr error
	wg.Go(func() { rerr = q.Read(read) })
	if _, err := peer.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if rerr != nil || buf[0] != 'x' {
		t.Fatalf("Read: %v, got %q", rerr, buf[0])
	}
	wg.Go(func() { rerr = q.Read(read) })
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if !errors.Is(rerr, net.ErrClosed) {
		t.Fatalf("Read across Close: %v, want net.ErrClosed", rerr)
	}
	if err := q.Control(func(uintptr) { t.Error("Control ran f after Close") }); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Control after Close: %v", err)
	}
	if err := q.Write(func(uintptr) bool { t.Error("Write ran f after Close"); return true }); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	if err := q.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
}

// TestQuietSockReadNextSeesEarlierInput: ReadNext waits before its
// first try, and input that came before it started must still end the
// wait (the netpoller forgets an edge from before a wait, so ReadNext's
// first check asks the input poller); input that comes during the wait
// ends it too.
func TestQuietSockReadNextSeesEarlierInput(t *testing.T) {
	q, peer := quietPair(t)
	var buf [8]byte
	read := func(fd uintptr) bool {
		_, err := unix.Read(int(fd), buf[:1])
		return err != unix.EAGAIN
	}
	for i := range 50 {
		want := byte('a' + i%26)
		if _, err := peer.Write([]byte{want}); err != nil {
			t.Fatal(err)
		}
		if err := q.ReadNext(read); err != nil || buf[0] != want {
			t.Fatalf("ReadNext after the peer wrote: %v, got %q, want %q", err, buf[0], want)
		}
		var wg sync.WaitGroup
		var rerr error
		wg.Go(func() { rerr = q.ReadNext(read) })
		if _, err := peer.Write([]byte{want + 1}); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if rerr != nil || buf[0] != want+1 {
			t.Fatalf("ReadNext waiting for the peer: %v, got %q, want %q", rerr, buf[0], want+1)
		}
	}
}

// TestQuietSockWriteStops: a write waiting for room in a full socket
// gives up once its stop condition holds (a subscriber's receive whose
// context ended while its sleep announcement waited for a server that
// stopped reading).
func TestQuietSockWriteStops(t *testing.T) {
	q, _ := quietPair(t)
	chunk := bytes.Repeat([]byte{'a'}, 4096)
	for full := false; !full; {
		var werr error
		if err := q.Control(func(fd uintptr) { _, werr = unix.Write(int(fd), chunk) }); err != nil {
			t.Fatal(err)
		}
		if full = werr == unix.EAGAIN; werr != nil && !full {
			t.Fatal(werr)
		}
	}
	var stop atomic.Bool
	tries := 0
	done := make(chan error, 1)
	go func() {
		done <- q.write(func(fd uintptr) bool {
			tries++
			_, err := unix.Write(int(fd), []byte{'b'})
			return err != unix.EAGAIN
		}, stop.Load, time.Millisecond)
	}()
	stop.Store(true)
	if err := <-done; err != errWriteStopped {
		t.Fatalf("write to a full socket after stop: %v, want errWriteStopped", err)
	}
	if tries == 0 {
		t.Fatal("write gave up without trying")
	}
}

// TestConnFdStable: the descriptor Conn.Fd gives in OnConnect, before
// the socket goes quiet, is the one the connection keeps.
func TestConnFdStable(t *testing.T) {
	svc := echoService()
	early := make(chan int, 1)
	svc.OnConnect = func(c *Conn) error {
		early <- c.Fd()
		return nil
	}
	srv, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	if _, err := cl.Call(testCtx(t), msgEcho, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if fd, later := <-early, firstConn(t, srv).Fd(); fd < 0 || fd != later {
		t.Fatalf("Fd in OnConnect %d, once serving %d", fd, later)
	}
}
