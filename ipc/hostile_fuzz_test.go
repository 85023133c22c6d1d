//go:build linux

package ipc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
	"golang.org/x/sys/unix"
)

// FuzzHandshake feeds both handshake parsers arbitrary bytes: the
// server's parse of a hello (decodeHello and the whole serveHandshake,
// over a socket pair), and the client's parse of a reply and of the
// segment that comes with it (handshake and attachClient). Neither may
// panic or leak a descriptor, and each must decide as docs/ipc.md says:
// the server's reply status is predicted from the hello by the spec's
// rules, and the client accepts a reply only if nothing it checks was
// changed.
//
// It lives in package ipc because the parsers are unexported.
func FuzzHandshake(f *testing.F) {
	good := rawHello(1, testService, 0, [3]uint64{}, 0)
	f.Add(good, []byte{}, []byte{}, uint8(0))
	f.Add(rawHello(1, testService, 1, [3]uint64{1 << 62, 5000, 1}, 0), make([]byte, 96), []byte{0, 0, 1}, uint8(1))
	f.Add(rawHello(2, 9, 0, [3]uint64{}, 7), append(make([]byte, 24), 0xff), make([]byte, 100), uint8(2))
	f.Add(good[:20], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, []byte{}, uint8(3))

	srv, err := NewServer(&Config{MaxRingSize: 1 << 16})
	if err != nil {
		f.Fatal(err)
	}
	srv.Register(echoService())
	f.Cleanup(func() { srv.Close() })

	f.Fuzz(func(t *testing.T, hello, replyXor, segXor []byte, fdMode uint8) {
		fds0 := countFds(t)
		fuzzServerHandshake(t, srv, hello)
		fuzzClientHandshake(t, replyXor, segXor, fdMode)
		if n := countFds(t); n != fds0 {
			t.Fatalf("descriptors: %d before, %d after", fds0, n)
		}
	})
}

func countFds(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// fuzzSocketPair returns one end of a Unix stream socket pair as a
// *net.UnixConn and the other as a raw descriptor.
func fuzzSocketPair(t testing.TB) (*net.UnixConn, int) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "pair")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		t.Fatal(err)
	}
	return c.(*net.UnixConn), fds[1]
}

// helloVerdict is what docs/ipc.md §2 says the server answers to hello b
// with a server whose services are {testService}, default ring 64 KiB
// and max 64 KiB. One nuance the code adds to the spec's order: reserved
// bytes are judged only in a version-1 hello (a later version may use
// them), so a wrong version answers status 1 whatever they hold.
func helloVerdict(b []byte) (status uint32, sizes [3]uint64, features uint32) {
	le := binary.LittleEndian
	if le.Uint64(b) != rawHelloMagic {
		return 2, sizes, 0
	}
	if le.Uint16(b[8:]) != 1 {
		return 1, sizes, 0
	}
	if le.Uint32(b[12:])&FeatureTopic != 0 {
		// A subscription (§11): bytes 40..43 name the topic, 44..47
		// are reserved; no service, no ring sizes. This server has no
		// topics.
		if le.Uint32(b[44:]) != 0 || le.Uint16(b[10:]) != 0 ||
			le.Uint64(b[16:]) != 0 || le.Uint64(b[24:]) != 0 || le.Uint64(b[32:]) != 0 {
			return 2, sizes, 0
		}
		return 3, sizes, 0
	}
	if le.Uint64(b[40:]) != 0 {
		return 2, sizes, 0
	}
	if le.Uint16(b[10:]) != testService {
		return 3, sizes, 0
	}
	for i := range 3 {
		s := le.Uint64(b[16+8*i:])
		switch {
		case s == 0:
			sizes[i] = 1 << 16
		case s > 1<<62 && s&(s-1) != 0:
			return 2, sizes, 0 // cannot be rounded up to a power of two (1<<63 is one)
		default:
			r := uint64(1)
			for r < s {
				r <<= 1
			}
			sizes[i] = min(max(r, 4096), 1<<16)
		}
	}
	// The server grants what was asked among the bits it knows.
	return 0, sizes, le.Uint32(b[12:]) & knownFeatures
}

func fuzzServerHandshake(t *testing.T, srv *Server, hello []byte) {
	if h, err := decodeHello(hello); err != nil {
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("decodeHello: %v does not match ErrProtocol", err)
		}
	} else if len(hello) >= helloSize && h.version == Version {
		reserved := binary.LittleEndian.Uint64(hello[40:])
		if h.features&FeatureTopic != 0 {
			reserved = uint64(binary.LittleEndian.Uint32(hello[44:])) // 40..43: the topic
		}
		if reserved != 0 {
			t.Fatal("decodeHello accepted reserved bytes")
		}
	}

	if len(hello) > 4096 {
		hello = hello[:4096]
	}
	uc, peer := fuzzSocketPair(t)
	defer unix.Close(peer)
	if len(hello) > 0 {
		if _, err := unix.Write(peer, hello); err != nil {
			t.Fatal(err)
		}
	}
	unix.Shutdown(peer, unix.SHUT_WR) // a short hello ends here
	a := &admission{}
	c := srv.serveHandshake(uc, selfCred(), srv.log, a) // closes uc unless it returns a connection
	if c == nil {
		srv.release(a) // as admit's goroutine does
	} else {
		c.kill(ErrDisconnected)
		c.teardown()
	}
	// Everything the server sent is in the buffer by now.
	buf := make([]byte, 256)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := unix.Recvmsg(peer, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err == unix.EAGAIN {
		n, err = 0, nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var fds []int
	if oobn > 0 {
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for i := range msgs {
			got, _ := unix.ParseUnixRights(&msgs[i])
			fds = append(fds, got...)
		}
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if len(hello) < helloSize {
		if n != 0 || c != nil {
			t.Fatalf("a %d-byte hello got a reply of %d bytes", len(hello), n)
		}
		return
	}
	status, sizes, features := helloVerdict(hello)
	if n != replySize {
		t.Fatalf("reply of %d bytes, want %d (status %d)", n, replySize, status)
	}
	r, err := parseRawReply(buf[:n])
	if err != nil || r.version != 1 || r.status != status {
		t.Fatalf("reply %+v (%v), the spec says status %d", r, err, status)
	}
	if status != 0 {
		if len(fds) != 0 || c != nil || !bytes.Equal(buf[24:n], make([]byte, n-24)) {
			t.Fatalf("reject with %d descriptors, non-zero tail %x", len(fds), buf[24:n])
		}
		return
	}
	if len(fds) != 1 || c == nil {
		t.Fatalf("accepted with %d descriptors", len(fds))
	}
	if r.sizes != sizes || r.features != features || r.ctlOff != 0 {
		t.Fatalf("reply %+v, the spec says sizes %v, features %d", r, sizes, features)
	}
	off := uint64(128)
	for i := range 3 {
		if r.offs[i] != off {
			t.Fatalf("ring %d at %d, the spec says %d", i, r.offs[i], off)
		}
		off = (off + rawOffData + sizes[i] + 127) &^ 127
	}
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil {
		t.Fatal(err)
	}
	if r.payload < off || uint64(st.Size) != rawSegHeader+r.payload ||
		uint64(r.maxReq) != sizes[0]/2-16-8 || uint64(r.maxDisp) != sizes[2]/2-16 {
		t.Fatalf("reply %+v for a %d-byte memfd", r, st.Size)
	}
}

func fuzzClientHandshake(t *testing.T, replyXor, segXor []byte, fdMode uint8) {
	sizes := [3]uint64{4096, 8192, 4096}
	offs, total := layout(sizes, ringBytes)
	seg, err := shmseg.CreateMemfd("ringipc-fuzz", segmentGeometry(sizes, offs), int(total))
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	pay := seg.Payload()
	for i := range 3 {
		if err := ring.Init(pay[offs[i]:], ring.Geometry{DataSize: int(sizes[i])}); err != nil {
			t.Fatal(err)
		}
	}
	r := reply{version: Version, sizes: sizes, offs: offs, payload: uint64(len(pay)),
		maxReq: uint32(ring.MaxPayload(int(sizes[0])) - reqHdrSize), maxDisp: uint32(ring.MaxPayload(int(sizes[2])))}
	var rb [replySize]byte
	r.encode(rb[:])

	// What the client checks; the rest (reserved, detail) it may accept
	// changed. It asks only for the features every Dial asks for
	// (defaultFeatures), which change nothing in the segment, so
	// granting those is fine and any other is refused.
	changed := false
	for i, x := range replyXor[:min(len(replyXor), replySize)] {
		rb[i] ^= x
		if x != 0 && (i < 10 || (i >= 12 && i < 16) || i >= 24) {
			changed = true
		}
	}
	if binary.LittleEndian.Uint32(rb[16:])&^defaultFeatures != 0 {
		changed = true
	}
	// segXor: the segment header's 88 bytes, then the three ring metas.
	fd := int(seg.File().Fd())
	var hdr [88]byte
	if _, err := unix.Pread(fd, hdr[:], 0); err != nil {
		t.Fatal(err)
	}
	for i, x := range segXor[:min(len(segXor), 88+3*64)] {
		if x == 0 {
			continue
		}
		changed = true
		if i < 88 {
			hdr[i] ^= x
		} else {
			k := i - 88
			pay[offs[k/64]+uint64(k%64)] ^= x
		}
	}
	if _, err := unix.Pwrite(fd, hdr[:], 0); err != nil {
		t.Fatal(err)
	}

	var rights []int
	var pipe [2]int
	switch fdMode % 4 {
	case 0:
		rights = []int{fd}
	case 1:
		changed = true
	case 2:
		rights, changed = []int{fd, fd}, true
	case 3:
		if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(pipe[0])
		defer unix.Close(pipe[1])
		rights, changed = []int{pipe[0]}, true
	}

	uc, peer := fuzzSocketPair(t)
	defer unix.Close(peer)
	var oob []byte
	if len(rights) > 0 {
		oob = unix.UnixRights(rights...)
	}
	if err := unix.Sendmsg(peer, rb[:], oob, nil, 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang guard
	defer cancel()
	cl, err := handshake(ctx, uc, testService, [3]uint64{}, &ClientOptions{})
	if err != nil {
		uc.Close()
		if !changed {
			t.Fatalf("the client refused a valid reply: %v", err)
		}
		return
	}
	cl.Close()
	if changed {
		t.Fatalf("the client accepted a reply or segment it should have checked (reply xor %x, segment xor %x, fd mode %d)",
			replyXor, segXor, fdMode%4)
	}
}
