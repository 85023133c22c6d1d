//go:build linux

package ipc

// A client that speaks the protocol of docs/ipc.md from the bytes up,
// with its own socket calls, its own SCM_RIGHTS parsing, its own mmap of
// the memfd, and its own ring records written straight into the segment.
// It shares no code with the package's client, so that the hostile-peer
// tests can break any rule of the protocol, and so that the spec's
// numbers are checked a second time against the server's behaviour. The
// numbers below are the spec's, written out, not the package's constants.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"
)

const (
	rawHelloMagic = 0x4f4c454843504952 // "RIPCHELO"
	rawReplyMagic = 0x594c505243504952 // "RIPCRPLY"
	rawSegHeader  = 4096               // docs/segment.md: payload starts here

	// Ring layout (docs/design.md): control words, then the data area.
	rawOffSeed     = 32
	rawOffFlags    = 12
	rawOffClosed   = 64
	rawOffTail     = 128
	rawOffHead     = 256
	rawOffConsWait = 384
	rawOffProdWait = 512
	rawOffData     = 640

	rawCommitted = uint64(0xA) << 60
	rawPadFlag   = uint64(1) << 56

	// rawIOTimeout only turns a hang of a socket call into an error.
	rawIOTimeout = 30 * time.Second
)

// soak reports whether RINGIPC_SOAK=1 asks for the long runs of the
// hostile, crash and load suites (docs/testing.md).
func soak() bool { return os.Getenv("RINGIPC_SOAK") == "1" }

// rawHello builds a hello as §2 lays it out.
func rawHello(version, service uint16, features uint32, sizes [3]uint64, reserved uint64) []byte {
	b := make([]byte, 48)
	le := binary.LittleEndian
	le.PutUint64(b[0:], rawHelloMagic)
	le.PutUint16(b[8:], version)
	le.PutUint16(b[10:], service)
	le.PutUint32(b[12:], features)
	le.PutUint64(b[16:], sizes[0])
	le.PutUint64(b[24:], sizes[1])
	le.PutUint64(b[32:], sizes[2])
	le.PutUint64(b[40:], reserved)
	return b
}

// rawReply is §3 decoded by hand.
type rawReply struct {
	status, features, detail uint32
	version                  uint16
	sizes, offs              [3]uint64
	ctlOff, payload          uint64
	maxReq, maxDisp          uint32
}

func parseRawReply(b []byte) (rawReply, error) {
	le := binary.LittleEndian
	if len(b) != 96 || le.Uint64(b) != rawReplyMagic {
		return rawReply{}, fmt.Errorf("bad reply %x", b)
	}
	r := rawReply{
		version: le.Uint16(b[8:]), status: le.Uint32(b[12:]), features: le.Uint32(b[16:]),
		detail: le.Uint32(b[20:]), ctlOff: le.Uint64(b[72:]), payload: le.Uint64(b[80:]),
		maxReq: le.Uint32(b[88:]), maxDisp: le.Uint32(b[92:]),
	}
	for i := range 3 {
		r.sizes[i] = le.Uint64(b[24+8*i:])
		r.offs[i] = le.Uint64(b[48+8*i:])
	}
	return r, nil
}

// rawRing is a view of one ring of the segment.
type rawRing struct {
	mem        []byte // control words and data area
	data       []byte
	size       uint64
	seed       uint64
	payloadSum bool
}

func (r *rawRing) u64(off int) *uint64 { return (*uint64)(unsafe.Pointer(&r.mem[off])) }
func (r *rawRing) u32(off int) *uint32 { return (*uint32)(unsafe.Pointer(&r.mem[off])) }
func (r *rawRing) tail() *uint64       { return r.u64(rawOffTail) }
func (r *rawRing) head() *uint64       { return r.u64(rawOffHead) }

// sum is the record checksum of docs/design.md: the low 32 bits of
// xxhash64 over seed^pos, the word, the type and the folded payload hash.
func (r *rawRing) sum(pos, word uint64, typ uint32, payload []byte) uint32 {
	var ph uint64
	if r.payloadSum {
		ph = xxhash.Sum64(payload)
	}
	var b [24]byte
	le := binary.LittleEndian
	le.PutUint64(b[0:], r.seed^pos)
	le.PutUint64(b[8:], word)
	le.PutUint32(b[16:], typ)
	le.PutUint32(b[20:], uint32(ph)^uint32(ph>>32))
	return uint32(xxhash.Sum64(b[:]))
}

func rawRecordSize(n uint64) uint64 { return (16 + n + 15) &^ 15 }

// rawPeer is one raw connection.
type rawPeer struct {
	t     testing.TB
	fd    int // the socket; -1 once closed
	memfd int // -1 until received, and once closed
	seg   []byte
	reply rawReply
	rings [3]rawRing // request, response, dispatch
	ctl   []byte
}

// rawConnect opens a socket to addr ("@name" is abstract).
func rawConnect(t testing.TB, addr string) *rawPeer {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval(rawIOTimeout.Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		t.Fatalf("connect %s: %v", addr, err)
	}
	p := &rawPeer{t: t, fd: fd, memfd: -1}
	t.Cleanup(p.close)
	return p
}

func (p *rawPeer) send(b []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for len(b) > 0 || oob != nil {
		n, err := unix.SendmsgN(p.fd, b, oob, nil, unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b, oob = b[n:], nil
	}
	return nil
}

// recvReply reads the 96-byte reply and whatever descriptors came with it.
func (p *rawPeer) recvReply() ([]byte, []int, error) {
	buf := make([]byte, 96)
	oob := make([]byte, unix.CmsgSpace(4*8))
	var fds []int
	got := 0
	for got < len(buf) {
		n, oobn, _, _, err := unix.Recvmsg(p.fd, buf[got:], oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if oobn > 0 {
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for i := range msgs {
				if r, err := unix.ParseUnixRights(&msgs[i]); err == nil {
					fds = append(fds, r...)
				}
			}
		}
		if err != nil {
			return buf[:got], fds, err
		}
		if n == 0 {
			return buf[:got], fds, errEOF
		}
		got += n
	}
	return buf, fds, nil
}

var errEOF = errors.New("end of file")

// handshake sends hello, expects status OK and maps the segment.
func (p *rawPeer) handshake(hello []byte) {
	p.t.Helper()
	if err := p.send(hello); err != nil {
		p.t.Fatal(err)
	}
	b, fds, err := p.recvReply()
	if err != nil {
		p.t.Fatalf("reply: %v", err)
	}
	r, err := parseRawReply(b)
	if err != nil || r.status != 0 || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		p.t.Fatalf("handshake: status %d, %d descriptors, %v", r.status, len(fds), err)
	}
	p.reply, p.memfd = r, fds[0]
	var st unix.Stat_t
	if err := unix.Fstat(p.memfd, &st); err != nil {
		p.t.Fatal(err)
	}
	seg, err := unix.Mmap(p.memfd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		p.t.Fatal(err)
	}
	p.seg = seg
	pay := seg[rawSegHeader:]
	p.ctl = pay[:128]
	for i := range 3 {
		off, size := r.offs[i], r.sizes[i]
		m := pay[off : off+rawOffData+size]
		le := binary.LittleEndian
		p.rings[i] = rawRing{mem: m, data: m[rawOffData:], size: size,
			seed: le.Uint64(m[rawOffSeed:]), payloadSum: le.Uint32(m[rawOffFlags:])&1 != 0}
	}
}

// dial connects and handshakes with the default ring sizes.
func rawDialPeer(t testing.TB, addr string, service uint16, sizes [3]uint64) *rawPeer {
	t.Helper()
	p := rawConnect(t, addr)
	p.handshake(rawHello(1, service, 0, sizes, 0))
	return p
}

func (p *rawPeer) unmap() {
	if p.seg != nil {
		unix.Munmap(p.seg)
		p.seg = nil
	}
}

func (p *rawPeer) closeMemfd() {
	if p.memfd >= 0 {
		unix.Close(p.memfd)
		p.memfd = -1
	}
}

func (p *rawPeer) closeSocket() {
	if p.fd >= 0 {
		unix.Close(p.fd)
		p.fd = -1
	}
}

// close releases everything; the mapping goes last but one, after no
// goroutine of the test touches it any more (callers make sure).
func (p *rawPeer) close() {
	p.closeSocket()
	p.unmap()
	p.closeMemfd()
}

// wake sends the token of a word the server sleeps on if the server
// announced it, as §6 asks of a publisher.
func (p *rawPeer) wake(ring int, word int, tok byte) {
	if atomic.SwapUint32(p.rings[ring].u32(word), 0) != 0 {
		p.send([]byte{tok}) //nolint:errcheck // the server may be gone
	}
}

// writeRecord writes one record at the request ring's tail without
// publishing it, padding first if it would cross the end, and returns
// the position after it and the record's offset in the data area.
// word overrides the computed header word when non-zero.
func (p *rawPeer) writeRecord(typ uint32, payload []byte, word uint64) (next, off uint64) {
	r := &p.rings[0]
	pos := atomic.LoadUint64(r.tail())
	le := binary.LittleEndian
	n := uint64(len(payload))
	rs := rawRecordSize(n)
	if o := pos & (r.size - 1); o+rs > r.size {
		pw := rawCommitted | rawPadFlag | (r.size - o - 16)
		le.PutUint32(r.data[o+8:], 0)
		le.PutUint32(r.data[o+12:], r.sum(pos, pw, 0, nil))
		le.PutUint64(r.data[o:], pw)
		pos += r.size - o
	}
	off = pos & (r.size - 1)
	copy(r.data[off+16:], payload)
	if word == 0 {
		word = rawCommitted | n
	}
	le.PutUint32(r.data[off+8:], typ)
	le.PutUint32(r.data[off+12:], r.sum(pos, word, typ, payload))
	le.PutUint64(r.data[off:], word)
	return pos + rs, off
}

// waitRoom waits until the request ring has room for a record of n
// payload bytes (plus a worst-case padding), or the deadline passes.
func (p *rawPeer) waitRoom(n int, deadline time.Time) error {
	r := &p.rings[0]
	need := 2 * rawRecordSize(uint64(n))
	for {
		t, h := atomic.LoadUint64(r.tail()), atomic.LoadUint64(r.head())
		if t-h+need <= r.size {
			return nil
		}
		if atomic.LoadUint32(r.u32(rawOffClosed)) != 0 {
			return errEOF
		}
		if err := p.sleep(r, rawOffProdWait, func() bool {
			return atomic.LoadUint64(r.tail())-atomic.LoadUint64(r.head())+need <= r.size
		}, deadline); err != nil {
			return err
		}
	}
}

// request commits one well-formed request (corr, then body) and wakes
// the server.
func (p *rawPeer) request(id uint16, corr uint64, body []byte) {
	pl := make([]byte, 8+len(body))
	binary.LittleEndian.PutUint64(pl, corr)
	copy(pl[8:], body)
	next, _ := p.writeRecord(uint32(id), pl, 0)
	atomic.StoreUint64(p.rings[0].tail(), next)
	p.wake(0, rawOffConsWait, 0x01)
}

// sleep announces on a word of ring r, re-checks ready, and waits for
// the socket to become readable (any token will do: tokens may be
// spurious), until deadline. It drains what tokens arrived.
func (p *rawPeer) sleep(r *rawRing, word int, ready func() bool, deadline time.Time) error {
	atomic.StoreUint32(r.u32(word), 1)
	if ready() {
		return nil
	}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("raw peer: %w", errRawTimeout)
		}
		// The timeout only bounds the wait; a token is the signal.
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(min(left, 100*time.Millisecond)/time.Millisecond)+1)
		if err != nil && err != unix.EINTR {
			return err
		}
		if n > 0 {
			var buf [256]byte
			m, _, err := unix.Recvfrom(p.fd, buf[:], unix.MSG_DONTWAIT)
			if m == 0 && err == nil {
				return errEOF
			}
			if err != nil && err != unix.EAGAIN && err != unix.EINTR {
				return err
			}
			return nil
		}
		if ready() {
			return nil
		}
	}
}

var errRawTimeout = errors.New("timed out")

// rawResponse is one response record as §5.2 lays it out.
type rawResponse struct {
	status uint32
	corr   uint64
	code   int32
	body   []byte
}

// readResponse waits for and consumes the next response record.
func (p *rawPeer) readResponse(deadline time.Time) (rawResponse, error) {
	r := &p.rings[1]
	le := binary.LittleEndian
	for {
		h := atomic.LoadUint64(r.head())
		t := atomic.LoadUint64(r.tail())
		if t == h {
			if atomic.LoadUint32(r.u32(rawOffClosed)) != 0 {
				return rawResponse{}, errEOF
			}
			if err := p.sleep(r, rawOffConsWait, func() bool {
				return atomic.LoadUint64(r.tail()) != h || atomic.LoadUint32(r.u32(rawOffClosed)) != 0
			}, deadline); err != nil {
				return rawResponse{}, err
			}
			continue
		}
		if t-h > r.size {
			return rawResponse{}, fmt.Errorf("response ring tail %d, head %d", t, h)
		}
		off := h & (r.size - 1)
		w := atomic.LoadUint64((*uint64)(unsafe.Pointer(&r.data[off])))
		n := w & 0xFFFFFFFF
		if w>>60 != 0xA || (w&rawPadFlag == 0 && (n < 16 || off+16+n > r.size)) {
			return rawResponse{}, fmt.Errorf("response record word %#x at %d", w, h)
		}
		typ, sum := le.Uint32(r.data[off+8:]), le.Uint32(r.data[off+12:])
		if w&rawPadFlag != 0 {
			if off+16+n != r.size || r.sum(h, w, typ, nil) != sum {
				return rawResponse{}, fmt.Errorf("bad padding %#x at %d", w, h)
			}
			atomic.StoreUint64(r.head(), h+16+n)
			continue
		}
		pl := r.data[off+16 : off+16+n]
		if r.sum(h, w, typ, pl) != sum {
			return rawResponse{}, fmt.Errorf("response checksum at %d", h)
		}
		resp := rawResponse{status: typ, corr: le.Uint64(pl), code: int32(le.Uint32(pl[8:])),
			body: append([]byte(nil), pl[16:]...)}
		atomic.StoreUint64(r.head(), h+rawRecordSize(n))
		p.wake(1, rawOffProdWait, 0x12)
		return resp, nil
	}
}

// call is a request and its response, with a deadline as hang guard.
func (p *rawPeer) call(id uint16, corr uint64, body []byte) (rawResponse, error) {
	deadline := time.Now().Add(rawIOTimeout)
	if err := p.waitRoom(8+len(body), deadline); err != nil {
		return rawResponse{}, err
	}
	p.request(id, corr, body)
	return p.readResponse(deadline)
}

// waitEOF waits until the server closes the socket, or deadline.
func (p *rawPeer) waitEOF(deadline time.Time) error {
	var buf [256]byte
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return errRawTimeout
		}
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(left/time.Millisecond)+1); err != nil && err != unix.EINTR {
			return err
		}
		n, _, err := unix.Recvfrom(p.fd, buf[:], unix.MSG_DONTWAIT)
		if n == 0 && err == nil || err == unix.ECONNRESET {
			return nil
		}
		if err != nil && err != unix.EAGAIN && err != unix.EINTR {
			return err
		}
	}
}
