//go:build linux

package ipc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Server accepts IPC connections and serves their services. Its methods
// are safe for concurrent use. Register services before serving.
type Server struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	services  map[uint16]*Service
	tbl       table
	listeners map[net.Listener]struct{}
	handshake map[net.Conn]struct{}
	conns     map[*Conn]struct{}
	topics    map[uint32]*Topic // topic.go
	closing   bool              // no new connections; set by Shutdown and Close
	done      chan struct{}     // closed with closing
	wg        sync.WaitGroup

	// Admission accounting (admit.go), under mu: connections admitted and
	// not yet gone, what each uid holds, ring memory charged.
	nconns int
	uids   map[uint32]*uidUse
	mem    uint64

	// queued is the bytes in every connection's dispatch queue
	// (MaxQueuedBytes); each connection adds and takes its own under its
	// qMu.
	queued atomic.Int64

	hsSem  chan struct{}
	nextID atomic.Uint64
	stats  serverCounters

	// backlog counts the connection loops that have lately found their
	// requests waiting (backlog.go); written by every loop.
	backlog backlog

	// testHookTornDown, set by tests before serving, runs at the end of
	// every connection's teardown.
	testHookTornDown func(*Conn)
}

// NewServer returns a server with configuration cfg (nil: defaults).
func NewServer(cfg *Config) (*Server, error) {
	if cfg == nil {
		cfg = &Config{}
	}
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &Server{
		cfg:       c,
		log:       c.Logger,
		services:  make(map[uint16]*Service),
		tbl:       make(table),
		listeners: make(map[net.Listener]struct{}),
		handshake: make(map[net.Conn]struct{}),
		conns:     make(map[*Conn]struct{}),
		uids:      make(map[uint32]*uidUse),
		done:      make(chan struct{}),
		hsSem:     make(chan struct{}, c.MaxHandshakes),
	}, nil
}

// Register adds a service. Its id must be unused: a second service with
// the same id is an error matching os.ErrExist, a nil one os.ErrInvalid.
func (s *Server) Register(svc *Service) error {
	if svc == nil {
		return fmt.Errorf("ipc: register: %w: nil service", os.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.services[svc.ID]; ok {
		return fmt.Errorf("ipc: service %d: %w", svc.ID, os.ErrExist)
	}
	cp := *svc
	cp.stats = new(serviceStats)
	if cp.OnConnect == nil {
		cp.OnConnect = func(*Conn) error { return nil }
	}
	if cp.OnDisconnect == nil {
		cp.OnDisconnect = func(*Conn, error) {}
	}
	var hs []Handler
	for id, h := range svc.Handlers {
		if int(id) >= len(hs) {
			hs = append(hs, make([]Handler, int(id)+1-len(hs))...)
		}
		hs[id] = h
	}
	// The table is read without the lock by connection goroutines:
	// replace it, never change it in place.
	nt := make(table, len(s.tbl)+1)
	for k, v := range s.tbl {
		nt[k] = v
	}
	nt[svc.ID] = hs
	s.tbl = nt
	s.services[svc.ID] = &cp
	return nil
}

func (s *Server) selector() Selector {
	if s.cfg.Selector != nil {
		return s.cfg.Selector
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tbl
}

// ListenAndServe listens on address (see Listen; the socket file gets
// mode 0600) and serves it until Shutdown or Close.
func (s *Server) ListenAndServe(address string) error {
	l, err := Listen(address, 0)
	if err != nil {
		return err
	}
	return s.Serve(l)
}

// Serve accepts connections on l until Shutdown or Close, which make it
// return ErrServerClosed, or until l fails. Each connection is judged as
// soon as it is accepted (admit), and each handshake then runs in its own
// goroutine. A temporary accept failure (out of descriptors: EMFILE,
// ENFILE) does not end Serve: it waits, from 5 ms doubling up to 1 s, and
// tries again, so the server recovers once connections go away. Serve
// closes l when it returns.
func (s *Server) Serve(l net.Listener) error {
	if _, ok := l.(*net.UnixListener); !ok {
		return fmt.Errorf("ipc: serve: %w: need a *net.UnixListener, got %T", os.ErrInvalid, l)
	}
	if !s.trackListener(l, true) {
		l.Close()
		return ErrServerClosed
	}
	defer s.trackListener(l, false)
	defer l.Close()
	var delay time.Duration
	for {
		select {
		case s.hsSem <- struct{}{}:
		case <-s.done:
			return ErrServerClosed
		}
		nc, err := l.Accept()
		if err != nil {
			<-s.hsSem
			if s.isClosing() {
				return ErrServerClosed
			}
			if !temporaryAccept(err) {
				return fmt.Errorf("ipc: accept: %w", err)
			}
			s.stats.acceptErrors.Add(1)
			s.log.Warn("ipc: accept failed; retrying", "err", err)
			var open bool
			if delay, open = s.backoff(delay); !open {
				return ErrServerClosed
			}
			continue
		}
		delay = 0
		s.admit(nc.(*net.UnixConn), true)
	}
}

// AcceptReady accepts the connections pending on l without waiting, for
// an external poll loop that found l's descriptor (ListenerFd) readable.
// Each connection is judged at once (admit); each handshake runs in its
// own goroutine, so a silent client cannot stall the loop. With every
// handshake slot taken, AcceptReady still accepts and refuses the surplus
// (LimitHandshakes) rather than leave it in the backlog: a level-triggered
// loop would otherwise find the listener readable forever and spin. One
// call takes at most 64 connections, so that a flood of connects cannot
// keep the loop in it; the listener then stays readable and the loop
// comes back. A temporary failure (EMFILE, ENFILE) is returned: the
// connection stays in the backlog, so the loop should stop polling the
// listener for a moment.
func (s *Server) AcceptReady(l *net.UnixListener) error {
	if s.isClosing() {
		return ErrServerClosed
	}
	for range acceptBatch {
		uc, err := acceptNow(l)
		if err != nil || uc == nil {
			if err != nil {
				s.stats.acceptErrors.Add(1)
			}
			return err
		}
		slot := false
		select {
		case s.hsSem <- struct{}{}:
			slot = true
		default:
		}
		s.admit(uc, slot)
	}
	return nil
}

func (s *Server) trackListener(l net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closing {
			return false
		}
		s.listeners[l] = struct{}{}
	} else {
		delete(s.listeners, l)
	}
	return true
}

func (s *Server) isClosing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Shutdown stops accepting, lets every connection handle the requests
// waiting in its request ring until it finds the ring empty (with an
// external poll loop: the request in hand, or those the running Process
// finds) and send their responses, then closes them all, and waits until
// they are torn down (OnDisconnect has run) or ctx ends; then it falls
// back to Close. Calls whose requests were not handled fail with
// ErrDisconnected. It returns ctx's error if ctx ended first, joined
// (errors.Join) with what closing the listeners and releasing the
// connections failed with; nil normally.
func (s *Server) Shutdown(ctx context.Context) error {
	conns, lerr := s.stop()
	for _, c := range conns {
		c.drain()
	}
	terr := s.closeTopics() // subscribers drain the ring on their own
	waited := make(chan struct{})
	go func() { s.wg.Wait(); close(waited) }()
	select {
	case <-waited:
		errs := []error{lerr, terr}
		for _, c := range conns {
			errs = append(errs, c.tornErr) // written before forget's wg.Done
		}
		return errors.Join(errs...)
	case <-ctx.Done():
		return errors.Join(ctx.Err(), lerr, s.Close())
	}
}

// Close stops accepting and closes every connection at once; handlers in
// progress see their context done. It waits until every connection is
// torn down, and returns what closing the listeners and releasing those
// connections failed with (errors.Join), nil normally.
func (s *Server) Close() error {
	conns, lerr := s.stop()
	for _, c := range conns {
		c.kill(ErrServerClosed)
	}
	terr := s.closeTopics()
	s.wg.Wait()
	errs := []error{lerr, terr}
	for _, c := range conns {
		errs = append(errs, c.tornErr) // written before forget's wg.Done
	}
	return errors.Join(errs...)
}

// stop marks the server closing, closes listeners and pending handshakes,
// and returns the established connections and what closing the listeners
// failed with (one Serve has already closed is no failure).
func (s *Server) stop() ([]*Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closing {
		s.closing = true
		close(s.done)
	}
	s.closeRings() // topic.go: before any subscriber's socket closes
	var lerrs []error
	for l := range s.listeners {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			lerrs = append(lerrs, closeErr("close listener", err))
		}
	}
	for nc := range s.handshake {
		nc.Close()
	}
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns, errors.Join(lerrs...)
}

// forget retires a torn-down connection: its counters, its admission
// (connection count, memory), and its place in Conns and the wait group
// (only if it got there: a connection torn down inside its handshake
// never did).
func (s *Server) forget(c *Conn) {
	if c.adm != nil {
		s.release(c.adm) // before Conns stops listing it: whoever sees it gone can take its place
	}
	c.qMu.Lock()
	c.moveDispCounts()
	c.qMu.Unlock()
	// The counters move to the totals under the lock that takes the
	// connection out of Conns: Stats reads both under it, so it counts
	// a connection exactly once, live or retired, never neither.
	s.mu.Lock()
	_, registered := s.conns[c]
	delete(s.conns, c)
	s.stats.retire(&c.stats)
	c.svc.stats.retired.take(&c.stats)
	s.stats.tokensIn.Add(c.waker.tokensIn.Load())
	s.stats.tokensOut.Add(c.waker.tokensOut.Load())
	s.mu.Unlock()
	if registered {
		s.wg.Done()
	}
}

// Conns returns the established connections.
func (s *Server) Conns() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connsLocked()
}

// connsLocked lists the established connections; s.mu is held.
func (s *Server) connsLocked() []*Conn {
	out := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}
