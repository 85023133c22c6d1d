package ring

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"
)

func needFences(t *testing.T) {
	t.Helper()
	if !asymmetricFences() {
		t.Skip("no global expedited membarrier here")
	}
}

func setUnfenceAfter(t *testing.T, n uint32) {
	old := unfenceAfter
	unfenceAfter = n
	t.Cleanup(func() { unfenceAfter = old })
}

// A producer stops fencing only after unfenceAfter commits in a row found
// its consumer awake, and only for a consumer that declared it fences; it
// fences again from the commit that finds the consumer asleep. A
// consumer's announcement fences the producer's CPU exactly while the
// producer does not.
func TestUnfencedFollowsConsumer(t *testing.T) {
	needFences(t)
	setUnfenceAfter(t, 3)
	p, c, mem := newPair(t, Geometry{DataSize: 4096}, 0, nil)
	word := func() uint32 { return atomic.LoadUint32(word32(mem, offUnfenced)) }
	if got := atomic.LoadUint32(word32(mem, offFences)); got != 1 {
		t.Fatalf("consumer declared fences = %d, want 1", got)
	}
	write := func() {
		t.Helper()
		if err := p.TryWrite(0, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	drain := func() {
		t.Helper()
		for {
			if _, err := c.TryPeek(); err == ErrEmpty {
				return
			} else if err != nil {
				t.Fatal(err)
			}
			c.Release()
		}
	}
	for i := range 2 {
		write()
		if p.unfenced || word() != 0 {
			t.Fatalf("unfenced after %d awake commits", i+1)
		}
	}
	write()
	if !p.unfenced || word() != 1 {
		t.Fatalf("after 3 awake commits: unfenced %v, word %d; want true, 1", p.unfenced, word())
	}
	drain()
	before := fences.issued.Load()
	c.w.Arm()
	if n := fences.issued.Load() - before; n != 1 {
		t.Fatalf("announcement with the producer unfenced issued %d fences, want 1", n)
	}
	write() // finds the consumer asleep: fenced again
	if p.unfenced || word() != 0 {
		t.Fatalf("after waking the consumer: unfenced %v, word %d; want false, 0", p.unfenced, word())
	}
	drain()
	before = fences.issued.Load()
	c.w.Arm()
	c.w.Disarm()
	if n := fences.issued.Load() - before; n != 0 {
		t.Fatalf("announcement with the producer fenced issued %d fences, want 0", n)
	}

	// A producer that scribbles the word (any value but 0 reads as
	// set) costs a fencing consumer one fence per announcement, no more.
	atomic.StoreUint32(word32(mem, offUnfenced), 7)
	before = fences.issued.Load()
	for range 3 {
		c.w.Arm()
		c.w.Disarm()
	}
	if n := fences.issued.Load() - before; n != 3 {
		t.Fatalf("3 announcements with a scribbled word issued %d fences, want 3", n)
	}
	atomic.StoreUint32(word32(mem, offUnfenced), 0)

	// A consumer that does not fence (another implementation, or a
	// process without membarrier) keeps the producer fenced.
	atomic.StoreUint32(word32(mem, offFences), 0)
	for range 20 {
		write()
		drain()
	}
	if p.unfenced || word() != 0 {
		t.Fatalf("unfenced for a consumer that does not fence")
	}
}

// fencesOff runs f with the scheme off for the rings it sets up.
func fencesOff(t *testing.T) {
	fencesDisabled.Store(true)
	t.Cleanup(func() { fencesDisabled.Store(false) })
}

// Without the scheme (fencesDisabled, as in a process without
// membarrier) neither side takes part: the consumer declares nothing
// and the producer never leaves full barriers.
func TestFencesOff(t *testing.T) {
	fencesOff(t)
	setUnfenceAfter(t, 1)
	p, c, mem := newPair(t, Geometry{DataSize: 4096}, 0, nil)
	if got := atomic.LoadUint32(word32(mem, offFences)); got != 0 {
		t.Fatalf("consumer declared fences = %d without the scheme", got)
	}
	for range 10 {
		if err := p.TryWrite(0, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if p.unfenced || c.w.fence != nil {
		t.Fatal("scheme in use while off")
	}
}

// The lost wake-up race with a producer that publishes without full
// barriers: bursts of 1 to 8 records, each answered once read, so that a
// wake-up lost on a burst's last record hangs the exchange (the deadline
// turns a hang into a failure). unfenceAfter is 1, so the producer
// leaves full barriers after any commit that found the consumer awake,
// and consumers announce sleeps under every policy while it streams.
func TestNoLostWakeupsUnfenced(t *testing.T) {
	needFences(t)
	setUnfenceAfter(t, 1)
	before := fences.issued.Load()
	for _, pol := range waitPolicies {
		t.Run(pol.name, func(t *testing.T) { testBurstsUnfenced(t, &pol.opts) })
	}
	if fences.issued.Load() == before {
		t.Fatal("no consumer fenced a producer: the unfenced path was not exercised")
	}
}

func testBurstsUnfenced(t *testing.T, opts *Options) {
	g := Geometry{DataSize: 4096}
	ap, ac, _ := newPair(t, g, 0, opts)
	bp, bc, _ := newPair(t, g, 0, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const bursts = 20000
	type result struct {
		acked int
		err   error
	}
	done := make(chan result, 1)
	go func() {
		acked, err := consumeBursts(ctx, ac, bp)
		done <- result{acked, err}
	}()
	if err := produceBursts(ctx, ap, bc, bursts); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil || r.acked != bursts {
		t.Fatalf("consumer: %d bursts, %v; want %d", r.acked, r.err, bursts)
	}
}

// produceBursts writes bursts of 1 to 8 records, each carrying its
// sequence number, the last of a burst with type 1; after each burst it
// waits for the consumer's ack (a lost wake-up hangs one side or the
// other until ctx ends). Then it closes the ring.
func produceBursts(ctx context.Context, p *Producer, ack *Consumer, bursts int) error {
	rng := rand.New(rand.NewPCG(3, 4))
	var seq uint64
	var b [8]byte
	for i := range bursts {
		n := 1 + rng.IntN(8)
		for j := range n {
			binary.LittleEndian.PutUint64(b[:], seq)
			seq++
			typ := uint32(0)
			if j == n-1 {
				typ = 1
			}
			if err := p.Write(ctx, typ, b[:]); err != nil {
				return fmt.Errorf("burst %d: %w", i, err)
			}
		}
		if _, err := ack.Peek(ctx); err != nil {
			return fmt.Errorf("ack of burst %d: %w", i, err)
		}
		ack.Release()
	}
	return p.Close()
}

// consumeBursts reads produceBursts' records, checks their order, and
// acks each burst, until the ring closes; it returns the bursts acked.
func consumeBursts(ctx context.Context, c *Consumer, ack *Producer) (acked int, err error) {
	var seq uint64
	for {
		r, err := c.Peek(ctx)
		if errors.Is(err, ErrClosed) {
			return acked, nil
		}
		if err != nil {
			return acked, fmt.Errorf("after %d bursts: %w", acked, err)
		}
		got, typ := binary.LittleEndian.Uint64(r.Data), r.Type
		c.Release()
		if got != seq {
			return acked, fmt.Errorf("record %d, want %d", got, seq)
		}
		seq++
		if typ == 1 {
			if err := ack.Write(ctx, 0, []byte("ack")); err != nil {
				return acked, err
			}
			acked++
		}
	}
}
