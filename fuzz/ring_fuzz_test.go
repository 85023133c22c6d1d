package fuzz

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"
	"unsafe"

	"github.com/ringipc/ringipc/ring"
)

// Offsets from docs/design.md.
const (
	offTail  = 128
	offHead  = 256
	dataSPSC = 640
	dataMPSC = 896 // 640 + 2 slots x 128
)

func newRing(t testing.TB, g ring.Geometry) []byte {
	size, err := ring.Size(g)
	if err != nil {
		t.Fatal(err)
	}
	words := make([]uint64, (size+7)/8)
	mem := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), size)
	if err := ring.Init(mem, g); err != nil {
		t.Fatal(err)
	}
	return mem
}

func allowed(err error) bool {
	return err == nil || errors.Is(err, ring.ErrEmpty) || errors.Is(err, ring.ErrFull) ||
		errors.Is(err, ring.ErrCorrupt) || errors.Is(err, ring.ErrClosed) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ring.ErrPending)
}

// FuzzRingDecoder: arbitrary bytes as the data area and positions of a
// ring with a valid meta block. The consumer must return records or
// known errors, never panic or hang, and never hand out a view outside
// the data area.
func FuzzRingDecoder(f *testing.F) {
	f.Add(uint64(0), uint64(32), false, []byte{0x20, 0, 0, 0, 0, 0, 0, 0xA0, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add(uint64(4080), uint64(4128), true, make([]byte, 64))
	f.Fuzz(func(t *testing.T, head, tail uint64, multi bool, data []byte) {
		g := ring.Geometry{DataSize: 4096}
		dOff := dataSPSC
		if multi {
			g.Producers = 2
			dOff = dataMPSC
		}
		mem := newRing(t, g)
		copy(mem[dOff:], data)
		binary.LittleEndian.PutUint64(mem[offHead:], head)
		binary.LittleEndian.PutUint64(mem[offTail:], tail)
		c, err := ring.NewConsumer(mem, &ring.Options{Spin: -1, Liveness: func(ring.Owner) bool { return false }})
		if err != nil {
			if !errors.Is(err, ring.ErrCorrupt) {
				t.Fatalf("attach: %v", err)
			}
			return
		}
		base := uintptr(unsafe.Pointer(&mem[dOff]))
		for i := 0; i < 300; i++ {
			r, err := c.TryPeek()
			if err != nil {
				if !allowed(err) {
					t.Fatalf("peek: %v", err)
				}
				return
			}
			if len(r.Data) > 0 {
				p := uintptr(unsafe.Pointer(&r.Data[0]))
				if p < base || p+uintptr(len(r.Data)) > base+4096 {
					t.Fatalf("view [%#x, +%d) outside the data area", p-base, len(r.Data))
				}
			}
			if err := c.Release(); err != nil {
				t.Fatalf("release: %v", err)
			}
		}
	})
}

// FuzzRingScribble: a stream of operations in which the fuzzer rewrites
// positions, headers and payloads between writes and reads. Every call
// returns within its deadline with a known error or none.
func FuzzRingScribble(f *testing.F) {
	f.Add([]byte{0, 10, 1, 1, 2, 130, 7, 1, 1})
	f.Add([]byte{0, 200, 0, 200, 1, 1, 1, 2, 0, 0, 0, 5, 1})
	f.Fuzz(func(t *testing.T, ops []byte) {
		for _, g := range []ring.Geometry{{DataSize: 1024}, {DataSize: 1024, Producers: 2, PayloadChecksum: true}} {
			mem := newRing(t, g)
			opts := &ring.Options{Spin: -1, Liveness: func(ring.Owner) bool { return false }}
			p, err := ring.NewProducer(mem, opts)
			if err != nil {
				t.Fatal(err)
			}
			c, err := ring.NewConsumer(mem, opts)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i+2 < len(ops); i += 3 {
				op, a, b := ops[i]%4, int(ops[i+1]), ops[i+2]
				switch op {
				case 0:
					if err := p.TryWrite(uint32(b), make([]byte, a)); !allowed(err) {
						t.Fatalf("write: %v", err)
					}
				case 1, 2:
					ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
					_, err := c.Peek(ctx)
					cancel()
					if err == nil {
						err = c.Release()
					}
					if !allowed(err) {
						t.Fatalf("peek: %v", err)
					}
				case 3:
					// Scribble: a is a position in units of 8 bytes over the
					// control words and the data area; b is the byte value.
					off := (a * 8) % len(mem)
					if off < 64 {
						off += 128 // keep the meta block valid; it is checked at attach only
					}
					mem[off+int(b)%8] = b
				}
			}
		}
	})
}
