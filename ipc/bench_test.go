package ipc

import (
	"sync/atomic"
	"testing"
	"time"
)

// The benchmarks run server and client in this process (GOMAXPROCS is the
// machine's), each with its own loop goroutine, the default spin budget
// and 64-byte bodies.

func BenchmarkCall(b *testing.B) {
	_, addr := startServer(b, nil, echoService())
	cl := dial(b, addr, nil)
	ctx := testCtx(b)
	req, buf := make([]byte, 64), make([]byte, 64)
	b.ReportAllocs()
	b.SetBytes(64)
	for b.Loop() {
		if _, err := cl.CallInto(ctx, msgEcho, req, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
}

func BenchmarkCallZeroCopy(b *testing.B) {
	_, addr := startServer(b, nil, echoService())
	cl := dial(b, addr, nil)
	ctx := testCtx(b)
	b.ReportAllocs()
	for b.Loop() {
		p, err := cl.Reserve(ctx, msgEchoZC, 64)
		if err != nil {
			b.Fatal(err)
		}
		r, err := p.Send(ctx)
		if err != nil {
			b.Fatal(err)
		}
		r.Release()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
}

func BenchmarkPipeline(b *testing.B) {
	_, addr := startServer(b, nil, echoService())
	cl := dial(b, addr, nil)
	ctx := testCtx(b)
	b.ReportAllocs()
	b.SetParallelism(8)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		req, buf := make([]byte, 64), make([]byte, 64)
		for pb.Next() {
			if _, err := cl.CallInto(ctx, msgEcho, req, buf); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
}

func BenchmarkDispatch(b *testing.B) {
	var got atomic.Int64
	done := make(chan struct{})
	var want atomic.Int64
	_, addr := startServer(b, nil, echoService())
	dial(b, addr, &ClientOptions{OnDispatch: func(id uint16, body []byte) {
		if got.Add(1) == want.Load() {
			done <- struct{}{}
		}
	}})
	srv := firstConn(b, addr)
	ctx := testCtx(b)
	body := make([]byte, 64)
	b.ReportAllocs()
	b.SetBytes(64)
	want.Store(int64(b.N))
	b.ResetTimer()
	for range b.N {
		if err := srv.Dispatch(ctx, 1, body); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkCallProcess calls a server running in a child process: the
// figure a real deployment sees.
func BenchmarkCallProcess(b *testing.B) {
	addr := abstractAddr()
	ch := startChildB(b, "server", addr)
	_ = ch
	cl := dial(b, addr, nil)
	ctx := testCtx(b)
	req, buf := make([]byte, 64), make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cl.CallInto(ctx, msgEcho, req, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	b.ReportMetric(float64(cl.waker.tokensOut.Load())/float64(b.N), "wakes/op")
}
