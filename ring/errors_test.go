package ring

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// The contract of errors.go: ErrFull, ErrEmpty and ErrClosed come bare
// from the methods named there (so == works and nothing allocates); every
// other error wraps its sentinel, and errors.Is holds for all of them.
func TestErrorContract(t *testing.T) {
	bare := func(t *testing.T, what string, err, want error) {
		t.Helper()
		if err != want {
			t.Errorf("%s: %#v, want %v itself", what, err, want)
		}
	}
	wrapped := func(t *testing.T, what string, err, want error) {
		t.Helper()
		if err == want || !errors.Is(err, want) {
			t.Errorf("%s: %v, want an error wrapping %v", what, err, want)
		}
	}
	ctx := context.Background()
	for _, producers := range []int{0, 2} {
		t.Run(fmt.Sprintf("producers=%d", producers), func(t *testing.T) {
			p, c, _ := newPair(t, Geometry{DataSize: 1024, Producers: producers}, 0, &Options{Spin: -1})
			_, err := c.TryPeek()
			bare(t, "TryPeek on an empty ring", err, ErrEmpty)
			_, _, err = c.TryReadInto(make([]byte, 8))
			bare(t, "TryReadInto on an empty ring", err, ErrEmpty)
			wrapped(t, "Release with nothing peeked", c.Release(), ErrPending)
			_, err = p.TryReserve(0, p.MaxPayload()+1)
			wrapped(t, "TryReserve beyond MaxPayload", err, ErrTooLarge)
			if producers == 0 {
				r, err := p.TryReserve(0, 8)
				if err != nil {
					t.Fatal(err)
				}
				_, err = p.TryReserve(0, 8)
				wrapped(t, "a second TryReserve", err, ErrPending)
				if err := r.Abort(); err != nil {
					t.Fatal(err)
				}
			}
			wrapped(t, "Commit of a zero Reservation", Reservation{}.Commit(), ErrPending)
			for p.TryWrite(0, make([]byte, 100)) == nil {
			}
			_, err = p.TryReserve(0, 100)
			bare(t, "TryReserve on a full ring", err, ErrFull)
			bare(t, "TryWrite on a full ring", p.TryWrite(0, make([]byte, 100)), ErrFull)

			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			_, err = p.TryReserve(0, 8)
			bare(t, "TryReserve after Close", err, ErrClosed)
			_, err = p.Reserve(ctx, 0, 8)
			bare(t, "Reserve after Close", err, ErrClosed)
			bare(t, "TryWrite after Close", p.TryWrite(0, nil), ErrClosed)
			bare(t, "Write after Close", p.Write(ctx, 0, nil), ErrClosed)
			for {
				if _, err := c.TryPeek(); err != nil {
					bare(t, "TryPeek on a closed, drained ring", err, ErrClosed)
					break
				}
				if err := c.Release(); err != nil {
					t.Fatal(err)
				}
			}
			_, err = c.Peek(ctx)
			bare(t, "Peek on a closed ring", err, ErrClosed)
			_, _, err = c.Read(ctx)
			bare(t, "Read on a closed ring", err, ErrClosed)
			_, _, err = c.ReadInto(ctx, nil)
			bare(t, "ReadInto on a closed ring", err, ErrClosed)
			_, _, err = c.TryReadInto(nil)
			bare(t, "TryReadInto on a closed ring", err, ErrClosed)
			if !errors.Is(ErrClosed, ErrClosed) {
				t.Error("errors.Is(ErrClosed, ErrClosed) is false")
			}
		})
	}
	t.Run("attach", func(t *testing.T) {
		_, err := NewConsumer(make([]byte, 4096), nil)
		wrapped(t, "NewConsumer on zeroed memory", err, ErrBadLayout)
		_, err = Size(Geometry{DataSize: 1000})
		wrapped(t, "Size of a bad geometry", err, ErrBadLayout)
		mem := newMem(t, Geometry{DataSize: 1024, Producers: 1}, 0)
		if _, err := NewProducer(mem, nil); err != nil {
			t.Fatal(err)
		}
		_, err = NewProducer(mem, nil)
		wrapped(t, "NewProducer with every slot taken", err, ErrNoSlot)
	})
	t.Run("abandoned", func(t *testing.T) {
		mem := newMem(t, Geometry{DataSize: 4096, Producers: 2}, 0)
		dead, _ := NewProducer(mem, nil)
		live, _ := NewProducer(mem, nil)
		c, _ := NewConsumer(mem, nil)
		r, err := dead.TryReserve(1, 10)
		if err != nil {
			t.Fatal(err)
		}
		if err := live.TryWrite(2, nil); err != nil {
			t.Fatal(err)
		}
		setSlotPID(mem, dead.slotIndex(), 1<<30) // a pid no process has
		// The live record comes once the dead claim is skipped.
		if rec, err := c.Peek(ctx); err != nil || rec.Type != 2 {
			t.Fatalf("peek past a dead claim: type %d, %v", rec.Type, err)
		}
		wrapped(t, "Commit of a skipped claim", r.Commit(), ErrAbandoned)
	})
	t.Run("corrupt", func(t *testing.T) {
		p, c, mem := newPair(t, Geometry{DataSize: 1024}, 0, nil)
		if err := p.TryWrite(1, []byte("x")); err != nil {
			t.Fatal(err)
		}
		mem[dataOff(mem)+12] ^= 1 // the record's checksum
		_, err := c.TryPeek()
		var ce *CorruptError
		if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
			t.Errorf("peek of a bad checksum: %v, want a *CorruptError", err)
		}
	})
}
