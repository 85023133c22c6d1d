package shmseg

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
)

// Segment layout. The header fills the first HeaderSize bytes; only the
// first 88 carry fields, the rest stays zero. All fields are fixed-width
// and little-endian, so a peer written in another language, or built for
// another architecture, reads the same bytes.
//
//	0       8       12      16      24      28      32              80      88          4096          totalSize
//	+-------+-------+-------+-------+-------+-------+---------------+-------+-----------+-------------+
//	| magic |version|header | total | kind  |reservd| params[0..5]  |checksm| zero      | payload     |
//	| u64   | u32   |size   | size  | u32   | u32=0 | 6 x u64       | u64   |           | (4096-byte  |
//	|       | =1    |u32    | u64   |       |       |               |       |           |  aligned)   |
//	+-------+-------+-------+-------+-------+-------+---------------+-------+-----------+-------------+
//	 <------------------ xxhash64 covers [0, 80) ------------------>
//
// The creator writes the header once, before the segment is shared with
// anyone, and nobody writes it afterwards. Passing the descriptor to the
// peer (SCM_RIGHTS, exec) or the peer's open of the named file happens
// after that write, so plain loads through encoding/binary see it and no
// atomics are needed.
const (
	// HeaderSize is the size of the segment header. The payload starts
	// right after it, at a 4096-byte aligned offset.
	HeaderSize = 4096

	// headerMagic is "RINGIPC\x00" read as a little-endian uint64, so the
	// bytes spell the name in a hex dump.
	headerMagic   uint64 = 0x00435049474e4952
	headerVersion uint32 = 1

	offMagic      = 0
	offVersion    = 8
	offHeaderSize = 12
	offTotalSize  = 16
	offKind       = 24
	offReserved   = 28
	offParams     = 32
	offChecksum   = offParams + 6*8 // 80
	headerLen     = offChecksum + 8 // 88: bytes that carry fields
)

// Geometry describes what the segment holds; shmseg stores and checksums it
// but does not interpret it.
type Geometry struct {
	Kind   uint32    // user-defined kind tag (e.g. 1 = single ring, 2 = ipc connection)
	Params [6]uint64 // user-defined parameters (ring sizes etc.)
}

// encodeHeader returns the header fields for a segment of total bytes,
// checksum included. The bytes from headerLen to HeaderSize are left to the
// caller, which writes into a fresh, zero-filled file.
func encodeHeader(g Geometry, total uint64) [headerLen]byte {
	var h [headerLen]byte
	le := binary.LittleEndian
	le.PutUint64(h[offMagic:], headerMagic)
	le.PutUint32(h[offVersion:], headerVersion)
	le.PutUint32(h[offHeaderSize:], HeaderSize)
	le.PutUint64(h[offTotalSize:], total)
	le.PutUint32(h[offKind:], g.Kind)
	le.PutUint32(h[offReserved:], 0)
	for i, p := range g.Params {
		le.PutUint64(h[offParams+8*i:], p)
	}
	le.PutUint64(h[offChecksum:], xxhash.Sum64(h[:offChecksum]))
	return h
}

// decodeHeader validates the header at the start of b, a segment of size
// bytes, and returns the Geometry it records. Errors are *HeaderError.
//
// The checks run in a fixed order (length, magic, version, checksum, header
// size, total size) so that the error names the most basic problem: a
// segment of some other format fails on its magic rather than on its
// checksum. No byte content makes it panic.
func decodeHeader(b []byte, size uint64) (Geometry, error) {
	if len(b) < headerLen {
		return Geometry{}, &HeaderError{Field: "length", Got: uint64(len(b)), Want: headerLen, Err: ErrTooSmall}
	}
	// b may be shared memory that a peer is still scribbling on. Copy it
	// once, so that every field checked and the bytes hashed are the same
	// snapshot: a field that changed between its check and its use could
	// otherwise slip past validation.
	var h [headerLen]byte
	copy(h[:], b)
	le := binary.LittleEndian

	if got := le.Uint64(h[offMagic:]); got != headerMagic {
		return Geometry{}, &HeaderError{Field: "magic", Got: got, Want: headerMagic, Err: ErrBadMagic}
	}
	if got := le.Uint32(h[offVersion:]); got != headerVersion {
		return Geometry{}, &HeaderError{Field: "version", Got: uint64(got), Want: uint64(headerVersion), Err: ErrBadVersion}
	}
	if got, want := le.Uint64(h[offChecksum:]), xxhash.Sum64(h[:offChecksum]); got != want {
		return Geometry{}, &HeaderError{Field: "checksum", Got: got, Want: want, Err: ErrBadChecksum}
	}
	if got := le.Uint32(h[offHeaderSize:]); got != HeaderSize {
		return Geometry{}, &HeaderError{Field: "headerSize", Got: uint64(got), Want: HeaderSize, Err: ErrSizeMismatch}
	}
	if got := le.Uint64(h[offTotalSize:]); got != size {
		return Geometry{}, &HeaderError{Field: "totalSize", Got: got, Want: size, Err: ErrSizeMismatch}
	}
	// reserved is covered by the checksum and otherwise ignored, so that a
	// later minor revision may give it a meaning without a version bump.
	g := Geometry{Kind: le.Uint32(h[offKind:])}
	for i := range g.Params {
		g.Params[i] = le.Uint64(h[offParams+8*i:])
	}
	return g, nil
}
