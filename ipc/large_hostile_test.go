//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// rawBodySegment makes a memfd of size bytes for a hostile peer's body
// token, sealed with seals (0: none).
func rawBodySegment(t *testing.T, size int64, seals int) int {
	t.Helper()
	fd, err := unix.MemfdCreate("ringipc-body", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	if seals != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

// bodyMapped sums the sizes of this process's body segment mappings.
func bodyMapped(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "memfd:ringipc-body") {
			continue
		}
		var lo, hi uint64
		if _, err := fmt.Sscanf(l, "%x-%x", &lo, &hi); err == nil {
			total += int(hi - lo)
		}
	}
	return total
}

const sealsOK = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// largeRequest commits a large-request descriptor {n, gen, offset 0} as
// corr and wakes the server.
func (p *rawPeer) largeRequest(id uint16, corr uint64, n uint64, gen uint32) {
	p.largeRequestAt(id, corr, n, gen, 0)
}

// largeRequestAt is largeRequest with the body at page pages.
func (p *rawPeer) largeRequestAt(id uint16, corr uint64, n uint64, gen, pages uint32) {
	pl := make([]byte, 8+largeDescSize)
	binary.LittleEndian.PutUint64(pl, corr)
	binary.LittleEndian.PutUint64(pl[8:], n)
	binary.LittleEndian.PutUint32(pl[16:], gen)
	binary.LittleEndian.PutUint32(pl[20:], pages)
	next, _ := p.writeRecord(uint32(id)|typeLarge, pl, 0)
	atomic.StoreUint64(p.rings[0].tail(), next)
	p.wake(0, rawOffConsWait, 0x01)
}

// A hostile client of large bodies can make the server map no more than
// Config.MaxMessage and hold nothing past the connection's life: a
// descriptor whose segment never comes holds only that connection (the
// others are served) until it ends; a huge segment is mapped only up to
// the limit and a huge length is refused with status 3; every malformed
// segment, token or descriptor ends the connection with ErrProtocol; and
// no descriptor or mapping outlives the connection.
func TestLargeHostileClient(t *testing.T) {
	const maxMsg = 4 << 20
	h := newHostileHarness(t, &Config{MaxMessage: maxMsg})
	connect := func(features uint32) *rawPeer {
		p := rawConnect(t, h.addr)
		p.handshake(rawHello(1, testService, features, [3]uint64{}, 0))
		return p
	}
	deadline := func() time.Time { return time.Now().Add(rawIOTimeout) }

	t.Run("descriptor whose segment never comes", func(t *testing.T) {
		p := connect(FeatureLarge)
		p.largeRequest(msgEcho, 1, 1<<40, 1)
		// The server waits for the segment, holding nothing but the
		// connection; everyone else is served meanwhile.
		h.checkpoint()
		h.checkpoint()
		h.expectKept(p)
		h.checkResources()
	})
	t.Run("huge segment and huge length", func(t *testing.T) {
		p := connect(FeatureLarge)
		fd := rawBodySegment(t, 1<<40, sealsOK)
		if err := p.send([]byte{tokReqBody}, fd); err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		p.largeRequest(msgEcho, 2, 1<<40, 1)
		r, err := p.readResponse(deadline())
		if err != nil || r.status != respTooLarge || r.corr != 2 || uint32(r.code) != 0xffffffff {
			t.Fatalf("response %+v (%v), want status 3 for corr 2 with the size saturated", r, err)
		}
		// The server mapped at most MaxMessage of it.
		if got := bodyMapped(t); got > maxMsg {
			t.Errorf("%d bytes of body segments mapped, MaxMessage %d", got, maxMsg)
		}
		// A body within the limit then goes through the same segment
		// (and is echoed as a large response: a descriptor).
		p.largeRequest(msgEcho, 3, 100000, 1)
		r, err = p.readResponse(deadline())
		if n, _, _ := getDesc(r.body); err != nil || r.status != typeLarge|respOK || r.corr != 3 || n != 100000 {
			t.Fatalf("response %+v (%v), want a large response of 100000 bytes", r, err)
		}
		h.expectKept(p)
		h.checkResources()
	})

	drops := []struct {
		name     string
		features uint32
		act      func(t *testing.T, p *rawPeer)
	}{
		{"unsealed segment", FeatureLarge, func(t *testing.T, p *rawPeer) {
			fd := rawBodySegment(t, 1<<20, 0)
			defer unix.Close(fd)
			p.send([]byte{tokReqBody}, fd)
			p.largeRequest(msgEcho, 1, 100000, 1)
		}},
		{"not a memfd", FeatureLarge, func(t *testing.T, p *rawPeer) {
			var pfd [2]int
			if err := unix.Pipe2(pfd[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(pfd[0])
			defer unix.Close(pfd[1])
			p.send([]byte{tokReqBody}, pfd[0])
			p.largeRequest(msgEcho, 1, 100000, 1)
		}},
		{"body token without a descriptor", FeatureLarge, func(t *testing.T, p *rawPeer) {
			p.send([]byte{tokReqBody})
		}},
		{"two descriptors with one token", FeatureLarge, func(t *testing.T, p *rawPeer) {
			a, b := rawBodySegment(t, 1<<20, sealsOK), rawBodySegment(t, 1<<20, sealsOK)
			defer unix.Close(a)
			defer unix.Close(b)
			p.send([]byte{tokReqBody}, a, b)
		}},
		{"a server's body token", FeatureLarge, func(t *testing.T, p *rawPeer) {
			fd := rawBodySegment(t, 1<<20, sealsOK)
			defer unix.Close(fd)
			p.send([]byte{tokRespBody}, fd)
		}},
		{"body token without FeatureLarge", 0, func(t *testing.T, p *rawPeer) {
			fd := rawBodySegment(t, 1<<20, sealsOK)
			defer unix.Close(fd)
			p.send([]byte{tokReqBody}, fd)
		}},
		{"large bit without FeatureLarge", 0, func(t *testing.T, p *rawPeer) {
			p.largeRequest(msgEcho, 1, 100000, 1)
		}},
		{"length beyond the segment", FeatureLarge, func(t *testing.T, p *rawPeer) {
			fd := rawBodySegment(t, 1<<20, sealsOK)
			defer unix.Close(fd)
			p.send([]byte{tokReqBody}, fd)
			p.largeRequest(msgEcho, 1, 2<<20, 1)
		}},
		{"offset beyond the segment", FeatureLarge, func(t *testing.T, p *rawPeer) {
			fd := rawBodySegment(t, 1<<20, sealsOK)
			defer unix.Close(fd)
			p.send([]byte{tokReqBody}, fd)
			p.largeRequestAt(msgEcho, 1, 100000, 1, 0xffffffff)
		}},
		{"body reaching past the segment's end", FeatureLarge, func(t *testing.T, p *rawPeer) {
			fd := rawBodySegment(t, 1<<20, sealsOK)
			defer unix.Close(fd)
			p.send([]byte{tokReqBody}, fd)
			p.largeRequestAt(msgEcho, 1, 100000, 1, 255)
		}},
		{"generation skipped", FeatureLarge, func(t *testing.T, p *rawPeer) {
			p.largeRequest(msgEcho, 1, 100000, 5)
		}},
	}
	for _, tc := range drops {
		t.Run(tc.name, func(t *testing.T) {
			p := connect(tc.features)
			errs0 := h.srv.Stats().Errors
			tc.act(t, p)
			h.expectDrop(errs0, ErrProtocol)
			p.close()
			h.checkResources()
		})
	}
}

// fakeLargeServer is a fake server that granted FeatureLarge with a
// MaxMessage of 64 MiB, and writeLarge its large response descriptor.
// sendSegment sends body token tok with a new segment of size bytes and
// the given seals, as a server announcing its next body segment does.
func (f *fakeServer) sendSegment(t *testing.T, tok byte, size int64, seals int) {
	t.Helper()
	fd := rawBodySegment(t, size, seals)
	defer unix.Close(fd)
	if _, _, err := f.conn.WriteMsgUnix([]byte{tok}, unix.UnixRights(fd), nil); err != nil {
		t.Fatal(err)
	}
}

func fakeLargeServer(t *testing.T) *fakeServer {
	t.Helper()
	f := newFakeServer(t, [3]uint64{4096, 4096, 4096}, func(r *reply) { r.features = FeatureLarge })
	binary.LittleEndian.PutUint64(f.ctl[ctlMaxMessage:], 64<<20)
	return f
}

func (f *fakeServer) writeLargeResponse(corr, n uint64, gen uint32) error {
	pl := make([]byte, respHdrSize+largeDescSize)
	binary.LittleEndian.PutUint64(pl, corr)
	binary.LittleEndian.PutUint64(pl[respHdrSize:], n)
	binary.LittleEndian.PutUint32(pl[respHdrSize+8:], gen)
	return f.resp.TryWrite(respOK|typeLarge, pl)
}

// A hostile server of large bodies: a response descriptor whose segment
// never comes holds the call only until its context ends, and Close
// leaves nothing; a 1 TiB segment and length fail that call with
// ErrTooLarge, mapping at most the client's MaxMessage, and the
// connection goes on; an unsealed segment ends it with ErrProtocol.
func TestHostileServerLarge(t *testing.T) {
	t.Run("segment never comes", func(t *testing.T) {
		fds0, _ := fakeResources(t)
		f := fakeLargeServer(t)
		cl, err := f.dial(&ClientOptions{MaxMessage: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.writeLargeResponse(0, 1<<40, 1); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := cl.Call(ctx, msgEcho, []byte("x"))
			done <- err
		}()
		cancel() // whenever the call is at it: waiting for the segment, or before
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("call: %v, want context.Canceled", err)
		}
		if err := cl.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if fds, _ := fakeResources(t); fds > fds0+2 { // the fake server's listener and connection
			t.Errorf("descriptors %d, baseline %d", fds, fds0)
		}
	})
	t.Run("huge segment, then a bad one", func(t *testing.T) {
		f := fakeLargeServer(t)
		cl, err := f.dial(&ClientOptions{MaxMessage: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		f.sendSegment(t, tokRespBody, 1<<40, sealsOK)
		if err := f.writeLargeResponse(0, 1<<40, 1); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Call(testCtx(t), msgEcho, []byte("x")); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("a 1 TiB response: %v, want ErrTooLarge", err)
		}
		if got := bodyMapped(t); got > 4<<20 {
			t.Errorf("%d bytes of body segments mapped, MaxMessage 4 MiB", got)
		}
		// The next call's answer, once its request is in: a 3 MiB body
		// in the same segment.
		type result struct {
			b   []byte
			err error
		}
		res := make(chan result, 1)
		go func() {
			b, err := cl.Call(testCtx(t), msgEcho, []byte("y"))
			res <- result{b, err}
		}()
		for {
			rec, err := f.reqC.Peek(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			corr := binary.LittleEndian.Uint64(rec.Data)
			again := string(rec.Data[reqHdrSize:]) != "y"
			f.reqC.Release()
			if again {
				continue // the first call's request
			}
			if err := f.writeLargeResponse(corr, 3<<20, 1); err != nil {
				t.Fatal(err)
			}
			break
		}
		if r := <-res; r.err != nil || len(r.b) != 3<<20 {
			t.Fatalf("a 3 MiB response after it: %d bytes, %v", len(r.b), r.err)
		}
		f.sendSegment(t, tokRespBody, 1<<20, 0) // unsealed
		if err := f.writeLargeResponse(2, 100, 2); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Call(testCtx(t), msgEcho, []byte("x")); !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrDisconnected) {
			t.Fatalf("a response in an unsealed segment: %v, want ErrProtocol", err)
		}
		<-cl.Done()
		if !errors.Is(cl.Err(), ErrProtocol) {
			t.Errorf("connection ended with %v, want ErrProtocol", cl.Err())
		}
	})
}

// A dispatch message above ClientOptions.MaxMessage is not given to
// OnDispatch, is counted, and the messages after it are delivered.
func TestDispatchTooLargeCounted(t *testing.T) {
	f := fakeLargeServer(t)
	got := make(chan string, 4)
	cl, err := f.dial(&ClientOptions{MaxMessage: 4 << 20, OnDispatch: func(id uint16, body []byte) {
		got <- string(body)
	}})
	if err != nil {
		t.Fatal(err)
	}
	f.sendSegment(t, tokDispBody, 8<<20, sealsOK)
	desc := make([]byte, largeDescSize)
	binary.LittleEndian.PutUint64(desc, 5<<20)
	binary.LittleEndian.PutUint32(desc[8:], 1)
	if err := f.disp.TryWrite(msgEcho|typeLarge, desc); err != nil {
		t.Fatal(err)
	}
	if err := f.disp.TryWrite(msgEcho, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "after" {
		t.Fatalf("OnDispatch got %d bytes first, want the message after the large one", len(s))
	}
	if st := cl.Stats(); st.DispatchTooLarge != 1 {
		t.Fatalf("stats %+v, want 1 too large", st)
	}
}
