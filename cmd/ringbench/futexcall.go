//go:build linux

package main

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/ringipc/ringipc/futex"
	"github.com/ringipc/ringipc/shmseg"
)

// The futex transport of call: the floor of a call that sleeps. The parent
// and a child share a memfd holding a request word and a response word
// (on separate 128-byte lines) and a body each way. A call copies the
// request body in, stores the call's number in the request word and wakes
// it (FUTEX_WAKE, always: no waiter flag), then sleeps on the response
// word (FUTEX_WAIT) until the child has stored the same number there; the
// child sleeps on the request word the same way, copies the body back and
// wakes the response word. Neither side spins: each waits in the kernel
// at once, so the row shows what the cheapest sleeping path costs in the
// same run as the ipc row, and under the same pacing.
//
// A third word, closed, ends the run: whoever sets it then changes both
// words and wakes them, so a side between its check and its sleep cannot
// miss it (FUTEX_WAIT returns at once when the word has changed).

// Offsets in the segment's payload.
const (
	futexClosedOff = 0
	futexReqOff    = 128
	futexRespOff   = 256
	futexBodyOff   = 512
)

// segKindFutex marks the futex pair's segment; Params[0] is the body size.
const segKindFutex = 0x52420003

// errFutexClosed is how a side learns that the other ended the run.
var errFutexClosed = errors.New("futex link closed")

func init() {
	registerChild("rpc-futex", rpcFutexChild)
}

// futexLink is one side's view of the segment.
type futexLink struct {
	closed         *uint32
	req, resp      *uint32
	reqBody, rBody []byte
}

func futexBodyStride(size int) int { return (size + 127) &^ 127 }

// futexMemSize is the memory a link with size-byte bodies takes.
func futexMemSize(size int) int { return futexBodyOff + 2*futexBodyStride(size) }

// newFutexLink lays a link out in mem (a segment's payload; zeroed).
func newFutexLink(mem []byte, size int) (*futexLink, error) {
	stride := futexBodyStride(size)
	if len(mem) < futexMemSize(size) {
		return nil, fmt.Errorf("futex segment of %d bytes, want %d", len(mem), futexMemSize(size))
	}
	word := func(off int) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }
	return &futexLink{
		closed: word(futexClosedOff), req: word(futexReqOff), resp: word(futexRespOff),
		reqBody: mem[futexBodyOff : futexBodyOff+size],
		rBody:   mem[futexBodyOff+stride : futexBodyOff+stride+size],
	}, nil
}

// await sleeps on w until it holds want, or the link is closed. A value
// other than want and prev (the one it held before) is corruption.
func (l *futexLink) await(w *uint32, prev, want uint32) error {
	for {
		v := atomic.LoadUint32(w)
		if atomic.LoadUint32(l.closed) != 0 {
			return errFutexClosed
		}
		switch v {
		case want:
			return nil
		case prev:
		default:
			return fmt.Errorf("futex word holds %d, want %d or %d", v, prev, want)
		}
		if err := futex.Wait(w, v, futex.Forever); err != nil {
			return err
		}
	}
}

func (l *futexLink) post(w *uint32, v uint32) error {
	atomic.StoreUint32(w, v)
	_, err := futex.Wake(w, 1)
	return err
}

// close ends the run for both sides. Safe to call more than once and
// concurrently with the loops.
func (l *futexLink) close() {
	atomic.StoreUint32(l.closed, 1)
	for _, w := range []*uint32{l.req, l.resp} {
		atomic.AddUint32(w, 1<<31)
		futex.Wake(w, 0) //nolint:errcheck // the words are aligned: it cannot fail
	}
}

// futexCaller is the parent's side: one call at a time.
type futexCaller struct {
	l   *futexLink
	seq uint32
}

func (c *futexCaller) call(req, resp []byte) error {
	if len(req) != len(c.l.reqBody) {
		return fmt.Errorf("%d-byte request on a %d-byte futex link", len(req), len(c.l.reqBody))
	}
	prev := c.seq
	c.seq++
	copy(c.l.reqBody, req)
	if err := c.l.post(c.l.req, c.seq); err != nil {
		return err
	}
	if err := c.l.await(c.l.resp, prev, c.seq); err != nil {
		return err
	}
	copy(resp, c.l.rBody)
	return nil
}

func callFutex(rc *runConfig) (measurement, error) {
	seg, err := shmseg.CreateMemfd("ringbench-futex", shmseg.Geometry{
		Kind: segKindFutex, Params: [6]uint64{uint64(rc.size)},
	}, futexMemSize(rc.size))
	if err != nil {
		return measurement{}, err
	}
	defer seg.Close()
	l, err := newFutexLink(seg.Payload(), rc.size)
	if err != nil {
		return measurement{}, err
	}
	h := newHarness(rc)
	defer h.cleanup()
	h.onAbort(l.close)
	if err := h.spawn("rpc-futex", rc.childParams(0), seg.File()); err != nil {
		return measurement{}, err
	}
	if err := h.waitReady(); err != nil {
		return measurement{}, err
	}
	return runCalls(h, []caller{&futexCaller{l: l}}, l.close)
}

// rpcFutexChild echoes the parent's calls until it closes the link.
func rpcFutexChild(cc *childCtx) (uint64, error) {
	seg, err := shmseg.OpenFile(cc.files[0])
	if err != nil {
		cc.files[0].Close()
		return 0, err
	}
	defer seg.Close()
	if g := seg.Geometry(); g.Kind != segKindFutex || g.Params[0] != uint64(cc.p.Size) {
		return 0, fmt.Errorf("segment kind %#x with body size %d, want kind %#x with %d", g.Kind, g.Params[0], segKindFutex, cc.p.Size)
	}
	l, err := newFutexLink(seg.Payload(), cc.p.Size)
	if err != nil {
		return 0, err
	}
	cc.ready()
	return futexEcho(l)
}

// futexEcho answers calls on l until it is closed.
func futexEcho(l *futexLink) (uint64, error) {
	for seq := uint32(0); ; seq++ {
		if err := l.await(l.req, seq, seq+1); err != nil {
			if errors.Is(err, errFutexClosed) {
				return uint64(seq), nil
			}
			return uint64(seq), fmt.Errorf("wait for call %d: %w", seq+1, err)
		}
		copy(l.rBody, l.reqBody)
		if err := l.post(l.resp, seq+1); err != nil {
			return uint64(seq), err
		}
	}
}
