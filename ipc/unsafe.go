//go:build linux

package ipc

import "unsafe"

// word32 returns the 32-bit word at off in mem. The connection layout puts
// every ring at a 128-byte aligned offset of a 4096-byte aligned payload,
// and the ring's words at fixed aligned offsets, so the word is 4-byte
// aligned.
// This is the package's only use of unsafe.
func word32(mem []byte, off uint64) *uint32 {
	_ = mem[off+3] // bounds check
	return (*uint32)(unsafe.Pointer(&mem[off]))
}

// word64 returns the 64-bit word at off in mem (8-byte aligned by layout).
func word64(mem []byte, off uint64) *uint64 {
	_ = mem[off+7]
	return (*uint64)(unsafe.Pointer(&mem[off]))
}
