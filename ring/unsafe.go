package ring

import "unsafe"

// The only file that turns shared bytes into pointers for sync/atomic.
// Offsets passed here are checked to be inside mem by construction
// (constants below the validated control size, or data offsets masked
// into the data area and 16-byte aligned), and mem is 8-byte aligned.

func aligned8(mem []byte) bool {
	return len(mem) == 0 || uintptr(unsafe.Pointer(unsafe.SliceData(mem)))%8 == 0
}

func word64(mem []byte, off int) *uint64 {
	_ = mem[off : off+8] // bounds check without reading the shared byte
	return (*uint64)(unsafe.Pointer(&mem[off]))
}

func word32(mem []byte, off int) *uint32 {
	_ = mem[off : off+4] // bounds check without reading the shared byte
	return (*uint32)(unsafe.Pointer(&mem[off]))
}
