package ring

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// commitNGeometries are the ring kinds a partial commit behaves
// differently in: SPSC (the tail advances less), MPSC (the rest of the
// claim becomes a skip record, or slack absorbs it), with and without
// payload checksums (the hash covers the committed bytes only).
var commitNGeometries = []Geometry{
	{DataSize: 4096},
	{DataSize: 4096, PayloadChecksum: true},
	{DataSize: 4096, Producers: 2},
	{DataSize: 4096, Producers: 2, PayloadChecksum: true},
}

// CommitN at every boundary: 0 bytes, some, all reserved, one more
// (ErrTooLarge, nothing committed, the reservation still usable), -1.
func TestCommitNBoundaries(t *testing.T) {
	for _, g := range commitNGeometries {
		t.Run(fmt.Sprintf("%+v", g), func(t *testing.T) {
			p, c, _ := newPair(t, g, nearWrap, nil)
			const reserved = 200
			seq := uint64(0)
			for _, n := range []int{0, 1, 15, 16, 17, 100, reserved - 1, reserved} {
				r, err := p.TryReserve(uint32(seq), reserved)
				if err != nil {
					t.Fatal(err)
				}
				fill(r.Bytes()[:n], seq)
				for _, bad := range []int{reserved + 1, -1} {
					if err := r.CommitN(bad); !errors.Is(err, ErrTooLarge) {
						t.Fatalf("CommitN(%d) of %d reserved: %v, want ErrTooLarge", bad, reserved, err)
					}
				}
				if _, err := c.TryPeek(); !errors.Is(err, ErrEmpty) {
					t.Fatalf("after a refused CommitN: %v, want ErrEmpty", err)
				}
				if err := r.CommitN(n); err != nil {
					t.Fatalf("CommitN(%d): %v", n, err)
				}
				rec, err := c.TryPeek()
				if err != nil {
					t.Fatal(err)
				}
				check(t, rec, seq, n)
				if cap(rec.Data) != n {
					t.Fatalf("CommitN(%d): view capacity %d", n, cap(rec.Data))
				}
				if err := c.Release(); err != nil {
					t.Fatal(err)
				}
				if _, err := c.TryPeek(); !errors.Is(err, ErrEmpty) {
					t.Fatalf("after CommitN(%d): %v, want ErrEmpty (no leftover record)", n, err)
				}
				seq++
			}
			var zero Reservation
			if err := zero.CommitN(0); !errors.Is(err, ErrPending) {
				t.Fatalf("CommitN on a zero Reservation: %v, want ErrPending", err)
			}
		})
	}
}

// The space a partial commit does not use goes back to the ring: a ring
// filled with shrunk records holds as many as one of records of the
// committed size, not of the reserved size.
func TestCommitNReturnsRest(t *testing.T) {
	for _, g := range commitNGeometries {
		t.Run(fmt.Sprintf("%+v", g), func(t *testing.T) {
			p, c, _ := newPair(t, g, 0, nil)
			max := p.MaxPayload()
			// One reservation of the whole payload limit, committed as 8
			// bytes; then a second one of the limit must fit at once,
			// which it would not if the first kept its space.
			for i := range 2 {
				r, err := p.TryReserve(uint32(i), max)
				if err != nil {
					t.Fatalf("reserve %d of %d bytes: %v", i, max, err)
				}
				fill(r.Bytes()[:8], uint64(i))
				if err := r.CommitN(8); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 2 {
				rec, err := c.TryPeek()
				if err != nil {
					t.Fatal(err)
				}
				check(t, rec, uint64(i), 8)
				c.Release()
			}
			if _, err := c.TryPeek(); !errors.Is(err, ErrEmpty) {
				t.Fatalf("drained: %v, want ErrEmpty", err)
			}
		})
	}
}

// Random reservations and random partial commits across many laps and
// the 2^64 wrap of positions, with several producers on an MPSC ring,
// under -race: every record arrives whole, in order per producer, and
// the consumer never stumbles on what a shrink left behind.
func TestCommitNRandomWraps(t *testing.T) {
	for _, g := range commitNGeometries {
		t.Run(fmt.Sprintf("%+v", g), func(t *testing.T) {
			producers := max(g.Producers, 1)
			mem := newMem(t, g, nearWrap)
			c, err := NewConsumer(mem, nil)
			if err != nil {
				t.Fatal(err)
			}
			const perProducer = 3000
			// A record's type is its sequence's low 32 bits: the
			// producer's id goes there too (bits 16..31, beside i), so
			// that a record too short to carry the sequence is still
			// known by its type alone.
			seqOf := func(id int, i uint64) uint64 { return uint64(id)<<32 | uint64(id)<<16 | i }
			ctx := context.Background()
			var wg sync.WaitGroup
			errc := make(chan error, producers)
			for id := range producers {
				p, err := NewProducer(mem, nil)
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer p.Close()
					rng := rand.New(rand.NewPCG(uint64(id), 9))
					for i := range uint64(perProducer) {
						seq := seqOf(id, i)
						reserved := rng.IntN(p.MaxPayload() + 1)
						n := rng.IntN(reserved + 1)
						r, err := p.Reserve(ctx, uint32(seq), reserved)
						if err != nil {
							errc <- err
							return
						}
						b := r.Bytes()
						fill(b[:n], seq)
						for j := n; j < len(b); j++ {
							b[j] = 0xEE // what the consumer must never see
						}
						if err := r.CommitN(n); err != nil {
							errc <- err
							return
						}
					}
				}()
			}
			next := make([]uint64, producers)
			for got := 0; got < producers*perProducer; got++ {
				rec, err := c.Peek(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if len(rec.Data) < 8 {
					// Too short to carry its sequence number: check the
					// bytes against each producer's next record.
					ok := false
					for id := range producers {
						if rec.Type == uint32(seqOf(id, next[id])) {
							check(t, rec, seqOf(id, next[id]), len(rec.Data))
							next[id]++
							ok = true
							break
						}
					}
					if !ok {
						t.Fatalf("record %d: type %d is no producer's next", got, rec.Type)
					}
				} else {
					seq := uint64(rec.Data[0]) | uint64(rec.Data[1])<<8 | uint64(rec.Data[2])<<16 | uint64(rec.Data[3])<<24 |
						uint64(rec.Data[4])<<32 | uint64(rec.Data[5])<<40 | uint64(rec.Data[6])<<48 | uint64(rec.Data[7])<<56
					id := int(seq >> 32)
					if id >= producers || seq != seqOf(id, next[id]) {
						t.Fatalf("record %d: sequence %#x out of order", got, seq)
					}
					check(t, rec, seq, len(rec.Data))
					next[id]++
				}
				if err := c.Release(); err != nil {
					t.Fatal(err)
				}
			}
			wg.Wait()
			close(errc)
			for err := range errc {
				t.Fatal(err)
			}
			// An SPSC producer's Close ends the stream; an MPSC one's does not.
			want := ErrEmpty
			if g.Producers == 0 {
				want = ErrClosed
			}
			if _, err := c.TryPeek(); !errors.Is(err, want) {
				t.Fatalf("drained: %v, want %v", err, want)
			}
		})
	}
}

// A reservation, a partial commit, a peek and a release allocate nothing.
func TestCommitNAllocs(t *testing.T) {
	for _, g := range commitNGeometries {
		p, c, _ := newPair(t, g, 0, nil)
		ctx := context.Background()
		n := testing.AllocsPerRun(1000, func() {
			r, err := p.Reserve(ctx, 1, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.CommitN(100); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Peek(ctx); err != nil {
				t.Fatal(err)
			}
			c.Release()
		})
		if n != 0 {
			t.Errorf("%+v: Reserve/CommitN/Peek/Release: %v allocs per record", g, n)
		}
	}
}
