//go:build linux

package ipc

// Topics: publish/subscribe over a broadcast ring (docs/ipc.md §11). The
// server owns one ring per topic in a sealed memfd; each subscriber maps a
// read-only descriptor of it and reads at its own pace. Publishing is one
// ring write whatever the number of subscribers; a subscriber's socket
// carries only its "I sleep" announcements.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringipc/ringipc/ring"
	"golang.org/x/sys/unix"
)

// FeatureTopic (hello byte 12) makes a connection a topic subscription:
// hello bytes 40..43 name the topic, the reply carries a read-only
// descriptor of the topic's ring, and the socket then carries only
// sleep tokens (docs/ipc.md §11). The Go server grants it only when asked,
// and only to a subscription.
const FeatureTopic = 1 << 5

// tokTopicSleep, subscriber to server, followed by a u64 tail: the
// subscriber is about to sleep having seen that tail (§11.3).
const (
	tokTopicSleep     = 0x40
	topicSleepSize    = 9
	topicTokensPerRun = 64 // tokens one read takes at most: bounds a loop turn
)

// Topic defaults and limits.
const (
	// DefaultTopicRingSize is the data size of a topic's ring when
	// TopicConfig.RingSize is 0: at 64-byte messages (80 bytes a record)
	// about 105,000 messages of slack before a subscriber is lapped,
	// some 4 ms of a publisher at full speed. One ring serves every
	// subscriber (each maps it read-only), and its pages are allocated as
	// the publisher first writes through them, so a topic costs the
	// server up to this much memory whatever the number of subscribers.
	// With more subscriber processes than CPUs, a subscriber wakes in
	// slices and reads what came meanwhile; a ring that holds more lets
	// it miss less (ringbench broadcast, 64 B, 8 subscribers on the
	// 2-vCPU AMD guest, 2 runs: 1 MiB 3.8-3.9 M msgs/s received by
	// each, 4 MiB 5.0-5.1 M, 8 MiB 5.6-5.7 M, 16 MiB 5.6-5.8 M; 32
	// subscribers 0.36-0.55, 0.91-0.99, 0.92-1.02 and 0.73-0.74 M, the
	// 16 MiB ring costing the publisher twice the CPU per message).
	DefaultTopicRingSize = 8 << 20
	// DefaultMaxSubscribers bounds a topic's subscribers when
	// TopicConfig.MaxSubscribers is 0. Each costs the server a socket, a
	// goroutine and 576 bytes of buffer; publishing costs the same for
	// any number.
	DefaultMaxSubscribers = 1024
	// LimitSubscribers is the RejectError.Code of a subscription refused
	// because its topic has TopicConfig.MaxSubscribers subscribers.
	LimitSubscribers = 6
)

// ErrOverrun matches the error a Subscription returns when the server
// overwrote messages it had not read yet: errors.As it to *OverrunError
// for how many. The subscription goes on from a recent message.
var ErrOverrun = ring.ErrOverrun

// OverrunError says what a lapped subscriber lost (Records is the
// number of messages, exact when Known).
type OverrunError = ring.OverrunError

// ErrUnknownTopic: Publish named a topic the server does not have.
var ErrUnknownTopic = errors.New("ipc: unknown topic")

// TopicConfig describes a topic for Server.AddTopic.
type TopicConfig struct {
	// ID names the topic in a subscriber's hello.
	ID uint32
	// RingSize is the data size of the topic's broadcast ring, rounded
	// up to a power of two in [MinRingSize, RingSizeLimit]; 0 means
	// DefaultTopicRingSize. A subscriber that falls this far behind is
	// lapped (ErrOverrun); a message may be at most a quarter of it
	// (Topic.MaxBody).
	RingSize int
	// MaxSubscribers bounds the topic's subscribers at once; 0 means
	// DefaultMaxSubscribers. Subscriptions also count against the
	// server's connection limits (Config.MaxConns, MaxConnsPerUID).
	MaxSubscribers int
	// OnSubscribe judges a subscriber that Config.Authorize let in, as
	// a service's OnConnect does: an error refuses it (a RejectCode in
	// it reaches the client in RejectError.Code). Nil accepts everyone.
	OnSubscribe func(Cred) error
	// PayloadChecksum makes every message's checksum cover its body.
	PayloadChecksum bool
}

// Topic is a stream of messages the server publishes to every
// subscriber, in one order for all of them. Its methods are safe for
// concurrent use.
type Topic struct {
	s   *Server
	cfg TopicConfig
	max int // body limit

	// mu serialises publishers (one order per topic) and guards w,
	// mem and published against Close and Stats.
	mu        sync.Mutex
	w         *ring.BroadcastWriter // nil once closed
	mem       []byte
	published uint64   // a plain count under mu: one locked instruction less per message
	f         *os.File // the memfd, read-write; owned
	ro        *os.File // a read-only descriptor of it, sent to subscribers

	subMu  sync.Mutex
	subs   map[*subscriber]struct{}
	closed bool
	subWG  sync.WaitGroup

	refused atomic.Uint64
}

// TopicStats are a topic's counters.
type TopicStats struct {
	Published   uint64 // messages published
	Subscribers int    // subscribers now
	Refused     uint64 // subscriptions refused by MaxSubscribers or OnSubscribe
	Wakes       uint64 // times a publish (or a late announcement) woke sleeping subscribers
}

// AddTopic creates a topic. Its ring lives until Topic.Close or the
// server's Close or Shutdown.
func (s *Server) AddTopic(cfg TopicConfig) (*Topic, error) {
	size := uint64(DefaultTopicRingSize)
	if cfg.RingSize != 0 {
		size = uint64(roundRingSize(cfg.RingSize))
		if cfg.RingSize < 0 || !isPow2(size) || size > RingSizeLimit {
			return nil, fmt.Errorf("ipc: topic %d: %w: ring size %d", cfg.ID, os.ErrInvalid, cfg.RingSize)
		}
		size = max(size, MinRingSize)
	}
	if cfg.MaxSubscribers < 0 {
		return nil, fmt.Errorf("ipc: topic %d: %w: MaxSubscribers %d", cfg.ID, os.ErrInvalid, cfg.MaxSubscribers)
	}
	if cfg.MaxSubscribers == 0 {
		cfg.MaxSubscribers = DefaultMaxSubscribers
	}
	cfg.RingSize = int(size)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, ErrServerClosed
	}
	if _, ok := s.topics[cfg.ID]; ok {
		return nil, fmt.Errorf("ipc: topic %d: %w", cfg.ID, os.ErrExist)
	}
	t := &Topic{s: s, cfg: cfg, subs: make(map[*subscriber]struct{}), max: ring.MaxBroadcastPayload(int(size))}
	if err := t.create(); err != nil {
		return nil, fmt.Errorf("ipc: topic %d: %w", cfg.ID, err)
	}
	if s.topics == nil {
		s.topics = make(map[uint32]*Topic)
	}
	s.topics[cfg.ID] = t
	return t, nil
}

// Topic returns the topic with that id, or nil.
func (s *Server) Topic(id uint32) *Topic {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.topics[id]
}

// Publish publishes a message on a topic: Topic(topic).Publish.
func (s *Server) Publish(topic uint32, id uint16, body []byte) error {
	t := s.Topic(topic)
	if t == nil {
		return fmt.Errorf("%w: %d", ErrUnknownTopic, topic)
	}
	return t.Publish(id, body)
}

// ID returns the topic's id.
func (t *Topic) ID() uint32 { return t.cfg.ID }

// MaxBody returns the largest message body Publish accepts.
func (t *Topic) MaxBody() int { return t.max }

// RingSize returns the data size of the topic's ring: how far, in bytes
// of records (a 16-byte header and the body rounded up to 16 each), a
// subscriber may fall behind before it is lapped.
func (t *Topic) RingSize() int { return t.cfg.RingSize }

// Publish writes a message to the topic's ring. It never waits for
// subscribers and costs the same for any number of them; concurrent
// publishers are serialised, and every subscriber sees the messages in
// that one order. It fails with ErrTooLarge (a body above MaxBody) or
// ErrClosed (the topic or server is closed).
func (t *Topic) Publish(id uint16, body []byte) error {
	if len(body) > t.max {
		return fmt.Errorf("%w: topic %d: %d-byte body, at most %d", ErrTooLarge, t.cfg.ID, len(body), t.max)
	}
	t.mu.Lock()
	if t.w == nil {
		t.mu.Unlock()
		return ErrClosed
	}
	err := t.w.Write(uint32(id), body)
	if err == nil {
		t.published++
	}
	t.mu.Unlock()
	if err != nil {
		return fmt.Errorf("ipc: topic %d: %w", t.cfg.ID, err)
	}
	return nil
}

// Subscribers returns the number of subscribers now.
func (t *Topic) Subscribers() int {
	t.subMu.Lock()
	defer t.subMu.Unlock()
	return len(t.subs)
}

// Stats returns the topic's counters.
func (t *Topic) Stats() TopicStats {
	st := TopicStats{Subscribers: t.Subscribers(), Refused: t.refused.Load()}
	t.mu.Lock()
	st.Published = t.published
	if t.w != nil {
		st.Wakes = t.w.Wakes()
	}
	t.mu.Unlock()
	return st
}

// Close ends the topic: subscribers read what was published, then their
// Recv fails with ErrDisconnected and ErrClosedByServer. The topic's
// id is free again once Close returns.
func (t *Topic) Close() error {
	t.subMu.Lock()
	if t.closed {
		t.subMu.Unlock()
		return nil
	}
	t.closed = true
	t.mu.Lock()
	t.w.Close() // before the sockets: a subscriber that sees EOF finds the ring closed
	t.mu.Unlock()
	for sub := range t.subs {
		sub.uc.Close()
	}
	t.subMu.Unlock()
	t.subWG.Wait() // no subscriber goroutine touches the ring any more
	t.mu.Lock()
	t.w = nil
	err := errors.Join(unix.Munmap(t.mem), t.ro.Close(), t.f.Close())
	t.mem = nil
	t.mu.Unlock()
	t.s.mu.Lock()
	if t.s.topics[t.cfg.ID] == t {
		delete(t.s.topics, t.cfg.ID)
	}
	t.s.mu.Unlock()
	return err
}

// closeRings marks every topic's ring closed; Server.stop calls it (mu
// held) before it closes any socket, so that a subscriber whose socket
// ends sees a closed ring: a close, not a crash.
func (s *Server) closeRings() {
	for _, t := range s.topics {
		t.mu.Lock()
		if t.w != nil {
			t.w.Close()
		}
		t.mu.Unlock()
	}
}

// closeTopics closes every topic; from Server.Close and Shutdown.
func (s *Server) closeTopics() error {
	s.mu.Lock()
	ts := make([]*Topic, 0, len(s.topics))
	for _, t := range s.topics {
		ts = append(ts, t)
	}
	s.mu.Unlock()
	var errs []error
	for _, t := range ts {
		errs = append(errs, t.Close())
	}
	return errors.Join(errs...)
}

// subscriber is the server's side of one subscription.
type subscriber struct {
	t   *Topic
	uc  *net.UnixConn
	adm *admission
	log *slog.Logger
}

// serveSubscribe is the handshake of a hello that asked for
// FeatureTopic (serveHandshake has read it and checked its version). It
// replies and, on success, leaves the socket to a subscriber goroutine
// that owns a (serveHandshake's caller then does not release it).
func (s *Server) serveSubscribe(uc *net.UnixConn, cred Cred, log *slog.Logger, a *admission, h hello) {
	if h.sizes != [3]uint64{} || h.service != 0 {
		s.reject(uc, log, statusBadHello, 0, fmt.Errorf("%w: subscription hello with ring sizes or a service", ErrProtocol))
		return
	}
	s.mu.Lock()
	t := s.topics[h.topic]
	s.mu.Unlock()
	if t == nil {
		s.reject(uc, log, statusUnknownService, 0, fmt.Errorf("%w: %d", ErrUnknownTopic, h.topic))
		return
	}
	if t.cfg.OnSubscribe != nil {
		if err := t.cfg.OnSubscribe(cred); err != nil {
			var code RejectCode
			errors.As(err, &code)
			t.refused.Add(1)
			s.reject(uc, log, statusRejected, uint32(code), err)
			return
		}
	}
	sub := &subscriber{t: t, uc: uc, adm: a, log: log}
	t.subMu.Lock()
	switch {
	case t.closed:
		t.subMu.Unlock()
		s.reject(uc, log, statusUnavailable, 0, fmt.Errorf("topic %d closed", h.topic))
		return
	case len(t.subs) >= t.cfg.MaxSubscribers:
		t.subMu.Unlock()
		t.refused.Add(1)
		s.stats.limited.Add(1)
		s.reject(uc, log, statusLimit, LimitSubscribers, fmt.Errorf("%w: topic %d has %d subscribers", ErrLimit, h.topic, len(t.subs)))
		return
	}
	t.subs[sub] = struct{}{}
	t.subWG.Add(1)
	a.sub = true // from here on the subscriber goroutine releases a
	// The subscriber starts here: it gets every message published from
	// now on (Subscribers counts it already), unless it is lapped.
	start := t.w.Tail()
	t.subMu.Unlock()

	r := reply{
		version:  Version,
		status:   statusOK,
		features: FeatureTopic | h.features&FeaturePayloadChecksum&topicChecksum(t),
		sizes:    [3]uint64{uint64(t.cfg.RingSize)},
		offs:     [3]uint64{start},
		payload:  uint64(len(t.mem)),
		maxDisp:  uint32(t.max),
	}
	var rb [replySize]byte
	r.encode(rb[:])
	if _, _, err := uc.WriteMsgUnix(rb[:], unix.UnixRights(int(t.ro.Fd())), nil); err != nil {
		log.Info("ipc: subscribe: send reply", "err", err)
		sub.end()
		return
	}
	uc.SetDeadline(time.Time{}) //nolint:errcheck
	log.Debug("ipc: subscribed", "topic", h.topic)
	go sub.run()
}

func topicChecksum(t *Topic) uint32 {
	if t.cfg.PayloadChecksum {
		return FeaturePayloadChecksum
	}
	return 0
}

// run reads the subscriber's sleep tokens until its socket ends. Each
// read takes at most topicTokensPerRun tokens and arms the writer once,
// with the newest: whatever a subscriber sends, it costs the server one
// Arm (at most one FUTEX_WAKE) per read.
func (sub *subscriber) run() {
	defer sub.end()
	var buf [topicSleepSize * topicTokensPerRun]byte
	have := 0
	for {
		n, err := sub.uc.Read(buf[have:])
		have += n
		whole := have - have%topicSleepSize
		var seen uint64
		for i := 0; i < whole; i += topicSleepSize {
			if buf[i] != tokTopicSleep {
				sub.log.Info("ipc: subscriber sent an unknown token", "token", buf[i])
				return
			}
			seen = binary.LittleEndian.Uint64(buf[i+1:])
		}
		if whole > 0 {
			sub.t.w.Arm(seen) // the topic waits for us before it unmaps
		}
		have = copy(buf[:], buf[whole:have])
		if err != nil {
			return
		}
	}
}

// end forgets the subscriber and gives back its admission.
func (sub *subscriber) end() {
	sub.uc.Close()
	t := sub.t
	t.subMu.Lock()
	delete(t.subs, sub)
	t.subMu.Unlock()
	t.s.release(sub.adm)
	t.subWG.Done()
}
