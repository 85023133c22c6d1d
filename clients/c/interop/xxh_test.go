//go:build linux

package interop

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestXXH64 checks the C client's own XXH64 against the Go library the
// rings use, for every length from 0 to 299 (every tail of the 32-byte
// stripe loop, with and without stripes).
func TestXXH64(t *testing.T) {
	bin := compile(t, t.TempDir(), "xxh", append(lib, "testdata/xxh.c")...)
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(out))
	b := make([]byte, 300)
	for i := range b {
		b[i] = byte(i*131 + 7)
	}
	if len(got) != len(b) {
		t.Fatalf("%d hashes, want %d", len(got), len(b))
	}
	for n := range b {
		if want := fmt.Sprintf("%016x", xxhash.Sum64(b[:n])); got[n] != want {
			t.Errorf("%d bytes: C says %s, Go %s", n, got[n], want)
		}
	}
}
