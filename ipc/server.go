//go:build linux

package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
	"golang.org/x/sys/unix"
)

// Policy says what Conn.Dispatch does when the dispatch ring and the
// connection's dispatch queue are both full: the client is not reading.
type Policy int

const (
	// PolicyBlock waits for room until the Dispatch context ends.
	PolicyBlock Policy = iota
	// PolicyDrop discards the message, counts it, and returns ErrDropped.
	PolicyDrop
	// PolicyDisconnect closes the connection and returns ErrSlowConsumer.
	PolicyDisconnect
)

func (p Policy) String() string {
	switch p {
	case PolicyBlock:
		return "block"
	case PolicyDrop:
		return "drop"
	case PolicyDisconnect:
		return "disconnect"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// DefaultSpin is the polling budget of a side whose Wait is ring.WaitSpin
// and whose Spin is 0 (the default is adaptive: ring.AdaptiveSpin). It is
// ring.DefaultSpin, whose reasoning holds here too: a wake-up through the
// socket and the netpoller costs about as much as a futex wake-up plus
// goroutine hand-offs, and a budget close to that cost lets two sides
// fall into lockstep, each asleep whenever the other answers.
const DefaultSpin = ring.DefaultSpin

// Ring size limits, in bytes of a ring's data area.
const (
	// MinRingSize is the smallest ring a connection may have.
	MinRingSize = 4 << 10
	// DefaultRingSize is a ring's size where the client asks for 0
	// (Config.RingSize).
	DefaultRingSize = 64 << 10
	// DefaultMaxRingSize is the largest ring a server grants and a
	// client accepts by default (Config.MaxRingSize,
	// ClientOptions.MaxRingSize).
	DefaultMaxRingSize = 16 << 20
	// DefaultMaxRing is the old name of DefaultMaxRingSize.
	//
	// Deprecated: use DefaultMaxRingSize.
	DefaultMaxRing = DefaultMaxRingSize
)

// Defaults of the Config fields not bounded elsewhere (see admit.go and
// dispatch.go for the connection, memory and queue-size limits).
const (
	// DefaultHandshakeTimeout bounds one client's whole handshake
	// (Config.HandshakeTimeout).
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultDispatchQueue is how many dispatch messages a connection
	// queues when its dispatch ring is full (Config.DispatchQueue).
	DefaultDispatchQueue = 1024
)

// Config tunes a Server. The zero value is usable; NewServer fills in
// the values its zero fields stand for.
type Config struct {
	// Authorize decides whether a peer may connect. Nil accepts only
	// the server's own effective uid and root. It runs on the accepting
	// goroutine (Serve, AcceptReady) as soon as a connection is
	// accepted, before the peer has sent anything: keep it quick.
	Authorize func(Cred) error
	// HandshakeTimeout bounds the whole handshake of one client; one that
	// has not finished by then is dropped. 0 means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds handshakes in progress: Serve stops accepting
	// while that many are (the rest wait in the listen backlog);
	// AcceptReady refuses the surplus (LimitHandshakes). 0 means
	// DefaultMaxHandshakes.
	MaxHandshakes int
	// MaxHandshakesPerUID bounds the handshakes in progress of one uid,
	// so that no authorized user can hold every slot with silent
	// connections; one more is refused (LimitHandshakesPerUID). 0 means
	// DefaultMaxHandshakesPerUID.
	MaxHandshakesPerUID int
	// MaxConns and MaxConnsPerUID bound the connections (in handshake or
	// established) of the server and of one uid; one more is refused
	// (LimitConns, LimitConnsPerUID). 0 means DefaultMaxConns and
	// DefaultMaxConnsPerUID.
	MaxConns       int
	MaxConnsPerUID int
	// MaxMemory bounds the shared memory of every connection together, in
	// bytes (each connection's segment: its three rings and their
	// headers); a handshake that would pass it is refused (LimitMemory).
	// 0 means DefaultMaxMemory.
	MaxMemory int64
	// RingSize is a ring's data size when the client asks for 0;
	// MaxRingSize clamps what clients ask for. Powers of two; 0 means
	// DefaultRingSize and DefaultMaxRingSize.
	RingSize    int
	MaxRingSize int
	// DispatchQueue is how many dispatch messages a connection queues
	// when its dispatch ring is full before DispatchPolicy applies.
	// 0 means DefaultDispatchQueue; negative means no queue.
	DispatchQueue  int
	DispatchPolicy Policy
	// DispatchQueueBytes bounds the bytes of the messages one
	// connection's dispatch queue holds, and MaxQueuedBytes those of every
	// connection's queue together; a message that would pass either is
	// not queued and DispatchPolicy applies (under PolicyBlock, a
	// connection with nothing queued then waits for ring space instead).
	// 0 means DefaultDispatchQueueBytes and DefaultMaxQueuedBytes.
	DispatchQueueBytes int
	MaxQueuedBytes     int64
	// Wait is how a connection waits on its rings (ring.WaitPolicy):
	// the zero value lets Spin decide, and with Spin 0 that is
	// ring.WaitAdaptive, which polls only while the client's traffic is
	// dense and sleeps at once otherwise.
	Wait ring.WaitPolicy
	// Spin is the polling budget (ring.Options.Spin): with Wait left 0, 0
	// means adaptive, a positive value a fixed budget (ring.WaitSpin), a
	// negative value sleep at once (ring.WaitSleep).
	Spin time.Duration
	// Selector routes requests; nil means the Handlers of the registered
	// services.
	Selector Selector
	// EventLoop, when set, drives connections from the caller's poll
	// loop instead of goroutines (see EventLoop).
	EventLoop EventLoop
	// MaxTurnRequests bounds the requests one Process call handles when
	// EventLoop is a Requeuer. 0 means DefaultMaxTurnRequests.
	MaxTurnRequests int
	// Logger receives structured logs; nil is silent.
	Logger *slog.Logger
}

// EventLoop hands connections to an external poll loop. AddConn is called
// once a connection is established: poll c.Fd() for readability and call
// c.Process whenever it is readable (level-triggered, or drain until
// Process returns). RemoveConn is called once when the connection ends,
// before its descriptor is closed. Both are called from server goroutines.
type EventLoop interface {
	AddConn(c *Conn)
	RemoveConn(c *Conn)
}

// A Requeuer is an EventLoop that can give a connection another turn
// without its descriptor polling readable. With one, each Process call
// handles at most Config.MaxTurnRequests requests, so that a client that
// keeps its request ring fed cannot hold the loop in one call; when
// Process stops there it calls Requeue(c) (on the loop's goroutine,
// before it returns), and the loop should call c.Process again once it
// has served the other ready descriptors, without waiting in poll. A
// loop that is not a Requeuer gets no such bound: Process then handles
// requests until it finds the ring empty. Either way one call reads a
// bounded amount of wake tokens.
type Requeuer interface {
	Requeue(c *Conn)
}

// DefaultMaxTurnRequests is Config.MaxTurnRequests when left 0.
const DefaultMaxTurnRequests = 64

func (cfg *Config) withDefaults() Config {
	c := *cfg
	if c.Authorize == nil {
		c.Authorize = DefaultAuthorize
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = DefaultMaxHandshakes
	}
	if c.MaxHandshakesPerUID <= 0 {
		c.MaxHandshakesPerUID = DefaultMaxHandshakesPerUID
	}
	if c.MaxConns <= 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxConnsPerUID <= 0 {
		c.MaxConnsPerUID = DefaultMaxConnsPerUID
	}
	if c.MaxMemory <= 0 {
		c.MaxMemory = DefaultMaxMemory
	}
	if c.MaxRingSize == 0 {
		c.MaxRingSize = DefaultMaxRingSize
	}
	if c.RingSize == 0 {
		c.RingSize = min(DefaultRingSize, c.MaxRingSize)
	}
	if c.MaxTurnRequests <= 0 {
		c.MaxTurnRequests = DefaultMaxTurnRequests
	}
	if c.DispatchQueueBytes <= 0 {
		c.DispatchQueueBytes = DefaultDispatchQueueBytes
	}
	if c.MaxQueuedBytes <= 0 {
		c.MaxQueuedBytes = DefaultMaxQueuedBytes
	}
	if c.DispatchQueue == 0 {
		c.DispatchQueue = DefaultDispatchQueue
	} else if c.DispatchQueue < 0 {
		c.DispatchQueue = 0
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (cfg *Config) validate() error {
	for _, s := range []int{cfg.RingSize, cfg.MaxRingSize} {
		if s < MinRingSize || s > RingSizeLimit || s&(s-1) != 0 {
			return fmt.Errorf("ipc: %w: ring size %d is not a power of two in [%d, %d]", os.ErrInvalid, s, MinRingSize, RingSizeLimit)
		}
	}
	if cfg.RingSize > cfg.MaxRingSize {
		return fmt.Errorf("ipc: %w: ring size %d above max %d", os.ErrInvalid, cfg.RingSize, cfg.MaxRingSize)
	}
	if cfg.DispatchPolicy < PolicyBlock || cfg.DispatchPolicy > PolicyDisconnect {
		return fmt.Errorf("ipc: %w: unknown dispatch policy %d", os.ErrInvalid, cfg.DispatchPolicy)
	}
	return nil
}

// DefaultAuthorize accepts peers running as the server's effective uid or
// as root, and refuses everyone else.
func DefaultAuthorize(c Cred) error {
	if c.UID == 0 || c.UID == uint32(os.Geteuid()) {
		return nil
	}
	return fmt.Errorf("uid %d: %w", c.UID, ErrRejected)
}

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
	closing   bool          // no new connections; set by Shutdown and Close
	done      chan struct{} // closed with closing
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

// serveHandshake runs the handshake of one accepted socket. It returns
// the established connection, registered with the server, or nil after
// closing the socket.
func (s *Server) serveHandshake(uc *net.UnixConn, cred Cred, log *slog.Logger, a *admission) *Conn {
	deadline := time.Now().Add(s.cfg.HandshakeTimeout)
	uc.SetDeadline(deadline) //nolint:errcheck // a failure shows up as a read error
	var hb [helloSize]byte
	if _, err := io.ReadFull(uc, hb[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.stats.handshakeTimeouts.Add(1)
		}
		log.Info("ipc: handshake: no hello", "err", err)
		uc.Close()
		return nil
	}
	h, err := decodeHello(hb[:])
	if err != nil {
		s.reject(uc, log, statusBadHello, 0, err)
		return nil
	}
	if h.version != Version {
		s.reject(uc, log, statusBadVersion, 0, fmt.Errorf("%w: client speaks %d, server %d", ErrVersion, h.version, Version))
		return nil
	}
	s.mu.Lock()
	svc := s.services[h.service]
	s.mu.Unlock()
	if svc == nil {
		s.reject(uc, log, statusUnknownService, 0, fmt.Errorf("%w: %d", ErrUnknownService, h.service))
		return nil
	}
	var sizes [3]uint64
	for i, want := range h.sizes {
		switch {
		case want == 0:
			sizes[i] = uint64(s.cfg.RingSize)
		case !isPow2(want):
			s.reject(uc, log, statusBadHello, 0, fmt.Errorf("%w: ring size %d is not a power of two", ErrProtocol, want))
			return nil
		default:
			sizes[i] = min(max(want, MinRingSize), uint64(s.cfg.MaxRingSize))
		}
	}
	if _, total := layout(sizes, ringBytes); !s.charge(a, total) {
		s.stats.limited.Add(1)
		s.reject(uc, log, statusLimit, LimitMemory, fmt.Errorf("%w: %d bytes of rings over the memory budget", ErrLimit, total))
		return nil
	}
	c, err := newConn(s, uc, svc, cred, sizes, h.features&knownFeatures)
	if err != nil {
		s.reject(uc, log, statusUnavailable, 0, err)
		return nil
	}
	c.adm = a
	if err := svc.OnConnect(c); err != nil {
		var code RejectCode
		errors.As(err, &code)
		c.destroy()
		s.reject(uc, log, statusRejected, uint32(code), err)
		return nil
	}
	// From here on the connection exists for the service: whatever
	// happens, teardown runs OnDisconnect once.
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		c.kill(ErrServerClosed)
		c.teardown()
		return nil
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.stats.connections.Add(1)

	var rb [replySize]byte
	c.reply.encode(rb[:])
	if _, _, err := uc.WriteMsgUnix(rb[:], unix.UnixRights(int(c.seg.File().Fd())), nil); err != nil {
		log.Info("ipc: handshake: send reply", "err", err)
		c.kill(fmt.Errorf("%w: send handshake reply: %w", ErrDisconnected, err))
		c.teardown()
		return nil
	}
	uc.SetDeadline(time.Time{}) //nolint:errcheck
	// The server keeps its memfd descriptor (the Segment owns it) until
	// teardown: one descriptor per connection besides the socket.
	log.Debug("ipc: connected", "conn", c.id, "service", svc.ID)
	return c
}

func (s *Server) reject(uc *net.UnixConn, log *slog.Logger, status, code uint32, why error) {
	s.stats.rejected.Add(1)
	log.Info("ipc: handshake rejected", "status", status, "err", why)
	r := reply{version: Version, status: status, detail: code}
	var rb [replySize]byte
	r.encode(rb[:])
	uc.Write(rb[:]) //nolint:errcheck // best effort: the client may be gone
	uc.Close()
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
	waited := make(chan struct{})
	go func() { s.wg.Wait(); close(waited) }()
	select {
	case <-waited:
		errs := []error{lerr}
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
	s.wg.Wait()
	errs := []error{lerr}
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
	s.mu.Lock()
	_, registered := s.conns[c]
	delete(s.conns, c)
	s.mu.Unlock()
	s.stats.retire(&c.stats)
	s.stats.tokensIn.Add(c.waker.tokensIn.Load())
	s.stats.tokensOut.Add(c.waker.tokensOut.Load())
	if registered {
		s.wg.Done()
	}
}

// Conns returns the established connections.
func (s *Server) Conns() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// ringOptions are the options of every ring handle of a connection. The
// ring resolves a zero Spin itself (DefaultSpin is its default).
func ringOptions(wait ring.WaitPolicy, spin time.Duration, w ring.Waker) *ring.Options {
	return &ring.Options{Wait: wait, Spin: spin, Waker: w}
}

// segmentGeometry builds the shmseg header geometry of a connection.
func segmentGeometry(sizes, offs [3]uint64) shmseg.Geometry {
	return shmseg.Geometry{Kind: segmentKind, Params: [6]uint64{sizes[0], sizes[1], sizes[2], offs[0], offs[1], offs[2]}}
}
