package ring

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// A broadcast ring: one writer, any number of readers, none of which
// writes shared memory. The writer never waits for readers; a reader
// keeps its position in its own memory and learns, when the writer has
// lapped it, that it was overrun and by how much (ErrOverrun), never
// torn data. docs/design.md §2.9 has the protocol and its argument.
//
// Memory, offsets in bytes (only the writer stores; readers only load).
// The intent has a line of its own because readers load it after every
// record while the tail changes with every record: on the tail's line it
// would cost each reader a cache miss per record.
//
//	  0 +----------------------------------------------+
//	    | meta: magic "RINGBCST", version, flags, data  |  written by Init,
//	    | size, seed, checksum (as a ring's meta)        |  read-only after
//	128 +----------------------------------------------+
//	    | tail u64     end of the last committed record  |  writer, per record
//	    | wake u32     bumped to wake sleeping readers   |
//	    | closed u32   set once by Close                 |
//	    | armed u32    1: the next write wakes sleepers  |
//	256 +----------------------------------------------+
//	    | intent u64   the writer may be writing below   |  writer, per stride
//	    | mark u64     start of a recent committed record|
//	384 +----------------------------------------------+
//	    | data: DataSize bytes (power of two), records    |
//	    | 16-byte aligned, a padding record at the wrap   |
//	    +----------------------------------------------+
//
// Meta is laid out as a ring's (see layout.go) with its own magic, and
// its producer-slot field zero.
const (
	bcMagic     = 0x54534342474e4952 // the bytes "RINGBCST"
	bcOffTail   = 128
	bcOffWake   = 136
	bcOffClosed = 140
	bcOffArmed  = 144
	bcOffIntent = 256
	bcOffMark   = 264
	bcDataOff   = 384

	// BroadcastWakeOffset is the offset of the 32-bit word sleeping
	// readers wait on (FUTEX_WAIT only reads it), for code that wakes
	// its own reader (see BroadcastReader.Interrupt).
	BroadcastWakeOffset = bcOffWake
)

// A broadcast record is a 16-byte header and its payload, padded to 16
// bytes:
//
//	+0  u32 bits 0..30 payload length (padding: bytes after the header
//	        up to the end of the data area); bit 31 padding
//	+4  u32 type, the user's
//	+8  u32 sequence: the record's number modulo 2^32 (the writer's
//	        first record is 0; padding carries the next record's)
//	+12 u32 checksum: low 32 bits of xxhash64 over
//	        seed^position u64 | length u32, type u32 | sequence u32,
//	        folded payload hash u32 (0 without payload checksums)
//
// The sequence number is what lets a lapped reader count the records it
// lost; the position in the checksum's seed is what makes a header left
// from an earlier lap fail to verify.
const (
	bcPadFlag  = 1 << 31
	bcLenMask  = bcPadFlag - 1
	bcMinAlign = recordAlign
)

// BroadcastGeometry is what InitBroadcast lays out and attaching checks.
type BroadcastGeometry struct {
	// DataSize is the size of the data area: a power of two between
	// MinDataSize and MaxDataSize. A payload may be at most
	// MaxBroadcastPayload(DataSize) bytes.
	DataSize int
	// PayloadChecksum makes every record's checksum cover its payload.
	PayloadChecksum bool
}

func (g BroadcastGeometry) validate() error {
	return Geometry{DataSize: g.DataSize}.validate()
}

// BroadcastSize returns the bytes of memory a broadcast ring of
// geometry g occupies.
func BroadcastSize(g BroadcastGeometry) (int, error) {
	if err := g.validate(); err != nil {
		return 0, err
	}
	return bcDataOff + g.DataSize, nil
}

// MaxBroadcastPayload returns the largest payload a broadcast ring with
// data area dataSize accepts: a quarter of the data area less a header,
// so that a record, the padding before it and the writer's intent
// stride (bcStride) always fit in one lap with room to spare for the
// reader reading it; and below 2^31, the header's length field.
func MaxBroadcastPayload(dataSize int) int {
	n := dataSize/4 - headerSize
	if n > 0 && uint64(n) > bcLenMask&^(recordAlign-1) {
		return int(bcLenMask &^ (recordAlign - 1))
	}
	return n
}

// bcStride is how far ahead of the record it writes the writer moves
// its intent, so that it stores the intent once per many small records
// rather than once per record: an eighth of the data area, at most 4 KiB.
// A reader within a stride of being lapped counts as lapped.
func bcStride(size uint64) uint64 { return min(size/8, 4096) }

// InitBroadcast lays out a new, empty broadcast ring of geometry g at the
// start of mem (8-byte aligned, at least BroadcastSize(g) bytes). Memory
// known to be zero (a fresh memfd) needs only the control area written,
// which is all InitBroadcast writes besides it: the data area is never
// read before the writer has written it, so its old contents do not
// matter.
func InitBroadcast(mem []byte, g BroadcastGeometry) error {
	size, err := BroadcastSize(g)
	if err != nil {
		return err
	}
	if len(mem) < size {
		return fmt.Errorf("%w: %d bytes of memory, geometry needs %d", ErrBadLayout, len(mem), size)
	}
	if !aligned8(mem) {
		return fmt.Errorf("%w: memory is not 8-byte aligned", ErrBadLayout)
	}
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return fmt.Errorf("init broadcast ring seed: %w", err)
	}
	clear(mem[:bcDataOff])
	writeMeta(mem, bcMagic, g.PayloadChecksum, g.DataSize, 0, seed)
	return nil
}

// bcMeta is the validated, immutable part of a broadcast ring, copied
// out of shared memory once at attach time.
type bcMeta struct {
	flags  uint32
	seed   uint64
	size   uint64
	mask   uint64
	maxP   uint64
	stride uint64
}

func readBroadcastMeta(mem []byte) (bcMeta, error) {
	var m bcMeta
	w, err := readMetaWords(mem, bcMagic, bcDataOff, "a broadcast ring's")
	if err != nil {
		return m, err
	}
	if w.slots != 0 { // no producer slots: the field is reserved here
		return m, fmt.Errorf("%w: reserved meta bytes are not zero", ErrBadLayout)
	}
	m.flags = w.flags
	ds := w.dataSize
	if ds > MaxDataSize {
		return m, fmt.Errorf("%w: data size %d", ErrBadLayout, ds)
	}
	g := BroadcastGeometry{DataSize: int(ds)}
	if err := g.validate(); err != nil {
		return m, err
	}
	if len(mem) < bcDataOff+int(ds) {
		return m, fmt.Errorf("%w: %d bytes of memory, the ring needs %d", ErrBadLayout, len(mem), bcDataOff+int(ds))
	}
	m.seed = w.seed
	m.size, m.mask = ds, ds-1
	m.maxP = uint64(MaxBroadcastPayload(int(ds)))
	m.stride = bcStride(ds)
	return m, nil
}

// ReadBroadcastGeometry validates the broadcast ring at the start of mem
// and returns its geometry, without attaching.
func ReadBroadcastGeometry(mem []byte) (BroadcastGeometry, error) {
	m, err := readBroadcastMeta(mem)
	return BroadcastGeometry{DataSize: int(m.size), PayloadChecksum: m.flags&flagPayloadSum != 0}, err
}

func bcSum(seed, pos uint64, lenWord, typ, seq uint32, ph uint64) uint32 {
	return uint32(xxhash24(seed^pos, uint64(lenWord)|uint64(typ)<<32, uint64(seq)|uint64(uint32(ph)^uint32(ph>>32))<<32))
}

func bcPayloadHash(m *bcMeta, p []byte) uint64 {
	if m.flags&flagPayloadSum == 0 {
		return 0
	}
	return xxhash.Sum64(p)
}

// ErrOverrun: a broadcast reader fell more than a lap behind the writer
// and the records it had not read were overwritten. The error is an
// *OverrunError saying how much was lost; the reader has already moved
// to a recent record and reads on from there.
var ErrOverrun = errors.New("ring: reader overrun")

// OverrunError is what a lapped broadcast reader lost. It matches
// ErrOverrun with errors.Is.
type OverrunError struct {
	// Bytes is the ring space skipped, padding included: exact.
	Bytes uint64
	// Records is the number of records skipped: exact below 2^32 in one
	// overrun (records carry their number modulo 2^32), and 0 when the
	// reader had not read a record yet, or the writer lapped it again
	// while it resynchronised (then it restarts at the tail and Known
	// is false).
	Records uint64
	// Known says Records is exact.
	Known bool
}

func (e *OverrunError) Error() string {
	s := "ring: reader overrun: lost " + strconv.FormatUint(e.Bytes, 10) + " bytes"
	if e.Known {
		s += ", " + strconv.FormatUint(e.Records, 10) + " records"
	}
	return s
}

func (e *OverrunError) Unwrap() error { return ErrOverrun }
