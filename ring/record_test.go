package ring

import (
	"encoding/binary"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// The header checksum is standard xxhash64 of 24 bytes, so a client in
// another language computes it with its own xxhash library.
func TestXXHash24MatchesLibrary(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var b [24]byte
	for i := 0; i < 10000; i++ {
		a, bb, c := rng.Uint64(), rng.Uint64(), rng.Uint64()
		if i == 0 {
			a, bb, c = 0, 0, 0
		}
		binary.LittleEndian.PutUint64(b[0:], a)
		binary.LittleEndian.PutUint64(b[8:], bb)
		binary.LittleEndian.PutUint64(b[16:], c)
		if got, want := xxhash24(a, bb, c), xxhash.Sum64(b[:]); got != want {
			t.Fatalf("xxhash24(%#x, %#x, %#x) = %#x, xxhash.Sum64 = %#x", a, bb, c, got, want)
		}
	}
}

// Pin the record layout: another implementation must produce the same
// words and checksums.
func TestRecordLayoutPinned(t *testing.T) {
	if headerSize != 16 || recordAlign != 16 {
		t.Fatal("header size or alignment changed")
	}
	w := makeWord(stateCommitted, flagPad, 3, 5, 1000)
	if w != 0xA1005003000003E8 {
		t.Fatalf("word %#x", w)
	}
	if got := recordSize(1); got != 32 {
		t.Fatalf("recordSize(1) = %d", got)
	}
	if got := recordSize(64); got != 80 {
		t.Fatalf("recordSize(64) = %d", got)
	}
	// seed^pos = 1, word = 2, type 3, no payload hash.
	var b [24]byte
	binary.LittleEndian.PutUint64(b[0:], 1)
	binary.LittleEndian.PutUint64(b[8:], 2)
	binary.LittleEndian.PutUint32(b[16:], 3)
	if got, want := headerSum(0, 1, 2, 3, 0), uint32(xxhash.Sum64(b[:])); got != want {
		t.Fatalf("headerSum %#x, want %#x", got, want)
	}
	for name, got := range map[string]int{"closed": offClosed, "tail": offTail, "unfenced": offUnfenced, "head": offHead, "fences": offFences, "consWait": offConsWait, "prodWait": offProdWait, "slots": offSlotTable} {
		want := map[string]int{"closed": 64, "tail": 128, "unfenced": 136, "head": 256, "fences": 264, "consWait": 384, "prodWait": 512, "slots": 640}[name]
		if got != want {
			t.Errorf("offset of %s = %d, want %d", name, got, want)
		}
	}
	if dataOffset(0) != 640 || dataOffset(3) != 1024 || slotSize != 128 {
		t.Errorf("data offsets %d %d", dataOffset(0), dataOffset(3))
	}
}

// A payload never exceeds what a record header's 32-bit length field can
// hold, however large the data area.
func TestMaxPayloadFitsLengthField(t *testing.T) {
	if got := MaxPayload(1 << 16); got != 1<<15-headerSize {
		t.Errorf("MaxPayload(64 KiB) = %d", got)
	}
	if strconv.IntSize == 32 {
		t.Skip("a 32-bit int cannot name a data area above 8 GiB")
	}
	big := 1 << (strconv.IntSize - 30) // 16 GiB; a constant would not compile for 32 bits
	if got := uint64(MaxPayload(big)); got > lenMask || recordSize(got)-headerSize > lenMask+1 {
		t.Errorf("MaxPayload(16 GiB) = %d, more than the length field holds", got)
	}
	if got := uint64(MaxPayload(big)); got != maxRecordPayload {
		t.Errorf("MaxPayload(16 GiB) = %d, want %d", got, maxRecordPayload)
	}
}
