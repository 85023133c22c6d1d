//go:build linux

package ipc

import (
	"fmt"
	"math/bits"

	"github.com/ringipc/ringipc/ring"
)

// RingSizeLimit is the largest ring data size a connection may have, on
// both sides: Config.MaxRingSize may not exceed it, and a client refuses
// a reply granting more. It keeps every number the protocol carries in 32
// bits: the reply's max_req and max_disp, and a record's payload length
// (docs/ipc.md §3, docs/design.md §2.3). Where int has 32 bits it is
// ring.MaxDataSize (1 GiB), the largest ring such a process can hold.
const RingSizeLimit = min(1<<32, ring.MaxDataSize)

// The largest bodies a connection's rings carry, by the ring's data size:
// a record's largest payload (ring.MaxPayload) less the message header
// (docs/ipc.md §5). Client.MaxRequest, ResponseWriter.MaxBody and
// Conn.MaxDispatch report them for a live connection; these let a program
// choose ring sizes for the messages it will send before it connects.

// MaxRequestBody returns the largest request body a request ring of
// dataSize bytes carries.
func MaxRequestBody(dataSize int) int { return ring.MaxPayload(dataSize) - reqHdrSize }

// MaxResponseBody returns the largest response body a response ring of
// dataSize bytes carries.
func MaxResponseBody(dataSize int) int { return ring.MaxPayload(dataSize) - respHdrSize }

// MaxDispatchBody returns the largest dispatch message body a dispatch
// ring of dataSize bytes carries (dispatch records have no header).
func MaxDispatchBody(dataSize int) int { return ring.MaxPayload(dataSize) }

// checkGrant checks what the rings of an accepted connection say against
// the reply and the features the client asked for (docs/ipc.md §3.2): the
// server grants no feature it was not asked for, and every ring's payload
// checksum flag is the granted feature bit. ring(i) is ring i's memory.
func checkGrant(r *reply, asked uint32, ringMem func(int) []byte) error {
	if r.features&^asked != 0 {
		return fmt.Errorf("%w: server granted features %#x, asked for %#x", ErrProtocol, r.features, asked)
	}
	want := r.features&FeaturePayloadChecksum != 0
	for i := range 3 {
		g, err := ring.ReadGeometry(ringMem(i))
		if err != nil {
			return fmt.Errorf("%w: ring %d: %w", ErrProtocol, i, err)
		}
		if g.PayloadChecksum != want {
			return fmt.Errorf("%w: ring %d payload checksums %v, reply grants %v", ErrProtocol, i, g.PayloadChecksum, want)
		}
	}
	return nil
}

// roundRingSize rounds a positive ring size that is not a power of two up
// to the next one: a ring indexes its data by masking, so its size must
// be one, and a user asking for 100 KiB means "at least 100 KiB". Zero,
// negative sizes and sizes whose next power of two would overflow are
// returned as they are, for the caller's range check to refuse.
func roundRingSize(n int) int {
	if n <= 0 || n&(n-1) == 0 || bits.Len(uint(n)) >= bits.UintSize-1 {
		return n
	}
	return 1 << bits.Len(uint(n))
}

// roundRingSize64 is roundRingSize for a size a hello carries.
func roundRingSize64(n uint64) uint64 {
	if n == 0 || n&(n-1) == 0 || bits.Len64(n) >= 63 {
		return n
	}
	return 1 << bits.Len64(n)
}
