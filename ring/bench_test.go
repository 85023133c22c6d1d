package ring

import (
	"context"
	"testing"
)

// Benchmarks run producer and consumer as goroutines of one process;
// cmd/ringbench measures the same across processes. Both need two idle
// cores to mean anything.

func BenchmarkStream(b *testing.B) {
	for _, bc := range []struct {
		name string
		g    Geometry
	}{
		{"spsc-64B", Geometry{DataSize: 1 << 20}},
		{"mpsc-64B", Geometry{DataSize: 1 << 20, Producers: 1}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p, c, _ := newPair(b, bc.g, 0, nil)
			ctx := context.Background()
			payload := make([]byte, 64)
			b.SetBytes(64)
			b.ReportAllocs()
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; i < b.N; i++ {
					if _, err := c.Peek(ctx); err != nil {
						b.Error(err)
						return
					}
					c.Release()
				}
			}()
			for i := 0; i < b.N; i++ {
				if err := p.Write(ctx, 1, payload); err != nil {
					b.Fatal(err)
				}
			}
			<-done
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

func BenchmarkPingPong(b *testing.B) {
	g := Geometry{DataSize: 1 << 16}
	ap, ac, _ := newPair(b, g, 0, nil)
	bp, bc, _ := newPair(b, g, 0, nil)
	ctx := context.Background()
	payload := make([]byte, 64)
	b.ReportAllocs()
	go func() {
		for {
			r, err := ac.Peek(ctx)
			if err != nil {
				return
			}
			bp.Write(ctx, 0, r.Data)
			ac.Release()
		}
	}()
	for i := 0; i < b.N; i++ {
		ap.Write(ctx, 0, payload)
		bc.Peek(ctx)
		bc.Release()
	}
	ap.Close()
}

func BenchmarkCommitPeekSameGoroutine(b *testing.B) {
	p, c, _ := newPair(b, Geometry{DataSize: 1 << 16}, 0, nil)
	payload := make([]byte, 64)
	b.ReportAllocs()
	b.SetBytes(64)
	for i := 0; i < b.N; i++ {
		p.TryWrite(1, payload)
		c.TryPeek()
		c.Release()
	}
}
func BenchmarkWriteReadIntoSameGoroutine(b *testing.B) {
	writeReadInto(b, Geometry{DataSize: 1 << 20})
}

func BenchmarkMPSCWriteReadIntoSameGoroutine(b *testing.B) {
	writeReadInto(b, Geometry{DataSize: 1 << 20, Producers: 4})
}

// writeReadInto writes a 64-byte record and reads it back, b.N times, on
// one goroutine: the cost of the two calls with no peer to wait for.
func writeReadInto(b *testing.B, g Geometry) {
	p, c, _ := newPair(b, g, 0, nil)
	payload := make([]byte, 64)
	buf := make([]byte, 64)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(64)
	for i := 0; i < b.N; i++ {
		p.Write(ctx, 1, payload)
		c.ReadInto(ctx, buf)
	}
}
