package ring

import (
	"math/bits"

	"github.com/cespare/xxhash/v2"
)

// A record is a 16-byte header followed by its payload, padded so that
// the next record starts 16-byte aligned:
//
//	+0  u64 word: bits  0..31 payload length (for padding: bytes after
//	                          the header up to the end of the data area)
//	              bits 32..43 producer slot + 1 (0: SPSC ring)
//	              bits 44..55 that slot's generation at claim time
//	              bits 56..59 flags (bit 56: padding; bit 57: skip,
//	                          a claim given up by Abort or by the
//	                          consumer for a dead producer, or the rest
//	                          of a claim after CommitN; bit 58:
//	                          slack, the record is followed by zero
//	                          bytes up to the next 64-byte boundary of
//	                          the data area, set by MPSC producers)
//	              bits 60..63 state: 0 not claimed yet, 0x5 claimed
//	                          (MPSC, between claim and commit), 0xA committed
//	+8  u32 type: the user's record type
//	+12 u32 checksum: low 32 bits of xxhash64 (see headerSum)
//
// The word is the only part a consumer reads before it knows the record is
// committed; it is written with one atomic store, after the rest of the
// record (SPSC: before the tail store that publishes it; MPSC: it is the
// commit itself, and the consumer zeroes every byte it has consumed, so a
// word from an earlier lap never survives).
const (
	headerSize  = 16
	recordAlign = 16

	stateShift     = 60
	stateFree      = 0x0
	stateClaimed   = 0x5
	stateCommitted = 0xA
	flagPad        = 1 << 56
	flagSkip       = 1 << 57
	flagSlack      = 1 << 58
	flagMask       = 0xF << 56
	slotShift      = 32
	slotMask       = 0xFFF
	genShift       = 44
	genMask        = 0xFFF
	lenMask        = 0xFFFFFFFF
)

func recordSize(payload uint64) uint64 {
	return (headerSize + payload + recordAlign - 1) &^ (recordAlign - 1)
}

// slackAlign is the boundary a record with flagSlack extends to: a cache
// line, so that records claimed by different producers never share one.
const slackAlign = 64

// slackedSize is the bytes a record of rs bytes at data offset off
// occupies with flagSlack.
func slackedSize(off, rs uint64) uint64 {
	return (off+rs+slackAlign-1)&^(slackAlign-1) - off
}

func makeWord(state uint64, flags uint64, slot, gen uint32, n uint64) uint64 {
	return state<<stateShift | flags | uint64(slot&slotMask)<<slotShift | uint64(gen&genMask)<<genShift | n&lenMask
}

func wordState(w uint64) uint64 { return w >> stateShift }
func wordLen(w uint64) uint64   { return w & lenMask }
func wordSlot(w uint64) uint32  { return uint32(w>>slotShift) & slotMask }
func wordGen(w uint64) uint32   { return uint32(w>>genShift) & genMask }
func wordFlags(w uint64) uint64 { return w & flagMask }

// headerSum is the record checksum: xxhash64 over 24 bytes,
//
//	seed^position u64 | word u64 | type u32 | folded payload hash u32
//
// where the folded payload hash is the xor of the two halves of the
// payload's xxhash64 (0 when the ring has no payload checksums). Seeding
// with the ring's random seed and the record's position means a header
// copied from another position, or left from an earlier lap, does not
// verify. 24 bytes keep xxhash on its short-input path.
func headerSum(seed, pos, word uint64, typ uint32, payloadHash uint64) uint32 {
	third := uint64(typ) | uint64(uint32(payloadHash)^uint32(payloadHash>>32))<<32
	return uint32(xxhash24(seed^pos, word, third))
}

// xxhash64 constants.
const (
	prime1 uint64 = 11400714785074694791
	prime2 uint64 = 14029467366897019727
	prime3 uint64 = 1609587929392839161
	prime4 uint64 = 9650029242287828579
	prime5 uint64 = 2870177450012600261
)

// xxhash24 is xxhash64 with seed 0 of the 24 bytes a|b|c (little-endian),
// written out for that one length: the library's general entry point
// costs more than the hash itself at this size. A test checks it against
// xxhash.Sum64.
func xxhash24(a, b, c uint64) uint64 {
	h := prime5 + 24
	h = mixLane(h, a)
	h = mixLane(h, b)
	h = mixLane(h, c)
	h ^= h >> 33
	h *= prime2
	h ^= h >> 29
	h *= prime3
	h ^= h >> 32
	return h
}

func mixLane(h, lane uint64) uint64 {
	lane *= prime2
	lane = bits.RotateLeft64(lane, 31) * prime1
	h ^= lane
	return bits.RotateLeft64(h, 27)*prime1 + prime4
}

func payloadHash(m *meta, p []byte) uint64 {
	if m.flags&flagPayloadSum == 0 {
		return 0
	}
	return xxhash.Sum64(p)
}
