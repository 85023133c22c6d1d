//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/ringipc/ringipc/ipc"
)

// broadcast: one publisher (the parent) sends a stream of messages to N
// subscriber processes (-subscribers), as fast as it can or at -rate (a
// daemon pushing changes to its watchers). The row's msgs/s
// is the publisher's rate; each subscriber counts what it received in its
// own window (sub_msgs_per_sec: their mean; sub_msgs_per_sec_min: the
// slowest). The ipc variant is a topic: the parent's ipc.Server publishes
// with Topic.Publish into one broadcast ring that every subscriber maps
// read-only and receives with SubscribeOptions.OnMessage (as dispatch
// receives with OnDispatch); the publisher never
// waits, so a subscriber slower than the publisher loses messages
// (ErrOverrun) and its rate is what it received. The uds variant has one
// socket per subscriber and the publisher writes each message to every
// socket (one write(2) each, waiting for the slowest). Paced, each
// message carries its slot's instant and every subscriber times every
// message it receives from there (p50/p99/p999 over all of them).

func init() {
	register(&scenario{
		name:           "broadcast",
		order:          80,
		minSize:        8,
		perSubscribers: true,
		pacedMinSize:   16,
		about: "the parent publishes to N subscriber processes (-subscribers, column cli) as fast as it can or at -rate; msgs = messages " +
			"published; per subscriber: what each received in the window (mean, min; checked in order); paced, p50/p99/p999 = " +
			"time from each message's slot to its receipt, every message at every subscriber; cpu = every process " +
			"(ipc: an ipc.Server topic, Topic.Publish into one broadcast ring the subscribers map read-only and read with " +
			"SubscribeOptions.OnMessage, the publisher never waits and a slower subscriber loses messages; uds: one socket per " +
			"subscriber, each message written to every socket)",
		runs: map[string]runFunc{"ipc": broadcastIPC, "uds": broadcastUDS},
	})
	registerChild("bcast-ipc-sub", bcastIPCSubChild)
	registerChild("bcast-uds-sub", bcastUDSSubChild)
}

const bcastTopic = 1

func broadcastIPC(rc *runConfig) (measurement, error) {
	h := newHarness(rc)
	defer h.cleanup()
	h.perChild = true
	srv, err := ipc.NewServer(&ipc.Config{MaxHandshakesPerUID: maxClients, MaxConnsPerUID: 2 * maxClients})
	if err != nil {
		return measurement{}, err
	}
	defer srv.Close()
	top, err := srv.AddTopic(ipc.TopicConfig{ID: bcastTopic, RingSize: rc.topicRingSize, MaxSubscribers: maxClients})
	if err != nil {
		return measurement{}, err
	}
	ringSize := top.RingSize()
	if top.MaxBody() < rc.size {
		return measurement{}, fmt.Errorf("a topic ring of %d bytes takes messages up to %d bytes (raise -ring-size)", ringSize, top.MaxBody())
	}
	addr := fmt.Sprintf("@ringbench-bcast-%d-%d", os.Getpid(), ipcAddrSeq.Add(1))
	l, err := ipc.Listen(addr, 0)
	if err != nil {
		return measurement{}, err
	}
	go srv.Serve(l) //nolint:errcheck // ends with srv.Close
	for i := range rc.clients {
		p := rc.childParams(i)
		p.Addr = addr
		if err := h.spawn("bcast-ipc-sub", p); err != nil {
			return measurement{}, err
		}
	}
	if err := h.waitReady(); err != nil {
		return measurement{}, err
	}
	h.onAbort(func() { top.Close() })
	h.startClock()
	body := payload(rc.size)
	var m meter
	pc := newPacer(rc.rate, 0)
	for seq := uint64(0); ; seq++ {
		stampSlot(&pc, body)
		putTag(body, seq)
		if err := top.Publish(benchFrame, body); err != nil {
			h.failIf(fmt.Errorf("publish: %w", err))
			break
		}
		if !m.tick(h) {
			break
		}
	}
	top.Close() // the subscribers drain and end
	res, err := h.finish(nil, &m)
	res.ringSize = ringSize
	return res, err
}

func bcastIPCSubChild(cc *childCtx) (uint64, error) {
	var (
		m        meter
		counting = true
		next     uint64
		bad      error
		st       = newStamps(cc.p.Rate, 8)
	)
	// Owned by the subscription's delivery goroutine until Delivered.
	receive := func(id uint16, data []byte) {
		switch {
		case bad != nil:
			return
		case len(data) != cc.p.Size || id != benchFrame || getTag(data) < next:
			bad = fmt.Errorf("message %d bytes, id %d, sequence %d after %d", len(data), id, getTag(data), next)
			return
		}
		next = getTag(data) + 1
		if counting {
			was := m.seen
			counting = m.tick(cc.h)
			st.observe(data, was, m.seen)
		}
	}
	ctx, cancel := context.WithTimeout(bg, readyTimeout)
	sub, err := ipc.Subscribe(ctx, cc.p.Addr, bcastTopic, &ipc.SubscribeOptions{
		Spin: cc.p.Spin, MaxRingSize: maxIPCRing,
		OnMessage: receive,
		OnOverrun: func(error) {}, // lost some; delivery goes on from a recent one
	})
	cancel()
	if err != nil {
		return 0, fmt.Errorf("subscribe: %w", err)
	}
	defer sub.Close()
	cc.ready()
	<-sub.Delivered() // the topic closed and every message before was delivered
	if bad != nil {
		return m.n, bad
	}
	if err := sub.Err(); !errors.Is(err, ipc.ErrClosedByServer) {
		return m.n, err
	}
	cc.window, cc.lat = windowOf(&m), st.histogram()
	return m.n, nil
}

// stampSlot waits for a paced publisher's next slot and writes its
// instant into body at byte 8 (see stamps); unpaced, it does nothing
// (not even read the clock).
func stampSlot(pc *pacer, body []byte) {
	if pc.paced() {
		putTag(body[8:], uint64(pc.monoSlot(pc.wait())))
	}
}

func broadcastUDS(rc *runConfig) (measurement, error) {
	h := newHarness(rc)
	defer h.cleanup()
	h.perChild = true
	conns := make([]net.Conn, 0, rc.clients)
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	defer closeAll()
	for i := range rc.clients {
		c, f, err := socketPair()
		if err != nil {
			return measurement{}, err
		}
		err = h.spawn("bcast-uds-sub", rc.childParams(i), f)
		f.Close()
		if err != nil {
			c.Close()
			return measurement{}, err
		}
		conns = append(conns, c)
	}
	if err := h.waitReady(); err != nil {
		return measurement{}, err
	}
	h.onAbort(closeAll)
	h.startClock()
	body := payload(rc.size)
	var m meter
	var loopErr error
	pc := newPacer(rc.rate, 0)
loop:
	for seq := uint64(0); ; seq++ {
		stampSlot(&pc, body)
		putTag(body, seq)
		for i, c := range conns {
			if _, err := c.Write(body); err != nil {
				loopErr = fmt.Errorf("write to subscriber %d: %w", i, err)
				break loop
			}
		}
		if !m.tick(h) {
			break
		}
	}
	h.failIf(loopErr)
	closeAll() // the subscribers read to the end and stop
	return h.finish(loopErr, &m)
}

func bcastUDSSubChild(cc *childCtx) (uint64, error) {
	conn, err := openSocket(cc.files[0])
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	r := bufio.NewReaderSize(conn, udsReadBuffer)
	buf := make([]byte, cc.p.Size)
	cc.ready()
	var m meter
	counting := true
	st := newStamps(cc.p.Rate, 8)
	for next := uint64(0); ; next++ {
		if _, err := io.ReadFull(r, buf); err != nil {
			if errors.Is(err, io.EOF) {
				cc.window, cc.lat = windowOf(&m), st.histogram()
				return m.n, nil
			}
			return m.n, err
		}
		if getTag(buf) != next {
			return m.n, fmt.Errorf("frame %d carries sequence %d", next, getTag(buf))
		}
		if counting {
			was := m.seen
			counting = m.tick(cc.h)
			st.observe(buf, was, m.seen)
		}
	}
}

// windowOf is what a receiver's meter counted in the window, also when
// the window's end came after its last message (no tick saw it): then
// the window holds everything from its start.
func windowOf(m *meter) uint64 {
	switch {
	case m.seen >= phaseDone:
		return m.at[1] - m.at[0]
	case m.seen == phaseMeasure:
		return m.n - m.at[0]
	}
	return 0
}
