//go:build linux

package ipc

import (
	"bytes"
	"testing"
)

// copyBody copies like copy at every size around its piece boundaries and
// its switch to one copy, into a destination shorter, as long as or
// longer than the source.
func TestCopyBody(t *testing.T) {
	src := make([]byte, cachedCopyMax+bodyCopyPiece+7)
	for i := range src {
		src[i] = byte(i*7 + i>>11)
	}
	for _, n := range []int{0, 1, bodyCopyPiece - 1, bodyCopyPiece, bodyCopyPiece + 1, 2 * bodyCopyPiece, cachedCopyMax, cachedCopyMax + 1, len(src)} {
		for _, dn := range []int{n - 1, n, n + 5} {
			if dn < 0 {
				continue
			}
			dst := make([]byte, dn)
			want := make([]byte, dn)
			if got, w := copyBody(dst, src[:n]), copy(want, src[:n]); got != w || !bytes.Equal(dst, want) {
				t.Fatalf("copyBody of %d bytes into %d: %d copied, content equal %v; copy: %d", n, dn, got, bytes.Equal(dst, want), w)
			}
		}
	}
}
