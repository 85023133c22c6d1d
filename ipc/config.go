//go:build linux

package ipc

// A server's configuration: Config, its defaults and limits, and the
// interfaces it accepts (EventLoop, Requeuer).

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/ringipc/ringipc/ring"
)

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
	// headers, and the body segments of its large messages); a handshake
	// that would pass it is refused (LimitMemory), a response or dispatch
	// body segment that would fails with ErrLimit, and a client's request
	// body segment that would ends its connection (docs/ipc.md §9).
	// 0 means DefaultMaxMemory.
	MaxMemory int64
	// RingSize is a ring's data size when the client asks for 0;
	// MaxRingSize clamps what clients ask for. A size that is not a power
	// of two is rounded up to one (rings index by masking); 0 means
	// DefaultRingSize and DefaultMaxRingSize.
	RingSize    int
	MaxRingSize int
	// MaxMessage is the largest body the server accepts in a request and
	// sends in a response or dispatch message, when the client asks for
	// FeatureLarge (the Go client does): bodies larger than their ring
	// travel in a body segment (docs/ipc.md §5.4). 0 means
	// DefaultMaxMessage; negative means no large bodies (FeatureLarge is
	// not granted, and a body is at most what its ring carries). At most
	// MaxMessageLimit. The client sees it in Client.MaxRequest.
	MaxMessage int
	// DispatchQueue is how many dispatch messages a connection queues
	// when its dispatch ring is full before DispatchPolicy applies.
	// 0 means DefaultDispatchQueue; negative means no queue.
	DispatchQueue int
	// DispatchPolicy is what Dispatch does when a client's ring and
	// queue are full. PolicyDefault (the zero value) means
	// DefaultDispatchPolicy, PolicyDisconnect: a client that stops
	// reading is disconnected rather than allowed to stall the server.
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
	// Timing records each call's handler and queueing time in its
	// service's histograms (ServiceStats). Off by default: it reads the
	// monotonic clock three times per call, which costs of the order of
	// 100 ns where clock readings are slow, as in many VMs
	// (BenchmarkTimingOverhead; docs/ipc.md section 10).
	Timing bool
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
	c.MaxRingSize = roundRingSize(c.MaxRingSize)
	if c.RingSize == 0 {
		c.RingSize = min(DefaultRingSize, c.MaxRingSize)
	}
	c.RingSize = roundRingSize(c.RingSize)
	if c.MaxMessage == 0 {
		c.MaxMessage = DefaultMaxMessage
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
	if c.DispatchPolicy == PolicyDefault {
		c.DispatchPolicy = DefaultDispatchPolicy
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
			return fmt.Errorf("ipc: %w: ring size %d is not in [%d, %d]", os.ErrInvalid, s, MinRingSize, RingSizeLimit)
		}
	}
	if cfg.RingSize > cfg.MaxRingSize {
		return fmt.Errorf("ipc: %w: ring size %d above max %d", os.ErrInvalid, cfg.RingSize, cfg.MaxRingSize)
	}
	if cfg.MaxMessage > MaxMessageLimit {
		return fmt.Errorf("ipc: %w: MaxMessage %d above MaxMessageLimit %d", os.ErrInvalid, cfg.MaxMessage, MaxMessageLimit)
	}
	if cfg.DispatchPolicy < PolicyDefault || cfg.DispatchPolicy > PolicyDisconnect {
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
