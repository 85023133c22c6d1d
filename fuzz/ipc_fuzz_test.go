//go:build linux

package fuzz

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cespare/xxhash/v2"
	"github.com/ringipc/ringipc/futex"
	"github.com/ringipc/ringipc/ipc"
	"github.com/ringipc/ringipc/ring"
	"golang.org/x/sys/unix"
)

// FuzzHostileConn runs an in-process ipc server and, per input, one
// client that speaks docs/ipc.md from the bytes up: its own socket, its
// own SCM_RIGHTS parsing and mmap of the memfd, its own ring records. The
// input is a program of operations on that connection: well-formed calls,
// raw bytes written anywhere in its three rings, positions moved, raw
// records with fuzzer-chosen header words, wake tokens, dispatch storms.
//
// Invariants: nothing panics; every raw call returns within its deadline
// (an error is fine); once the client hangs up the server runs
// OnDisconnect for it, and if it ended the connection for a violation it
// counted it, on the connection and in Server.Stats; an honest client of
// the same server, dialled once, completes a call after every input.
func FuzzHostileConn(f *testing.F) {
	f.Add([]byte{0, 8, 0, 200})                            // two good calls
	f.Add([]byte{0, 8, 2, 0, 1, 0xf0, 0, 8})               // request tail moved back
	f.Add([]byte{4, 0xff, 0xff, 0xa0, 1, 16, 0, 8})        // record length past the ring
	f.Add([]byte{0, 8, 1, 0, 0x03, 0x80, 0x41, 0, 8})      // a byte of the data area
	f.Add([]byte{3, 0x11, 0, 8})                           // a token the server never sleeps on
	f.Add([]byte{5, 255, 5, 255, 0, 8})                    // a dispatch storm nobody reads
	f.Add([]byte{2, 1, 1, 0x7f, 0, 8, 0, 8, 0, 8, 0, 200}) // response head moved

	h := startHostileTarget(f)
	f.Fuzz(func(t *testing.T, prog []byte) {
		h.run(t, prog)
	})
}

const (
	svcID       = 1
	msgEcho     = 1
	msgDispatch = 2 // body[0]: how many dispatch messages to send first

	// Ring layout (docs/design.md) and record words.
	offSeed     = 32
	offFlags    = 12
	offClosed   = 64
	offConsWait = 384
	offProdWait = 512
	offData     = 640
	committed   = uint64(0xA) << 60
	padFlag     = uint64(1) << 56
	ringSize    = 4096

	// callDeadline bounds one raw call; running into it is an allowed
	// outcome (the input may have made the server wait for good).
	callDeadline = time.Second
)

type discEvent struct {
	id       uint64
	err      error
	violated bool // Conn.Stats().Errors was 1
}

type hostileTarget struct {
	srv      *ipc.Server
	addr     string
	honest   *ipc.Client
	honestID atomic.Uint64
	disc     chan discEvent
	errs     uint64 // violations counted so far
}

func startHostileTarget(f *testing.F) *hostileTarget {
	h := &hostileTarget{disc: make(chan discEvent, 16)}
	var b [8]byte
	rand.Read(b[:])
	h.addr = "@ringipc-fuzz-" + hex.EncodeToString(b[:])
	srv, err := ipc.NewServer(&ipc.Config{DispatchQueue: 8, DispatchPolicy: ipc.PolicyDrop})
	if err != nil {
		f.Fatal(err)
	}
	echo := ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) { w.Respond(r.Data) })
	srv.Register(&ipc.Service{ID: svcID, Handlers: map[uint16]ipc.Handler{
		msgEcho: echo,
		msgDispatch: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) {
			if len(r.Data) > 0 {
				for i := range int(r.Data[0]) {
					if r.Conn.Dispatch(r.Context(), uint16(i), r.Data) != nil {
						break
					}
				}
			}
		}),
	}, OnConnect: func(c *ipc.Conn) error {
		h.honestID.CompareAndSwap(0, c.ID())
		return nil
	}, OnDisconnect: func(c *ipc.Conn, err error) {
		if c.ID() != h.honestID.Load() {
			h.disc <- discEvent{c.ID(), err, c.Stats().Errors == 1}
		}
	}})
	l, err := ipc.Listen(h.addr, 0)
	if err != nil {
		f.Fatal(err)
	}
	go srv.Serve(l)
	h.srv = srv
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if h.honest, err = ipc.Dial(ctx, h.addr, svcID, nil); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		h.honest.Close()
		srv.Close()
	})
	return h
}

func (h *hostileTarget) run(t *testing.T, prog []byte) {
	p := dialRaw(t, h.addr, len(prog) > 0 && prog[0]&0x80 != 0)
	p.exec(prog)
	p.close()

	var ev discEvent
	select {
	case ev = <-h.disc:
	case <-time.After(time.Minute):
		t.Fatal("the server did not notice the hostile client leave within a minute")
	}
	violation := errors.Is(ev.err, ipc.ErrProtocol) || errors.Is(ev.err, ipc.ErrSlowConsumer)
	if !violation && !errors.Is(ev.err, ipc.ErrDisconnected) {
		t.Fatalf("connection ended with %v: neither a violation nor a disconnect", ev.err)
	}
	if violation != ev.violated {
		t.Fatalf("connection ended with %v, but its Stats.Errors says violated=%v", ev.err, ev.violated)
	}
	if violation {
		h.errs++
	}
	// The server retires a connection's counters just after OnDisconnect.
	for deadline := time.Now().Add(time.Minute); h.srv.Stats().Errors != h.errs; runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatalf("Server.Stats().Errors = %d, want %d", h.srv.Stats().Errors, h.errs)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang guard
	defer cancel()
	if got, err := h.honest.Call(ctx, msgEcho, []byte("honest")); err != nil || string(got) != "honest" {
		t.Fatalf("honest call after a hostile input: %q, %v", got, err)
	}
}

// rawRing is a view of one ring of the segment (docs/design.md).
type rawRing struct {
	mem, data  []byte
	seed       uint64
	payloadSum bool
}

func (r *rawRing) u64(off int) *uint64 { return (*uint64)(unsafe.Pointer(&r.mem[off])) }
func (r *rawRing) u32(off int) *uint32 { return (*uint32)(unsafe.Pointer(&r.mem[off])) }

func (r *rawRing) sum(pos, word uint64, typ uint32, payload []byte) uint32 {
	var ph uint64
	if r.payloadSum {
		ph = xxhash.Sum64(payload)
	}
	var b [24]byte
	binary.LittleEndian.PutUint64(b[0:], r.seed^pos)
	binary.LittleEndian.PutUint64(b[8:], word)
	binary.LittleEndian.PutUint64(b[16:], uint64(typ)|uint64(uint32(ph)^uint32(ph>>32))<<32)
	return uint32(xxhash.Sum64(b[:]))
}

type rawConn struct {
	t     *testing.T
	fd    int
	memfd int
	seg   []byte
	rings [3]rawRing // request, response, dispatch
	corr  uint64
	dead  bool // the server hung up
	stuck bool // a call ran into its deadline: make no more calls
}

// dialRaw connects, says hello (4 KiB rings), and maps the segment.
func dialRaw(t *testing.T, addr string, payloadSum bool) *rawConn {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &rawConn{t: t, fd: fd, memfd: -1}
	tv := unix.NsecToTimeval(int64(time.Minute))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		p.close()
		t.Fatal(err)
	}
	le := binary.LittleEndian
	hello := make([]byte, 48)
	le.PutUint64(hello, 0x4f4c454843504952)
	le.PutUint16(hello[8:], 1)
	le.PutUint16(hello[10:], svcID)
	if payloadSum {
		le.PutUint32(hello[12:], 1)
	}
	for i := range 3 {
		le.PutUint64(hello[16+8*i:], ringSize)
	}
	if _, err := unix.Write(fd, hello); err != nil {
		p.close()
		t.Fatal(err)
	}
	reply := make([]byte, 96)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(fd, reply, oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_WAITALL)
	if err == nil && oobn > 0 {
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		if len(msgs) == 1 {
			if fds, _ := unix.ParseUnixRights(&msgs[0]); len(fds) == 1 {
				p.memfd = fds[0]
			}
		}
	}
	if err != nil || n != 96 || le.Uint32(reply[12:]) != 0 || p.memfd < 0 {
		p.close()
		t.Fatalf("handshake: %d bytes, status %d, %v", n, le.Uint32(reply[12:]), err)
	}
	var st unix.Stat_t
	unix.Fstat(p.memfd, &st)
	if p.seg, err = unix.Mmap(p.memfd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		p.close()
		t.Fatal(err)
	}
	pay := p.seg[4096:]
	for i := range 3 {
		off := le.Uint64(reply[48+8*i:])
		m := pay[off : off+offData+ringSize]
		p.rings[i] = rawRing{mem: m, data: m[offData:], seed: le.Uint64(m[offSeed:]), payloadSum: le.Uint32(m[offFlags:])&1 != 0}
	}
	return p
}

func (p *rawConn) close() {
	if p.fd >= 0 {
		unix.Close(p.fd)
		p.fd = -1
	}
	if p.seg != nil {
		unix.Munmap(p.seg)
		p.seg = nil
	}
	if p.memfd >= 0 {
		unix.Close(p.memfd)
		p.memfd = -1
	}
}

func (p *rawConn) token(b byte) {
	if _, err := unix.SendmsgN(p.fd, []byte{b}, nil, nil, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT); err != nil && err != unix.EAGAIN {
		p.dead = true
	}
}

// exec runs the program. Each operation takes an opcode byte and its
// arguments; missing argument bytes read as zero.
func (p *rawConn) exec(prog []byte) {
	arg := func() byte {
		if len(prog) == 0 {
			return 0
		}
		b := prog[0]
		prog = prog[1:]
		return b
	}
	for len(prog) > 0 && !p.dead {
		switch arg() % 6 {
		case 0: // a well-formed call with an n-byte body
			if n := arg(); !p.stuck {
				p.call(msgEcho, make([]byte, n))
			}
		case 1: // write a byte anywhere in a ring, control words included
			r := &p.rings[arg()%3]
			off := int(binary.LittleEndian.Uint16([]byte{arg(), arg()})) % len(r.mem)
			r.mem[off] = arg()
		case 2: // move a position (tail or head) by a signed amount
			r := &p.rings[arg()%3]
			w := r.u64(128 + 128*int(arg()&1))
			atomic.AddUint64(w, uint64(int64(int8(arg()))*8))
		case 3: // a wake token, any byte
			p.token(arg())
		case 4: // a record whose header word the fuzzer chose
			w := uint64(binary.LittleEndian.Uint32([]byte{arg(), arg(), arg(), 0}))
			w |= uint64(arg()) << 56
			typ := uint32(arg())
			p.publish(typ, make([]byte, arg()), w)
		case 5: // ask for dispatch messages and never read them
			p.corr++
			p.publish(msgDispatch, append(binary.LittleEndian.AppendUint64(nil, p.corr), arg()), 0)
		}
	}
}

// publish writes one record at the request ring's tail (padding first if
// it would cross the end), publishes it and sends a token. word 0 means
// the well-formed word. A tail the fuzzer left unaligned is the server's
// problem: the record then goes nowhere.
func (p *rawConn) publish(typ uint32, payload []byte, word uint64) {
	r := &p.rings[0]
	le := binary.LittleEndian
	pos := atomic.LoadUint64(r.u64(128))
	if pos%16 != 0 || len(payload) > ringSize/2-16 {
		p.token(0x01)
		return
	}
	n := uint64(len(payload))
	rs := (16 + n + 15) &^ 15
	if o := pos & (ringSize - 1); o+rs > ringSize {
		pw := committed | padFlag | (ringSize - o - 16)
		le.PutUint32(r.data[o+8:], 0)
		le.PutUint32(r.data[o+12:], r.sum(pos, pw, 0, nil))
		le.PutUint64(r.data[o:], pw)
		pos += ringSize - o
	}
	off := pos & (ringSize - 1)
	copy(r.data[off+16:], payload)
	if word == 0 {
		word = committed | n
	}
	le.PutUint32(r.data[off+8:], typ)
	le.PutUint32(r.data[off+12:], r.sum(pos, word, typ, payload))
	le.PutUint64(r.data[off:], word)
	atomic.StoreUint64(r.u64(128), pos+rs)
	// docs/ipc.md §6: a server blocked in FUTEX_WAIT announced value 2
	// and is woken with FUTEX_WAKE; without it, it waits out its slice.
	if atomic.SwapUint32(r.u32(offConsWait), 0) == ring.WordFutex {
		futex.Wake(r.u32(offConsWait), 1) //nolint:errcheck // the token below is the fallback
	}
	p.token(0x01) // spurious tokens are allowed, and survive scribbled words
}

// call sends a request and waits, until callDeadline, for a response.
func (p *rawConn) call(id uint16, body []byte) {
	p.corr++
	pl := binary.LittleEndian.AppendUint64(nil, p.corr)
	pl = append(pl, body...)
	deadline := time.Now().Add(callDeadline)
	req := &p.rings[0]
	for atomic.LoadUint64(req.u64(128))-atomic.LoadUint64(req.u64(256))+2*uint64(16+len(pl)+15) > ringSize {
		if !p.wait(req, offProdWait, deadline) {
			return
		}
	}
	p.publish(uint32(id), pl, 0)
	r := &p.rings[1]
	for {
		h, t := atomic.LoadUint64(r.u64(256)), atomic.LoadUint64(r.u64(128))
		if t != h {
			off := h & (ringSize - 1)
			w := atomic.LoadUint64(r.u64(offData + int(off)))
			n := w & 0xFFFFFFFF
			if t-h > ringSize || h%16 != 0 || w>>60 != 0xA || off+16+n > ringSize {
				return // the input scribbled on the response ring: give up
			}
			if w&padFlag != 0 {
				atomic.StoreUint64(r.u64(256), h+16+n)
				continue
			}
			atomic.StoreUint64(r.u64(256), h+((16+n+15)&^15))
			if atomic.SwapUint32(r.u32(offProdWait), 0) != 0 {
				p.token(0x12)
			}
			if n >= 8 && binary.LittleEndian.Uint64(r.data[off+16:]) == p.corr {
				return
			}
			continue
		}
		if !p.wait(r, offConsWait, deadline) {
			return
		}
	}
}

// wait announces on a word of r and waits for any token, the ring's
// closing, or the deadline; false means stop waiting.
func (p *rawConn) wait(r *rawRing, word int, deadline time.Time) bool {
	atomic.StoreUint32(r.u32(word), 1)
	if atomic.LoadUint32(r.u32(offClosed)) != 0 {
		return false
	}
	left := time.Until(deadline)
	if left <= 0 {
		p.stuck = true
		return false
	}
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	// 20 ms: a re-check period for tokens a scribbled word suppressed.
	if n, _ := unix.Poll(fds, int(min(left, 20*time.Millisecond)/time.Millisecond)+1); n > 0 {
		var buf [512]byte
		if m, _, err := unix.Recvfrom(p.fd, buf[:], unix.MSG_DONTWAIT); m == 0 && err == nil || err == unix.ECONNRESET {
			p.dead = true
			return false
		}
	}
	return true
}
