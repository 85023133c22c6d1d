//go:build linux

package ipc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// The load test: many connections, from child processes and from
// goroutines of this one, pipeline calls for a bounded time. Every
// request carries its stream, a sequence number and an xxhash of itself;
// the server checks the checksum and that each stream's numbers arrive
// exactly in order (nothing lost, nothing duplicated), the client checks
// that the response is its own request, byte for byte. The server's
// memory must stay bounded; peak RSS and heap are logged.

const (
	msgLoad         = 40
	envLoadChild    = "IPC_LOAD_CHILD" // child: "conns,streams,duration"
	loadStreams     = 2                // pipelining callers per connection
	loadMaxBody     = 512
	loadBadChecksum = 1
	loadBadSequence = 2
)

func init() {
	if spec := os.Getenv(envLoadChild); spec != "" {
		os.Exit(runLoadChild(spec, os.Getenv(envAddr)))
	}
}

// loadRequest builds stream's request number seq: stream u32, seq u64,
// random body, then xxhash64 of all that.
func loadRequest(rng *rand.Rand, buf []byte, stream uint32, seq uint64) []byte {
	b := binary.LittleEndian.AppendUint32(buf[:0], stream)
	b = binary.LittleEndian.AppendUint64(b, seq)
	n := rng.IntN(loadMaxBody)
	for range n {
		b = append(b, byte(rng.Uint32()))
	}
	return binary.LittleEndian.AppendUint64(b, xxhash.Sum64(b))
}

func loadChecksumOK(b []byte) bool {
	return len(b) >= 20 && xxhash.Sum64(b[:len(b)-8]) == binary.LittleEndian.Uint64(b[len(b)-8:])
}

// loadService checks and echoes load requests.
func loadService() *Service {
	return &Service{
		ID: testService,
		OnConnect: func(c *Conn) error {
			c.SetPrivate(make([]uint64, loadStreams)) // next seq per stream; one handler at a time
			return nil
		},
		Handlers: map[uint16]Handler{msgLoad: HandlerFunc(func(w *ResponseWriter, r *Request) {
			// Copy first: the client can change shared memory under us.
			b := append([]byte(nil), r.Data...)
			if !loadChecksumOK(b) {
				w.Fail(loadBadChecksum, "checksum")
				return
			}
			next := r.Conn.Private().([]uint64)
			stream, seq := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint64(b[4:])
			if stream >= loadStreams || seq != next[stream] {
				w.Fail(loadBadSequence, fmt.Sprintf("stream %d: seq %d, want %d", stream, seq, next[stream%loadStreams]))
				return
			}
			next[stream]++
			w.Respond(b)
		})},
	}
}

// loadConn drives one connection with loadStreams pipelining callers
// until stop; it returns the calls completed.
func loadConn(cl *Client, seed uint64, stop <-chan struct{}) (uint64, error) {
	var wg sync.WaitGroup
	var calls atomic.Uint64
	errs := make(chan error, loadStreams)
	for s := range uint32(loadStreams) {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(s)))
			req := make([]byte, 0, loadMaxBody+32)
			resp := make([]byte, loadMaxBody+32)
			for seq := uint64(0); ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				req = loadRequest(rng, req, s, seq)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang guard
				n, err := cl.CallInto(ctx, msgLoad, req, resp)
				cancel()
				if err == nil && (!bytes.Equal(resp[:n], req) || !loadChecksumOK(resp[:n])) {
					err = fmt.Errorf("stream %d seq %d: response is not the request", s, seq)
				}
				if err != nil {
					errs <- err
					return
				}
				calls.Add(1)
			}
		})
	}
	wg.Wait()
	close(errs)
	return calls.Load(), <-errs
}

// runLoadChild runs conns connections for duration, then prints
// "done <calls>".
func runLoadChild(spec, addr string) int {
	var conns int
	var dur time.Duration
	if f := strings.Split(spec, ","); len(f) == 2 {
		conns, _ = strconv.Atoi(f[0])
		dur, _ = time.ParseDuration(f[1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cls []*Client
	for range conns {
		cl, err := Dial(ctx, addr, testService, &ClientOptions{RequestRingSize: MinRingSize, ResponseRingSize: MinRingSize, DispatchRingSize: MinRingSize})
		if err != nil {
			fmt.Println("dial:", err)
			return exitFailed
		}
		cls = append(cls, cl)
	}
	fmt.Println("ready")
	total, err := runLoad(cls, dur)
	if err != nil {
		fmt.Println("load:", err)
		return exitFailed
	}
	for _, cl := range cls {
		cl.Close()
	}
	fmt.Println("done", total)
	return 0
}

// runLoad drives every client for dur.
func runLoad(cls []*Client, dur time.Duration) (uint64, error) {
	stop := make(chan struct{})
	time.AfterFunc(dur, func() { close(stop) })
	var wg sync.WaitGroup
	var total atomic.Uint64
	var mu sync.Mutex
	var errs []error
	for i, cl := range cls {
		wg.Go(func() {
			n, err := loadConn(cl, uint64(os.Getpid())<<20|uint64(i), stop)
			total.Add(n)
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return total.Load(), errors.Join(errs...)
}

// vmHWM returns the process's peak resident set (kB) from /proc.
func vmHWM(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

func TestLoad(t *testing.T) {
	const procs, perProc, inProc = 4, 48, 64 // 256 connections
	dur := 3 * time.Second
	if soak() {
		dur = 30 * time.Second
	}
	srv, addr := startServer(t, nil, loadService())

	// Heap sampling: a ticker paces it, nothing waits on it.
	var peakHeap atomic.Uint64
	sampleStop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peakHeap.Load() {
				peakHeap.Store(ms.HeapInuse)
			}
			select {
			case <-tick.C:
			case <-sampleStop:
				return
			}
		}
	}()

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var children []*child
	for range procs {
		children = append(children, execChild(t, exe, nil,
			fmt.Sprintf("%s=%d,%v", envLoadChild, perProc, dur), envAddr+"="+addr))
	}
	ctx := testCtx(t)
	var cls []*Client
	for range inProc {
		cl, err := Dial(ctx, addr, testService, &ClientOptions{RequestRingSize: MinRingSize, ResponseRingSize: MinRingSize, DispatchRingSize: MinRingSize})
		if err != nil {
			t.Fatal(err)
		}
		cls = append(cls, cl)
	}
	for _, c := range children {
		if !c.lines.Scan() || c.lines.Text() != "ready" {
			t.Fatalf("load child: %q %v", c.lines.Text(), c.lines.Err())
		}
	}
	if n := len(srv.Conns()); n != procs*perProc+inProc {
		t.Fatalf("%d connections, want %d", n, procs*perProc+inProc)
	}
	start := time.Now()
	total, err := runLoad(cls, dur)
	if err != nil {
		t.Errorf("in-process clients: %v", err)
	}
	inProcCalls := total
	for i, c := range children {
		if !c.lines.Scan() {
			t.Fatalf("load child %d ended without a report: %v", i, c.lines.Err())
		}
		line := c.lines.Text()
		n, perr := strconv.ParseUint(strings.TrimPrefix(line, "done "), 10, 64)
		if !strings.HasPrefix(line, "done ") || perr != nil {
			t.Fatalf("load child %d: %s", i, line)
		}
		if err := c.cmd.Wait(); err != nil {
			t.Errorf("load child %d: %v", i, err)
		}
		total += n
	}
	elapsed := time.Since(start)
	for _, cl := range cls {
		cl.Close()
	}
	close(sampleStop)
	<-sampled
	// Every connection has ended; wait until the server has retired them
	// all, so that its counters are complete.
	waitUntil(t, func() bool { return len(srv.Conns()) == 0 }, "the server to retire every connection")
	st := srv.Stats()
	if st.Calls != total || st.Responses != total || st.ErrorResponses != 0 {
		t.Errorf("clients completed %d calls; server counted %d calls, %d responses, %d errors",
			total, st.Calls, st.Responses, st.ErrorResponses)
	}
	hwm := vmHWM(t)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("%d connections (%d processes x %d + %d in-process), %d callers: %d calls in %v (%.0f calls/s; %d in-process)",
		procs*perProc+inProc, procs, perProc, inProc, (procs*perProc+inProc)*loadStreams, total, elapsed.Round(time.Millisecond),
		float64(total)/elapsed.Seconds(), inProcCalls)
	t.Logf("server process: peak RSS (VmHWM) %d MiB, peak heap in use %d MiB, heap in use at the end %d MiB, %d goroutines",
		hwm/1024, peakHeap.Load()>>20, ms.HeapInuse>>20, runtime.NumGoroutine())
	// Generous bounds: the race detector multiplies memory several times.
	if hwm > 2<<20 {
		t.Errorf("peak RSS %d MiB above 2 GiB", hwm/1024)
	}
	if h := peakHeap.Load(); h > 512<<20 {
		t.Errorf("peak heap %d MiB above 512 MiB", h>>20)
	}
	if total == 0 {
		t.Error("no calls completed")
	}
}
