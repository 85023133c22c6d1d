//go:build linux

package main

import (
	"encoding/binary"
	"fmt"

	"github.com/ringipc/ringipc/ring"
)

// spsc: a one-way stream from one producer process to the parent, which
// checks that frame i carries sequence number i.

func init() {
	register(&scenario{
		name:         "spsc",
		order:        10,
		minSize:      8,
		pacedMinSize: 16,
		about: "one producer process streams frames to the parent, which checks every sequence number; msgs = frames received " +
			"(paced: p50/p99/p999 = from each frame's slot to its receipt)",
		zeroCopy: true,
		runs:     map[string]runFunc{"ring": spscRing, "uds": spscUDS},
	})
	registerChild("spsc-ring", spscRingChild)
	registerChild("spsc-uds", spscUDSChild)
}

func spscRing(rc *runConfig) (measurement, error) {
	seg, err := newRingSegment(ring.Geometry{DataSize: rc.ringSize}, false)
	if err != nil {
		return measurement{}, err
	}
	defer seg.Close()
	c, err := ring.NewConsumer(seg.Payload(), rc.ringOptions())
	if err != nil {
		return measurement{}, err
	}
	var r frameReader = ringReader{c}
	if rc.zerocopy {
		r = zcRingReader{c}
	}
	return runStream(rc, r, func(h *harness) error {
		return h.spawn("spsc-ring", rc.childParams(0), seg.File())
	})
}

func spscUDS(rc *runConfig) (measurement, error) {
	conn, theirs, err := socketPair()
	if err != nil {
		return measurement{}, err
	}
	defer theirs.Close()
	r := newUDSReader(conn)
	defer r.Close()
	return runStream(rc, r, func(h *harness) error {
		err := h.spawn("spsc-uds", rc.childParams(0), theirs)
		theirs.Close() // so that the child's death reads as EOF here
		return err
	})
}

// runStream runs the parent's side of a one-way stream read from r.
func runStream(rc *runConfig, r frameReader, spawn func(*harness) error) (measurement, error) {
	h := newHarness(rc)
	defer h.cleanup()
	h.onAbort(func() { r.Close() })
	if err := spawn(h); err != nil {
		return measurement{}, err
	}
	if err := h.waitReady(); err != nil {
		return measurement{}, err
	}
	h.startClock()
	var m meter
	st := newStamps(rc.rate, 8)
	err := receiveStream(h, r, make([]byte, rc.size), &m, st)
	h.failIf(err)
	r.Close() // ends the producer's loop
	res, err := h.finish(err, &m)
	res.lat = st.histogram()
	return res, err
}

// receiveStream reads frames until the run ends; frame i must carry
// sequence number i in its first 8 bytes. st times the frames of a paced
// stream (nil: unpaced).
func receiveStream(h *harness, r frameReader, buf []byte, m *meter, st *stamps) error {
	for next := uint64(0); ; next++ {
		if err := r.readFrame(buf); err != nil {
			return fmt.Errorf("read frame %d: %w", next, err)
		}
		if got := binary.LittleEndian.Uint64(buf); got != next {
			return fmt.Errorf("frame %d carries sequence number %d", next, got)
		}
		was := m.seen
		more := m.tick(h)
		st.observe(buf, was, m.seen)
		if !more {
			return nil
		}
	}
}

// sendStream writes frames until the run ends, with sequence numbers 0,
// 1, ... at byte seqOff of buf; the rest of buf is sent as it is. Paced by
// pc, it sends each frame in its slot, with the slot's CLOCK_MONOTONIC
// instant at byte seqOff+8 (see stamps). It returns the frames sent.
func sendStream(w frameWriter, buf []byte, seqOff int, pc *pacer) (uint64, error) {
	for seq := uint64(0); ; seq++ {
		binary.LittleEndian.PutUint64(buf[seqOff:], seq)
		if pc.paced() {
			binary.LittleEndian.PutUint64(buf[seqOff+8:], uint64(pc.monoSlot(pc.wait())))
		}
		if err := w.writeFrame(buf); err != nil {
			if endOfRun(err) {
				return seq, nil
			}
			return seq, fmt.Errorf("write frame %d: %w", seq, err)
		}
	}
}

// payload returns a frame buffer of size bytes with a recognisable filler.
func payload(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*7 + 1)
	}
	return b
}

func spscRingChild(cc *childCtx) (uint64, error) {
	return streamRingChild(cc, payload(cc.p.Size), 0)
}

// streamRingChild attaches a producer to the ring segment the child was
// handed and streams buf, whose sequence number sits at seqOff, until told
// to stop (spsc and mpsc children alike).
func streamRingChild(cc *childCtx, buf []byte, seqOff int) (uint64, error) {
	seg, err := openRingSegment(cc.files[0], false, cc.p.RingSize)
	if err != nil {
		return 0, err
	}
	defer seg.Close()
	p, err := ring.NewProducer(seg.Payload(), cc.ringOptions())
	if err != nil {
		return 0, err
	}
	cc.ready()
	var w frameWriter = ringWriter{p}
	if cc.p.ZeroCopy {
		w = zcRingWriter{p}
	}
	return sendStream(w, buf, seqOff, callPacer(cc.p.Rate, 0, 1))
}

func spscUDSChild(cc *childCtx) (uint64, error) {
	conn, err := openSocket(cc.files[0])
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	cc.ready()
	return sendStream(udsWriter{conn}, payload(cc.p.Size), 0, callPacer(cc.p.Rate, 0, 1))
}
