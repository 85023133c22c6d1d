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
	// segment generation, u32 reserved (zero, ignored on read).
	largeDescSize = 16

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

func putDesc(b []byte, n int, gen uint32) {
	le := binary.LittleEndian
	le.PutUint64(b, uint64(n))
	le.PutUint32(b[8:], gen)
	le.PutUint32(b[12:], 0)
}

func getDesc(b []byte) (n uint64, gen uint32) {
	le := binary.LittleEndian
	return le.Uint64(b), le.Uint32(b[8:])
}

// segmentSize is the size of a new body segment for an n-byte body: the
// next power of two, at least bodySegMin, at most limit (page-rounded).
func segmentSize(n, limit, page int) int {
	s := max(roundRingSize(n), bodySegMin)
	s = min(s, alignInt(limit, page))
	return max(s, alignInt(n, page))
}

func alignInt(n, a int) int { return (n + a - 1) &^ (a - 1) }

// bodyOut is the sending side of one direction's body segment. It is
// owned by whoever owns the ring's producer for large messages (see the
// callers); nothing in it is shared.
type bodyOut struct {
	tok   byte
	limit int    // the largest body sent: sizes the segment
	mem   []byte // the segment, mapped read-write; nil before the first
	gen   uint32 // its generation (body tokens sent)
	busy  bool   // a descriptor record not yet seen released
	end   uint64 // the ring position past that record
}

// released reports whether the segment may be written: no large message
// is in flight, or the receiver has released its record.
func (o *bodyOut) released(p *ring.Producer) bool { return !o.busy || p.Released(o.end) }

// segment returns the first n bytes of the segment, first replacing it
// with a larger one if it is smaller, sent over rc (waiting for socket
// space until ctx ends or done is closed; a nil ctx does not wait). Call
// it only once released says so.
func (o *bodyOut) segment(n int, ctx context.Context, done <-chan struct{}, rc syscall.RawConn) ([]byte, error) {
	if n > len(o.mem) {
		mem, err := newBodySegment(segmentSize(n, o.limit, pageSize), o.tok, ctx, done, rc)
		if err != nil {
			return nil, err
		}
		o.close()
		o.mem = mem
		o.gen++
	}
	return o.mem[:n:n], nil
}

// sent notes the descriptor record just committed, ending at end.
func (o *bodyOut) sent(end uint64) { o.busy, o.end = true, end }

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
func (in *bodyIn) body(n uint64, gen uint32, ctx context.Context, done <-chan struct{}) ([]byte, error) {
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
	if n > uint64(len(in.mem)) {
		return nil, fmt.Errorf("%w: %s body of %d bytes in a segment of %d", ErrProtocol, in.what, n, len(in.mem))
	}
	return in.mem[:n:n], nil
}

// install maps the segment fd (closing it) in place of the current one.
func (in *bodyIn) install(fd int) error {
	mem, err := mapBodySegment(fd, in.limit)
	closeFd(fd)
	if err != nil {
		return fmt.Errorf("%w: %s body segment: %w", ErrProtocol, in.what, err)
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
