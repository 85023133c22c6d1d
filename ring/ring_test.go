package ring

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"
)

const nearWrap = ^uint64(0) - 3*4096 + 1 // 16-aligned, a few laps below 2^64

func newPair(tb testing.TB, g Geometry, pos uint64, opts *Options) (*Producer, *Consumer, []byte) {
	tb.Helper()
	mem := newMem(tb, g, pos)
	p, err := NewProducer(mem, opts)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := NewConsumer(mem, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return p, c, mem
}

// fill writes a record whose payload is derived from seq, so the reader
// can check every byte.
func fill(b []byte, seq uint64) {
	for i := range b {
		b[i] = byte(seq*131 + uint64(i)*7)
	}
	if len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, seq)
	}
}

func check(tb testing.TB, r Record, seq uint64, size int) {
	tb.Helper()
	if r.Type != uint32(seq) || len(r.Data) != size {
		tb.Fatalf("record %d: type %d len %d, want type %d len %d", seq, r.Type, len(r.Data), uint32(seq), size)
	}
	want := make([]byte, size)
	fill(want, seq)
	for i := range want {
		if r.Data[i] != want[i] {
			tb.Fatalf("record %d: byte %d is %d, want %d", seq, i, r.Data[i], want[i])
		}
	}
}

func TestRoundTripSingleGoroutine(t *testing.T) {
	for _, tc := range []struct {
		name string
		g    Geometry
		pos  uint64
	}{
		{"spsc", Geometry{DataSize: 4096}, 0},
		{"spsc-near-wrap", Geometry{DataSize: 4096}, nearWrap},
		{"spsc-payload-sum", Geometry{DataSize: 4096, PayloadChecksum: true}, nearWrap},
		{"mpsc", Geometry{DataSize: 4096, Producers: 2}, 0},
		{"mpsc-near-wrap", Geometry{DataSize: 4096, Producers: 2, PayloadChecksum: true}, nearWrap},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, c, _ := newPair(t, tc.g, tc.pos, nil)
			rng := rand.New(rand.NewPCG(1, 2))
			var wseq, rseq uint64
			sizes := map[uint64]int{}
			maxP := p.MaxPayload()
			for rseq < 20000 {
				// Write until full, then drain a random number: positions
				// go round the ring (and past 2^64) many times.
				for {
					n := rng.IntN(300)
					if rng.IntN(50) == 0 {
						n = rng.IntN(maxP + 1)
					}
					r, err := p.TryReserve(uint32(wseq), n)
					if errors.Is(err, ErrFull) {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					fill(r.Bytes(), wseq)
					if err := r.Commit(); err != nil {
						t.Fatal(err)
					}
					sizes[wseq] = n
					wseq++
				}
				k := rng.IntN(int(wseq-rseq)) + 1
				for i := 0; i < k; i++ {
					r, err := c.TryPeek()
					if err != nil {
						t.Fatalf("peek %d: %v", rseq, err)
					}
					check(t, r, rseq, sizes[rseq])
					delete(sizes, rseq)
					if err := c.Release(); err != nil {
						t.Fatal(err)
					}
					rseq++
				}
			}
			for rseq < wseq {
				r, err := c.TryPeek()
				if err != nil {
					t.Fatal(err)
				}
				check(t, r, rseq, sizes[rseq])
				c.Release()
				rseq++
			}
			if _, err := c.TryPeek(); !errors.Is(err, ErrEmpty) {
				t.Fatalf("drained ring: %v, want ErrEmpty", err)
			}
		})
	}
}

func TestStreamBetweenGoroutines(t *testing.T) {
	for _, spin := range []time.Duration{-1, 0} { // sleep at once; default spin
		t.Run(spin.String(), func(t *testing.T) {
			p, c, _ := newPair(t, Geometry{DataSize: 8192}, nearWrap, &Options{Spin: spin})
			const n = 50000
			ctx := context.Background()
			errc := make(chan error, 1)
			go func() {
				rng := rand.New(rand.NewPCG(3, 4))
				for i := uint64(0); i < n; i++ {
					r, err := p.Reserve(ctx, uint32(i), int(i%97)*rng.IntN(3))
					if err != nil {
						errc <- err
						return
					}
					fill(r.Bytes(), i)
					if err := r.Commit(); err != nil {
						errc <- err
						return
					}
				}
				errc <- p.Close()
			}()
			var i uint64
			for ; ; i++ {
				r, err := c.Peek(ctx)
				if errors.Is(err, ErrClosed) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				check(t, r, i, len(r.Data))
				c.Release()
			}
			if i != n {
				t.Fatalf("got %d records, want %d", i, n)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	p, c, _ := newPair(t, Geometry{DataSize: 1024}, 0, nil)
	if _, err := p.TryReserve(0, p.MaxPayload()+1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized reserve: %v", err)
	}
	if _, err := p.TryReserve(0, -1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("negative reserve: %v", err)
	}
	if _, err := c.TryPeek(); !errors.Is(err, ErrEmpty) {
		t.Fatalf("empty peek: %v", err)
	}
	if err := c.Release(); !errors.Is(err, ErrPending) {
		t.Fatalf("release without peek: %v", err)
	}
	r, err := p.TryReserve(7, 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.TryReserve(7, 10); !errors.Is(err, ErrPending) {
		t.Fatalf("second reservation: %v", err)
	}
	if err := r.Abort(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.TryPeek(); !errors.Is(err, ErrEmpty) {
		t.Fatalf("aborted record visible: %v", err)
	}
	for {
		err := p.TryWrite(1, make([]byte, 100))
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 10)
	if _, n, err := c.TryReadInto(buf); err != io.ErrShortBuffer || n != 100 {
		t.Fatalf("short buffer: n=%d err=%v", n, err)
	}
	typ, data, err := c.Read(context.Background())
	if err != nil || typ != 1 || len(data) != 100 {
		t.Fatalf("Read after short buffer: %d %d %v", typ, len(data), err)
	}
	if _, err := NewConsumer(make([]byte, 100), nil); !errors.Is(err, ErrBadLayout) {
		t.Fatalf("attach to garbage: %v", err)
	}
	if err := Init(make([]byte, 1<<16), Geometry{DataSize: 3000}); !errors.Is(err, ErrBadLayout) {
		t.Fatalf("non-power-of-two: %v", err)
	}
}

func TestCloseDrainsThenErrClosed(t *testing.T) {
	p, c, _ := newPair(t, Geometry{DataSize: 1024}, 0, nil)
	for i := 0; i < 3; i++ {
		if err := p.TryWrite(uint32(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
	if err := p.TryWrite(9, nil); !errors.Is(err, ErrClosed) || !errors.Is(err, os.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	for i := 0; i < 3; i++ {
		if _, _, err := c.Read(context.Background()); err != nil {
			t.Fatalf("drain %d: %v", i, err)
		}
	}
	if _, err := c.Peek(context.Background()); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("after drain: %v", err)
	}
}

// TestCommitThenCloseNotLost: a producer commits a record and closes the
// ring between the consumer's load of the tail (which found the ring
// empty) and its load of closed. The record was committed before the
// close, so it must be delivered, and ErrClosed come only after it.
func TestCommitThenCloseNotLost(t *testing.T) {
	peeks := map[string]func(*Consumer) (Record, error){
		"TryPeek": (*Consumer).TryPeek,
		"Peek":    func(c *Consumer) (Record, error) { return c.Peek(context.Background()) },
	}
	for _, g := range []Geometry{{DataSize: 1024}, {DataSize: 1024, Producers: 2}} {
		for name, peek := range peeks {
			t.Run(fmt.Sprintf("producers=%d/%s", g.Producers, name), func(t *testing.T) {
				p, c, _ := newPair(t, g, 0, nil)
				fired := false
				c.onEmpty(func() {
					if fired {
						return
					}
					fired = true
					if err := p.TryWrite(7, []byte("last words")); err != nil {
						t.Errorf("write: %v", err)
					}
					p.CloseRing()
				})
				r, err := peek(c)
				if !fired {
					t.Fatal("the hook never ran")
				}
				if err != nil {
					t.Fatalf("record committed before the close: %v, want it delivered", err)
				}
				if r.Type != 7 || string(r.Data) != "last words" {
					t.Fatalf("got type %d %q", r.Type, r.Data)
				}
				if err := c.Release(); err != nil {
					t.Fatal(err)
				}
				if _, err := peek(c); !errors.Is(err, ErrClosed) {
					t.Fatalf("after the drain: %v, want ErrClosed", err)
				}
			})
		}
	}
}

// Blocked calls end on close and on context expiry, in both directions
// and whether they spin or sleep.
func TestBlockedCallsEnd(t *testing.T) {
	for _, spin := range []time.Duration{-1, 0} {
		for _, how := range []string{"close-by-consumer", "close-by-producer", "deadline", "cancel"} {
			t.Run(how+"/"+spin.String(), func(t *testing.T) {
				opts := &Options{Spin: spin}
				// A full ring for the producer.
				p, c, _ := newPair(t, Geometry{DataSize: 1024}, 0, opts)
				for p.TryWrite(0, make([]byte, 200)) == nil {
				}
				// An empty ring for the consumer.
				p2, c2, _ := newPair(t, Geometry{DataSize: 1024}, 0, opts)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				if how == "deadline" {
					ctx, cancel = context.WithTimeout(ctx, 20*time.Millisecond)
					defer cancel()
				}
				var wg sync.WaitGroup
				var perr, cerr error
				wg.Add(2)
				go func() { defer wg.Done(); _, perr = p.Reserve(ctx, 0, 200) }()
				go func() { defer wg.Done(); _, cerr = c2.Peek(ctx) }()
				switch how {
				case "close-by-consumer":
					c.Close()
					c2.Close()
				case "close-by-producer":
					p.Close()
					p2.Close()
				case "cancel":
					cancel()
				}
				wg.Wait()
				want := error(ErrClosed)
				switch how {
				case "deadline":
					want = context.DeadlineExceeded
				case "cancel":
					want = context.Canceled
				}
				if !errors.Is(perr, want) || !errors.Is(cerr, want) {
					t.Fatalf("reserve: %v, peek: %v; want %v", perr, cerr, want)
				}
			})
		}
	}
}

// The lost wake-up race: a side announces that it sleeps while the peer
// publishes. Under every policy many waits go through the announcement
// (with no spin, every one), and a lost wake-up would hang the ping-pong
// (the deadline turns a hang into a failure).
func TestNoLostWakeups(t *testing.T) {
	defer func(f func() bool) { overloaded = f }(overloaded)
	for _, handoff := range []bool{false, true} {
		// With handoff, every FUTEX_WAIT hands its P back (as on an
		// overloaded machine), whatever the machine is doing now.
		overloaded = func() bool { return handoff }
		for _, pol := range waitPolicies {
			t.Run(fmt.Sprintf("%s/handoff=%v", pol.name, handoff), func(t *testing.T) { testNoLostWakeups(t, &pol.opts) })
		}
	}
}

func testNoLostWakeups(t *testing.T, opts *Options) {
	g := Geometry{DataSize: 1024}
	ap, ac, _ := newPair(t, g, 0, opts)
	bp, bc, _ := newPair(t, g, 0, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 20000
	errc := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			if _, err := ac.Peek(ctx); err != nil {
				errc <- err
				return
			}
			ac.Release()
			if err := bp.Write(ctx, 0, []byte("pong")); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i := 0; i < n; i++ {
		if err := ap.Write(ctx, 0, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := bc.Peek(ctx); err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
		bc.Release()
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestAllocs(t *testing.T) {
	for _, g := range []Geometry{{DataSize: 4096}, {DataSize: 4096, Producers: 1, PayloadChecksum: true}} {
		p, c, _ := newPair(t, g, 0, nil)
		ctx := context.Background()
		payload := make([]byte, 64)
		buf := make([]byte, 64)
		n := testing.AllocsPerRun(1000, func() {
			r, err := p.Reserve(ctx, 1, 64)
			if err != nil {
				t.Fatal(err)
			}
			copy(r.Bytes(), payload)
			r.Commit()
			if _, err := c.Peek(ctx); err != nil {
				t.Fatal(err)
			}
			c.Release()
		})
		if n != 0 {
			t.Errorf("%+v: Reserve/Commit/Peek/Release: %v allocs per record", g, n)
		}
		n = testing.AllocsPerRun(1000, func() {
			if err := p.Write(ctx, 1, payload); err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.ReadInto(ctx, buf); err != nil {
				t.Fatal(err)
			}
		})
		if n != 0 {
			t.Errorf("%+v: Write/ReadInto: %v allocs per record", g, n)
		}
	}
}
