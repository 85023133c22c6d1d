package ring

import (
	"errors"
	"os"
	"strconv"
)

// Errors returned by the ring. Test them with errors.Is, which holds for
// every error the package returns. The three states a loop meets on every
// turn come bare, so that returning them allocates nothing and a hot loop
// may compare them with ==: ErrFull from TryReserve and TryWrite, ErrEmpty
// from TryPeek and TryReadInto, and ErrClosed from every method that
// reserves, writes, peeks or reads. Every other error wraps its sentinel
// with context (ErrCorrupt through a *CorruptError). TestErrorContract
// pins this.
var (
	// ErrFull: the ring has no room for the record now (non-blocking forms).
	ErrFull = errors.New("ring: full")
	// ErrEmpty: there is no committed record now (non-blocking forms).
	ErrEmpty = errors.New("ring: empty")
	// ErrClosed: the ring was closed. The consumer sees it only after it
	// has drained every committed record.
	ErrClosed = closedError{}
	// ErrCorrupt: shared memory holds something the protocol forbids: a
	// position out of bounds or moving backwards, a bad length, a header
	// or payload checksum mismatch, padding where no wrap is due.
	ErrCorrupt = errors.New("ring: corrupt")
	// ErrTooLarge: the record can never fit in this ring.
	ErrTooLarge = errors.New("ring: record too large")
	// ErrBadLayout: Init or attach was given memory that does not hold a
	// ring of this version, or a geometry that is not allowed.
	ErrBadLayout = errors.New("ring: bad layout")
	// ErrNoSlot: every producer slot of an MPSC ring is taken by a live
	// producer.
	ErrNoSlot = errors.New("ring: no free producer slot")
	// ErrPending: the call conflicts with a reservation or peeked record
	// that is still outstanding.
	ErrPending = errors.New("ring: operation pending")
	// ErrAbandoned: the claim no longer belongs to this reservation: the
	// consumer declared its producer dead and skipped it (the record was
	// not delivered), or it was already committed or aborted.
	ErrAbandoned = errors.New("ring: reservation abandoned")
)

// closedError makes errors.Is(err, os.ErrClosed) hold for ErrClosed.
type closedError struct{}

func (closedError) Error() string        { return "ring: closed" }
func (closedError) Is(target error) bool { return target == os.ErrClosed }

// CorruptError says where the consumer or producer found shared memory
// that breaks the protocol. It matches ErrCorrupt with errors.Is.
type CorruptError struct {
	What string // which check failed
	Pos  uint64 // ring position (bytes) where it was found
	Got  uint64 // the value read
}

func (e *CorruptError) Error() string {
	return "ring: corrupt: " + e.What + " at position " + strconv.FormatUint(e.Pos, 10) + " (read " + strconv.FormatUint(e.Got, 10) + ")"
}

func (e *CorruptError) Unwrap() error { return ErrCorrupt }

func corrupt(what string, pos, got uint64) error {
	return &CorruptError{What: what, Pos: pos, Got: got}
}
