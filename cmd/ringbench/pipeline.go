//go:build linux

package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync/atomic"
)

// pipeline: N goroutines of the parent call an echo server in a child
// concurrently over one connection, each waiting for its own response
// before its next call, so that up to N calls are in flight. The ipc
// variant shares one Client (CallInto), whose correlation ids match
// responses to callers. The uds variant shares one socket the same way:
// each goroutine writes its request frame, tagged with a correlation id,
// with one write(2), and a demultiplexing goroutine reads every response
// and hands it to its caller; the child's server (the one of call) reads
// the requests in order and writes each response back.
//
// One socket rather than N: it is the same shape as the ipc connection
// (one connection, one server loop answering in order), which is what the
// comparison is about. N sockets would also give the uds server N
// goroutines where the ipc server has one per connection.

func init() {
	register(&scenario{
		name:         "pipeline",
		rpc:          true,
		order:        50,
		minSize:      8,
		perGoroutine: true,
		about: "N goroutines (-goroutines, column gor) of the parent call an echo server in a child concurrently " +
			"over one connection (paced: each at -rate, their slots spread over a period); " +
			"msgs = calls completed by all, p50/p99/p999 = call time under that load (a random 1 in 8 calls, every call when paced) " +
			"(ipc: one Client shared, CallInto; uds: one socket shared, requests tagged with a correlation id and " +
			"written with one write(2) each, one goroutine reading and handing out the responses, the server " +
			"answering in order with one write(2) each)",
		runs: map[string]runFunc{"ipc": pipelineIPC, "uds": pipelineUDS},
	})
}

func pipelineIPC(rc *runConfig) (measurement, error) { return ipcCalls(rc, rc.goroutines) }

func pipelineUDS(rc *runConfig) (measurement, error) {
	return withRPCUDSChild(rc, func(h *harness, conn net.Conn) (measurement, error) {
		mux := newUDSMux(conn, rc.goroutines, rc.size)
		go mux.demux(h)
		callers := make([]caller, rc.goroutines)
		for g := range callers {
			callers[g] = muxCaller{mux, g}
		}
		return runCalls(h, callers, func() {
			mux.closing.Store(true)
			conn.Close() // ends the demultiplexer and the server's loop
			<-mux.dead
		})
	})
}

// udsMux shares one socket between calling goroutines.
type udsMux struct {
	c       net.Conn
	br      *bufio.Reader
	slots   []muxSlot
	closing atomic.Bool   // the parent closes the socket: not an error
	dead    chan struct{} // closed when the demultiplexer has returned
	err     error         // why, set before dead is closed
}

// muxSlot is one calling goroutine's mailbox. The caller sets resp and
// frame, then publishes the correlation id it waits for in armed (plus
// one: 0 means none); the demultiplexer takes it back with a swap, fills
// resp and signals ready. The atomic word orders the caller's use of its
// buffers before the demultiplexer's, and the channel the other way.
type muxSlot struct {
	armed atomic.Uint64
	resp  []byte
	frame []byte // the request frame, header and body
	ready chan struct{}
	_     [64]byte // slots are written by different goroutines
}

func newUDSMux(c net.Conn, goroutines, size int) *udsMux {
	m := &udsMux{
		c:     c,
		br:    bufio.NewReaderSize(c, udsReadBuffer),
		slots: make([]muxSlot, goroutines),
		dead:  make(chan struct{}),
	}
	for i := range m.slots {
		m.slots[i].frame = make([]byte, rpcHeader+size)
		m.slots[i].ready = make(chan struct{}, 1)
	}
	return m
}

// demux reads responses until the socket closes and hands each to the
// goroutine that waits for it.
func (m *udsMux) demux(h *harness) {
	err := m.readResponses()
	if !m.closing.Load() {
		m.err = fmt.Errorf("demultiplexer: %w", err)
		h.failIf(m.err)
	} else {
		m.err = fmt.Errorf("demultiplexer: %w", net.ErrClosed)
	}
	close(m.dead)
}

func (m *udsMux) readResponses() error {
	var hdr [rpcHeader]byte
	for {
		if _, err := io.ReadFull(m.br, hdr[:]); err != nil {
			return err
		}
		n, corr := getRPCHeader(hdr[:])
		g := corr >> 48
		if g >= uint64(len(m.slots)) {
			return fmt.Errorf("response with correlation id %#x: no goroutine %d", corr, g)
		}
		s := &m.slots[g]
		if want := s.armed.Swap(0); want != corr+1 {
			return fmt.Errorf("response with correlation id %#x, goroutine %d waits for %#x", corr, g, int64(want)-1)
		}
		if n != len(s.resp) {
			return fmt.Errorf("response of %d bytes to a %d-byte call", n, len(s.resp))
		}
		if _, err := io.ReadFull(m.br, s.resp); err != nil {
			return err
		}
		s.ready <- struct{}{}
	}
}

// muxCaller is goroutine g's side of a udsMux. Its correlation id is the
// call's tag, which callLoop makes unique and prefixes with g.
type muxCaller struct {
	m *udsMux
	g int
}

func (c muxCaller) call(req, resp []byte) error {
	s := &c.m.slots[c.g]
	corr := getTag(req)
	putRPCHeader(s.frame, len(req), corr)
	copy(s.frame[rpcHeader:], req)
	s.resp = resp
	s.armed.Store(corr + 1)
	// net.Conn serializes concurrent writes: each frame goes out whole.
	if _, err := c.m.c.Write(s.frame); err != nil {
		return err
	}
	select {
	case <-s.ready:
		return nil
	case <-c.m.dead:
		return c.m.err
	}
}
