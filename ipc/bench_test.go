//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// The benchmarks run server and client in this process (GOMAXPROCS is the
// machine's), each with its own loop goroutine, the default spin budget
// and 64-byte bodies.

func BenchmarkCall(b *testing.B) { benchCall(b, nil) }

// BenchmarkCallTiming is BenchmarkCall with Config.Timing: the difference
// is the cost of the latency histograms.
func BenchmarkCallTiming(b *testing.B) { benchCall(b, &Config{Timing: true}) }

func benchCall(b *testing.B, cfg *Config) {
	_, addr := startServer(b, cfg, echoService())
	cl := dial(b, addr, nil)
	ctx := testCtx(b)
	req, buf := make([]byte, 64), make([]byte, 64)
	b.ReportAllocs()
	b.SetBytes(64)
	lat := newCallLatency()
	for b.Loop() {
		t0 := lat.start()
		if _, err := cl.CallInto(ctx, msgEcho, req, buf); err != nil {
			b.Fatal(err)
		}
		lat.stop(t0)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	lat.report(b)
}

// callLatency samples the duration of every 16th operation (timing each
// would cost a visible share of a sub-microsecond call) into a fixed
// buffer, so that sampling allocates nothing inside the loop.
type callLatency struct {
	n  int
	ns []int64
}

func newCallLatency() *callLatency { return &callLatency{ns: make([]int64, 0, 1<<16)} }

func (l *callLatency) start() time.Time {
	l.n++
	if l.n%16 != 0 || len(l.ns) == cap(l.ns) {
		return time.Time{}
	}
	return time.Now()
}

func (l *callLatency) stop(t0 time.Time) {
	if !t0.IsZero() {
		l.ns = append(l.ns, int64(time.Since(t0)))
	}
}

func (l *callLatency) report(b *testing.B) {
	if len(l.ns) == 0 {
		return
	}
	slices.Sort(l.ns)
	b.ReportMetric(float64(l.ns[len(l.ns)/2]), "p50-ns")
	b.ReportMetric(float64(l.ns[len(l.ns)*99/100]), "p99-ns")
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
	callParallel(b, cl, ctx, 8)
}

// callParallel runs b.N echo calls of 64 bytes on cl from parallelism x
// GOMAXPROCS goroutines and reports calls/s.
func callParallel(b *testing.B, cl *Client, ctx context.Context, parallelism int) {
	b.ReportAllocs()
	b.SetParallelism(parallelism)
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
	// PolicyBlock: the producer outruns the reader, and waits for it.
	srv, addr := startServer(b, &Config{DispatchPolicy: PolicyBlock}, echoService())
	dial(b, addr, &ClientOptions{OnDispatch: func(id uint16, body []byte) {
		if got.Add(1) == want.Load() {
			done <- struct{}{}
		}
	}})
	conn := firstConn(b, srv)
	ctx := testCtx(b)
	body := make([]byte, 64)
	b.ReportAllocs()
	b.SetBytes(64)
	want.Store(int64(b.N))
	b.ResetTimer()
	for range b.N {
		if err := conn.Dispatch(ctx, 1, body); err != nil {
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

// msgFlood: body u64 n; the handler dispatches n messages of 64 bytes to
// the caller, then responds.
const msgFlood = 21

var floodHandler = HandlerFunc(func(w *ResponseWriter, r *Request) {
	if len(r.Data) < 8 {
		w.Fail(1, "short request")
		return
	}
	n := binary.LittleEndian.Uint64(r.Data)
	body := make([]byte, 64)
	for range n {
		if err := r.Conn.Dispatch(r.Context(), 1, body); err != nil {
			w.Fail(2, err.Error())
			return
		}
	}
	w.Respond(nil)
})

// BenchmarkDispatchProcess streams dispatch messages from a server in a
// child process to this client: the server's producer and the client's
// reader on different CPUs, as deployed.
func BenchmarkDispatchProcess(b *testing.B) {
	addr := abstractAddr()
	startChildB(b, "server", addr)
	var got atomic.Int64
	cl := dial(b, addr, &ClientOptions{OnDispatch: func(id uint16, body []byte) { got.Add(1) }})
	ctx := testCtx(b)
	var req [8]byte
	b.ReportAllocs()
	b.SetBytes(64)
	binary.LittleEndian.PutUint64(req[:], uint64(b.N))
	b.ResetTimer()
	if _, err := cl.Call(ctx, msgFlood, req[:]); err != nil {
		b.Fatal(err)
	}
	// The response follows the last message in its own ring: wait for
	// the dispatch reader to catch up.
	for got.Load() != int64(b.N) {
		if ctx.Err() != nil {
			b.Fatalf("%d of %d messages", got.Load(), b.N)
		}
		time.Sleep(10 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkPipelineProcess is ringbench's pipeline: 16 goroutines call a
// server in a child process over one Client, with contexts that never
// end (as ringbench's callers), which spares parked callers a select.
func BenchmarkPipelineProcess(b *testing.B) {
	addr := abstractAddr()
	startChildB(b, "server", addr)
	cl := dial(b, addr, nil)
	callParallel(b, cl, context.Background(), 16/runtime.GOMAXPROCS(0))
}

// BenchmarkTimingOverhead is what Config.Timing adds to a call on the
// server's loop: three clock reads and two histogram observations. It is
// steadier than the difference between BenchmarkCallTiming and
// BenchmarkCall, which the noise of a loaded machine can swamp.
func BenchmarkTimingOverhead(b *testing.B) {
	var st serviceStats
	b.ReportAllocs()
	for b.Loop() {
		taken := monoNow()
		start := monoNow()
		end := monoNow()
		st.handler.observe(end - start)
		st.queue.observe(start - taken)
	}
}
