package ring

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/cespare/xxhash/v2"
)

// A ring's memory, offsets in bytes. Every position written by one side
// sits on a 128-byte line of its own, since the adjacent-line prefetcher
// moves 64-byte lines in pairs.
//
//	  0 +-----------------------------------------------+
//	    | meta: magic, version, flags, data size,        |  written by Init,
//	    | producer slots, seed, checksum                 |  read-only after
//	 64 | closed u32                                     |  set once by Close
//	128 +-----------------------------------------------+
//	    | tail u64: SPSC publish / MPSC claim position   |  producer(s)
//	136 | unfenced u32: SPSC tail stored without barrier |  producer
//	256 +-----------------------------------------------+
//	    | head u64: consumer position                    |  consumer
//	264 | fences u32: the consumer fences for producers  |  consumer
//	384 +-----------------------------------------------+
//	    | consWait u32: consumer sleeps (futex word)     |  consumer sets,
//	512 +-----------------------------------------------+  producer clears
//	    | prodWait u32: a producer sleeps (futex word)   |  producers set,
//	640 +-----------------------------------------------+  consumer clears
//	    | producer table: slots x 128 bytes (MPSC only)  |
//	    +-----------------------------------------------+  (128-aligned)
//	    | data: DataSize bytes (power of two), records   |
//	    | 16-byte aligned, a padding record at the wrap  |
//	    +-----------------------------------------------+
//
// Meta, little-endian:
//
//	 0 u64 magic "RINGPICR"    24 u32 producer slots (0 = SPSC)
//	 8 u32 version (1)         28 u32 reserved, zero
//	12 u32 flags               32 u64 seed (random, per ring)
//	16 u64 data size           40..56 reserved, zero
//	56 u64 xxhash64 of bytes [0, 56)
const (
	offMagic     = 0
	offVersion   = 8
	offFlags     = 12
	offDataSize  = 16
	offSlots     = 24
	offReserved  = 28
	offSeed      = 32
	offReserved2 = 40
	offMetaSum   = 56
	metaSumEnd   = 56
	offClosed    = 64
	offTail      = 128
	offUnfenced  = 136 // on the producer's line: only it writes there
	offHead      = 256
	offFences    = 264 // on the consumer's line: only it writes there
	offConsWait  = 384
	offProdWait  = 512
	offSlotTable = 640
	slotSize     = 128 // one line per producer: each writes an intent lane on every claim
	lineSize     = 128

	magic   = 0x52434950474e4952 // the bytes "RINGPICR" (a u64 read little-endian)
	version = 1

	flagPayloadSum = 1 << 0
	knownFlags     = flagPayloadSum

	// MinDataSize and MaxDataSize bound Geometry.DataSize. MaxDataSize is
	// 1 TiB where int has 64 bits and 1 GiB where it has 32, so that a
	// data size and the ring's total size always fit in an int.
	MinDataSize = 1 << 10
	MaxDataSize = 1 << (30 + 10*(bits.UintSize/64))
	// MaxProducers bounds Geometry.Producers: slot numbers are 12 bits
	// in a claim word, and 0 means "no slot".
	MaxProducers = 1<<12 - 1
)

// Geometry is what Init lays out and what attaching checks.
type Geometry struct {
	// DataSize is the size of the data area in bytes: a power of two
	// between MinDataSize and MaxDataSize. A record's payload may be at
	// most MaxPayload(DataSize) bytes.
	DataSize int
	// Producers is 0 for a single-producer ring, or the number of
	// producer slots of a multi-producer ring (1..MaxProducers): the
	// number of producer handles (usually processes) attached at once.
	Producers int
	// PayloadChecksum makes every record's checksum cover its payload
	// too, at the cost of hashing each payload twice (once per side).
	PayloadChecksum bool
}

func (g Geometry) validate() error {
	if g.DataSize < MinDataSize || g.DataSize > MaxDataSize || g.DataSize&(g.DataSize-1) != 0 {
		return fmt.Errorf("%w: data size %d is not a power of two in [%d, %d]", ErrBadLayout, g.DataSize, MinDataSize, MaxDataSize)
	}
	if g.Producers < 0 || g.Producers > MaxProducers {
		return fmt.Errorf("%w: %d producer slots, want 0..%d", ErrBadLayout, g.Producers, MaxProducers)
	}
	return nil
}

func dataOffset(producers int) int {
	return alignUp(offSlotTable+producers*slotSize, lineSize)
}

// Size returns the bytes of memory a ring of geometry g occupies.
func Size(g Geometry) (int, error) {
	if err := g.validate(); err != nil {
		return 0, err
	}
	return dataOffset(g.Producers) + g.DataSize, nil
}

// MaxPayload returns the largest payload a ring with data area dataSize
// accepts: half the data area less a header, which guarantees that a
// record always fits once the ring is empty, whatever the wrap; and never
// more than a record header's 32-bit length field holds (maxRecordPayload,
// just under 4 GiB), which a data area above 8 GiB would pass.
func MaxPayload(dataSize int) int {
	n := dataSize/2 - headerSize
	if n > 0 && uint64(n) > maxRecordPayload {
		return int(maxRecordPayload)
	}
	return n
}

// maxRecordPayload is the largest payload a record header can describe,
// rounded down to the record alignment so that the padding before such a
// record (shorter than the record) fits the length field too. A variable,
// not a constant, so that 32-bit builds compile the conversion above.
var maxRecordPayload uint64 = lenMask &^ (recordAlign - 1)

// Init lays out a new, empty ring of geometry g at the start of mem,
// which must be 8-byte aligned and at least Size(g) bytes. It must run
// before any handle attaches, and the memory must be handed to other
// processes only after it returns (mapping a segment after Init is such
// a hand-over).
func Init(mem []byte, g Geometry) error { return initRing(mem, g, false) }

// InitZeroed is Init for memory known to be all zero already, such as a
// freshly created memfd or anonymous mapping: it writes only the ring's
// control area and leaves the data area untouched. Clearing it would
// fault in every page of the data area (megabytes per ring) that the
// kernel otherwise allocates only once records are written there.
// Memory that is not all zero gives a ring that reports corruption.
func InitZeroed(mem []byte, g Geometry) error { return initRing(mem, g, true) }

func initRing(mem []byte, g Geometry, zeroed bool) error {
	size, err := Size(g)
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
		return fmt.Errorf("init ring seed: %w", err)
	}
	if zeroed {
		clear(mem[:dataOffset(g.Producers)])
	} else {
		clear(mem[:size])
	}
	writeMeta(mem, magic, g.PayloadChecksum, g.DataSize, g.Producers, seed)
	return nil
}

// writeMeta writes the meta block a ring and a broadcast ring share
// (mag tells them apart; a broadcast ring has no producer slots) into
// mem, cleared by the caller, and its checksum last.
func writeMeta(mem []byte, mag uint64, payloadSum bool, dataSize, slots int, seed [8]byte) {
	var flags uint32
	if payloadSum {
		flags |= flagPayloadSum
	}
	le := binary.LittleEndian
	le.PutUint64(mem[offMagic:], mag)
	le.PutUint32(mem[offVersion:], version)
	le.PutUint32(mem[offFlags:], flags)
	le.PutUint64(mem[offDataSize:], uint64(dataSize))
	le.PutUint32(mem[offSlots:], uint32(slots))
	copy(mem[offSeed:], seed[:])
	le.PutUint64(mem[offMetaSum:], xxhash.Sum64(mem[:metaSumEnd]))
}

// metaWords are the meta block's fields, copied out of shared memory in
// one read and checked for what every kind of ring agrees on.
type metaWords struct {
	flags    uint32
	slots    uint32
	dataSize uint64
	seed     uint64
}

// readMetaWords copies the meta block at the start of mem (which must
// hold at least minLen bytes, for the control area of a what) and checks
// its magic (mag), version, checksum, reserved bytes and flags; sizes
// are the caller's to judge.
func readMetaWords(mem []byte, mag uint64, minLen int, what string) (metaWords, error) {
	var w metaWords
	if len(mem) < minLen {
		return w, fmt.Errorf("%w: %d bytes cannot hold %s control area", ErrBadLayout, len(mem), what)
	}
	if !aligned8(mem) {
		return w, fmt.Errorf("%w: memory is not 8-byte aligned", ErrBadLayout)
	}
	le := binary.LittleEndian
	var hdr [metaSumEnd + 8]byte
	copy(hdr[:], mem) // one read of the shared words; validate the copy
	if got := le.Uint64(hdr[offMagic:]); got != mag {
		return w, fmt.Errorf("%w: magic %#x, want %#x", ErrBadLayout, got, mag)
	}
	if got := le.Uint32(hdr[offVersion:]); got != version {
		return w, fmt.Errorf("%w: version %d, this package speaks %d", ErrBadLayout, got, version)
	}
	if got, want := le.Uint64(hdr[offMetaSum:]), xxhash.Sum64(hdr[:metaSumEnd]); got != want {
		return w, fmt.Errorf("%w: meta checksum %#x, want %#x", ErrBadLayout, got, want)
	}
	// Reserved bytes are zero in version 1: a peer that writes something
	// there speaks another dialect, and a later version can only give
	// them a meaning if today's readers refuse them.
	if le.Uint32(hdr[offReserved:]) != 0 || le.Uint64(hdr[offReserved2:]) != 0 || le.Uint64(hdr[offReserved2+8:]) != 0 {
		return w, fmt.Errorf("%w: reserved meta bytes are not zero", ErrBadLayout)
	}
	w.flags = le.Uint32(hdr[offFlags:])
	if w.flags&^knownFlags != 0 {
		return w, fmt.Errorf("%w: unknown flags %#x", ErrBadLayout, w.flags)
	}
	w.slots = le.Uint32(hdr[offSlots:])
	w.dataSize = le.Uint64(hdr[offDataSize:])
	w.seed = le.Uint64(hdr[offSeed:])
	return w, nil
}

// meta is the validated, immutable part of a ring, copied out of shared
// memory once at attach time: nothing here is read from the mapping again.
type meta struct {
	geo   Geometry
	flags uint32
	seed  uint64
	mask  uint64 // DataSize-1
	size  uint64 // DataSize
	maxP  uint64 // MaxPayload
	dOff  int    // data area offset
}

// readMeta validates the meta block of mem and returns a copy of it.
func readMeta(mem []byte) (meta, error) {
	var m meta
	w, err := readMetaWords(mem, magic, offSlotTable, "a ring's")
	if err != nil {
		return m, err
	}
	m.flags = w.flags
	ds, slots := w.dataSize, w.slots
	if ds > MaxDataSize || slots > MaxProducers {
		return m, fmt.Errorf("%w: data size %d, %d producer slots", ErrBadLayout, ds, slots)
	}
	m.geo = Geometry{DataSize: int(ds), Producers: int(slots), PayloadChecksum: m.flags&flagPayloadSum != 0}
	if err := m.geo.validate(); err != nil {
		return m, err
	}
	need, _ := Size(m.geo)
	if len(mem) < need {
		return m, fmt.Errorf("%w: %d bytes of memory, the ring needs %d", ErrBadLayout, len(mem), need)
	}
	m.seed = w.seed
	m.size = ds
	m.mask = ds - 1
	m.maxP = uint64(MaxPayload(int(ds)))
	m.dOff = dataOffset(int(slots))
	return m, nil
}

// ReadGeometry validates the ring at the start of mem and returns its
// geometry, without attaching a handle.
func ReadGeometry(mem []byte) (Geometry, error) {
	m, err := readMeta(mem)
	return m.geo, err
}

func alignUp(n, a int) int { return (n + a - 1) &^ (a - 1) }
