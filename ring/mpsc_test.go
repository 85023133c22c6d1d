package ring

import (
	"context"
	"encoding/binary"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// Close of one MPSC producer, the habitual deferred call, leaves the ring
// open for the others: it frees that producer's slot and fails only that
// handle's later reservations. CloseRing ends the stream for everybody.
func TestMPSCCloseDetachesOnly(t *testing.T) {
	mem := newMem(t, Geometry{DataSize: 4096, Producers: 2}, 0)
	a, err := NewProducer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewProducer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConsumer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.TryWrite(1, []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.TryWrite(1, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("write on a closed producer: %v, want ErrClosed", err)
	}
	if err := b.TryWrite(2, []byte("b")); err != nil {
		t.Fatalf("the other producer after Close: %v", err)
	}
	// The slot is free again: a third producer fits in two slots.
	third, err := NewProducer(mem, nil)
	if err != nil {
		t.Fatalf("attach after Close: %v", err)
	}
	for _, want := range []uint32{1, 2} {
		rec, err := c.TryPeek()
		if err != nil || rec.Type != want {
			t.Fatalf("got type %d, %v; want %d", rec.Type, err, want)
		}
		if err := c.Release(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.TryPeek(); !errors.Is(err, ErrEmpty) {
		t.Fatalf("after one producer's Close: %v, want ErrEmpty (the ring stays open)", err)
	}
	if err := third.CloseRing(); err != nil {
		t.Fatal(err)
	}
	if err := b.TryWrite(2, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after CloseRing: %v, want ErrClosed", err)
	}
	if _, err := c.TryPeek(); !errors.Is(err, ErrClosed) {
		t.Fatalf("peek after CloseRing: %v, want ErrClosed", err)
	}
}

// A goroutine of an MPSC handle asleep in Write on a full ring ends with
// ErrClosed when another goroutine closes that handle, while the ring
// stays open.
func TestMPSCCloseWakesOwnWriters(t *testing.T) {
	mem := newMem(t, Geometry{DataSize: 1024, Producers: 2}, 0)
	opts := &Options{Spin: -1} // sleep at once
	p, err := NewProducer(mem, opts)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConsumer(mem, opts)
	if err != nil {
		t.Fatal(err)
	}
	for p.TryWrite(0, make([]byte, 100)) == nil {
	}
	errc := make(chan error, 1)
	go func() { errc <- p.Write(context.Background(), 7, make([]byte, 100)) }()
	// The writer announces on the producers' futex word before it sleeps.
	for atomic.LoadUint32(p.s.prodWait) == 0 {
		runtime.Gosched()
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("blocked Write after its producer's Close: %v, want ErrClosed", err)
	}
	if _, err := c.TryPeek(); err != nil {
		t.Fatalf("the ring after one producer's Close: %v, want its records", err)
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
