package ring

import (
	"bytes"
	"testing"
)

// TestInitZeroedLeavesDataArea: InitZeroed writes the control area only,
// and the ring it lays out works like one from Init.
func TestInitZeroedLeavesDataArea(t *testing.T) {
	g := Geometry{DataSize: 4096}
	size, _ := Size(g)
	mem := make([]byte, size+8)
	const marker = 0xa5
	mem[size-1] = marker // in the data area: must survive
	if err := InitZeroed(mem, g); err != nil {
		t.Fatal(err)
	}
	if mem[size-1] != marker {
		t.Fatal("InitZeroed wrote the data area")
	}
	mem[size-1] = 0
	ref := make([]byte, len(mem))
	if err := Init(ref, g); err != nil {
		t.Fatal(err)
	}
	const seed, sum = offSeed, offMetaSum // random per ring
	if !bytes.Equal(mem[:seed], ref[:seed]) || !bytes.Equal(mem[sum+8:], ref[sum+8:]) {
		t.Fatal("InitZeroed and Init lay out different rings")
	}
	p, err := NewProducer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConsumer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.TryWrite(7, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	r, err := c.TryPeek()
	if err != nil || r.Type != 7 || string(r.Data) != "hello" {
		t.Fatalf("read %+v, %v", r, err)
	}
}
