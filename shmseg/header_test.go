package shmseg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

var testGeometry = Geometry{Kind: 2, Params: [6]uint64{1 << 16, 1 << 20, 3, 0, 1<<64 - 1, 42}}

const testTotal = HeaderSize + 8192

// TestHeaderLayout pins every constant and offset of the wire format; a
// peer in another language relies on them.
func TestHeaderLayout(t *testing.T) {
	if HeaderSize != 4096 || headerLen != 88 {
		t.Fatalf("HeaderSize=%d headerLen=%d, want 4096 and 88", HeaderSize, headerLen)
	}
	var magic [8]byte
	binary.LittleEndian.PutUint64(magic[:], headerMagic)
	if string(magic[:]) != "RINGIPC\x00" {
		t.Fatalf("magic bytes %q, want %q", magic[:], "RINGIPC\x00")
	}

	h := encodeHeader(testGeometry, testTotal)
	le := binary.LittleEndian
	for _, c := range []struct {
		name      string
		off, size int
		want      uint64
	}{
		{"magic", 0, 8, headerMagic},
		{"version", 8, 4, 1},
		{"headerSize", 12, 4, 4096},
		{"totalSize", 16, 8, testTotal},
		{"kind", 24, 4, uint64(testGeometry.Kind)},
		{"reserved", 28, 4, 0},
		{"params[0]", 32, 8, testGeometry.Params[0]},
		{"params[1]", 40, 8, testGeometry.Params[1]},
		{"params[2]", 48, 8, testGeometry.Params[2]},
		{"params[3]", 56, 8, testGeometry.Params[3]},
		{"params[4]", 64, 8, testGeometry.Params[4]},
		{"params[5]", 72, 8, testGeometry.Params[5]},
		{"checksum", 80, 8, xxhash.Sum64(h[:80])},
	} {
		var got uint64
		switch c.size {
		case 4:
			got = uint64(le.Uint32(h[c.off:]))
		case 8:
			got = le.Uint64(h[c.off:])
		}
		if got != c.want {
			t.Errorf("%s at offset %d: got %#x, want %#x", c.name, c.off, got, c.want)
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, g := range []Geometry{{}, testGeometry, {Kind: 1<<32 - 1}} {
		h := encodeHeader(g, testTotal)
		// A header followed by more bytes, as in a real segment, decodes
		// the same as the bare fields.
		buf := make([]byte, HeaderSize)
		copy(buf, h[:])
		for _, b := range [][]byte{h[:], buf} {
			got, err := decodeHeader(b, testTotal)
			if err != nil {
				t.Fatalf("decodeHeader(%+v): %v", g, err)
			}
			if got != g {
				t.Fatalf("decodeHeader: got %+v, want %+v", got, g)
			}
		}
	}
}

// rehash recomputes the checksum, so that a corrupted field gets past the
// checksum and reaches its own check.
func rehash(b []byte) {
	binary.LittleEndian.PutUint64(b[offChecksum:], xxhash.Sum64(b[:offChecksum]))
}

func TestDecodeHeaderCorrupt(t *testing.T) {
	le := binary.LittleEndian
	tests := []struct {
		name    string
		corrupt func(b []byte) []byte
		size    uint64 // actual segment size passed to decodeHeader
		field   string
		wantErr error
	}{
		{"empty", func(b []byte) []byte { return nil }, testTotal, "length", ErrTooSmall},
		{"truncated", func(b []byte) []byte { return b[:headerLen-1] }, testTotal, "length", ErrTooSmall},
		{"magic", func(b []byte) []byte { b[0] ^= 1; return b }, testTotal, "magic", ErrBadMagic},
		{"zeroes", func(b []byte) []byte { clear(b); return b }, testTotal, "magic", ErrBadMagic},
		{"version", func(b []byte) []byte { le.PutUint32(b[offVersion:], 2); return b }, testTotal, "version", ErrBadVersion},
		{"checksum", func(b []byte) []byte { b[offChecksum+7] ^= 0x80; return b }, testTotal, "checksum", ErrBadChecksum},
		{"kind not rehashed", func(b []byte) []byte { b[offKind] ^= 1; return b }, testTotal, "checksum", ErrBadChecksum},
		{"reserved not rehashed", func(b []byte) []byte { b[offReserved] = 1; return b }, testTotal, "checksum", ErrBadChecksum},
		{"params not rehashed", func(b []byte) []byte { b[offParams+47] ^= 1; return b }, testTotal, "checksum", ErrBadChecksum},
		{"headerSize", func(b []byte) []byte { le.PutUint32(b[offHeaderSize:], 8192); rehash(b); return b }, testTotal, "headerSize", ErrSizeMismatch},
		{"totalSize field", func(b []byte) []byte { le.PutUint64(b[offTotalSize:], testTotal+4096); rehash(b); return b }, testTotal, "totalSize", ErrSizeMismatch},
		{"file larger than header says", func(b []byte) []byte { return b }, testTotal + 4096, "totalSize", ErrSizeMismatch},
		{"file smaller than header says", func(b []byte) []byte { return b }, HeaderSize, "totalSize", ErrSizeMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := encodeHeader(testGeometry, testTotal)
			b := tt.corrupt(h[:])
			_, err := decodeHeader(b, tt.size)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("decodeHeader: got %v, want %v", err, tt.wantErr)
			}
			var he *HeaderError
			if !errors.As(err, &he) {
				t.Fatalf("decodeHeader: %v is not a *HeaderError", err)
			}
			if he.Field != tt.field {
				t.Fatalf("HeaderError.Field = %q, want %q (%v)", he.Field, tt.field, err)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("message %q does not name the field %q", err, tt.field)
			}
		})
	}
}

// A reserved field that is not zero but correctly hashed is accepted: only
// writers must zero it.
func TestDecodeHeaderIgnoresReserved(t *testing.T) {
	h := encodeHeader(testGeometry, testTotal)
	binary.LittleEndian.PutUint32(h[offReserved:], 7)
	rehash(h[:])
	if _, err := decodeHeader(h[:], testTotal); err != nil {
		t.Fatalf("decodeHeader: %v", err)
	}
}

func TestHeaderErrorMessage(t *testing.T) {
	err := error(&HeaderError{Field: "version", Got: 2, Want: 1, Err: ErrBadVersion})
	if got, want := err.Error(), "header version is 2, want 1: unsupported header version"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	err = &HeaderError{Field: "magic", Got: 0, Want: headerMagic, Err: ErrBadMagic}
	if got, want := err.Error(), "header magic is 0x0000000000000000, want 0x00435049474e4952: bad magic number"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
}

func TestCheckName(t *testing.T) {
	for _, name := range []string{"a", "ringipc.1234", "..a", "a..", ".hidden", strings.Repeat("x", maxNameLen)} {
		if err := checkName(name); err != nil {
			t.Errorf("checkName(%q): %v", name, err)
		}
	}
	for _, bad := range badNames {
		err := checkName(bad.name)
		if !errors.Is(err, ErrBadName) {
			t.Errorf("checkName(%q): got %v, want ErrBadName", bad.name, err)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", bad.name)) {
			t.Errorf("error %q does not quote the name", err)
		}
	}
}

// badNames break the naming rules, each in its own way.
var badNames = []struct{ desc, name string }{
	{"empty", ""},
	{"dot", "."},
	{"dotdot", ".."},
	{"slash", "a/b"},
	{"absolute", "/abs"},
	{"escape", "../etc/passwd"},
	{"nul", "nul\x00byte"},
	{"too long", strings.Repeat("x", maxNameLen+1)},
}

func TestTotalSize(t *testing.T) {
	page := os.Getpagesize()
	for _, c := range []struct{ payload, want int }{
		{1, HeaderSize + page},
		{page, HeaderSize + page},
		{page + 1, HeaderSize + 2*page},
	} {
		got, err := totalSize(c.payload)
		if err != nil || got != c.want {
			t.Errorf("totalSize(%d) = %d, %v; want %d", c.payload, got, err, c.want)
		}
	}
	for _, p := range []int{0, -1} {
		if _, err := totalSize(p); !errors.Is(err, ErrTooSmall) {
			t.Errorf("totalSize(%d): got %v, want ErrTooSmall", p, err)
		}
	}
	if _, err := totalSize(int(^uint(0) >> 1)); err == nil {
		t.Errorf("totalSize(MaxInt): no error")
	}
}

// FuzzDecodeHeader checks that no byte content makes decodeHeader panic,
// and that whatever it accepts re-encodes to the same bytes.
func FuzzDecodeHeader(f *testing.F) {
	h := encodeHeader(testGeometry, testTotal)
	f.Add(h[:], uint64(testTotal))
	f.Add(h[:40], uint64(testTotal))
	f.Add(make([]byte, headerLen), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, size uint64) {
		g, err := decodeHeader(b, size)
		if err != nil {
			var he *HeaderError
			if !errors.As(err, &he) {
				t.Fatalf("error %v is not a *HeaderError", err)
			}
			return
		}
		again := encodeHeader(g, size)
		// reserved is not decoded, so compare everything but it.
		copy(again[offReserved:offReserved+4], b[offReserved:offReserved+4])
		rehash(again[:])
		if string(again[:]) != string(b[:headerLen]) {
			t.Fatalf("accepted header does not re-encode: %x vs %x", b[:headerLen], again)
		}
	})
}
