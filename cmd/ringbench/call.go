//go:build linux

package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/ringipc/ringipc/ipc"
)

// call: one goroutine of the parent calls a server in a child, waiting
// for each response before the next request, and records every round trip
// in a histogram. The ipc variant calls Client.CallInto against an echo
// handler; the uds variant writes a length-prefixed request on a socket,
// and the child reads it and writes it back.

func init() {
	register(&scenario{
		name:         "call",
		rpc:          true,
		order:        40,
		minSize:      8,
		defaultRates: []int{0, 1000, 10000},
		about: "one goroutine of the parent calls an echo server in a child and waits for each response; " +
			"msgs = calls, p50/p99/p999 = call time of a random 1 in 8 calls, of every call when paced (ipc: Client.CallInto, handler ResponseWriter.Respond; " +
			"uds: a length-prefixed request written with one write(2), the response read back through a bufio.Reader; " +
			"futex: the floor, see futex above; c: the C client of clients/c calling the same server, see ccall.go)",
		zeroCopy: true,
		runs:     map[string]runFunc{"ipc": callIPC, "uds": callUDS, "futex": callFutex, "c": callC},
	})
	registerChild("rpc-uds", rpcUDSChild)
}

// A caller makes one call: it sends req and fills resp, which has the
// length of req, with the response. Every call carries a tag (see
// putTag) in the first 8 bytes of req, which the echo must bring back.
type caller interface {
	call(req, resp []byte) error
}

// The tag of a call: the calling goroutine in the top 16 bits, its call
// number in the rest.
func callTag(g int, seq uint64) uint64 { return uint64(g)<<48 | seq&(1<<48-1) }

func putTag(b []byte, tag uint64) { binary.LittleEndian.PutUint64(b, tag) }
func getTag(b []byte) uint64      { return binary.LittleEndian.Uint64(b) }

// callLoop calls c until the run ends, as goroutine g, and records the
// round trips of the window in lat. Paced by pc, it waits for each call's
// slot first and times every call, from the moment it is sent (the clock
// is read for the schedule anyway). Unpaced, it calls back to back and
// times a uniform random sample of one call in latencyStride: timing
// every call would read the clock twice per call (~25 ns each on the
// development VM), a sixth of a pipelined ipc call, and that cost would
// be counted as the transport's; a sample of one in eight still holds
// hundreds of thousands of calls per result (JSON lat_samples), plus the
// window's first call, always timed.
func callLoop(h *harness, c caller, g int, req, resp []byte, lat *histogram, m *meter, pc *pacer) error {
	rng := uint64(g)*0x9e3779b97f4a7c15 | 1
	paced := pc.paced()
	for seq := uint64(0); ; seq++ {
		tag := callTag(g, seq)
		putTag(req, tag)
		rng ^= rng << 13 // xorshift64
		rng ^= rng >> 7
		rng ^= rng << 17
		// The first call of the window is always timed, so that a window
		// with calls has percentiles, however few the calls (a loaded
		// machine may stall a loop for most of a short window).
		first := m.seen == phaseMeasure && m.n == m.at[0]
		timed := paced || first || rng%latencyStride == 0
		var t0 time.Duration
		if paced {
			pc.wait()
		}
		if timed {
			t0 = pc.since()
		}
		if err := c.call(req, resp); err != nil {
			return fmt.Errorf("call %d of goroutine %d: %w", seq, g, err)
		}
		var rtt time.Duration
		if timed {
			rtt = pc.since() - t0
		}
		if got := getTag(resp); got != tag {
			return fmt.Errorf("call %d of goroutine %d: response tagged %#x, want %#x", seq, g, got, tag)
		}
		was := m.seen
		more := m.tick(h)
		if was == phaseWarmup && m.seen != phaseWarmup {
			lat.reset() // the window starts: forget the warm-up
		}
		if timed {
			lat.record(int64(rtt))
		}
		if !more {
			return nil
		}
	}
}

// callPacer is the schedule of calling goroutine g of n at rate calls/s
// each: their first slots are spread over one period, so that they do not
// all call at the same instant.
func callPacer(rate, g, n int) *pacer {
	var offset time.Duration
	if rate > 0 {
		offset = time.Second / time.Duration(rate) * time.Duration(g) / time.Duration(max(n, 1))
	}
	pc := newPacer(rate, offset)
	return &pc
}

// latencyStride: callLoop times one call in this many.
const latencyStride = 8

// ipcZCCaller makes zero-copy calls (-zerocopy): the request is written
// in place (Client.Reserve, only its head), the handler answers in place
// (benchEchoZC) and the response's head is read in place until Release.
type ipcZCCaller struct{ cl *ipc.Client }

func (c ipcZCCaller) call(req, resp []byte) error {
	p, err := c.cl.Reserve(bg, benchEchoZC, len(req))
	if err != nil {
		return err
	}
	copy(p.Bytes(), head(req))
	r, err := p.Send(bg)
	if err != nil {
		return err
	}
	if len(r.Data) != len(req) {
		err = fmt.Errorf("%d-byte response to a %d-byte request", len(r.Data), len(req))
	}
	copy(resp, head(r.Data))
	if rerr := r.Release(); err == nil {
		err = rerr
	}
	return err
}

// ipcCaller calls the echo handler with CallInto, which allocates nothing.
type ipcCaller struct{ cl *ipc.Client }

func (c ipcCaller) call(req, resp []byte) error {
	n, err := c.cl.CallInto(bg, benchEcho, req, resp)
	if err == nil && n != len(req) {
		err = fmt.Errorf("%d-byte response to a %d-byte request", n, len(req))
	}
	return err
}

func callIPC(rc *runConfig) (measurement, error) { return ipcCalls(rc, 1) }

// ipcCalls runs goroutines callers sharing one Client of a server child.
func ipcCalls(rc *runConfig, goroutines int) (measurement, error) {
	h := newHarness(rc)
	defer h.cleanup()
	cl, err := startIPC(h, nil)
	if err != nil {
		return measurement{}, err
	}
	defer cl.Close()
	callers := make([]caller, goroutines)
	for g := range callers {
		if rc.zerocopy {
			callers[g] = ipcZCCaller{cl}
		} else {
			callers[g] = ipcCaller{cl}
		}
	}
	return runCalls(h, callers, func() { cl.Close() })
}

func callUDS(rc *runConfig) (measurement, error) {
	return withRPCUDSChild(rc, func(h *harness, conn net.Conn) (measurement, error) {
		return runCalls(h, []caller{newUDSCaller(conn, rc.size)}, func() { conn.Close() })
	})
}

// withRPCUDSChild starts the Unix-socket echo server child on a socket
// pair and, once it is ready, runs f with the parent's end.
func withRPCUDSChild(rc *runConfig, f func(h *harness, conn net.Conn) (measurement, error)) (measurement, error) {
	conn, theirs, err := socketPair()
	if err != nil {
		return measurement{}, err
	}
	defer theirs.Close()
	defer conn.Close()
	h := newHarness(rc)
	defer h.cleanup()
	h.onAbort(func() { conn.Close() })
	err = h.spawn("rpc-uds", rc.childParams(0), theirs)
	theirs.Close() // so that the child's death reads as EOF here
	if err != nil {
		return measurement{}, err
	}
	if err := h.waitReady(); err != nil {
		return measurement{}, err
	}
	return f(h, conn)
}

// runCalls runs one call loop per caller, each on its own goroutine (the
// first on this one), for the window, then closes the connection with
// stop and collects the measurement: the calls of every loop, their
// round trips in one histogram.
func runCalls(h *harness, callers []caller, stop func()) (measurement, error) {
	size := h.rc.size
	type loop struct {
		m   meter
		lat *histogram
		err error
		_   [128]byte // the loops' meters must not share a cache line
	}
	loops := make([]*loop, len(callers))
	for i := range loops {
		loops[i] = &loop{lat: newHistogram()}
	}
	run := func(g int) {
		l := loops[g]
		l.err = callLoop(h, callers[g], g, payload(size), make([]byte, size), l.lat, &l.m,
			callPacer(h.rc.rate, g, len(callers)))
		h.failIf(l.err) // ends every other loop too
	}
	h.startClock()
	done := make(chan struct{}, len(callers))
	for g := 1; g < len(callers); g++ {
		go func() { run(g); done <- struct{}{} }()
	}
	run(0)
	for range len(callers) - 1 {
		<-done
	}
	stop() // ends the server's loop
	var errs []error
	meters := make([]*meter, len(loops))
	lat := loops[0].lat
	for i, l := range loops {
		errs = append(errs, l.err)
		meters[i] = &l.m
		if i > 0 {
			lat.merge(l.lat)
		}
	}
	res, err := h.finish(firstErr(errs), meters...)
	res.lat = lat
	return res, err
}

func firstErr(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// The uds request and response frame: a header of the body's length (u32)
// and the call's correlation id (u64), then the body. The echo server
// sends back each frame as it read it.
const rpcHeader = 12

func putRPCHeader(b []byte, n int, corr uint64) {
	binary.LittleEndian.PutUint32(b, uint32(n))
	binary.LittleEndian.PutUint64(b[4:], corr)
}

func getRPCHeader(b []byte) (n int, corr uint64) {
	return int(binary.LittleEndian.Uint32(b)), binary.LittleEndian.Uint64(b[4:])
}

// udsCaller makes one call at a time on its socket: one write(2) of the
// whole request frame, then the response frame through a bufio.Reader.
type udsCaller struct {
	c     net.Conn
	br    *bufio.Reader
	frame []byte // header and body of the request
	hdr   []byte
	corr  uint64
}

func newUDSCaller(c net.Conn, size int) *udsCaller {
	return &udsCaller{
		c: c, br: bufio.NewReaderSize(c, udsReadBuffer),
		frame: make([]byte, rpcHeader+size), hdr: make([]byte, rpcHeader),
	}
}

func (u *udsCaller) call(req, resp []byte) error {
	u.corr++
	putRPCHeader(u.frame, len(req), u.corr)
	copy(u.frame[rpcHeader:], req)
	if _, err := u.c.Write(u.frame); err != nil {
		return err
	}
	if _, err := io.ReadFull(u.br, u.hdr); err != nil {
		return err
	}
	if n, corr := getRPCHeader(u.hdr); n != len(resp) || corr != u.corr {
		return fmt.Errorf("response of %d bytes to call %d, want %d bytes to call %d", n, corr, len(resp), u.corr)
	}
	_, err := io.ReadFull(u.br, resp)
	return err
}

// rpcUDSChild is the uds echo server of call and pipeline: it reads
// request frames in order through a bufio.Reader and writes each back
// with one write(2), until the parent closes its end.
func rpcUDSChild(cc *childCtx) (uint64, error) {
	conn, err := openSocket(cc.files[0])
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	cc.ready()
	return echoRPC(conn, cc.p.Size)
}

// echoRPC answers request frames of up to size bytes on conn until the
// other side closes it.
func echoRPC(conn net.Conn, size int) (uint64, error) {
	br := bufio.NewReaderSize(conn, udsReadBuffer)
	frame := make([]byte, rpcHeader+size)
	for sent := uint64(0); ; sent++ {
		_, err := io.ReadFull(br, frame[:rpcHeader])
		if err == nil {
			n, _ := getRPCHeader(frame)
			if n > size {
				return sent, fmt.Errorf("request %d of %d bytes, want at most %d", sent, n, size)
			}
			if _, err = io.ReadFull(br, frame[rpcHeader:rpcHeader+n]); err == nil {
				_, err = conn.Write(frame[:rpcHeader+n])
			}
		}
		if err != nil {
			if endOfRun(err) {
				return sent, nil
			}
			return sent, fmt.Errorf("echo request %d: %w", sent, err)
		}
	}
}
