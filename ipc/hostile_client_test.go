//go:build linux

package ipc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/ringipc/ringipc/ring"
	"golang.org/x/sys/unix"
)

// The hostile-client tests: a raw peer (hostile_raw_test.go) breaks one
// rule of docs/ipc.md per subtest while an honest client of another
// service calls the same server in a loop. Each subtest asserts that the
// server survives, drops the hostile connection (or keeps it when what it
// did is harmless), counts a violation in Stats.Errors, runs OnDisconnect
// once, gives back every descriptor and mapping, and that the honest
// client saw no error at all.

// honestGuard bounds one honest call: a hang guard, not a threshold.
var honestGuard = time.Minute

const (
	honestService = 8
	msgSlowEcho   = 30 // echo after the test's hook has run (TOCTOU test)
)

// tornEvent is a hostile connection at the end of its teardown.
type tornEvent struct {
	id  uint64
	err error
}

type hostileHarness struct {
	t    *testing.T
	srv  *Server
	addr string
	torn chan tornEvent
	// tornHonest: connections of the honest service other than the
	// harness's own client, at the end of their teardown.
	tornHonest chan struct{}

	discMu sync.Mutex
	disc   map[uint64]int // OnDisconnect runs per connection

	// slowHook, if set, runs in msgSlowEcho before it reads the request.
	slowHook atomic.Pointer[func(*Request)]

	honest     *Client
	honestConn atomic.Uint64 // the server's id of honest's connection
	honestN    atomic.Uint64
	progress   chan struct{} // a token per honest call, dropped when full
	stopHonest chan struct{}
	honestDone chan struct{}
	honestErr  atomic.Pointer[error]

	fds0, segs0 int
}

// newHostileHarness starts a server with cfg serving the echo service
// (hostile peers' target) and an honest echo service, and an honest
// client calling it in a loop until the test ends.
func newHostileHarness(t *testing.T, cfg *Config) *hostileHarness {
	t.Helper()
	h := &hostileHarness{t: t, torn: make(chan tornEvent, 256), tornHonest: make(chan struct{}, 16), disc: make(map[uint64]int),
		progress: make(chan struct{}, 1), stopHonest: make(chan struct{}), honestDone: make(chan struct{})}
	if cfg == nil {
		cfg = &Config{}
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.testHookTornDown = func(c *Conn) {
		if c.Service() == testService {
			h.torn <- tornEvent{c.ID(), c.Err()}
		} else {
			h.tornHonest <- struct{}{}
		}
	}
	svc := echoService()
	svc.OnDisconnect = func(c *Conn, err error) {
		h.discMu.Lock()
		h.disc[c.ID()]++
		h.discMu.Unlock()
	}
	svc.Handlers[msgSlowEcho] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		if f := h.slowHook.Load(); f != nil {
			(*f)(r)
		}
		w.Respond(r.Data)
	})
	honestSvc := &Service{ID: honestService, Handlers: map[uint16]Handler{
		msgEcho: HandlerFunc(func(w *ResponseWriter, r *Request) { w.Respond(r.Data) }),
	}, OnConnect: func(c *Conn) error {
		h.honestConn.CompareAndSwap(0, c.ID())
		return nil
	}, OnDisconnect: func(c *Conn, err error) {
		select {
		case <-h.stopHonest:
		default:
			if c.ID() == h.honestConn.Load() {
				t.Errorf("honest connection ended: %v", err)
			}
		}
	}}
	srv.Register(svc)
	srv.Register(honestSvc)
	h.srv = srv
	h.addr = abstractAddr()
	l, err := Listen(h.addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	h.honest, err = Dial(testCtx(t), h.addr, honestService, &ClientOptions{Spin: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.honest.Close() })
	go h.honestLoop()
	t.Cleanup(h.finish)
	h.checkpoint()
	h.fds0, h.segs0, _ = resourceCount(t)
	return h
}

func (h *hostileHarness) honestLoop() {
	defer close(h.honestDone)
	var req [16]byte
	for i := uint64(0); ; i++ {
		select {
		case <-h.stopHonest:
			return
		default:
		}
		binary.LittleEndian.PutUint64(req[:], i)
		binary.LittleEndian.PutUint64(req[8:], ^i)
		ctx, cancel := context.WithTimeout(context.Background(), honestGuard) // a hang guard
		got, err := h.honest.Call(ctx, msgEcho, req[:])
		cancel()
		if err == nil && !bytes.Equal(got, req[:]) {
			err = fmt.Errorf("honest call %d: got %x, want %x", i, got, req)
		}
		if err != nil {
			err = fmt.Errorf("%w (%s)", err, h.honestState())
			h.honestErr.CompareAndSwap(nil, &err)
			return
		}
		h.honestN.Add(1)
		select {
		case h.progress <- struct{}{}:
		default:
		}
	}
}

// checkpoint waits until the honest client has completed two more calls:
// the server is still serving others.
func (h *hostileHarness) checkpoint() {
	h.t.Helper()
	guard := time.NewTimer(time.Minute)
	defer guard.Stop()
	for range 2 {
		select {
		case <-h.progress:
		case <-h.honestDone:
			h.t.Fatalf("honest client stopped: %v", h.honestError())
		case <-guard.C:
			h.t.Fatal("honest client made no progress for a minute")
		}
	}
}

// honestState describes the honest connection's rings, for a failure
// message: positions and wait words of both sides.
func (h *hostileHarness) honestState() string {
	cl := h.honest
	select {
	case <-cl.torn:
		return "torn down"
	default:
	}
	var b strings.Builder
	for i, name := range []string{"request", "response", "dispatch"} {
		// The words sit at fixed offsets of each ring (docs/design.md):
		// tail at 128, head at 256, consumer word at 384.
		cons := cl.waker.words[2*i]
		tail := (*uint64)(unsafe.Add(unsafe.Pointer(cons), 128-ring.ConsumerWaitOffset))
		head := (*uint64)(unsafe.Add(unsafe.Pointer(cons), 256-ring.ConsumerWaitOffset))
		fmt.Fprintf(&b, "%s ring: tail %d head %d consWait %d prodWait %d; ", name,
			atomic.LoadUint64(tail), atomic.LoadUint64(head), atomic.LoadUint32(cons), atomic.LoadUint32(cl.waker.words[2*i+1]))
	}
	for _, c := range h.srv.Conns() {
		if c.ID() == h.honestConn.Load() {
			fmt.Fprintf(&b, "server conn stats %+v", c.Stats())
		}
	}
	return b.String()
}

func (h *hostileHarness) honestError() error {
	if p := h.honestErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (h *hostileHarness) finish() {
	close(h.stopHonest)
	<-h.honestDone
	if err := h.honestError(); err != nil {
		h.t.Errorf("honest client failed: %v", err)
	}
	h.t.Logf("honest client: %d calls, 0 errors", h.honestN.Load())
	h.discMu.Lock()
	for id, n := range h.disc {
		if n != 1 {
			h.t.Errorf("OnDisconnect ran %d times for connection %d", n, id)
		}
	}
	h.discMu.Unlock()
}

// waitTorn waits for the next hostile connection to be torn down.
func (h *hostileHarness) waitTorn() tornEvent {
	h.t.Helper()
	select {
	case ev := <-h.torn:
		return ev
	case <-time.After(time.Minute):
		h.t.Fatal("hostile connection not torn down within a minute")
		return tornEvent{}
	}
}

// expectDrop waits for the hostile connection to be torn down with an
// error matching target and checks that Stats.Errors counted it when
// target is a violation.
func (h *hostileHarness) expectDrop(errs0 uint64, target error) {
	h.t.Helper()
	ev := h.waitTorn()
	if !errors.Is(ev.err, target) {
		h.t.Errorf("hostile connection ended with %v, want %v", ev.err, target)
	}
	want := errs0
	if errors.Is(target, ErrProtocol) || errors.Is(target, ErrSlowConsumer) {
		want++
	}
	st := h.srv.Stats()
	if st.Errors != want {
		h.t.Errorf("Stats.Errors = %d, want %d", st.Errors, want)
	}
	if st.Errors != st.ProtocolErrors+st.SlowConsumers ||
		(errors.Is(target, ErrProtocol) && st.ProtocolErrors == 0) ||
		(errors.Is(target, ErrSlowConsumer) && st.SlowConsumers == 0) {
		h.t.Errorf("Stats.Errors %d is not ProtocolErrors %d + SlowConsumers %d with the one for %v", st.Errors, st.ProtocolErrors, st.SlowConsumers, target)
	}
	h.checkpoint()
}

// expectKept checks that the hostile connection is still being served,
// then closes the peer and expects an orderly end.
func (h *hostileHarness) expectKept(p *rawPeer) {
	h.t.Helper()
	h.checkpoint()
	if n := len(h.srv.Conns()); n != 2 {
		h.t.Errorf("%d connections, want the honest and the hostile one", n)
	}
	select {
	case ev := <-h.torn:
		h.t.Fatalf("harmless peer dropped: %v", ev.err)
	default:
	}
	errs0 := h.srv.Stats().Errors
	p.close()
	h.expectDrop(errs0, ErrDisconnected)
}

// checkResources compares descriptors and segment mappings with the
// harness's baseline, once every hostile peer is closed and torn down.
func (h *hostileHarness) checkResources() {
	h.t.Helper()
	fds, segs, _ := resourceCount(h.t)
	if fds != h.fds0 || segs != h.segs0 {
		h.t.Errorf("descriptors %d (baseline %d), segment mappings %d (baseline %d)", fds, h.fds0, segs, h.segs0)
	}
}

func TestHostileClient(t *testing.T) {
	small := [3]uint64{4096, 4096, 4096}
	t.Run("handshake garbage", func(t *testing.T) {
		h := newHostileHarness(t, &Config{HandshakeTimeout: time.Second, MaxHandshakes: 4, MaxRingSize: 1 << 16})
		good := func() []byte { return rawHello(1, testService, 0, small, 0) }
		set := func(b []byte, off int, v uint64, size int) []byte {
			switch size {
			case 2:
				binary.LittleEndian.PutUint16(b[off:], uint16(v))
			case 4:
				binary.LittleEndian.PutUint32(b[off:], uint32(v))
			case 8:
				binary.LittleEndian.PutUint64(b[off:], v)
			}
			return b
		}
		rejects := []struct {
			name   string
			hello  []byte
			status uint32
		}{
			{"zeros", make([]byte, 48), 2},
			{"random", func() []byte { b := make([]byte, 48); fillRand(b); return b }(), 2},
			{"bad magic", set(good(), 0, 0x4f4c454843504953, 8), 2},
			{"reserved", set(good(), 40, 1, 8), 2},
			{"version 0", set(good(), 8, 0, 2), 1},
			{"version 0xffff", set(good(), 8, 0xffff, 2), 1},
			{"unknown service", set(good(), 10, 999, 2), 3},
			{"size all ones", set(good(), 32, ^uint64(0), 8), 2},
		}
		for _, tc := range rejects {
			rej0 := h.srv.Stats().Rejected
			p := rawConnect(t, h.addr)
			if err := p.send(tc.hello); err != nil {
				t.Fatal(err)
			}
			b, fds, err := p.recvReply()
			if err != nil || len(fds) != 0 {
				t.Fatalf("%s: reply %x, %d descriptors, %v", tc.name, b, len(fds), err)
			}
			r, err := parseRawReply(b)
			if err != nil || r.status != tc.status || r.version != 1 || !bytes.Equal(b[24:], make([]byte, 72)) {
				t.Errorf("%s: reply %+v (%v), want status %d, version 1, zero tail", tc.name, r, err, tc.status)
			}
			if err := p.waitEOF(time.Now().Add(time.Minute)); err != nil {
				t.Errorf("%s: socket not closed after the reject: %v", tc.name, err)
			}
			if got := h.srv.Stats().Rejected; got != rej0+1 {
				t.Errorf("%s: Rejected %d -> %d", tc.name, rej0, got)
			}
			p.close()
		}
		h.checkpoint()

		// Huge power-of-two sizes are clamped, not trusted. Every
		// feature bit but FeatureTopic, which makes the hello a topic
		// subscription (docs/ipc.md §11).
		p := rawConnect(t, h.addr)
		p.handshake(rawHello(1, testService, 0xffffffff&^FeatureTopic, [3]uint64{1 << 62, 1 << 40, 1}, 0))
		if r := p.reply; r.sizes != [3]uint64{1 << 16, 1 << 16, 4096} || r.features != knownFeatures {
			t.Errorf("sizes %v, features %#x: want clamped [65536 65536 4096], only known features", r.sizes, r.features)
		}
		if resp, err := p.call(msgEcho, 7, []byte("clamped")); err != nil || string(resp.body) != "clamped" || resp.corr != 7 {
			t.Errorf("call on a clamped connection: %+v, %v", resp, err)
		}
		h.expectKept(p)

		// Bytes after the hello are tokens; an unknown one is a violation.
		errs0 := h.srv.Stats().Errors
		p = rawConnect(t, h.addr)
		if err := p.send(append(good(), 0xEE)); err != nil {
			t.Fatal(err)
		}
		h.expectDrop(errs0, ErrProtocol)
		p.close()

		// A hello carrying descriptors: the server must not keep them.
		var pipe [2]int
		if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		p = rawConnect(t, h.addr)
		err := p.send(good(), pipe[0], pipe[1])
		unix.Close(pipe[0])
		unix.Close(pipe[1])
		if err != nil {
			t.Fatal(err)
		}
		if _, fds, err := p.recvReply(); err != nil || len(fds) != 1 {
			t.Fatalf("reply: %d descriptors, %v", len(fds), err)
		} else {
			unix.Close(fds[0])
		}
		h.expectKept(p)

		// Partial hellos, silence and hang-ups, more than MaxHandshakes of
		// them: each is timed out or dropped, and a new honest client still
		// gets in.
		to0 := h.srv.Stats().HandshakeTimeouts
		var silent []*rawPeer
		for i := range 12 {
			p := rawConnect(t, h.addr)
			switch i % 3 {
			case 0: // nothing at all
			case 1:
				p.send(good()[:1+i])
			case 2:
				p.send(good()[:20])
				unix.Shutdown(p.fd, unix.SHUT_WR)
			}
			silent = append(silent, p)
		}
		cl, err := Dial(testCtx(t), h.addr, honestService, nil)
		if err != nil {
			t.Fatalf("dial behind a handshake flood: %v", err)
		}
		if _, err := cl.Call(testCtx(t), msgEcho, []byte("x")); err != nil {
			t.Errorf("call behind a handshake flood: %v", err)
		}
		cl.Close()
		<-h.tornHonest
		for _, p := range silent {
			if err := p.waitEOF(time.Now().Add(time.Minute)); err != nil {
				t.Errorf("silent peer not dropped: %v", err)
			}
			p.close()
		}
		if got := h.srv.Stats().HandshakeTimeouts; got < to0+8 {
			t.Errorf("HandshakeTimeouts %d -> %d, want at least 8 more", to0, got)
		}
		h.checkResources()
	})

	t.Run("closing early", func(t *testing.T) {
		h := newHostileHarness(t, nil)
		// Hang up between hello and reply.
		errs0 := h.srv.Stats().Errors
		p := rawConnect(t, h.addr)
		p.send(rawHello(1, testService, 0, small, 0))
		p.close()
		h.expectDrop(errs0, ErrDisconnected)

		// Drop the segment at once and stay connected: harmless.
		p = rawDialPeer(t, h.addr, testService, small)
		p.unmap()
		p.closeMemfd()
		h.expectKept(p)

		// Hang up while the server handles a request.
		entered := make(chan struct{}, 1)
		hook := func(r *Request) {
			entered <- struct{}{}
			<-r.Context().Done()
		}
		h.slowHook.Store(&hook)
		p = rawDialPeer(t, h.addr, testService, small)
		p.request(msgSlowEcho, 1, []byte("never answered"))
		<-entered
		p.closeSocket()
		h.expectDrop(h.srv.Stats().Errors, ErrDisconnected)
		h.slowHook.Store(nil)
		// and keep writing into the segment afterwards: only our copy.
		for i := range 50 {
			p.request(msgEcho, uint64(i), []byte("into the void"))
			atomic.StoreUint64(p.rings[0].head(), atomic.LoadUint64(p.rings[0].tail()))
		}
		p.close()

		// Half-close: end of file for the server.
		p = rawDialPeer(t, h.addr, testService, small)
		unix.Shutdown(p.fd, unix.SHUT_WR)
		h.expectDrop(h.srv.Stats().Errors, ErrDisconnected)
		if err := p.waitEOF(time.Now().Add(time.Minute)); err != nil {
			t.Errorf("server kept its side open: %v", err)
		}
		p.close()
		h.checkResources()
	})

	t.Run("record lengths", func(t *testing.T) {
		h := newHostileHarness(t, nil)
		cases := []struct {
			name string
			typ  uint32
			pl   []byte
			word func(r *rawRing, n uint64) uint64
		}{
			{"length past the ring", msgEcho, make([]byte, 16), func(r *rawRing, n uint64) uint64 { return rawCommitted | r.size }},
			{"length all ones", msgEcho, make([]byte, 16), func(r *rawRing, n uint64) uint64 { return rawCommitted | 0xFFFFFFFF }},
			{"length past the tail", msgEcho, make([]byte, 16), func(r *rawRing, n uint64) uint64 { return rawCommitted | (n + 64) }},
			{"max payload plus one", msgEcho, make([]byte, 16), func(r *rawRing, n uint64) uint64 { return rawCommitted | (r.size/2 - 15) }},
			{"padding with no wrap due", msgEcho, make([]byte, 16), func(r *rawRing, n uint64) uint64 { return rawCommitted | rawPadFlag | n }},
			{"claimed, not committed", msgEcho, make([]byte, 16), func(r *rawRing, n uint64) uint64 { return 0x5<<60 | n }},
			{"unknown flag", msgEcho, make([]byte, 16), func(r *rawRing, n uint64) uint64 { return rawCommitted | 1<<58 | n }},
			{"no correlation id", msgEcho, nil, nil},
			{"high type bits", msgEcho | 1<<16, make([]byte, 8), nil},
		}
		for _, tc := range cases {
			errs0 := h.srv.Stats().Errors
			p := rawDialPeer(t, h.addr, testService, small)
			// A few good calls first, so that positions are not zero.
			for i := range 3 {
				if _, err := p.call(msgEcho, uint64(i), []byte("warm-up")); err != nil {
					t.Fatal(err)
				}
			}
			var w uint64
			if tc.word != nil {
				w = tc.word(&p.rings[0], uint64(len(tc.pl)))
			}
			next, _ := p.writeRecord(tc.typ, tc.pl, w)
			atomic.StoreUint64(p.rings[0].tail(), next)
			p.send([]byte{0x01}) // spurious tokens are allowed
			h.expectDrop(errs0, ErrProtocol)
			if err := p.waitEOF(time.Now().Add(time.Minute)); err != nil {
				t.Errorf("%s: socket left open: %v", tc.name, err)
			}
			p.close()
		}
		// A bad checksum.
		errs0 := h.srv.Stats().Errors
		p := rawDialPeer(t, h.addr, testService, small)
		next, off := p.writeRecord(msgEcho, make([]byte, 16), 0)
		p.rings[0].data[off+12] ^= 1
		atomic.StoreUint64(p.rings[0].tail(), next)
		p.send([]byte{0x01})
		h.expectDrop(errs0, ErrProtocol)
		p.close()
		h.checkResources()
	})

	t.Run("positions", func(t *testing.T) {
		h := newHostileHarness(t, &Config{DispatchQueue: -1, DispatchPolicy: PolicyDrop})
		type move struct {
			name    string
			ring    int
			word    int
			value   func(cur uint64) uint64
			harmful bool
			// after drives the server into reading the position.
			after func(p *rawPeer)
		}
		fill := func(p *rawPeer) { // requests the response ring cannot hold unread
			for i := range 400 {
				if p.waitRoom(16, time.Now().Add(time.Minute)) != nil {
					return
				}
				p.request(msgEcho, uint64(i), make([]byte, 8))
			}
		}
		dispatch := func(p *rawPeer) {
			p.request(msgDispatch, 1, []byte{255})
			p.request(msgDispatch, 2, []byte{255})
		}
		moves := []move{
			{"request tail huge", 0, rawOffTail, func(uint64) uint64 { return 1 << 63 }, true, nil},
			{"request tail negative", 0, rawOffTail, func(c uint64) uint64 { return c - 16 }, true, nil},
			{"request tail backwards", 0, rawOffTail, func(c uint64) uint64 { return c - 64 }, true, nil},
			{"request tail unaligned", 0, rawOffTail, func(c uint64) uint64 { return c + 8 }, true, nil},
			{"request tail a lap ahead", 0, rawOffTail, func(c uint64) uint64 { return c + 4096 + 16 }, true, nil},
			{"response head huge", 1, rawOffHead, func(uint64) uint64 { return 1 << 62 }, true, fill},
			// The server's last view of the head is past 0 after the warm-up.
			{"response head backwards", 1, rawOffHead, func(uint64) uint64 { return 0 }, true, fill},
			{"dispatch head huge", 2, rawOffHead, func(uint64) uint64 { return 1<<62 + 16 }, true, dispatch},
			{"request head (the server's own)", 0, rawOffHead, func(uint64) uint64 { return 1 << 40 }, false, nil},
			{"wait words", 1, rawOffConsWait, func(uint64) uint64 { return 0xdeadbeef }, false, nil},
		}
		for _, m := range moves {
			t.Log(m.name)
			errs0 := h.srv.Stats().Errors
			p := rawDialPeer(t, h.addr, testService, small)
			// Enough calls that every position has gone round its ring.
			for i := range 200 {
				if _, err := p.call(msgEcho, uint64(i), []byte("warm-up")); err != nil {
					t.Fatal(err)
				}
			}
			r := &p.rings[m.ring]
			if m.word == rawOffConsWait {
				atomic.StoreUint32(r.u32(m.word), uint32(m.value(0)))
			} else {
				atomic.StoreUint64(r.u64(m.word), m.value(atomic.LoadUint64(r.u64(m.word))))
			}
			p.send([]byte{0x01})
			if m.after != nil {
				m.after(p)
			}
			if m.harmful {
				h.expectDrop(errs0, ErrProtocol)
				p.close()
				continue
			}
			// No waitRoom: the peer has just confused its own view.
			p.request(msgEcho, 99, []byte("still here"))
			if resp, err := p.readResponse(time.Now().Add(time.Minute)); err != nil || string(resp.body) != "still here" {
				t.Errorf("%s: call after a harmless move: %+v, %v", m.name, resp, err)
			}
			h.expectKept(p)
		}
		h.checkResources()
	})

	t.Run("header changed after validation", func(t *testing.T) {
		h := newHostileHarness(t, nil)
		rounds := 60
		if soak() {
			rounds = 2000
		}
		for _, features := range []uint32{0, FeaturePayloadChecksum} {
			var answered, garbage, dropped int
			p := rawConnect(t, h.addr)
			p.handshake(rawHello(1, testService, features, small, 0))
			for i := range rounds {
				body := make([]byte, 16+rand.IntN(700))
				fillRand(body)
				pl := binary.LittleEndian.AppendUint64(nil, uint64(i))
				pl = append(pl, body...)
				if err := p.waitRoom(len(pl), time.Now().Add(time.Minute)); err != nil {
					t.Fatal(err)
				}
				next, off := p.writeRecord(msgSlowEcho, pl, 0)
				rec := p.rings[0].data[off : off+rawRecordSize(uint64(len(pl)))]
				// The flipper rewrites the committed record, header word
				// included, before, during and after the handler reads it;
				// the handler waits for a burst of flips to land while it
				// holds the request.
				entered, flipped, stop := make(chan struct{}), make(chan struct{}), make(chan struct{})
				hook := func(r *Request) {
					select {
					case entered <- struct{}{}:
						select {
						case <-flipped:
						case <-r.Context().Done():
						}
					case <-r.Context().Done():
					}
					sum := 0
					for _, b := range r.Data { // read it all, twice
						sum += int(b)
					}
					_ = append([]byte(nil), r.Data...)
				}
				h.slowHook.Store(&hook)
				var wg sync.WaitGroup
				// One round in four races the server's validation too.
				early := i%4 == 3
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(i), 7))
					flip := func() {
						j := rng.IntN(len(rec))
						rec[j] ^= byte(1 + rng.IntN(255))
					}
					for {
						if early {
							select {
							case <-entered:
							case <-stop:
								return
							default:
								flip()
								continue
							}
						} else {
							select {
							case <-entered:
							case <-stop:
								return
							}
						}
						for range 2000 {
							flip()
						}
						close(flipped)
						<-stop
						return
					}
				})
				atomic.StoreUint64(p.rings[0].tail(), next)
				p.wake(0, rawOffConsWait, 0x01)
				resp, err := p.readResponse(time.Now().Add(time.Minute))
				close(stop)
				wg.Wait()
				switch {
				case err == nil && resp.corr == uint64(i) && bytes.Equal(resp.body, pl[8:]):
					answered++
				case err == nil:
					garbage++
				case errors.Is(err, errEOF):
					dropped++
				default:
					t.Fatalf("round %d: %v", i, err)
				}
				if err != nil {
					// Dropped: the server must say so, then we start over.
					ev := h.waitTorn()
					if !errors.Is(ev.err, ErrProtocol) {
						t.Errorf("round %d: connection ended with %v", i, ev.err)
					}
					p.close()
					h.checkpoint()
					p = rawConnect(t, h.addr)
					p.handshake(rawHello(1, testService, features, small, 0))
				}
			}
			h.slowHook.Store(nil)
			t.Logf("features %#x: %d rounds: %d answered intact, %d answered with changed bytes, %d dropped",
				features, rounds, answered, garbage, dropped)
			p.close()
			h.waitTorn()
		}
		h.checkpoint()
		h.checkResources()
	})

	t.Run("never reads dispatch", func(t *testing.T) {
		for _, policy := range []Policy{PolicyDisconnect, PolicyDrop, PolicyBlock} {
			t.Run(policy.String(), func(t *testing.T) {
				h := newHostileHarness(t, &Config{DispatchQueue: 16, DispatchPolicy: policy})
				errs0 := h.srv.Stats().Errors
				p := rawDialPeer(t, h.addr, testService, small)
				for i := range 4 {
					p.request(msgDispatch, uint64(i), []byte{255})
				}
				switch policy {
				case PolicyDisconnect:
					h.expectDrop(errs0, ErrSlowConsumer)
					p.close()
				case PolicyDrop:
					for range 4 {
						resp, err := p.readResponse(time.Now().Add(time.Minute))
						if err != nil {
							t.Fatal(err)
						}
						if resp.status != 2 || resp.code != 1 {
							t.Errorf("response %+v, want a handler error with code 1", resp)
						}
					}
					if d := binary.LittleEndian.Uint64(p.ctl[8:]); d == 0 || h.srv.Stats().Dropped != d {
						t.Errorf("control block says %d dropped, server stats %d", d, h.srv.Stats().Dropped)
					}
					h.expectKept(p)
				case PolicyBlock:
					// The handler waits for room that never comes; only this
					// connection is stuck.
					h.checkpoint()
					h.expectKept(p)
				}
				h.checkResources()
			})
		}
	})

	t.Run("resize segment", func(t *testing.T) {
		h := newHostileHarness(t, nil)
		p := rawDialPeer(t, h.addr, testService, small)
		var st unix.Stat_t
		unix.Fstat(p.memfd, &st)
		for _, size := range []int64{0, st.Size - 4096, st.Size + 4096, 1 << 30} {
			if err := unix.Ftruncate(p.memfd, size); err != unix.EPERM {
				t.Errorf("ftruncate to %d: %v, want EPERM (sealed)", size, err)
			}
		}
		if err := unix.Fallocate(p.memfd, 0, st.Size, 4096); err != unix.EPERM {
			t.Errorf("fallocate past the end: %v, want EPERM", err)
		}
		if _, err := unix.FcntlInt(uintptr(p.memfd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); err != unix.EPERM {
			t.Errorf("adding F_SEAL_WRITE: %v, want EPERM (F_SEAL_SEAL)", err)
		}
		if resp, err := p.call(msgEcho, 1, []byte("same size")); err != nil || string(resp.body) != "same size" {
			t.Errorf("call after resize attempts: %+v, %v", resp, err)
		}
		h.expectKept(p)
		h.checkResources()
	})

	t.Run("tokens", func(t *testing.T) {
		h := newHostileHarness(t, nil)
		// A flood of tokens for the word the server sleeps on is noise.
		p := rawDialPeer(t, h.addr, testService, small)
		flood := bytes.Repeat([]byte{0x01}, 1<<16)
		if err := p.send(flood); err != nil {
			t.Fatal(err)
		}
		if resp, err := p.call(msgEcho, 1, []byte("after the flood")); err != nil || resp.corr != 1 {
			t.Errorf("call after a token flood: %+v, %v", resp, err)
		}
		h.expectKept(p)
		// Tokens the server never sleeps for, and unknown bytes, are not.
		for _, tok := range []byte{0x02, 0x11, 0x21, 0x00, 0x03, 0xff} {
			errs0 := h.srv.Stats().Errors
			p := rawDialPeer(t, h.addr, testService, small)
			p.send([]byte{tok})
			h.expectDrop(errs0, ErrProtocol)
			p.close()
		}
		h.checkResources()
	})
}

func fillRand(b []byte) {
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
}
