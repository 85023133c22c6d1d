//go:build linux

package ipc

// Bodies larger than the ring (FeatureLarge; docs/design.md §8 says why
// this way, docs/ipc.md §5.4 is the wire format).
//
// Each direction of a connection has at most one body segment: a sealed
// memfd the sending side creates, sends over the socket (a body token
// with SCM_RIGHTS) and keeps mapped; the receiver keeps its own mapping.
// It grows on demand (a new, larger memfd replaces it) up to the limit,
// and lives as long as the connection. A large message is its body,
// written at offset 0 of the segment, and a 16-byte descriptor record in
// the ring: {length, generation}. One large message per direction is in
// flight: the sender writes the segment again only once the receiver
// has released the descriptor record, which it reads from the ring's
// head (ring.Producer.Released) and waits for on the ring's producer
// word, as it waits for room. The receiver hands the record back at once
// (ring.Consumer.Flush) rather than with its next batch.
//
// Reusing one mapped segment is the point: the pages are faulted in
// once per connection, not once per message, so a large body costs one
// copy in and one copy out (or none, zero-copy) and no system call.

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"syscall"

	"github.com/ringipc/ringipc/ring"
)

// FeatureLarge lets request, response and dispatch bodies exceed their
// ring, up to Config.MaxMessage and ClientOptions.MaxMessage. The Go
// client asks for it unless ClientOptions.MaxMessage is negative.
const FeatureLarge = 1 << 1

// Message size limits.
const (
	// DefaultMaxMessage is Config.MaxMessage and ClientOptions.MaxMessage
	// left 0: the largest body either side sends or accepts.
	DefaultMaxMessage = 64 << 20
	// MaxMessageLimit is the largest MaxMessage either side may set; a
	// descriptor's length is 64 bits, but a body is one Go slice and one
	// mapping.
	MaxMessageLimit = RingSizeLimit
)

// Wire numbers of large bodies (docs/ipc.md §5.4).
const (
	// typeLarge, bit 16 of a request, response or dispatch record's
	// type: the record is a descriptor and the body is in the body
	// segment of its direction.
	typeLarge = 1 << 16
	// largeDescSize is a descriptor's size: u64 body length, u32
	// segment generation, u32 the body's offset in the segment in
	// bodyPage units.
	largeDescSize = 16
	// bodyPage is the unit of a descriptor's offset.
	bodyPage = 4096

	// Body tokens: one byte sent with exactly one SCM_RIGHTS descriptor,
	// the next body segment of its direction. The k-th of a direction
	// (from 1) is that direction's generation k.
	tokReqBody  = 0x30 // client -> server: request bodies
	tokRespBody = 0x31 // server -> client: response bodies
	tokDispBody = 0x32 // server -> client: dispatch bodies

	// ctlMaxMessage is the control block's u64 at offset 32: the
	// server's MaxMessage when FeatureLarge is granted, else 0.
	ctlMaxMessage = 32

	// bodySegMin is the smallest body segment a side creates: segments
	// grow by powers of two from here, so a connection re-creates its
	// segment only a few times however its sizes wander.
	bodySegMin = 1 << 20
)

// isBodyToken reports whether b is a body token, and which direction.
func isBodyToken(b byte) (int, bool) {
	if b >= tokReqBody && b <= tokDispBody {
		return int(b - tokReqBody), true
	}
	return 0, false
}

// getDesc decodes a descriptor: the body's length, its segment's
// generation and its offset in the segment.
func getDesc(b []byte) (n uint64, gen uint32, off uint64) {
	le := binary.LittleEndian
	return le.Uint64(b), le.Uint32(b[8:]), uint64(le.Uint32(b[12:])) * bodyPage
}

// bodiesPerSegment is how many bodies of the size that made it grow a
// segment holds: the sender writes ahead of the receiver by that many,
// so neither waits for the other's wake-up while the stream flows (four:
// measured with ringbench dispatch, where two still left the server
// waiting for the client about half the time on a loaded machine).
const bodiesPerSegment = 4

// segmentSize is the size of a new body segment for an n-byte body:
// room for bodiesPerSegment of them (see bodyOut), a power of two of at least bodySegMin, but
// no more than limit (page-rounded), so a receiver never maps more than
// its limit; at least the body, page-rounded.
func segmentSize(n, limit, page int) int {
	s := max(roundRingSize(bodiesPerSegment*alignInt(n, page)), bodySegMin)
	s = min(s, alignInt(limit, page))
	return max(s, alignInt(n, page))
}

func alignInt(n, a int) int { return (n + a - 1) &^ (a - 1) }

// bodyOut is the sending side of one direction's body segment. It is
// owned by whoever owns the ring's producer for large messages (see the
// callers); nothing in it is shared.
//
// The segment is used as a queue of bodies in ring order: each body is
// placed, page-aligned, after the last one still in flight (or at 0 when
// that does not fit), and a body's pages are free again once the
// receiver has released its descriptor record, which it does in ring
// order too. A segment twice the body's size (segmentSize) thus holds
// two bodies: the sender fills the next while the receiver reads the
// last, and neither waits for the other's wake-up.
type bodyOut struct {
	tok    byte
	limit  int      // the largest body sent: bounds the segment
	mem    []byte   // the segment, mapped read-write; nil before the first
	gen    uint32   // its generation (body tokens sent)
	flight []placed // bodies whose records the receiver has not released, oldest first
	cur    placed   // the body being written (segment)
	// charge, if not nil, accounts for the segment growing from old to
	// new bytes (the server's Config.MaxMemory); an error refuses it.
	charge func(old, new int) error
}

// placed is a body in the segment: its page-aligned span and the ring
// position past its descriptor record.
type placed struct {
	off, size int
	end       uint64
}

// maxFlight bounds the bodies in flight in one segment.
const maxFlight = 64

// reap forgets the bodies whose records the receiver has released.
func (o *bodyOut) reap(p *ring.Producer) {
	i := 0
	for i < len(o.flight) && p.Released(o.flight[i].end) {
		i++
	}
	if i > 0 {
		o.flight = append(o.flight[:0], o.flight[i:]...)
	}
}

// place returns where an n-byte body goes in the segment now, if
// anywhere.
func (o *bodyOut) place(n int) (int, bool) {
	size := alignInt(n, pageSize)
	if len(o.flight) == 0 {
		return 0, size <= len(o.mem)
	}
	if len(o.flight) == maxFlight {
		return 0, false
	}
	head := o.flight[0].off
	last := o.flight[len(o.flight)-1]
	tail := last.off + last.size
	if last.off >= head { // not wrapped: free are [tail, len) and [0, head)
		if tail+size <= len(o.mem) {
			return tail, true
		}
		return 0, size <= head
	}
	return tail, tail+size <= head // wrapped: free is [tail, head)
}

// room reports whether an n-byte body can be written now: it fits beside
// the bodies in flight, or the segment is too small and will be
// replaced by a larger one (which needs no wait: the receiver keeps the
// old mapping until it has read everything in it).
func (o *bodyOut) room(p *ring.Producer, n int) bool {
	if n > len(o.mem) {
		return true
	}
	o.reap(p)
	_, ok := o.place(n)
	return ok
}

// segment returns n bytes of the segment to write a body into, first
// replacing the segment with a larger one if it is too small, sent over
// rc (waiting for socket space until ctx ends or done is closed; a nil
// ctx does not wait). Call it only once room says so.
func (o *bodyOut) segment(n int, ctx context.Context, done <-chan struct{}, rc syscall.RawConn) ([]byte, error) {
	if n > len(o.mem) {
		size := segmentSize(n, o.limit, pageSize)
		if o.charge != nil {
			if err := o.charge(len(o.mem), size); err != nil {
				return nil, err
			}
		}
		mem, err := newBodySegment(size, o.tok, ctx, done, rc)
		if err != nil {
			if o.charge != nil {
				o.charge(size, len(o.mem)) //nolint:errcheck // shrinking always succeeds
			}
			return nil, err
		}
		o.close()
		o.mem = mem
		o.gen++
		o.flight = o.flight[:0] // in the old segment, which the receiver still maps
	}
	off, ok := o.place(n)
	if !ok {
		return nil, fmt.Errorf("%w: no room for a %d-byte body", errInternal, n)
	}
	o.cur = placed{off: off, size: alignInt(n, pageSize)}
	return o.mem[off : off+n : off+n], nil
}

// desc writes the descriptor of the current body, n bytes of it, into b.
func (o *bodyOut) desc(b []byte, n int) {
	le := binary.LittleEndian
	le.PutUint64(b, uint64(n))
	le.PutUint32(b[8:], o.gen)
	le.PutUint32(b[12:], uint32(o.cur.off/bodyPage))
}

// sent notes the current body's descriptor record, committed, ending at
// end.
func (o *bodyOut) sent(end uint64) {
	o.cur.end = end
	o.flight = append(o.flight, o.cur)
}

// close unmaps the segment; at teardown, once no sender can run.
func (o *bodyOut) close() error {
	if o.mem == nil {
		return nil
	}
	err := unmapBody(o.mem)
	o.mem = nil
	return err
}

// bodyIn is the receiving side of one direction's body segment. The
// token reader stages each segment descriptor that arrives (stage); the
// ring's consumer maps it when the first descriptor record of its
// generation comes (body), which is when the previous segment is no
// longer in use: the consumer releases each record before it peeks the
// next, and a new segment is only ever sent for a record after those.
type bodyIn struct {
	what  string // "request", "response", "dispatch", for errors
	limit int    // the largest body accepted
	raise string // what raises limit, for errors

	mu       sync.Mutex
	received uint32 // body tokens received: the staged one's generation
	staged   int    // its descriptor, -1 if none
	closed   bool
	arrived  chan struct{} // buffered 1: a segment was staged

	// Owned by the ring's consumer.
	gen uint32 // generation of mem
	mem []byte // the mapped segment, at most limit (page-rounded)

	// charge, if not nil, accounts for the mapping growing from old to
	// new bytes (the server's Config.MaxMemory); an error refuses the
	// segment. Set before the first body arrives.
	charge func(old, new int) error
}

func newBodyIn(what string, limit int, raise string) *bodyIn {
	return &bodyIn{what: what, limit: limit, raise: raise, staged: -1, arrived: make(chan struct{}, 1)}
}

// stage keeps the descriptor fd of the next segment until the consumer
// takes it. A peer that sends segments no record uses replaces the
// staged one: at most one descriptor is held.
func (in *bodyIn) stage(fd int) {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		closeFd(fd)
		return
	}
	if in.staged >= 0 {
		closeFd(in.staged)
	}
	in.received++
	in.staged = fd
	in.mu.Unlock()
	select {
	case in.arrived <- struct{}{}:
	default:
	}
}

// take returns the staged descriptor if it is generation gen, -1 if that
// has not come yet.
func (in *bodyIn) take(gen uint32) (int, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	switch {
	case in.received == gen && in.staged >= 0:
		fd := in.staged
		in.staged = -1
		return fd, nil
	case int32(in.received-gen) > 0:
		return -1, fmt.Errorf("%w: %s body segment %d was replaced before use (segment %d came)", ErrProtocol, in.what, gen, in.received)
	}
	return -1, nil
}

// errInternal marks a broken invariant of this package.
var errInternal = fmt.Errorf("ipc: internal error")

// errBodyNotYet: a descriptor's segment has not come, and the caller
// cannot wait.
var errBodyNotYet = fmt.Errorf("%w: a large body's descriptor came before its segment", ErrProtocol)

// body returns the n-byte body a descriptor of generation gen names, a
// view of the mapped segment. A body above the limit is ErrTooLarge (the
// record is to be released unread; the connection goes on). If the
// descriptor is the first of a segment whose token has not been read
// yet, body waits for it until ctx ends or done is closed (the peer sent
// the token before the record, so an honest one is never waited for
// long); a nil ctx does not wait (errBodyNotYet).
func (in *bodyIn) body(n uint64, gen uint32, off uint64, ctx context.Context, done <-chan struct{}) ([]byte, error) {
	if gen != in.gen {
		if gen != in.gen+1 {
			return nil, fmt.Errorf("%w: %s body in segment %d, the current is %d", ErrProtocol, in.what, gen, in.gen)
		}
		for {
			fd, err := in.take(gen)
			if err != nil {
				return nil, err
			}
			if fd >= 0 {
				if err := in.install(fd); err != nil {
					return nil, err
				}
				break
			}
			if ctx == nil {
				return nil, errBodyNotYet
			}
			select {
			case <-in.arrived:
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-done:
				return nil, fmt.Errorf("%s body: %w", in.what, ErrDisconnected)
			}
		}
	}
	if n > uint64(in.limit) {
		return nil, tooLarge(in.what, int(min(n, 1<<62)), in.limit, in.raise)
	}
	if size := uint64(len(in.mem)); off > size || n > size-off {
		return nil, fmt.Errorf("%w: %s body of %d bytes at %d in a segment of %d", ErrProtocol, in.what, n, off, size)
	}
	return in.mem[off : off+n : off+n], nil
}

// install maps the segment fd (closing it) in place of the current one.
func (in *bodyIn) install(fd int) error {
	mem, err := mapBodySegment(fd, in.limit)
	closeFd(fd)
	if err != nil {
		return fmt.Errorf("%w: %s body segment: %w", ErrProtocol, in.what, err)
	}
	if in.charge != nil {
		if err := in.charge(len(in.mem), len(mem)); err != nil {
			unmapBody(mem) //nolint:errcheck // our own mapping of the right length
			return fmt.Errorf("%s body segment: %w", in.what, err)
		}
	}
	old := in.mem
	in.mem, in.gen = mem, in.gen+1
	if old != nil {
		unmapBody(old) //nolint:errcheck // our own mapping of the right length
	}
	return nil
}

// close closes a staged descriptor and unmaps the segment: at teardown,
// once the consumer is done.
func (in *bodyIn) close() error {
	in.mu.Lock()
	in.closed = true
	if in.staged >= 0 {
		closeFd(in.staged)
		in.staged = -1
	}
	in.mu.Unlock()
	if in.mem == nil {
		return nil
	}
	err := unmapBody(in.mem)
	in.mem = nil
	return err
}
