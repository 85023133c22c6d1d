//go:build linux

package interop

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
	"golang.org/x/sys/unix"
)

// fakeServer is a server written against the spec with the ring and
// shmseg packages, which misbehaves on purpose: it tests the C client's
// side of the trust boundary (docs/ipc.md §3.2, §5, §6, §9.3), which an
// honest Go server never exercises.
type fakeServer struct {
	t      *testing.T
	addr   string
	l      *net.UnixListener
	sizes  [3]uint64
	grant  func(r []byte)                              // rewrites the reply before it is sent
	onReq  func(f *fakeConn, corr uint64, body []byte) // answers one request
	served chan error
}

// fakeConn is one accepted connection of a fakeServer.
type fakeConn struct {
	uc    *net.UnixConn
	fd    int
	seg   *shmseg.Segment
	offs  [3]uint64
	req   *ring.Consumer
	resp  *ring.Producer
	disp  *ring.Producer
	rings [3][]byte
}

func startFake(t *testing.T, onReq func(f *fakeConn, corr uint64, body []byte)) *fakeServer {
	s := &fakeServer{t: t, addr: abstractAddr(), sizes: [3]uint64{4096, 4096, 4096}, onReq: onReq, served: make(chan error, 1)}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.addr, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	s.l = l
	return s
}

// serve accepts one connection and runs it until the client leaves.
func (s *fakeServer) serve() {
	go func() { s.served <- s.serveOne() }()
	s.t.Cleanup(func() {
		s.l.Close()
		if err := <-s.served; err != nil {
			s.t.Errorf("fake server: %v", err)
		}
	})
}

const fakeRingBytes = 640 // a single-producer ring's control area

func (s *fakeServer) serveOne() error {
	uc, err := s.l.AcceptUnix()
	if err != nil {
		return err
	}
	defer uc.Close()
	hello := make([]byte, 48)
	if _, err := uc.Read(hello); err != nil {
		return err
	}
	var offs [3]uint64
	off := uint64(128)
	for i, sz := range s.sizes {
		offs[i] = off
		off = (off + fakeRingBytes + sz + 127) &^ 127
	}
	total := (off + 4095) &^ 4095
	var params [6]uint64
	copy(params[:3], s.sizes[:])
	copy(params[3:], offs[:])
	seg, err := shmseg.CreateMemfd("fake", shmseg.Geometry{Kind: 2, Params: params}, int(total))
	if err != nil {
		return err
	}
	defer seg.Close()
	pay := seg.Payload()
	f := &fakeConn{uc: uc, seg: seg, offs: offs}
	for i := range 3 {
		f.rings[i] = pay[offs[i] : offs[i]+fakeRingBytes+s.sizes[i]]
		if err := ring.Init(f.rings[i], ring.Geometry{DataSize: int(s.sizes[i])}); err != nil {
			return err
		}
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	rc.Control(func(fd uintptr) { f.fd = int(fd) }) //nolint:errcheck
	opts := &ring.Options{Waker: f}
	if f.req, err = ring.NewConsumer(f.rings[0], opts); err != nil {
		return err
	}
	if f.resp, err = ring.NewProducer(f.rings[1], opts); err != nil {
		return err
	}
	if f.disp, err = ring.NewProducer(f.rings[2], opts); err != nil {
		return err
	}
	r := make([]byte, 96)
	le := binary.LittleEndian
	le.PutUint64(r, 0x594c505243504952)
	le.PutUint16(r[8:], 1)
	for i := range 3 {
		le.PutUint64(r[24+8*i:], s.sizes[i])
		le.PutUint64(r[48+8*i:], offs[i])
	}
	le.PutUint64(r[80:], total)
	le.PutUint32(r[88:], uint32(s.sizes[0]/2-24))
	le.PutUint32(r[92:], uint32(s.sizes[2]/2-16))
	if s.grant != nil {
		s.grant(r)
	}
	if _, _, err := uc.WriteMsgUnix(r, unix.UnixRights(int(seg.File().Fd())), nil); err != nil {
		return err
	}
	// Serve requests: arm the request ring's consumer word, look, and
	// sleep on the socket for the client's token or its end.
	buf := make([]byte, 64)
	for {
		rec, err := f.req.TryPeek()
		if err == ring.ErrEmpty {
			atomic.SwapUint32(f.word(0, 0), 1) // an exchange: see design.md 2.6
			if rec, err = f.req.TryPeek(); err == ring.ErrEmpty {
				uc.SetReadDeadline(time.Now().Add(hangGuard))
				if _, err := uc.Read(buf); err != nil {
					return nil // the client has gone: the test's driver says how
				}
				continue
			}
		}
		if errors.Is(err, ring.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		corr := le.Uint64(rec.Data)
		body := append([]byte(nil), rec.Data[8:]...)
		f.req.Release()
		s.onReq(f, corr, body)
	}
}

// word returns wait word k (0 consumer, 1 producer) of ring i.
func (f *fakeConn) word(i, k int) *uint32 {
	return (*uint32)(unsafe.Pointer(&f.rings[i][384+128*k]))
}

// Wake sends the token of the client's word, as ipc §6 says (the ring
// calls it after swapping a set word to 0).
func (f *fakeConn) Wake(w *uint32) {
	for i := range 3 {
		for k := range 2 {
			if f.word(i, k) == w {
				unix.Write(f.fd, []byte{byte(i<<4 | (k + 1))}) //nolint:errcheck // the client may be gone
			}
		}
	}
}

// Sleep is never used: the fake server does not block in ring calls.
func (f *fakeConn) Sleep(context.Context, *uint32, time.Duration) error { return nil }

// respond writes a response record of status with corr and body.
func (f *fakeConn) respond(status uint32, corr uint64, body []byte) {
	b := make([]byte, 16+len(body))
	binary.LittleEndian.PutUint64(b, corr)
	copy(b[16:], body)
	if err := f.resp.TryWrite(status, b); err != nil {
		panic(err) // the test's rings have room for every answer it writes
	}
}

// TestHostileServer runs the C client against a server that breaks the
// protocol in one way each: what the spec says the client does is what
// the driver must see.
func TestHostileServer(t *testing.T) {
	driver := compile(t, t.TempDir(), "driver", append(lib, "testdata/driver.c")...)
	echo := func(f *fakeConn, corr uint64, body []byte) { f.respond(0, corr, body) }
	cases := []struct {
		name   string
		grant  func(r []byte)
		onReq  func(f *fakeConn, corr uint64, body []byte)
		args   []string
		expect string // the driver's expect= list
	}{
		{name: "honest", onReq: echo, expect: "ok,ok"},
		{name: "response for no call is released unread", onReq: func(f *fakeConn, corr uint64, body []byte) {
			f.respond(0, corr+1000, []byte("stray"))
			echo(f, corr, body)
		}, expect: "ok,ok"},
		{name: "unknown status fails that call only", onReq: func(f *fakeConn, corr uint64, body []byte) {
			status := uint32(0)
			if corr == 1 {
				status = 9
			}
			f.respond(status, corr, body)
		}, expect: "proto,ok"},
		{name: "response shorter than its header", onReq: func(f *fakeConn, corr uint64, body []byte) {
			f.resp.TryWrite(0, []byte{1, 2, 3}) //nolint:errcheck
		}, expect: "proto,proto"},
		{name: "tail past head plus size", onReq: func(f *fakeConn, corr uint64, body []byte) {
			tail := (*uint64)(unsafe.Pointer(&f.rings[1][128]))
			atomic.StoreUint64(tail, atomic.LoadUint64(tail)+4096+16)
			f.Wake(f.word(1, 0))
		}, expect: "proto,proto"},
		{name: "token the server may not send", onReq: func(f *fakeConn, corr uint64, body []byte) {
			unix.Write(f.fd, []byte{0x01}) //nolint:errcheck
		}, args: []string{"spin=-1"}, expect: "proto"},
		{name: "dispatch type with high bits", onReq: func(f *fakeConn, corr uint64, body []byte) {
			f.disp.TryWrite(1<<16|3, []byte("bad")) //nolint:errcheck
			echo(f, corr, body)
		}, args: []string{"recv=1"}, expect: "ok"},
		{name: "granted a feature not asked for", grant: func(r []byte) {
			binary.LittleEndian.PutUint32(r[16:], 1)
		}, onReq: echo, expect: "connect=proto"},
		{name: "granted more than asked", grant: func(r []byte) {
			binary.LittleEndian.PutUint64(r[24:], 8192)
		}, onReq: echo, args: []string{"req=4096"}, expect: "connect=toolarge"},
		{name: "wrong max_req", grant: func(r []byte) {
			binary.LittleEndian.PutUint32(r[88:], 5000)
		}, onReq: echo, expect: "connect=proto"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			s := startFake(t, tc.onReq)
			s.grant = tc.grant
			s.serve()
			args := append([]string{s.addr, "expect", "expect=" + tc.expect}, tc.args...)
			start(t, driver, args).finish()
		})
	}
}
