//go:build linux

package ipc

import "unsafe"

//go:noescape
func streamCopy64(dst, src *byte, n uintptr)

// streamCopy copies src to dst (as copy does) with non-temporal stores,
// which go to memory rather than into this CPU's cache: for a body the
// peer reads next, from another CPU, while this one writes the rest
// (respondInNotes). The few bytes before dst's first 16-byte boundary
// and after the last whole 64 bytes are copied as usual.
func streamCopy(dst, src []byte) int {
	n := min(len(dst), len(src))
	if n == 0 {
		return 0
	}
	head := min(int(-uintptr(unsafe.Pointer(&dst[0]))&15), n)
	copy(dst[:head], src[:head])
	mid := (n - head) &^ 63
	if mid > 0 {
		streamCopy64(&dst[head], &src[head], uintptr(mid))
	}
	copy(dst[head+mid:n], src[head+mid:n])
	return n
}
