//go:build linux

package main

import (
	"context"
	"fmt"

	"github.com/ringipc/ringipc/ipc"
)

// dispatch: a server in a child sends the parent a stream of dispatch
// messages, as fast as it can; the parent counts them and checks that
// message i carries sequence number i. The ipc variant's server calls
// Conn.Dispatch in a loop (PolicyBlock: it waits when the client's ring
// and the connection's queue are full) and the client takes the messages
// with ClientOptions.OnDispatch, which hands each over in place, without
// a copy or an allocation (Recv copies each into a new slice; the two
// were not timed against each other). The uds
// variant is spsc's: the child writes fixed-size frames on a socket with
// one write(2) each, the parent reads them through a bufio.Reader.

func init() {
	register(&scenario{
		name:         "dispatch",
		rpc:          true,
		order:        60,
		minSize:      8,
		pacedMinSize: 16,
		about: "a server in a child sends dispatch messages to the parent as fast as it can (paced: at -rate); the parent checks " +
			"every sequence number; msgs = messages received, paced: p50/p99/p999 = from each message's slot to its receipt (ipc: Conn.Dispatch with PolicyBlock, received " +
			"with ClientOptions.OnDispatch, in place: no copy, no allocation, where Recv allocates a copy of each; uds: as spsc)",
		zeroCopy: true,
		runs:     map[string]runFunc{"ipc": dispatchIPC, "uds": spscUDS}, // the uds baseline is spsc's
	})
}

// dispatchSink is the parent's receiving loop: its receive method is the
// client's OnDispatch, called on the client's dispatch goroutine, which
// owns the sink until done is closed.
type dispatchSink struct {
	h    *harness
	size int
	m    meter
	st   *stamps // times a paced stream; nil when unpaced
	next uint64
	over bool
	err  error         // why the loop stopped early
	done chan struct{} // closed when the window is over or on err
}

func (s *dispatchSink) receive(id uint16, body []byte) {
	if s.over {
		return // the parent is closing the client
	}
	switch {
	case id != benchFrame || len(body) != s.size:
		s.err = fmt.Errorf("dispatch message %d: id %d with %d bytes, want id %d with %d", s.next, id, len(body), benchFrame, s.size)
	case getTag(body) != s.next:
		s.err = fmt.Errorf("dispatch message %d carries sequence number %d", s.next, getTag(body))
	default:
		s.next++
		was := s.m.seen
		more := s.m.tick(s.h)
		s.st.observe(body, was, s.m.seen)
		if more {
			return
		}
	}
	s.over = true
	close(s.done)
}

func dispatchIPC(rc *runConfig) (measurement, error) {
	h := newHarness(rc)
	defer h.cleanup()
	sink := &dispatchSink{h: h, size: rc.size, st: newStamps(rc.rate, 8), done: make(chan struct{})}
	cl, err := startIPC(h, &ipc.ClientOptions{OnDispatch: sink.receive})
	if err != nil {
		return measurement{}, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(bg, readyTimeout)
	_, err = cl.Call(ctx, benchStream, nil)
	cancel()
	if err != nil {
		if herr := h.err(); herr != nil {
			return measurement{}, herr
		}
		return measurement{}, fmt.Errorf("start the stream: %w", err)
	}
	// The stream runs: the warm-up starts.
	h.startClock()
	var loopErr error
	select {
	case <-sink.done:
		loopErr = sink.err
	case <-cl.Done():
		loopErr = fmt.Errorf("the connection ended: %w", cl.Err())
	case <-h.aborted:
		loopErr = h.err()
	}
	h.failIf(loopErr)
	// Close waits for the dispatch goroutine to return: the sink is
	// this goroutine's from here on.
	cl.Close() // ends the server's stream
	res, err := h.finish(loopErr, &sink.m)
	res.lat = sink.st.histogram()
	return res, err
}
