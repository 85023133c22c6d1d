package ring

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Every scribble on shared memory gives ErrCorrupt (or a clean error),
// never a panic or a hang.
func TestCorruption(t *testing.T) {
	le := binary.LittleEndian
	type scribble func(t *testing.T, mem []byte, d int)
	cases := []struct {
		name  string
		g     Geometry
		hit   scribble
		onPut bool // the producer, not the consumer, must notice
	}{
		{"tail beyond head+size", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			le.PutUint64(mem[offTail:], le.Uint64(mem[offHead:])+8192)
		}, false},
		{"tail misaligned", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			le.PutUint64(mem[offTail:], le.Uint64(mem[offTail:])+8)
		}, false},
		{"tail backwards", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			le.PutUint64(mem[offTail:], le.Uint64(mem[offHead:])-16)
		}, false},
		{"length past the ring", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			w := le.Uint64(mem[d:])
			le.PutUint64(mem[d:], w|0xFFFFFF)
		}, false},
		{"state garbage", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			mem[d+7] = 0x3F
		}, false},
		{"unknown flag", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			mem[d+7] |= 0x08
		}, false},
		{"padding where no wrap is due", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			mem[d+7] |= 0x01
		}, false},
		{"type changed", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			mem[d+8] ^= 1
		}, false},
		{"checksum changed", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			mem[d+12] ^= 1
		}, false},
		{"payload changed", Geometry{DataSize: 4096, PayloadChecksum: true}, func(t *testing.T, mem []byte, d int) {
			mem[d+headerSize] ^= 1
		}, false},
		{"header replayed from another position", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			// Record 1 (at d+48) gets record 0's header: same length and
			// type, valid checksum for position 0, but not for its own.
			copy(mem[d+48:d+64], mem[d:d+16])
		}, false},
		{"head beyond tail", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			le.PutUint64(mem[offHead:], le.Uint64(mem[offTail:])+4096)
		}, true},
		{"head misaligned", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			le.PutUint64(mem[offHead:], le.Uint64(mem[offHead:])+24)
		}, true},
		{"mpsc claim slot out of range", Geometry{DataSize: 4096, Producers: 1}, func(t *testing.T, mem []byte, d int) {
			le.PutUint64(mem[d:], makeWord(stateClaimed, 0, 77, 1, 20))
		}, false},
		{"mpsc state garbage", Geometry{DataSize: 4096, Producers: 1}, func(t *testing.T, mem []byte, d int) {
			mem[d+7] = 0x70
		}, false},
		{"mpsc tail past head+size", Geometry{DataSize: 4096, Producers: 1}, func(t *testing.T, mem []byte, d int) {
			le.PutUint64(mem[offTail:], le.Uint64(mem[offHead:])+1<<20)
		}, true},
		{"mpsc tail misaligned", Geometry{DataSize: 4096, Producers: 1}, func(t *testing.T, mem []byte, d int) {
			le.PutUint64(mem[offTail:], le.Uint64(mem[offTail:])+8)
		}, true},
		{"mpsc tail misaligned near the end", Geometry{DataSize: 4096, Producers: 1}, func(t *testing.T, mem []byte, d int) {
			// 8 bytes before the end of the data area: a padding claim
			// there would be shorter than its own header.
			tail := le.Uint64(mem[offTail:])
			le.PutUint64(mem[offTail:], tail-tail%4096+4096-8)
			le.PutUint64(mem[offHead:], tail-tail%4096+4096-8-1024)
		}, true},
		{"mpsc slack on padding", Geometry{DataSize: 4096, Producers: 1}, func(t *testing.T, mem []byte, d int) {
			mem[d+7] |= 0x05 // padding and slack: a combination no producer writes
		}, false},
		{"spsc record naming a producer slot", Geometry{DataSize: 4096}, func(t *testing.T, mem []byte, d int) {
			// Record 0 re-signed with slot and generation bits, which an
			// SPSC producer never writes: the checksum verifies, the
			// word does not.
			seed := le.Uint64(mem[offSeed:])
			w := le.Uint64(mem[d:]) | uint64(1)<<slotShift | uint64(1)<<genShift
			le.PutUint64(mem[d:], w)
			le.PutUint32(mem[d+12:], headerSum(seed, nearWrap, w, le.Uint32(mem[d+8:]), 0))
		}, false},
		{"mpsc record forged ahead of the tail", Geometry{DataSize: 4096, Producers: 1}, func(t *testing.T, mem []byte, d int) {
			// A committed header with a valid checksum where nothing was
			// claimed: the consumer reads an MPSC ring's words before its
			// tail, and must notice when it next reads the tail.
			seed := le.Uint64(mem[offSeed:])
			pos := le.Uint64(mem[offTail:])
			at := dataOff(mem) + int(pos&4095)
			w := makeWord(stateCommitted, 0, 1, 1, 20)
			le.PutUint64(mem[at:], w)
			le.PutUint32(mem[at+8:], 9)
			le.PutUint32(mem[at+12:], headerSum(seed, pos, w, 9, 0))
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, c, mem := newPair(t, tc.g, nearWrap, &Options{Spin: -1})
			for i := 0; i < 3; i++ {
				if err := p.TryWrite(uint32(i), make([]byte, 20)); err != nil {
					t.Fatal(err)
				}
			}
			d := dataOff(mem) + int(nearWrap&4095)
			tc.hit(t, mem, d)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var err error
			if tc.onPut {
				for err == nil {
					err = p.TryWrite(0, make([]byte, 100))
				}
			} else {
				// Record 0 is intact unless the scribble hit it.
				for err == nil {
					if _, err = c.Peek(ctx); err == nil {
						c.Release()
					}
				}
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
			if !tc.onPut {
				// Sticky: the consumer does not trust the ring again.
				if _, err := c.TryPeek(); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("second peek: %v", err)
				}
				var ce *CorruptError
				if !errors.As(err, &ce) || ce.What == "" {
					t.Fatalf("no CorruptError detail in %v", err)
				}
			}
		})
	}
}

// Random bytes written anywhere in the ring between operations: every
// call returns, with a known error or none.
func TestRandomScribbles(t *testing.T) {
	for _, g := range []Geometry{{DataSize: 1024}, {DataSize: 1024, Producers: 2, PayloadChecksum: true}} {
		rng := rand.New(rand.NewPCG(5, 6))
		for iter := 0; iter < 300; iter++ {
			p, c, mem := newPair(t, g, rng.Uint64()&^15, &Options{Spin: -1, Liveness: func(Owner) bool { return false }})
			for step := 0; step < 40; step++ {
				switch rng.IntN(4) {
				case 0:
					i := rng.IntN(len(mem))
					mem[i] = byte(rng.Uint32())
				case 1:
					err := p.TryWrite(1, make([]byte, rng.IntN(200)))
					if err != nil && !errors.Is(err, ErrFull) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrClosed) {
						t.Fatalf("write: %v", err)
					}
				default:
					ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
					_, err := c.Peek(ctx)
					cancel()
					if err == nil {
						c.Release()
					} else if !errors.Is(err, ErrEmpty) && !errors.Is(err, ErrCorrupt) &&
						!errors.Is(err, ErrClosed) && !errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("peek: %v", err)
					}
				}
			}
		}
	}
}

// Reserved meta bytes must be zero: a ring whose creator wrote something
// there, even under a valid checksum, is refused on attach.
func TestReservedMetaRefused(t *testing.T) {
	for _, off := range []int{offReserved, offReserved2, offReserved2 + 15} {
		mem := newMem(t, Geometry{DataSize: 4096}, 0)
		mem[off] = 1
		binary.LittleEndian.PutUint64(mem[offMetaSum:], xxhash.Sum64(mem[:metaSumEnd]))
		if _, err := NewConsumer(mem, nil); !errors.Is(err, ErrBadLayout) {
			t.Errorf("reserved byte %d set: NewConsumer says %v, want ErrBadLayout", off, err)
		}
		if _, err := ReadGeometry(mem); !errors.Is(err, ErrBadLayout) {
			t.Errorf("reserved byte %d set: ReadGeometry says %v, want ErrBadLayout", off, err)
		}
	}
}
