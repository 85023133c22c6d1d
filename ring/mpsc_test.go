package ring

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
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
