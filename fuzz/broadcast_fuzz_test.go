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

// Broadcast ring offsets from docs/design.md §2.9.1.
const (
	bcOffTail   = 128
	bcOffWake   = 136
	bcOffClosed = 140
	bcOffIntent = 256
	bcOffMark   = 264
	bcData      = 384
)

func newBroadcast(t testing.TB, g ring.BroadcastGeometry) []byte {
	size, err := ring.BroadcastSize(g)
	if err != nil {
		t.Fatal(err)
	}
	words := make([]uint64, (size+7)/8)
	mem := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), size)
	if err := ring.InitBroadcast(mem, g); err != nil {
		t.Fatal(err)
	}
	return mem
}

func bcAllowed(err error) bool {
	return err == nil || err == ring.ErrEmpty || err == ring.ErrClosed ||
		errors.Is(err, ring.ErrCorrupt) || errors.Is(err, ring.ErrOverrun) ||
		errors.Is(err, context.DeadlineExceeded)
}

// FuzzBroadcastReader: arbitrary bytes as the data area and the writer's
// words of a broadcast ring with a valid meta block. A reader must return
// records or known errors, never panic or hang, and never hand out a view
// outside the data area.
func FuzzBroadcastReader(f *testing.F) {
	f.Add(uint64(0), uint64(32), uint64(64), uint64(0), false, []byte{16, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(uint64(1<<40), uint64(1<<40), uint64(1<<41), uint64(4080), true, make([]byte, 64))
	f.Fuzz(func(t *testing.T, start, tail, intent, mark uint64, sum bool, data []byte) {
		const size = 4096
		mem := newBroadcast(t, ring.BroadcastGeometry{DataSize: size, PayloadChecksum: sum})
		le := binary.LittleEndian
		le.PutUint64(mem[bcOffTail:], start)
		r, err := ring.NewBroadcastReader(mem, &ring.BroadcastReaderOptions{Wait: ring.WaitSleep})
		if err != nil {
			if !errors.Is(err, ring.ErrCorrupt) {
				t.Fatalf("attach: %v", err)
			}
			return
		}
		copy(mem[bcData:], data)
		le.PutUint64(mem[bcOffTail:], tail)
		le.PutUint64(mem[bcOffIntent:], intent)
		le.PutUint64(mem[bcOffMark:], mark)
		base := uintptr(unsafe.Pointer(&mem[bcData]))
		for i := 0; i < 300; i++ {
			var rec ring.Record
			var err error
			if i%2 == 0 {
				rec, err = r.TryPeek()
				if err == nil {
					if len(rec.Data) > 0 {
						p := uintptr(unsafe.Pointer(&rec.Data[0]))
						if p < base || p+uintptr(len(rec.Data)) > base+size {
							t.Fatalf("view [%#x, +%d) outside the data area", p-base, len(rec.Data))
						}
					}
					err = r.Release()
				}
			} else {
				_, err = r.TryReadInto(nil)
			}
			if !bcAllowed(err) {
				t.Fatalf("read: %v", err)
			}
			if errors.Is(err, ring.ErrCorrupt) || err == ring.ErrEmpty || err == ring.ErrClosed {
				break
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		defer cancel()
		if _, err := r.ReadInto(ctx, nil); !bcAllowed(err) {
			t.Fatalf("read with a deadline: %v", err)
		}
	})
}

// FuzzBroadcastScribble: writes and reads interleaved with the fuzzer
// rewriting the writer's words, headers and payloads under the reader.
func FuzzBroadcastScribble(f *testing.F) {
	f.Add([]byte{0, 10, 1, 1, 2, 130, 7, 1, 1})
	f.Add([]byte{0, 200, 0, 0, 200, 1, 3, 17, 5, 1, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		mem := newBroadcast(t, ring.BroadcastGeometry{DataSize: 1024})
		w, err := ring.NewBroadcastWriter(mem)
		if err != nil {
			t.Fatal(err)
		}
		r, err := ring.NewBroadcastReader(mem, &ring.BroadcastReaderOptions{Wait: ring.WaitSleep})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+2 < len(ops); i += 3 {
			op, a, b := ops[i]%4, int(ops[i+1]), ops[i+2]
			switch op {
			case 0:
				if err := w.Write(uint32(b), make([]byte, a)); err != nil && !errors.Is(err, ring.ErrTooLarge) && err != ring.ErrClosed {
					t.Fatalf("write: %v", err)
				}
			case 1, 2:
				ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
				_, err := r.ReadInto(ctx, nil)
				cancel()
				if !bcAllowed(err) {
					t.Fatalf("read: %v", err)
				}
			case 3:
				off := (a * 8) % len(mem)
				if off < 128 {
					off += 128 // keep the meta block valid; it is checked at attach only
				}
				mem[off+int(b)%8] = b
			}
		}
	})
}
