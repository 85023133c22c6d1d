package prefetch

// Write asks the CPU to bring the cache line holding *p into this core's
// cache, owned for writing (PREFETCHW). It has no effect on memory, faults
// on no address, and costs a call where the CPU lacks the instruction
// (it is then a NOP).
//
//go:noescape
func Write(p *byte)

// Read asks the CPU to bring the cache line holding *p into this core's
// cache for reading (PREFETCHT0). Like Write, it has no effect on memory
// and faults on no address.
//
//go:noescape
func Read(p *byte)
