//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
	"golang.org/x/sys/unix"
)

// The hostile-server tests: a fake server in this process speaks the
// handshake, hands the client a segment it built itself and keeps the
// server's end of every ring, so that it can grant what it likes and
// write any record. The package's client is the one under test.

// fakeServer is one malicious server for one client.
type fakeServer struct {
	t     *testing.T
	addr  string
	sizes [3]uint64
	seg   *shmseg.Segment
	rep   reply
	reqC  *ring.Consumer
	resp  *ring.Producer
	disp  *ring.Producer
	ctl   []byte

	// Set by the accepting goroutine before it closes served.
	served chan struct{}
	conn   *net.UnixConn
	hello  []byte // what the client sent before the reply
	err    error  // why the handshake went no further
}

// newFakeServer builds a segment with rings of sizes and starts serving
// one handshake on a fresh abstract address; edit, if not nil, changes
// the reply (which describes the segment truthfully) before it is sent.
func newFakeServer(t *testing.T, sizes [3]uint64, edit func(*reply)) *fakeServer {
	t.Helper()
	return newFakeServerPayload(t, sizes, 0, edit)
}

// newFakeServerPayload is newFakeServer with a segment payload of at
// least payload bytes, however little the rings need.
func newFakeServerPayload(t *testing.T, sizes [3]uint64, payload uint64, edit func(*reply)) *fakeServer {
	t.Helper()
	offs, total := layout(sizes, ringBytes)
	total = max(total, payload)
	seg, err := shmseg.CreateMemfd("ringipc-fake", segmentGeometry(sizes, offs), int(total))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { seg.Close() })
	pay := seg.Payload()
	f := &fakeServer{t: t, addr: abstractAddr(), sizes: sizes, seg: seg, ctl: pay[:ctlSize], served: make(chan struct{})}
	region := func(i int) []byte { return pay[offs[i] : offs[i]+ringBytes(sizes[i])] }
	for i := range 3 {
		if err := ring.Init(region(i), ring.Geometry{DataSize: int(sizes[i])}); err != nil {
			t.Fatal(err)
		}
	}
	f.rep = reply{version: Version, sizes: sizes, offs: offs, payload: uint64(len(pay)),
		maxReq:  uint32(ring.MaxPayload(int(sizes[0])) - reqHdrSize),
		maxDisp: uint32(ring.MaxPayload(int(sizes[2])))}
	if edit != nil {
		edit(&f.rep)
	}
	w := &fakeWaker{f: f, tok: map[*uint32]byte{}}
	for r := range 3 {
		w.tok[word32(pay, offs[r]+ring.ConsumerWaitOffset)] = tokens[2*r]
		w.tok[word32(pay, offs[r]+ring.ProducerWaitOffset)] = tokens[2*r+1]
	}
	o := &ring.Options{Waker: w, Spin: -1}
	if f.reqC, err = ring.NewConsumer(region(0), o); err != nil {
		t.Fatal(err)
	}
	if f.resp, err = ring.NewProducer(region(1), o); err != nil {
		t.Fatal(err)
	}
	if f.disp, err = ring.NewProducer(region(2), o); err != nil {
		t.Fatal(err)
	}

	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.addr, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	go f.serve(l)
	t.Cleanup(func() {
		l.Close()
		<-f.served
		if f.conn != nil {
			f.conn.Close()
		}
	})
	return f
}

func (f *fakeServer) serve(l *net.UnixListener) {
	defer close(f.served)
	defer l.Close()
	c, err := l.AcceptUnix()
	if err != nil {
		f.err = err
		return
	}
	f.conn = c
	c.SetDeadline(time.Now().Add(time.Minute)) //nolint:errcheck // a hang guard
	defer c.SetDeadline(time.Time{})           //nolint:errcheck
	f.hello = make([]byte, helloSize)
	n, err := io.ReadFull(c, f.hello)
	f.hello = f.hello[:n]
	if err != nil {
		f.err = err
		return
	}
	var rb [replySize]byte
	f.rep.encode(rb[:])
	_, _, f.err = c.WriteMsgUnix(rb[:], unix.UnixRights(int(f.seg.File().Fd())), nil)
}

// wait waits for the handshake to end on the server's side.
func (f *fakeServer) wait() {
	f.t.Helper()
	select {
	case <-f.served:
	case <-time.After(time.Minute):
		f.t.Fatal("fake server: no handshake within a minute")
	}
}

// dial connects a client with opts to f.
func (f *fakeServer) dial(opts *ClientOptions) (*Client, error) {
	f.t.Helper()
	cl, err := Dial(testCtx(f.t), f.addr, testService, opts)
	if err == nil {
		f.t.Cleanup(func() { cl.Close() })
	}
	f.wait()
	return cl, err
}

// fakeWaker carries the fake server's wake-ups over its socket: Wake
// writes the word's token, Sleep waits for any token from the client.
type fakeWaker struct {
	f   *fakeServer
	tok map[*uint32]byte
}

func (w *fakeWaker) Wake(word *uint32) {
	tok := w.tok[word]
	if tok != tokReqProd && tok != tokRespCons && tok != tokDispCons {
		return // a word of the server's own: nobody sleeps on it here
	}
	if c := w.f.conn; c != nil {
		c.Write([]byte{tok}) //nolint:errcheck // a gone client needs no wake-up
	}
}

func (w *fakeWaker) Sleep(ctx context.Context, word *uint32, limit time.Duration) error {
	c := w.f.conn
	if c == nil {
		return ctx.Err()
	}
	// Spurious returns are allowed: read in slices, looking at ctx.
	if limit <= 0 || limit > 10*time.Millisecond {
		limit = 10 * time.Millisecond
	}
	c.SetReadDeadline(time.Now().Add(limit)) //nolint:errcheck
	var b [64]byte
	c.Read(b[:]) //nolint:errcheck // tokens only wake us
	return ctx.Err()
}

// fakeResources counts this process's descriptors and mappings of fake
// segments. Across a dial that fails, the fake server's listener is
// closed and its accepted socket opened: the count of descriptors stays.
func fakeResources(t *testing.T) (fds, maps int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents), strings.Count(string(b), "memfd:ringipc-fake")
}

func TestHostileServerGrants(t *testing.T) {
	small := [3]uint64{4096, 4096, 4096}
	t.Run("sane grant accepted", func(t *testing.T) {
		f := newFakeServer(t, small, nil)
		if _, err := f.dial(&ClientOptions{RequestRingSize: 4096, ResponseRingSize: 4096, DispatchRingSize: 4096}); err != nil {
			t.Fatal(err)
		}
	})
	for _, tc := range []struct {
		name  string
		sizes [3]uint64
		opts  ClientOptions
	}{
		// The server may grant what was asked, raised to MinRingSize; a
		// response ring of 1 MiB for a client that asked 4 KiB is not that.
		{"above what was asked", [3]uint64{4096, 1 << 20, 4096}, ClientOptions{ResponseRingSize: 4096}},
		{"below MinRingSize asked", [3]uint64{8192, 4096, 4096}, ClientOptions{RequestRingSize: 1024}},
		// Left to the server: no more than MaxRingSize.
		{"above MaxRingSize", [3]uint64{4096, 4096, 1 << 20}, ClientOptions{MaxRingSize: 1 << 19}},
		{"above the default max", [3]uint64{4096, DefaultMaxRingSize * 2, 4096}, ClientOptions{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeServer(t, tc.sizes, nil)
			fds0, maps0 := fakeResources(t)
			_, err := f.dial(&tc.opts)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("dial: %v, want ErrTooLarge", err)
			}
			t.Log(err)
			// Refused before the segment was mapped or kept.
			if fds, maps := fakeResources(t); fds != fds0 || maps != maps0 {
				t.Errorf("descriptors %d -> %d, segment mappings %d -> %d", fds0, fds, maps0, maps)
			}
		})
	}
	t.Run("payload larger than the rings", func(t *testing.T) {
		// A segment of 1 GiB for rings of 12 KiB: the reply and the
		// header agree, so only a bound on the payload catches it. The
		// memfd costs nothing until touched.
		f := newFakeServerPayload(t, small, 1<<30, nil)
		fds0, maps0 := fakeResources(t)
		if _, err := f.dial(nil); !errors.Is(err, ErrProtocol) {
			t.Fatalf("dial: %v, want ErrProtocol", err)
		}
		if fds, maps := fakeResources(t); fds != fds0 || maps != maps0 {
			t.Errorf("descriptors %d -> %d, segment mappings %d -> %d", fds0, fds, maps0, maps)
		}
	})
	t.Run("options", func(t *testing.T) {
		for _, o := range []ClientOptions{
			{MaxRingSize: 1000},
			{MaxRingSize: 1024},
			{MaxRingSize: 8192, ResponseRingSize: 16384},
		} {
			if _, err := Dial(testCtx(t), "@ringipc-nobody-listens", testService, &o); err == nil ||
				errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ECONNREFUSED) {
				t.Errorf("%+v: %v, want an options error before connecting", o, err)
			}
		}
	})
}

// TestHostileServerDispatchType: a dispatch record whose type has any of
// bits 16..31 set is not a message of the protocol (docs/ipc.md 5.3): the
// client ends the connection with ErrProtocol instead of delivering it
// under its low 16 bits, on every way of receiving.
func TestHostileServerDispatchType(t *testing.T) {
	small := [3]uint64{4096, 4096, 4096}
	const good, bad = 3, 1<<16 | 3
	for _, mode := range []string{"Recv", "TryRecv", "OnDispatch"} {
		t.Run(mode, func(t *testing.T) {
			f := newFakeServer(t, small, nil)
			got := make(chan Message, 2)
			opts := &ClientOptions{}
			if mode == "OnDispatch" {
				opts.OnDispatch = func(id uint16, body []byte) { got <- Message{id, append([]byte(nil), body...)} }
			}
			cl, err := f.dial(opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, typ := range []uint32{good, bad} {
				if err := f.disp.TryWrite(typ, []byte("body")); err != nil {
					t.Fatal(err)
				}
			}
			recv := func() (Message, error) {
				switch mode {
				case "Recv":
					return cl.Recv(testCtx(t))
				case "TryRecv":
					return cl.TryRecv()
				}
				select {
				case m := <-got:
					return m, nil
				case <-cl.Done():
					// OnDispatch handed over the good message before the
					// bad record ended the connection: both may be ready,
					// and select picks either.
					select {
					case m := <-got:
						return m, nil
					default:
						return Message{}, cl.Err()
					}
				}
			}
			if m, err := recv(); err != nil || m.ID != good || string(m.Data) != "body" {
				t.Fatalf("first message: %+v, %v", m, err)
			}
			m, err := recv()
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("record of type %#x: %+v, %v; want ErrProtocol", uint32(bad), m, err)
			}
			<-cl.Done()
			if !errors.Is(cl.Err(), ErrProtocol) {
				t.Errorf("connection ended with %v, want ErrProtocol", cl.Err())
			}
		})
	}
}

// TestHostileServerIdentity: the client judges the server's credentials
// before it sends a byte.
func TestHostileServerIdentity(t *testing.T) {
	small := [3]uint64{4096, 4096, 4096}
	me := Cred{PID: int32(os.Getpid()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	t.Run("refused before the hello", func(t *testing.T) {
		f := newFakeServer(t, small, nil)
		var seen Cred
		_, err := f.dial(&ClientOptions{AuthorizeServer: func(c Cred) error {
			seen = c
			return errors.New("not the server I want")
		}})
		if !errors.Is(err, ErrUnauthorizedServer) {
			t.Fatalf("dial: %v, want ErrUnauthorizedServer", err)
		}
		if seen != me {
			t.Errorf("AuthorizeServer saw %+v, want %+v", seen, me)
		}
		if len(f.hello) != 0 || !errors.Is(f.err, io.EOF) {
			t.Errorf("the server received %d bytes (%v), want none and end of file", len(f.hello), f.err)
		}
	})
	t.Run("accepted", func(t *testing.T) {
		f := newFakeServer(t, small, nil)
		var seen Cred
		cl, err := f.dial(&ClientOptions{AuthorizeServer: func(c Cred) error { seen = c; return nil }})
		if err != nil {
			t.Fatal(err)
		}
		if seen != me || cl.ServerCred() != me {
			t.Errorf("AuthorizeServer saw %+v, ServerCred %+v, want %+v", seen, cl.ServerCred(), me)
		}
	})
	t.Run("default", func(t *testing.T) {
		root := os.Geteuid() == 0
		for _, c := range []Cred{{UID: 0}, {UID: 65534}, {UID: uint32(os.Geteuid())}} {
			err := DefaultAuthorizeServer(c)
			if want := root && c.UID != 0; (err != nil) != want {
				t.Errorf("client euid %d, server uid %d: %v, want refused=%v", os.Geteuid(), c.UID, err, want)
			}
		}
	})
	t.Run("impostor process", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to start the impostor as another uid")
		}
		// A real server running as nobody holds the address.
		addr := abstractAddr()
		ch := startChild(t, "server", addr, &syscall.Credential{Uid: 65534, Gid: 65534})
		ch.expect(t, "ready")
		if _, err := Dial(testCtx(t), addr, testService, nil); !errors.Is(err, ErrUnauthorizedServer) {
			t.Fatalf("root client, server uid 65534, default check: %v, want ErrUnauthorizedServer", err)
		}
		// A client that means to talk to that uid says so.
		cl, err := Dial(testCtx(t), addr, testService, &ClientOptions{AuthorizeServer: func(c Cred) error {
			if c.UID != 65534 || c.PID != int32(ch.cmd.Process.Pid) {
				return errors.New("unexpected server")
			}
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if got, err := cl.Call(testCtx(t), msgEcho, []byte("hi")); err != nil || string(got) != "hi" {
			t.Errorf("call: %q, %v", got, err)
		}
	})
}

// orphanCorr is a correlation id no call of a fresh client has: slot
// 1<<20, which its table never reaches in these tests.
const orphanCorr = 1<<20 | 7<<32

// writeResponse commits a response record for corr into the fake
// server's response ring, without waiting.
func (f *fakeServer) writeResponse(corr uint64, body []byte) error {
	pl := make([]byte, respHdrSize+len(body))
	binary.LittleEndian.PutUint64(pl, corr)
	copy(pl[respHdrSize:], body)
	return f.resp.TryWrite(respOK, pl)
}

// TestHostileServerOrphanFlood: a server that keeps the response ring
// full of responses nobody waits for must not hold a caller past its
// deadline; the reader looks at it before every record.
func TestHostileServerOrphanFlood(t *testing.T) {
	small := [3]uint64{4096, 4096, 4096}
	t.Run("deadline passed, ring full", func(t *testing.T) {
		// The ring holds orphans, then the answer to the first call
		// (correlation id 0), before the call is made with a deadline
		// already past. The reader never finds the ring empty, so only a
		// look at the deadline per record can stop it. (A live flood
		// leaves the ring empty now and then, where the reader looked at
		// the deadline all along: it cannot tell the fix from the bug.)
		f := newFakeServer(t, small, nil)
		cl, err := f.dial(nil)
		if err != nil {
			t.Fatal(err)
		}
		n := int(small[1]/rawRecordSize(respHdrSize)) - 2 // and room for the answer
		for i := range n {
			if err := f.writeResponse(orphanCorr, nil); err != nil {
				t.Fatalf("orphan %d: %v", i, err)
			}
		}
		if err := f.writeResponse(0, []byte("late")); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithDeadline(context.Background(), time.Unix(1, 0))
		defer cancel()
		got, err := cl.Call(ctx, msgEcho, []byte("late"))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("call past its deadline behind %d orphans: %q, %v; want context.DeadlineExceeded", n, got, err)
		}
	})
}

// TestHostileServerUnsolicitedResponse: every response that matches no
// call must be an abandoned call's; one more answers nothing the client
// sent, and the client ends the connection rather than read such
// responses for as long as the server writes them.
func TestHostileServerUnsolicitedResponse(t *testing.T) {
	f := newFakeServer(t, [3]uint64{4096, 4096, 4096}, nil)
	cl, err := f.dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.writeResponse(orphanCorr, []byte("nobody asked")); err != nil {
		t.Fatal(err)
	}
	// A call in flight makes the client read; the request is never
	// answered, so only the unsolicited response can end the call.
	_, err = cl.Call(testCtx(t), msgEcho, []byte("question"))
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("call behind an unsolicited response: %v, want ErrProtocol", err)
	}
	<-cl.Done()
	if !errors.Is(cl.Err(), ErrProtocol) {
		t.Errorf("connection ended with %v, want ErrProtocol", cl.Err())
	}
}
