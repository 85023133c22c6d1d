//go:build linux

package main

import (
	"encoding/binary"
	"fmt"

	"github.com/ringipc/ringipc/ring"
)

// pingpong: the parent sends a frame, a child echoes it, and the parent
// records each round trip in a histogram. The ring variant uses two SPSC
// rings in one segment, one each way; the uds variant one socket.

func init() {
	register(&scenario{
		name:    "pingpong",
		order:   20,
		minSize: 8,
		about:   "the parent sends a frame and waits for a child's echo before the next; msgs = round trips, p50/p99/p999 = round-trip time (paced: from the actual send)",
		runs:    map[string]runFunc{"ring": pingpongRing, "uds": pingpongUDS},
	})
	registerChild("pingpong-ring", pingpongRingChild)
	registerChild("pingpong-uds", pingpongUDSChild)
}

func pingpongRing(rc *runConfig) (measurement, error) {
	seg, err := newRingSegment(ring.Geometry{DataSize: rc.ringSize}, true)
	if err != nil {
		return measurement{}, err
	}
	defer seg.Close()
	second, _, _ := ringPairOffset(rc.ringSize)
	mem := seg.Payload()
	p, err := ring.NewProducer(mem[:second], rc.ringOptions())
	if err != nil {
		return measurement{}, err
	}
	c, err := ring.NewConsumer(mem[second:], rc.ringOptions())
	if err != nil {
		return measurement{}, err
	}
	return runPingPong(rc, ringWriter{p}, ringReader{c}, func(h *harness) error {
		return h.spawn("pingpong-ring", rc.childParams(0), seg.File())
	})
}

func pingpongUDS(rc *runConfig) (measurement, error) {
	conn, theirs, err := socketPair()
	if err != nil {
		return measurement{}, err
	}
	defer theirs.Close()
	defer conn.Close()
	return runPingPong(rc, udsWriter{conn}, newUDSReader(conn), func(h *harness) error {
		err := h.spawn("pingpong-uds", rc.childParams(0), theirs)
		theirs.Close()
		return err
	})
}

func runPingPong(rc *runConfig, w frameWriter, r frameReader, spawn func(*harness) error) (measurement, error) {
	h := newHarness(rc)
	defer h.cleanup()
	h.onAbort(func() { w.Close(); r.Close() })
	if err := spawn(h); err != nil {
		return measurement{}, err
	}
	if err := h.waitReady(); err != nil {
		return measurement{}, err
	}
	lat := newHistogram()
	h.startClock()
	var m meter
	err := ping(h, w, r, make([]byte, rc.size), make([]byte, rc.size), lat, &m, callPacer(rc.rate, 0, 1))
	h.failIf(err)
	w.Close() // ends the echo loop
	r.Close()
	res, err := h.finish(err, &m)
	res.lat = lat
	return res, err
}

// ping sends frames carrying sequence numbers, each in its slot when pc
// paces it, and records the time from each send until the echo is back,
// keeping only the round trips inside the window.
func ping(h *harness, w frameWriter, r frameReader, out, in []byte, lat *histogram, m *meter, pc *pacer) error {
	// pc.since reads one clock (time.Since on a time with a monotonic
	// reading); time.Now reads two.
	for seq := uint64(0); ; seq++ {
		binary.LittleEndian.PutUint64(out, seq)
		if pc.paced() {
			pc.wait()
		}
		t0 := pc.since()
		if err := w.writeFrame(out); err != nil {
			return fmt.Errorf("send frame %d: %w", seq, err)
		}
		if err := r.readFrame(in); err != nil {
			return fmt.Errorf("read echo %d: %w", seq, err)
		}
		rtt := pc.since() - t0
		if got := binary.LittleEndian.Uint64(in); got != seq {
			return fmt.Errorf("echo of frame %d carries sequence number %d", seq, got)
		}
		was := m.seen
		more := m.tick(h)
		if was == phaseWarmup && m.seen != phaseWarmup {
			lat.reset() // the window starts: forget the warm-up
		}
		lat.record(int64(rtt))
		if !more {
			return nil
		}
	}
}

// echo sends back every frame it reads until the run ends.
func echo(r frameReader, w frameWriter, buf []byte) (uint64, error) {
	for n := uint64(0); ; n++ {
		err := r.readFrame(buf)
		if err == nil {
			err = w.writeFrame(buf)
		}
		if err != nil {
			if endOfRun(err) {
				return n, nil
			}
			return n, fmt.Errorf("echo frame %d: %w", n, err)
		}
	}
}

func pingpongRingChild(cc *childCtx) (uint64, error) {
	seg, err := openRingSegment(cc.files[0], true, cc.p.RingSize)
	if err != nil {
		return 0, err
	}
	defer seg.Close()
	second, _, err := ringPairOffset(cc.p.RingSize)
	if err != nil {
		return 0, err
	}
	mem := seg.Payload()
	c, err := ring.NewConsumer(mem[:second], cc.ringOptions())
	if err != nil {
		return 0, err
	}
	p, err := ring.NewProducer(mem[second:], cc.ringOptions())
	if err != nil {
		return 0, err
	}
	cc.ready()
	return echo(ringReader{c}, ringWriter{p}, make([]byte, cc.p.Size))
}

func pingpongUDSChild(cc *childCtx) (uint64, error) {
	conn, err := openSocket(cc.files[0])
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	cc.ready()
	return echo(newUDSReader(conn), udsWriter{conn}, make([]byte, cc.p.Size))
}
