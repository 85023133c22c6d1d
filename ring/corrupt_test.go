package ring

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync/atomic"
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

// A producer that is alive but slow is never skipped: its claim blocks the
// consumer until it commits.
func TestSlowProducerNotSkipped(t *testing.T) {
	mem := newMem(t, Geometry{DataSize: 4096, Producers: 2}, 0)
	slow, _ := NewProducer(mem, nil)
	fast, _ := NewProducer(mem, nil)
	c, _ := NewConsumer(mem, nil)
	r, err := slow.TryReserve(1, 10)
	if err != nil {
		t.Fatal(err)
	}
	if err := fast.TryWrite(2, []byte("after")); err != nil {
		t.Fatal(err)
	}
	// Several recovery slices pass while the claim is in flight.
	ctx, cancel := context.WithTimeout(context.Background(), 5*recoverySlice)
	defer cancel()
	if _, err := c.Peek(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("peek past a live claim: %v", err)
	}
	copy(r.Bytes(), "slow")
	if err := r.Commit(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []uint32{1, 2} {
		rec, err := c.TryPeek()
		if err != nil || rec.Type != want {
			t.Fatalf("got %v %v, want type %d", rec.Type, err, want)
		}
		c.Release()
	}
}

// A dead owner, as the operating system sees it: the slot's pid belongs
// to no process. Its claim is skipped; its late commit would fail.
func TestDeadOwnerClaimSkipped(t *testing.T) {
	mem := newMem(t, Geometry{DataSize: 4096, Producers: 2}, 0)
	dead, _ := NewProducer(mem, nil)
	live, _ := NewProducer(mem, nil)
	c, _ := NewConsumer(mem, nil)
	r, err := dead.TryReserve(1, 10)
	if err != nil {
		t.Fatal(err)
	}
	live.TryWrite(2, []byte("x"))
	setSlotPID(mem, dead.slotIndex(), 1<<30) // above pid_max: no such process
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rec, err := c.Peek(ctx)
	if err != nil || rec.Type != 2 {
		t.Fatalf("got type %d, %v; want the live producer's record", rec.Type, err)
	}
	c.Release()
	if err := r.Commit(); !errors.Is(err, ErrAbandoned) {
		t.Fatalf("late commit: %v, want ErrAbandoned", err)
	}
}

func TestMPSCAbortMidStream(t *testing.T) {
	p, c, _ := newPair(t, Geometry{DataSize: 4096, Producers: 1}, nearWrap, nil)
	var want []uint32
	for i := 0; i < 2000; i++ {
		r, err := p.TryReserve(uint32(i), i%50)
		if errors.Is(err, ErrFull) {
			for len(want) > 0 {
				rec, err := c.TryPeek()
				if err != nil || rec.Type != want[0] {
					t.Fatalf("got %d %v, want %d", rec.Type, err, want[0])
				}
				c.Release()
				want = want[1:]
			}
			i--
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			err = r.Abort()
		} else {
			want = append(want, uint32(i))
			err = r.Commit()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Several producers blocked on a full ring wake when space frees, and
// wake with ErrClosed when the ring closes.
func TestMPSCBlockedProducers(t *testing.T) {
	for _, end := range []string{"release", "close"} {
		t.Run(end, func(t *testing.T) {
			mem := newMem(t, Geometry{DataSize: 1024, Producers: 4}, 0)
			c, _ := NewConsumer(mem, &Options{Spin: -1})
			var ps []*Producer
			for i := 0; i < 4; i++ {
				p, err := NewProducer(mem, &Options{Spin: -1})
				if err != nil {
					t.Fatal(err)
				}
				ps = append(ps, p)
			}
			for ps[0].TryWrite(0, make([]byte, 100)) == nil {
			}
			errc := make(chan error, 3)
			var blocked atomic.Int32
			for _, p := range ps[1:] {
				go func() {
					blocked.Add(1)
					errc <- p.Write(context.Background(), 7, make([]byte, 100))
				}()
			}
			if end == "close" {
				c.Close()
				for i := 0; i < 3; i++ {
					if err := <-errc; !errors.Is(err, ErrClosed) {
						t.Fatalf("blocked producer after close: %v", err)
					}
				}
				return
			}
			got := 0
			for got < 3 {
				rec, err := c.Peek(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if rec.Type == 7 {
					got++
				}
				c.Release()
			}
			for i := 0; i < 3; i++ {
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestProducerSlots(t *testing.T) {
	mem := newMem(t, Geometry{DataSize: 1024, Producers: 2}, 0)
	a, err := NewProducer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewProducer(mem, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := NewProducer(mem, nil); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("third producer on two slots: %v", err)
	}
	a.mp.detach(&a.s)
	if _, err := NewProducer(mem, nil); err != nil {
		t.Fatalf("after detach: %v", err)
	}
	// Garbage in the producer table: attach does not take a slot whose
	// state it does not know, and does not crash.
	mem2 := newMem(t, Geometry{DataSize: 1024, Producers: 2}, 0)
	d := offSlotTable
	for i := d; i < d+2*slotSize; i++ {
		mem2[i] = 0xEE
	}
	if _, err := NewProducer(mem2, nil); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("garbage table: %v", err)
	}
}

// A live producer parked between its tail CAS and its claim word, and a
// dead producer's slot naming the same position (it lost the CAS, then
// died): the consumer must wait for the live one, not skip its claim.
func TestDeadLoserDoesNotSkipLiveClaim(t *testing.T) {
	mem := newMem(t, Geometry{DataSize: 4096, Producers: 2}, 0)
	live, _ := NewProducer(mem, nil)
	loser, _ := NewProducer(mem, nil)
	c, _ := NewConsumer(mem, nil)
	parked, resume := make(chan struct{}), make(chan struct{})
	testHookClaimWindow = func() {
		close(parked)
		<-resume
	}
	t.Cleanup(func() { testHookClaimWindow = nil })
	errc := make(chan error, 1)
	go func() {
		r, err := live.TryReserve(5, 10)
		if err == nil {
			copy(r.Bytes(), "live")
			err = r.Commit()
		}
		errc <- err
	}()
	<-parked
	testHookClaimWindow = nil
	setIntent(mem, loser.slotIndex(), 0)
	setSlotPID(mem, loser.slotIndex(), 1<<30) // dead
	ctx, cancel := context.WithTimeout(context.Background(), 5*recoverySlice)
	defer cancel()
	if _, err := c.Peek(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("peek past a live claim in its window: %v", err)
	}
	close(resume)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	rec, err := c.Peek(ctx2)
	if err != nil || rec.Type != 5 || string(rec.Data[:4]) != "live" {
		t.Fatalf("got %v %q %v", rec.Type, rec.Data, err)
	}
}

// Garbage in a producer's intent lanes costs lanes, not the producer:
// with one lane left it still claims, and with none its claim fails with
// ErrCorrupt once laneWaitLimit has passed, instead of waiting forever.
func TestScribbledLanes(t *testing.T) {
	mem := newMem(t, Geometry{DataSize: 4096, Producers: 1}, 0)
	p, err := NewProducer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConsumer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	lane := func(l int) []byte {
		off := offSlotTable + p.slotIndex()*slotSize + slotLanes + 8*l
		return mem[off : off+8]
	}
	for l := range numLanes - 1 {
		binary.LittleEndian.PutUint64(lane(l), 0xDEAD_BEEF_0000_0001+uint64(l)<<4)
	}
	if err := p.TryWrite(7, []byte("one lane left")); err != nil {
		t.Fatal(err)
	}
	if rec, err := c.TryPeek(); err != nil || string(rec.Data) != "one lane left" {
		t.Fatalf("peek: %q %v", rec.Data, err)
	}
	c.Release()
	binary.LittleEndian.PutUint64(lane(numLanes-1), 0xDEAD_BEEF_0000_0001)
	old := laneWaitLimit
	laneWaitLimit = 10 * time.Millisecond
	t.Cleanup(func() { laneWaitLimit = old })
	if err := p.TryWrite(7, []byte("no lane")); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("every lane scribbled: %v, want ErrCorrupt", err)
	}
}

// MPSC claims end on a cache-line boundary (flagSlack), except when the
// claim could then not be skipped as one record; the consumer skips the
// slack and delivers the records as written.
func TestMPSCSlack(t *testing.T) {
	le := binary.LittleEndian
	p, c, mem := newPair(t, Geometry{DataSize: 4096, Producers: 1}, 0, nil)
	tail := func() uint64 { return le.Uint64(mem[offTail:]) }
	if err := p.TryWrite(1, make([]byte, 20)); err != nil {
		t.Fatal(err)
	}
	if tail() != 64 {
		t.Fatalf("tail %d after a 20-byte record, want 64 (36 bytes and slack)", tail())
	}
	if err := p.TryWrite(2, make([]byte, 48)); err != nil {
		t.Fatal(err)
	}
	if tail() != 128 {
		t.Fatalf("tail %d after a 48-byte record, want 128 (no slack needed)", tail())
	}
	for _, want := range []uint32{1, 2} {
		rec, err := c.TryPeek()
		if err != nil || rec.Type != want {
			t.Fatalf("record %d: type %d, %v", want, rec.Type, err)
		}
		c.Release()
	}
	if _, err := c.TryPeek(); err != ErrEmpty {
		t.Fatalf("after the records: %v", err)
	}
}

// A claim that slack would make too long to skip as one record (2,032
// bytes at data offset 32: 48 bytes of slack, 2,064 after the header,
// above the 2,032-byte maximum payload) gets none.
func TestMPSCNoSlackNearMax(t *testing.T) {
	le := binary.LittleEndian
	p, c, mem := newPair(t, Geometry{DataSize: 4096, Producers: 1}, 32, nil)
	n := p.MaxPayload() - 16
	if err := p.TryWrite(3, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if got, want := le.Uint64(mem[offTail:]), 32+recordSize(uint64(n)); got != want {
		t.Fatalf("tail %d after a %d-byte record at 32, want %d", got, n, want)
	}
	if rec, err := c.TryPeek(); err != nil || rec.Type != 3 || len(rec.Data) != n {
		t.Fatalf("record: type %d, %d bytes, %v", rec.Type, len(rec.Data), err)
	}
}

// An MPSC consumer takes a committed word at its head on trust, without
// reading the tail, but for one lap at most: a data area scribbled full
// of plausible skip records ahead of the tail is found corrupt, not
// walked round forever.
func TestMPSCTrustBoundedToALap(t *testing.T) {
	le := binary.LittleEndian
	_, c, mem := newPair(t, Geometry{DataSize: 4096, Producers: 1}, 0, nil)
	d := dataOff(mem)
	for off := 0; off < 4096; off += 16 {
		le.PutUint64(mem[d+off:], makeWord(stateCommitted, flagSkip, 0, 0, 0))
	}
	if _, err := c.TryPeek(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("peek over a lap of forged skip records: %v, want ErrCorrupt", err)
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
