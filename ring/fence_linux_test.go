package ring

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/ringipc/ringipc/shmseg"
)

// burstGeometry is the geometry of both rings of the cross-process
// burst test.
func burstGeometry() Geometry { return Geometry{DataSize: 1 << 12} }

// burstHalves splits a segment's payload into the data ring (producer in
// the child) and the ack ring (producer in the parent).
func burstHalves(mem []byte) (data, ack []byte) {
	size, _ := Size(burstGeometry())
	return mem[:size], mem[size : 2*size]
}

// runBurstsChild is the producer process of
// TestCrossProcessNoLostWakeupsUnfenced: RING_TEST_N bursts of 1 to 8
// records, each burst answered by the parent before the next.
func runBurstsChild(ctx context.Context, mem []byte) error {
	if n := envInt("RING_TEST_UNFENCE_AFTER"); n > 0 {
		unfenceAfter = uint32(n)
	}
	dataMem, ackMem := burstHalves(mem)
	p, err := NewProducer(dataMem, nil)
	if err != nil {
		return err
	}
	ack, err := NewConsumer(ackMem, nil)
	if err != nil {
		return err
	}
	if !p.canUnfence {
		return errors.New("the child process cannot take part in asymmetric fences")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return produceBursts(ctx, p, ack, envInt("RING_TEST_N"))
}

// The lost wake-up race of TestNoLostWakeupsUnfenced across processes:
// the producer, unfenced after every commit that found the consumer
// awake, is another process, so only membarrier's interprocessor
// barrier can make its tail store visible to the consumer's re-check.
func TestCrossProcessNoLostWakeupsUnfenced(t *testing.T) {
	needFences(t)
	for _, pol := range waitPolicies {
		t.Run(pol.name, func(t *testing.T) {
			g := burstGeometry()
			size, err := Size(g)
			if err != nil {
				t.Fatal(err)
			}
			seg, err := shmseg.CreateMemfd("ring-bursts", shmseg.Geometry{Kind: 1}, 2*size)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { seg.Close() })
			dataMem, ackMem := burstHalves(seg.Payload())
			if err := Init(dataMem, g); err != nil {
				t.Fatal(err)
			}
			if err := Init(ackMem, g); err != nil {
				t.Fatal(err)
			}
			c, err := NewConsumer(dataMem, &pol.opts)
			if err != nil {
				t.Fatal(err)
			}
			ackP, err := NewProducer(ackMem, &pol.opts)
			if err != nil {
				t.Fatal(err)
			}
			const bursts = 20000
			before := fences.issued.Load()
			ch := startChild(t, seg, "bursts", "RING_TEST_N="+strconv.Itoa(bursts), "RING_TEST_UNFENCE_AFTER=1")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			acked, err := consumeBursts(ctx, c, ackP)
			if err != nil || acked != bursts {
				t.Fatalf("%d bursts, %v; want %d (a lost wake-up hangs here or in the child)", acked, err, bursts)
			}
			ch.wait(t)
			t.Logf("%d bursts, %d fences by the consumer", acked, fences.issued.Load()-before)
		})
	}
}
