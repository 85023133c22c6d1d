//go:build linux

package ipc

// The subscriber's side of a topic (docs/ipc.md §11).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringipc/ringipc/ring"
	"golang.org/x/sys/unix"
)

// SubscribeOptions tune Subscribe. The zero value is ready to use.
type SubscribeOptions struct {
	// Wait and Spin say whether a Recv that finds nothing polls before
	// it sleeps, as in ClientOptions, except that the zero values sleep
	// at once: a polling subscriber slows the publisher and every other
	// subscriber (ring.BroadcastReaderOptions says why).
	Wait ring.WaitPolicy
	Spin time.Duration
	// AuthorizeServer judges the server's credentials before anything
	// is sent, as in ClientOptions; nil means DefaultAuthorizeServer.
	AuthorizeServer func(Cred) error
	// MaxRingSize bounds the topic ring the subscriber accepts to map
	// (0 means DefaultMaxRingSize): a larger one fails Subscribe with
	// ErrTooLarge before anything is mapped.
	MaxRingSize int
	// OnMessage, when set, receives every message of the topic, in
	// order, on a goroutine of the subscription, as ClientOptions.
	// OnDispatch receives dispatch messages: body is a copy in a buffer
	// the subscription reuses, valid only during the call (no
	// allocation per message). Recv, RecvInto and TryRecv then return
	// ErrOnMessage. The goroutine delivers the messages published before
	// the subscription ended, then returns; once Done is closed, Err says
	// why it ended.
	OnMessage func(id uint16, body []byte)
	// OnOverrun, when set with OnMessage, is told each time the
	// subscriber was lapped: err matches ErrOverrun (errors.As to
	// *OverrunError for the count). Delivery goes on from a recent
	// message.
	OnOverrun func(err error)
}

// Subscription receives a topic's messages. Recv, RecvInto and TryRecv
// take one message at a time (concurrent calls wait their turn); Close
// may be called from any goroutine. A subscription receives every message
// published after the server accepted it (from the moment
// Topic.Subscribers counts it), unless it is lapped.
//
// To subscribe again after the connection ended (the server restarted),
// call Subscribe again: a Subscription is one connection.
type Subscription struct {
	topic   uint32
	sock    *quietSock // the socket once subscribed, polled for input only
	mem     []byte     // the topic ring, mapped read-only
	r       *ring.BroadcastReader
	maxBody int
	cred    Cred

	// The receive lock: busy while a receive (or, for good, Close)
	// holds it; waiters count those waiting for it, whom unlock tells
	// through turn (buffered 1; a stale token only costs a retry).
	busy     atomic.Bool
	waiters  atomic.Int32
	turn     chan struct{}
	closedCh chan struct{}   // closed by Close
	closed   atomic.Bool     // set by Close before closedCh is closed
	life     context.Context // ends when the connection does
	cancel   context.CancelFunc
	endOnce  sync.Once
	endWhy   error // why the connection ended; written before cancel
	// ringClosed: the server had closed the ring when the socket ended
	// (a graceful end); written before cancel.
	ringClosed bool
	watched    chan struct{}
	cw         ctxWatch
	// The sleep announcement being written (announce), and how much of
	// it has gone out: owned by the receive that holds the receive lock.
	// annWrite and annStop are built once, so that announcing allocates
	// nothing.
	ann      [topicSleepSize]byte
	annOff   int
	annErr   error // why the socket refused it
	annWrite func(fd uintptr) bool
	annStop  func() bool

	closeOnce sync.Once
	overruns  atomic.Uint64
	lost      atomic.Uint64

	// With SubscribeOptions.OnMessage: onMessage is set, delivered is
	// closed when the delivery goroutine returns, and inCallback is true
	// while it runs the callback (Close, which may be called from it,
	// then does not wait for it).
	onMessage  bool
	delivered  chan struct{}
	inCallback atomic.Bool

	// Every receive sleeps in the ring with no context, which allocates
	// nothing: sleeping says it does, ended that the subscription has
	// ended, and the end interrupts such a sleeper until it is back (a
	// Dekker pair: each stores its flag, then loads the other's); a
	// receive whose context can end has it watched by ctxWatch.
	// interrupting counts those goroutines, which Close waits for
	// before it unmaps the ring.
	sleeping     atomic.Bool
	ended        atomic.Bool
	interrupting sync.WaitGroup
}

// Subscribe connects to the server at address and subscribes to topic.
// ctx bounds the connect and the handshake. The server judges the
// subscriber with Config.Authorize and the topic's OnSubscribe, and may
// refuse with a *RejectError: status unknown service for an unknown
// topic, ErrLimit with LimitSubscribers for a full topic.
func Subscribe(ctx context.Context, address string, topic uint32, opts *SubscribeOptions) (*Subscription, error) {
	if opts == nil {
		opts = &SubscribeOptions{}
	}
	maxRing, err := (&ClientOptions{MaxRingSize: opts.MaxRingSize}).maxRing()
	if err != nil {
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", address)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", address, err)
	}
	uc := nc.(*net.UnixConn)
	sub, err := subscribeHandshake(ctx, uc, topic, maxRing, opts)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("subscribe %s topic %d: %w", address, topic, err)
	}
	return sub, nil
}

func subscribeHandshake(ctx context.Context, uc *net.UnixConn, topic uint32, maxRing uint64, opts *SubscribeOptions) (*Subscription, error) {
	stop := bindDeadline(ctx, uc)
	defer stop()
	cred, err := judgeServer(uc, opts.AuthorizeServer)
	if err != nil {
		return nil, err
	}
	h := hello{version: Version, features: FeatureTopic, topic: topic}
	var hb [helloSize]byte
	h.encode(hb[:])
	_, helloErr := uc.Write(hb[:])
	r, fds, err := readReply(ctx, uc, helloErr)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fds[0]), "ringipc-topic")
	defer f.Close() // the mapping outlives it
	size := r.sizes[0]
	if r.features&FeatureTopic == 0 {
		return nil, fmt.Errorf("%w: subscription reply without FeatureTopic", ErrProtocol)
	}
	if size > maxRing {
		return nil, fmt.Errorf("%w: server granted a %d-byte topic ring, above the %d bytes this subscriber accepts", ErrTooLarge, size, maxRing)
	}
	if !isPow2(size) || size < MinRingSize || r.sizes[1] != 0 || r.sizes[2] != 0 || r.offs[1] != 0 || r.offs[2] != 0 || r.ctlOff != 0 {
		return nil, fmt.Errorf("%w: topic reply sizes %v offsets %v", ErrProtocol, r.sizes, r.offs)
	}
	need, _ := ring.BroadcastSize(ring.BroadcastGeometry{DataSize: int(size)})
	if r.payload != alignUp(uint64(need), uint64(os.Getpagesize())) || r.maxDisp != uint32(ring.MaxBroadcastPayload(int(size))) {
		return nil, fmt.Errorf("%w: topic segment of %d bytes, body limit %d, for a %d-byte ring", ErrProtocol, r.payload, r.maxDisp, size)
	}
	if err := checkTopicFile(f, int64(r.payload)); err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(r.payload), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map topic ring: %w", err)
	}
	sub := &Subscription{
		topic:    topic,
		mem:      mem,
		maxBody:  int(r.maxDisp),
		cred:     cred,
		turn:     make(chan struct{}, 1),
		closedCh: make(chan struct{}),
		watched:  make(chan struct{}),
	}
	// Start where the server accepted us: every message published since
	// is ours (reply byte 48).
	sub.r, err = ring.NewBroadcastReaderAt(mem, r.offs[0], &ring.BroadcastReaderOptions{Wait: opts.Wait, Spin: opts.Spin, Announce: sub.announce})
	if err == nil {
		var g ring.BroadcastGeometry
		if g, err = ring.ReadBroadcastGeometry(mem); err == nil && uint64(g.DataSize) != size {
			err = fmt.Errorf("ring of %d bytes, the reply says %d", g.DataSize, size)
		}
	}
	if err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("%w: topic ring: %w", ErrProtocol, err)
	}
	uc.SetDeadline(time.Time{}) //nolint:errcheck
	// From here on the socket is polled for input only (quietSock): the
	// server's reads of our sleep announcements then wake nobody here.
	sock, err := newQuietSock(uc)
	if err == nil {
		if err = sock.quiet(true); err != nil {
			sock.release()
		}
	}
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	sub.sock = sock
	sub.annWrite, sub.annStop = sub.writeAnnouncement, sub.announceStopped
	sub.life, sub.cancel = context.WithCancel(context.Background())
	go sub.watch()
	if opts.OnMessage != nil {
		sub.onMessage, sub.delivered = true, make(chan struct{})
		go sub.deliver(opts.OnMessage, opts.OnOverrun)
	}
	return sub, nil
}

// deliver is the goroutine of SubscribeOptions.OnMessage: it receives
// the messages waiting, up to deliverBatch, into a buffer of its own
// under one hold of the receive lock, then hands them over one by one,
// until the subscription has nothing more (it ended and every message
// before was delivered) or is closed. Taking the lock and flagging the
// callback for each message cost four locked instructions per message,
// most of what a 64-byte message cost to deliver (see deliverBatch).
func (s *Subscription) deliver(on func(uint16, []byte), over func(error)) {
	defer close(s.delivered)
	var b batch
	b.buf = make([]byte, 0, min(s.maxBody, 64<<10))
	for {
		if s.acquire(context.Background()) != nil {
			return // closed
		}
		err := b.fill(s)
		s.unlock()
		s.inCallback.Store(true)
		for i := range b.n {
			if s.closed.Load() {
				break // Close was called: the call that saw it was the last
			}
			m := b.msgs[i]
			on(m.id, b.buf[m.off:m.off+m.len:m.off+m.len])
		}
		if b.big != nil && !s.closed.Load() {
			on(b.bigID, b.big)
		}
		if errors.Is(err, ErrOverrun) && over != nil && !s.closed.Load() {
			over(err)
		}
		s.inCallback.Store(false)
		switch {
		case err == nil, errors.Is(err, ErrTryAgain), errors.Is(err, ErrOverrun):
		default:
			// The subscription ended: Err says why once Done is closed,
			// which may come just after the ring said so.
			<-s.life.Done()
			return
		}
	}
}

// deliverBatch bounds the messages deliver takes under one hold of the
// receive lock. Measured (ringbench broadcast, 64 B, 8 subscriber
// processes on 2 vCPUs): a receive without the lock and the callback
// flag per message delivered 5.0-5.1 M msgs/s to each subscriber, against
// 3.9-4.0 M with them.
const deliverBatch = 64

// batch is the messages deliver took under one hold of the lock: copies
// in buf, and at most one message longer than buf's room in big.
type batch struct {
	buf   []byte
	msgs  [deliverBatch]batched
	n     int
	big   []byte
	bigID uint16
}

// batched is one message of a batch: its id and where its copy is in buf.
type batched struct {
	id       uint16
	off, len int
}

// fill receives into b, waiting for the first message only; receive
// lock held. It returns what ended the batch: nil (full, or too little
// room left for a message as long as the longest so far), ErrTryAgain
// (nothing more now), an overrun (after the messages before it) or the
// end of the subscription.
func (b *batch) fill(s *Subscription) error {
	if b.big != nil && cap(b.buf) < 2*len(b.big) {
		// The last batch ended on a message longer than the room left:
		// make room for two such.
		b.buf = make([]byte, 0, 2*len(b.big))
	}
	b.n, b.big = 0, nil
	used, longest := 0, 0
	for b.n < deliverBatch && cap(b.buf)-used >= longest {
		room := b.buf[used:used]
		m, err := s.recv(context.Background(), room, b.n == 0)
		if err != nil {
			return err
		}
		if len(m.Data) > cap(room) {
			// Copied into a new buffer: longer than the room left.
			if b.n > 0 {
				b.big, b.bigID = m.Data, m.ID
				return nil
			}
			b.buf, used = m.Data[:0], 0 // the buffer grows to the longest message
		}
		b.msgs[b.n] = batched{m.ID, used, len(m.Data)}
		b.n++
		used += len(m.Data)
		longest = max(longest, len(m.Data))
	}
	return nil
}

// readReply reads the handshake reply and the descriptors that came with
// it; on success exactly one, which the caller owns.
func readReply(ctx context.Context, uc *net.UnixConn, helloErr error) (reply, []int, error) {
	var rb [replySize]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	var fds []int
	for got := 0; got < replySize; {
		n, oobn, _, _, err := uc.ReadMsgUnix(rb[got:], oob)
		if oobn > 0 {
			fds = append(fds, parseRights(oob[:oobn])...)
		}
		if (err != nil || n == 0) && helloErr != nil {
			closeFds(fds)
			return reply{}, nil, ctxErr(ctx, fmt.Errorf("send hello: %w", helloErr))
		}
		if err != nil {
			closeFds(fds)
			return reply{}, nil, ctxErr(ctx, fmt.Errorf("read handshake reply: %w", err))
		}
		if n == 0 {
			closeFds(fds)
			return reply{}, nil, fmt.Errorf("read handshake reply: %w: connection closed", ErrDisconnected)
		}
		got += n
	}
	r, err := decodeReply(rb[:])
	if err == nil && r.status != statusOK {
		err = &RejectError{Status: r.status, Code: r.detail}
	} else if err == nil && r.version != Version {
		err = fmt.Errorf("%w: server speaks version %d, client %d", ErrVersion, r.version, Version)
	} else if err == nil && len(fds) != 1 {
		err = fmt.Errorf("%w: %d descriptors with the reply, want 1", ErrProtocol, len(fds))
	}
	if err != nil {
		closeFds(fds)
		return reply{}, nil, err
	}
	return r, fds, nil
}

// checkTopicFile requires a shared-memory file of the announced size,
// sealed against resizing (so the server cannot truncate it under the
// mapping, which would raise SIGBUS here).
func checkTopicFile(f *os.File, size int64) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("topic descriptor: %w", err)
	}
	if st.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("%w: topic descriptor is not shared memory (fs %#x)", ErrProtocol, st.Type)
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("%w: topic descriptor seals: %w", ErrProtocol, err)
	}
	if seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		return fmt.Errorf("%w: topic memfd not sealed against resizing (seals %#x)", ErrProtocol, seals)
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("topic descriptor: %w", err)
	}
	if fi.Size() != size {
		return fmt.Errorf("%w: topic segment of %d bytes, the reply says %d", ErrProtocol, fi.Size(), size)
	}
	return nil
}

// Topic returns the topic subscribed to.
func (s *Subscription) Topic() uint32 { return s.topic }

// MaxBody returns the largest message body the topic carries.
func (s *Subscription) MaxBody() int { return s.maxBody }

// ServerCred returns the server's credentials, as of its listen.
func (s *Subscription) ServerCred() Cred { return s.cred }

// SubscriptionStats count what a subscriber lost to overruns.
type SubscriptionStats struct {
	Overruns uint64 // times the subscriber was lapped
	Lost     uint64 // messages it lost, where known (OverrunError.Known)
}

// Stats returns the subscription's counters; safe from any goroutine.
func (s *Subscription) Stats() SubscriptionStats {
	return SubscriptionStats{Overruns: s.overruns.Load(), Lost: s.lost.Load()}
}

// Recv returns the next message (a copy), waiting until one is
// published, ctx ends or the subscription does. Errors:
//
//   - an error matching ErrOverrun (errors.As to *OverrunError for the
//     count): messages were overwritten before this subscriber read
//     them; it goes on from a recent message, which the next Recv
//     returns;
//   - ErrDisconnected with ErrClosedByServer once the server closed the
//     topic (or shut down) and every message before was received; with
//     ErrPeerDied if the server went away without closing it (every
//     message it published is still received first);
//   - ErrProtocol: the ring broke the protocol; the subscription ends;
//   - ErrClosed after Close; ctx's error.
func (s *Subscription) Recv(ctx context.Context) (Message, error) {
	return s.RecvInto(ctx, nil)
}

// RecvInto is Recv that copies the body into buf (grown if needed),
// which Message.Data then shares: no allocation once buf is large
// enough.
func (s *Subscription) RecvInto(ctx context.Context, buf []byte) (Message, error) {
	if s.onMessage {
		return Message{}, ErrOnMessage
	}
	if err := s.acquire(ctx); err != nil {
		return Message{}, err
	}
	m, err := s.recv(ctx, buf, true)
	s.unlock()
	return m, err
}

// TryRecv returns the next message without waiting, or ErrTryAgain.
func (s *Subscription) TryRecv() (Message, error) {
	if s.onMessage {
		return Message{}, ErrOnMessage
	}
	if err := s.acquire(context.Background()); err != nil {
		return Message{}, err
	}
	m, err := s.recv(context.Background(), nil, false)
	s.unlock()
	return m, err
}

// acquire takes the receive lock. Uncontended it is one CAS: a select
// on channels costs more than the rest of a message. Contended, it waits
// for its turn, ctx or Close. unlock and acquire are a Dekker pair (the
// holder clears busy, then looks for waiters; a waiter counts itself,
// then tries busy again), so no turn is missed.
func (s *Subscription) acquire(ctx context.Context) error {
	for {
		if s.busy.CompareAndSwap(false, true) {
			break
		}
		s.waiters.Add(1)
		if s.busy.CompareAndSwap(false, true) {
			s.waiters.Add(-1)
			break
		}
		select {
		case <-s.turn:
			s.waiters.Add(-1)
		case <-s.closedCh:
			s.waiters.Add(-1)
			return ErrClosed
		case <-ctx.Done():
			s.waiters.Add(-1)
			return ctx.Err()
		}
	}
	if s.closed.Load() {
		s.unlock()
		return ErrClosed
	}
	return nil
}

// unlock gives the receive lock back and tells a waiter. Swap, not
// Store: it is the store half of the pair (under the race detector a
// Store may pass the load that follows).
func (s *Subscription) unlock() {
	s.busy.Swap(false)
	if s.waiters.Load() > 0 {
		select {
		case s.turn <- struct{}{}:
		default:
		}
	}
}

// lockForGood takes the receive lock and never gives it back: Close,
// after which no receive touches the ring.
func (s *Subscription) lockForGood() {
	for {
		s.waiters.Add(1)
		if s.busy.CompareAndSwap(false, true) {
			s.waiters.Add(-1)
			return
		}
		<-s.turn
		s.waiters.Add(-1)
	}
}

// recv takes the next message; lock held.
func (s *Subscription) recv(ctx context.Context, buf []byte, wait bool) (Message, error) {
	for {
		rec, err := s.r.TryReadInto(buf)
		switch {
		case err == nil:
			if rec.Type>>16 != 0 {
				perr := fmt.Errorf("%w: topic %d: message type %#x", ErrProtocol, s.topic, rec.Type)
				s.end(perr)
				return Message{}, perr
			}
			return Message{ID: uint16(rec.Type), Data: rec.Data}, nil
		case err == ring.ErrClosed:
			return Message{}, s.endErr(true)
		case errors.Is(err, ring.ErrOverrun):
			return Message{}, s.overrun(err)
		case err != ring.ErrEmpty:
			perr := fmt.Errorf("%w: topic %d: %w", ErrProtocol, s.topic, err)
			s.end(perr)
			return Message{}, perr
		}
		if s.life.Err() != nil {
			return Message{}, s.endErr(false)
		}
		if !wait {
			return Message{}, ErrTryAgain
		}
		var werr error
		if ctx.Done() == nil {
			werr = s.waitLife()
		} else {
			werr = s.waitWatched(ctx)
		}
		if werr != nil {
			if cerr := ctx.Err(); cerr != nil {
				return Message{}, cerr
			}
			if s.life.Err() == nil {
				// The announcement could not be sent: the socket is broken.
				s.end(fmt.Errorf("%w: %w", ErrDisconnected, werr))
			}
		}
	}
}

// overrun counts an overrun and wraps its error (a function of its own
// so that the receive path does not allocate the *OverrunError target).
func (s *Subscription) overrun(err error) error {
	var oe *ring.OverrunError
	if errors.As(err, &oe) {
		s.overruns.Add(1)
		s.lost.Add(oe.Records)
	}
	return fmt.Errorf("ipc: topic %d: %w", s.topic, err)
}

// waitLife waits for the ring with no context: the subscription's end
// interrupts it (stop), and so does a watched context's (ctxWatch).
func (s *Subscription) waitLife() error {
	s.sleeping.Store(true)
	if s.ended.Load() {
		s.sleeping.Store(false)
		return nil // the caller sees the end
	}
	err := s.r.Wait(context.Background())
	s.sleeping.Store(false)
	return err
}

// stop ends the subscription's life: it wakes a receive sleeping in
// the ring, closes the socket, and interrupts a receive sleeping with no
// context until it is back. endOnce's.
func (s *Subscription) stop() {
	// cancel first: a receive that sees ended then sees life over too,
	// rather than looking at the ring again until it is.
	s.cancel()
	s.ended.Store(true)
	s.sock.Close()
	if s.sleeping.Load() {
		s.interrupting.Add(1)
		go func() {
			defer s.interrupting.Done()
			for s.sleeping.Load() {
				s.r.Interrupt()
				time.Sleep(time.Millisecond)
			}
		}()
	}
}

// endErr is what a receive returns once the ring has nothing more:
// closed says the server closed it.
func (s *Subscription) endErr(closed bool) error {
	select {
	case <-s.closedCh:
		return ErrClosed
	default:
	}
	if closed {
		return fmt.Errorf("%w: topic %d: %w", ErrDisconnected, s.topic, ErrClosedByServer)
	}
	if errors.Is(s.endWhy, ErrProtocol) {
		return s.endWhy
	}
	return fmt.Errorf("%w: topic %d: %w", ErrDisconnected, s.topic, ErrPeerDied)
}

// announce tells the server that the subscriber sleeps having seen tail
// seen (the ring's Announce): a tokTopicSleep on the socket. It waits
// only if the socket buffer is full (a server that does not read), then
// until the subscription ends or, unless part of the announcement has
// gone out, the watched receive's context does (ctxWatch sets fired; the
// wait sees it within announceSlice). It fails once that context has
// ended, which ends the ring's wait.
func (s *Subscription) announce(seen uint64) error {
	if s.cw.fired.Load() {
		return errWaitEnded
	}
	s.ann[0] = tokTopicSleep
	binary.LittleEndian.PutUint64(s.ann[1:], seen)
	s.annOff, s.annErr = 0, nil
	err := s.sock.write(s.annWrite, s.annStop, announceSlice)
	switch {
	case err == errWriteStopped:
		return errWaitEnded
	case err == nil:
		err = s.annErr
	}
	return err
}

// announceSlice bounds a wait for room in the socket between two looks
// at the receive's context (a full socket means a server that stopped
// reading, so this costs nothing in any other case).
const announceSlice = 5 * time.Millisecond

// writeAnnouncement writes what is left of the announcement: true once
// it is all out or the socket failed (annErr), false when the socket is
// full.
func (s *Subscription) writeAnnouncement(fd uintptr) bool {
	n, full, err := writeNonblock(fd, s.ann[s.annOff:])
	s.annOff += n
	s.annErr = err
	return !full
}

// announceStopped: the watched receive's context has ended and no byte
// of the announcement has gone out (a partial one must be finished, or
// the server would read the next one out of step).
func (s *Subscription) announceStopped() bool { return s.annOff == 0 && s.cw.fired.Load() }

// errWaitEnded: the context of the receive that waits has ended (the
// receive returns that context's error).
var errWaitEnded = errors.New("ipc: the receive's context ended")

// ctxWatch watches the context of a receive that sleeps: one goroutine
// per subscription, started by its first receive with a context that can
// end, to which each such receive hands its context's Done channel before
// it sleeps and says when it is back. Watching with context.AfterFunc
// instead allocated about ten times per sleep (the ring's wait, the
// announcement's write deadline, the receive's own). Receives hold the
// receive lock, so one is watched at a time.
type ctxWatch struct {
	start sync.Once
	req   chan (<-chan struct{}) // a sleeping receive's Done channel
	back  chan struct{}          // the receive is back from its sleep
	// fired: the watched context ended; set by the watcher, cleared by
	// the receive once back. announce fails while it is set.
	fired atomic.Bool
}

// waitWatched is waitLife for a receive whose context can end. Receive
// lock held.
func (s *Subscription) waitWatched(ctx context.Context) error {
	s.cw.start.Do(func() {
		s.cw.req, s.cw.back = make(chan (<-chan struct{})), make(chan struct{})
		s.interrupting.Add(1) // Close waits for the watcher: it touches the ring
		go s.watchContexts()
	})
	select {
	case s.cw.req <- ctx.Done():
	case <-s.life.Done():
		return nil // the watcher has gone; the caller sees the end
	}
	err := s.waitLife()
	s.cw.back <- struct{}{}
	if s.cw.fired.Swap(false) {
		return errWaitEnded
	}
	return err
}

// watchContexts is the goroutine of ctxWatch. When a watched context
// ends, it makes the receive's announcement fail (fired, which one that
// waits for room sees within announceSlice) and wakes it in the ring
// until it is back. It returns when the subscription ends with no
// receive watched.
func (s *Subscription) watchContexts() {
	defer s.interrupting.Done()
	for {
		var done <-chan struct{}
		select {
		case done = <-s.cw.req:
		case <-s.life.Done():
			return
		}
		select {
		case <-s.cw.back:
			continue
		case <-done:
		}
		s.cw.fired.Store(true)
		// A wake-up just before the receive enters FUTEX_WAIT is lost:
		// wake until it is back.
		t := time.NewTicker(time.Millisecond)
		for back := false; !back; {
			s.r.Interrupt()
			select {
			case <-s.cw.back:
				back = true
			case <-t.C:
			}
		}
		t.Stop()
	}
}

// watch waits for the end of the socket: the server sends nothing after
// the reply, so end of file (or anything else) ends the subscription.
func (s *Subscription) watch() {
	defer close(s.watched)
	var b [16]byte
	for {
		var n int
		var rerr error
		err := s.sock.Read(func(fd uintptr) bool {
			for {
				n, rerr = unix.Read(int(fd), b[:])
				if rerr != unix.EINTR {
					return rerr != unix.EAGAIN
				}
			}
		})
		switch {
		case err == nil && rerr != nil:
			err = rerr
		case err == nil && n == 0:
			err = io.EOF
		}
		if n > 0 {
			s.end(fmt.Errorf("%w: topic %d: the server sent %d bytes after the reply", ErrProtocol, s.topic, n))
			return
		}
		if err != nil {
			// The server closes the ring before the socket: at end of
			// file, a closed ring tells a close from a crash. Read here,
			// where the ring is surely mapped (Close waits for us).
			closed := s.r.WriterClosed()
			s.endOnce.Do(func() {
				s.ringClosed = closed
				s.endWhy = fmt.Errorf("%w: %w", ErrDisconnected, err)
				s.stop()
			})
			return
		}
	}
}

// end records why the subscription ended (the first reason wins), ends
// its life, which wakes a waiting receive, and closes the socket.
func (s *Subscription) end(why error) {
	s.endOnce.Do(func() {
		s.endWhy = why
		s.stop()
	})
}

// Done is closed when the subscription's connection has ended: the
// server closed the topic or went away, or Close was called. Messages
// published before may still wait to be received.
func (s *Subscription) Done() <-chan struct{} { return s.life.Done() }

// Delivered, with SubscribeOptions.OnMessage, is closed when the delivery
// goroutine has returned: after Done, once every message published
// before the end was handed to OnMessage, or at Close. The callbacks'
// effects happen before it is closed. Without OnMessage it is nil.
func (s *Subscription) Delivered() <-chan struct{} { return s.delivered }

// Err returns nil while the connection is up, then what Recv returns
// once every message has been received: ErrDisconnected with
// ErrClosedByServer (the server closed the topic or shut down) or with
// ErrPeerDied (it went away without closing it), ErrProtocol, or
// ErrClosed after Close. A reconnecting client tells a restart it may
// wait for from a crash with it.
func (s *Subscription) Err() error {
	if s.life.Err() == nil {
		return nil
	}
	return s.endErr(s.ringClosed)
}

// Close ends the subscription and unmaps the ring, after a receive in
// progress has returned (with ErrClosed). With OnMessage it also waits
// for the delivery goroutine to return, unless an OnMessage or OnOverrun
// call is running (Close may be called from one): that call is then the
// last. Safe to call more than once.
func (s *Subscription) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.closedCh)
		s.end(ErrClosed)
		<-s.watched
		s.lockForGood() // no receive touches the ring again
		s.interrupting.Wait()
		err = unix.Munmap(s.mem)
		if s.onMessage && !s.inCallback.Load() {
			<-s.delivered
		}
	})
	return err
}
