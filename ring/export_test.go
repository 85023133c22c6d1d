package ring

import (
	"encoding/binary"
	"sync/atomic"
	"testing"
)

// newMem returns 8-byte-aligned heap memory holding a fresh ring, with
// both positions started at pos (to test the wrap of the counters).
func newMem(tb testing.TB, g Geometry, pos uint64) []byte {
	tb.Helper()
	size, err := Size(g)
	if err != nil {
		tb.Fatal(err)
	}
	words := make([]uint64, (size+7)/8)
	mem := unsafeBytes(words, size)
	if err := Init(mem, g); err != nil {
		tb.Fatal(err)
	}
	binary.LittleEndian.PutUint64(mem[offTail:], pos)
	binary.LittleEndian.PutUint64(mem[offHead:], pos)
	return mem
}

func dataOff(mem []byte) int {
	m, err := readMeta(mem)
	if err != nil {
		panic(err)
	}
	return m.dOff
}

// setSlotPID rewrites the pid of an attached producer slot, making the
// producer look like another (possibly dead) process.
func setSlotPID(mem []byte, slot int, pid uint32) {
	p := word64(mem, offSlotTable+slot*slotSize+slotOwner)
	w := atomic.LoadUint64(p)
	atomic.StoreUint64(p, w&^0xFFFFFFFF|uint64(pid))
	atomic.StoreUint64(word64(mem, offSlotTable+slot*slotSize+slotStart), 0)
}

func (p *Producer) slotIndex() int { return int(p.mp.slot) - 1 }

// setIntent writes a claim intent into lane 0 of a slot, as a producer
// that lost the tail CAS for pos would have left it.
func setIntent(mem []byte, slot int, pos uint64) {
	atomic.StoreUint64(word64(mem, offSlotTable+slot*slotSize+slotLanes), pos|1)
}

// onEmpty makes fn run each time the consumer has found the ring empty,
// between its load of the tail and its load of closed.
func (c *Consumer) onEmpty(fn func()) { c.testHookEmpty = fn }
