//go:build linux

package ipc

// copyBody copies src to dst like copy, in pieces below a mebibyte.
//
// Go's memmove (amd64) switches to non-temporal stores from 1 MiB up:
// they bypass the cache, so the peer that reads the body next, on the
// other core, fetches all of it from memory instead of from the shared
// cache. A body's copy is always read soon after by the other side (the
// handler, the caller), so cached stores serve it better.
func copyBody(dst, src []byte) int {
	n := min(len(dst), len(src))
	for off := 0; off < n; off += bodyCopyPiece {
		end := min(off+bodyCopyPiece, n)
		copy(dst[off:end], src[off:end])
	}
	return n
}

// bodyCopyPiece is below memmove's non-temporal threshold (1 MiB).
const bodyCopyPiece = 512 << 10
