//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/ringipc/ringipc/ring"
)

// mpsc: N producer processes stream to the parent. Frame k of producer id
// carries (id, k) in its first 16 bytes; the parent checks that each
// producer's frames arrive in order and none is missing. The ring variant
// shares one multi-producer ring; the uds variant gives every producer its
// own socket, read by one goroutine each.

func init() {
	register(&scenario{
		name:         "mpsc",
		order:        30,
		minSize:      16,
		perProducers: true,
		pacedMinSize: 24,
		about: "N producer processes stream to the parent, which checks each producer's order; msgs = frames received from all, " +
			"paced: each producer at -rate, p50/p99/p999 = from each frame's slot to its receipt " +
			"(ring: one shared MPSC ring; uds: one socket and one reading goroutine per producer)",
		runs: map[string]runFunc{"ring": mpscRing, "uds": mpscUDS},
	})
	registerChild("mpsc-ring", mpscRingChild)
	registerChild("mpsc-uds", mpscUDSChild)
}

func mpscRing(rc *runConfig) (measurement, error) {
	seg, err := newRingSegment(ring.Geometry{DataSize: rc.ringSize, Producers: rc.producers}, false)
	if err != nil {
		return measurement{}, err
	}
	defer seg.Close()
	c, err := ring.NewConsumer(seg.Payload(), rc.ringOptions())
	if err != nil {
		return measurement{}, err
	}
	r := ringReader{c}
	h := newHarness(rc)
	defer h.cleanup()
	h.onAbort(func() { r.Close() })
	for id := range rc.producers {
		if err := h.spawn("mpsc-ring", rc.childParams(id), seg.File()); err != nil {
			return measurement{}, err
		}
	}
	if err := h.waitReady(); err != nil {
		return measurement{}, err
	}
	h.startClock()
	var m meter
	st := newStamps(rc.rate, 16)
	err = receiveTagged(h, r, make([]byte, rc.size), 0, make([]uint64, rc.producers), &m, st)
	h.failIf(err)
	r.Close() // ends every producer's loop
	res, err := h.finish(err, &m)
	res.lat = st.histogram()
	return res, err
}

func mpscUDS(rc *runConfig) (measurement, error) {
	h := newHarness(rc)
	defer h.cleanup()
	readers := make([]frameReader, rc.producers)
	defer func() {
		for _, r := range readers {
			if r != nil {
				r.Close()
			}
		}
	}()
	for id := range readers {
		conn, theirs, err := socketPair()
		if err != nil {
			return measurement{}, err
		}
		r := newUDSReader(conn)
		readers[id] = r
		h.onAbort(func() { r.Close() })
		err = h.spawn("mpsc-uds", rc.childParams(id), theirs)
		theirs.Close()
		if err != nil {
			return measurement{}, err
		}
	}
	if err := h.waitReady(); err != nil {
		return measurement{}, err
	}
	h.startClock()
	meters := make([]meter, len(readers))
	errs := make([]error, len(readers))
	sts := make([]*stamps, len(readers))
	var wg sync.WaitGroup
	for id, r := range readers {
		wg.Go(func() {
			// A meter on this goroutine's stack: the loops' counters
			// must not share a cache line.
			var m meter
			st := newStamps(rc.rate, 16)
			err := receiveTagged(h, r, make([]byte, rc.size), id, make([]uint64, 1), &m, st)
			sts[id] = st
			h.failIf(err) // ends every other loop too
			r.Close()     // ends this producer's loop
			meters[id], errs[id] = m, err
		})
	}
	wg.Wait()
	ms := make([]*meter, len(meters))
	for i := range meters {
		ms[i] = &meters[i]
	}
	res, err := h.finish(errors.Join(errs...), ms...)
	if rc.rate > 0 {
		res.lat = newHistogram()
		for _, st := range sts {
			res.lat.merge(st.histogram())
		}
	}
	return res, err
}

// receiveTagged reads frames until the run ends. Each carries a producer id
// in [first, first+len(next)) and that producer's next sequence number;
// st times the frames of paced producers (nil: unpaced).
func receiveTagged(h *harness, r frameReader, buf []byte, first int, next []uint64, m *meter, st *stamps) error {
	for {
		if err := r.readFrame(buf); err != nil {
			return fmt.Errorf("read frame: %w", err)
		}
		id := binary.LittleEndian.Uint64(buf) - uint64(first)
		seq := binary.LittleEndian.Uint64(buf[8:])
		if id >= uint64(len(next)) {
			return fmt.Errorf("frame from producer %d, want %d..%d", id+uint64(first), first, first+len(next)-1)
		}
		if seq != next[id] {
			return fmt.Errorf("producer %d: frame %d carries sequence number %d", int(id)+first, next[id], seq)
		}
		next[id]++
		was := m.seen
		more := m.tick(h)
		st.observe(buf, was, m.seen)
		if !more {
			return nil
		}
	}
}

func mpscRingChild(cc *childCtx) (uint64, error) {
	buf := payload(cc.p.Size)
	binary.LittleEndian.PutUint64(buf, uint64(cc.p.ID))
	return streamRingChild(cc, buf, 8)
}

func mpscUDSChild(cc *childCtx) (uint64, error) {
	conn, err := openSocket(cc.files[0])
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	cc.ready()
	buf := payload(cc.p.Size)
	binary.LittleEndian.PutUint64(buf, uint64(cc.p.ID))
	return sendStream(udsWriter{conn}, buf, 8, callPacer(cc.p.Rate, 0, 1))
}
