//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringipc/ringipc/ipc"
	"github.com/ringipc/ringipc/ring"
)

// TestMain lets the test binary play ringbench's children: run re-executes
// os.Executable, which under go test is this binary.
func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		os.Exit(childMain(role))
	}
	// A race-enabled child would sleep a second on exit by default,
	// which the parent waits out at every measurement.
	if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(g+" atexit_sleep_ms=0"))
	}
	os.Exit(m.Run())
}

// requiredFields are the JSON names scripts rely on.
var requiredFields = []string{
	"scenario", "transport", "size", "msgs_per_sec", "bytes_per_sec",
	"p50_ns", "p99_ns", "p999_ns", "cpu_sec", "producers", "duration_sec",
	"msgs", "cpu_per_msg_ns", "cpu_model", "cores", "go_version", "goos", "goarch",
	"ring_size", "spin_ns", "load_avg_1m", "goroutines", "rate", "clients",
	"wait", "zerocopy", "asym_fences",
}

// latencyScenarios are the scenarios that measure round trips.
var latencyScenarios = []string{"pingpong", "call", "pipeline", "fanin"}

// TestEndToEnd runs every scenario over each of its transports, briefly,
// through the re-exec path, at its default rates, and checks the JSON
// lines. It asserts nothing about speed: the machine may be loaded.
func TestEndToEnd(t *testing.T) {
	var stdout, stderr bytes.Buffer
	// Windows of 300 ms: on a loaded machine, a loop may stall for most
	// of a shorter one, and a window without messages is an error.
	args := []string{"-json", "-scenario", "all", "-duration", "300ms", "-size", "16",
		"-producers", "1,3", "-goroutines", "3", "-ring-size", "64KiB", "-clients", "2", "-subscribers", "2"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run %q: exit status %d\nstderr:\n%s", args, code, stderr.String())
	}
	var want []string
	for _, s := range scenarios {
		prods, gors, clients := []int{1}, 1, 0
		if s.perProducers {
			prods = []int{1, 3}
		}
		if s.perGoroutine {
			gors = 3
		}
		if s.perClients || s.perSubscribers {
			clients = 2
		} else if s.rpc {
			clients = 1
		}
		rates := s.defaultRates
		if rates == nil {
			rates = []int{0}
		}
		for _, rate := range rates {
			for _, p := range prods {
				for _, tr := range transports {
					if s.runs[tr] != nil {
						want = append(want, fmt.Sprintf("%s/%s/%d/%d/%d/%d", s.name, tr, p, gors, clients, rate))
					}
				}
			}
		}
	}
	for _, name := range []string{"spsc", "pingpong", "mpsc", "call", "pipeline", "dispatch", "fanin"} {
		if !slices.Contains(scenarioNames(), name) {
			t.Errorf("scenario %s is not registered", name)
		}
	}
	var got []string
	for i, line := range strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n") {
		var fields map[string]any
		if err := json.Unmarshal([]byte(line), &fields); err != nil {
			t.Fatalf("line %d is not JSON: %v\n%s", i+1, err, line)
		}
		for _, f := range requiredFields {
			if _, ok := fields[f]; !ok {
				t.Errorf("line %d lacks %q: %s", i+1, f, line)
			}
		}
		var r result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		got = append(got, fmt.Sprintf("%s/%s/%d/%d/%d/%d", r.Scenario, r.Transport, r.Producers, r.Goroutines, r.Clients, r.Rate))
		if r.Rate > 0 && (r.LatSamples < r.Msgs || r.LatSamples > r.Msgs+uint64(max(r.Goroutines, r.Clients))) {
			// Paced, every call of the window is timed (and the one
			// that opened it).
			t.Errorf("line %d: %d latency samples for %d calls at rate %d", i+1, r.LatSamples, r.Msgs, r.Rate)
		}
		if r.Msgs == 0 || r.MsgsPerSec <= 0 || r.BytesPerSec != r.MsgsPerSec*16 || r.Size != 16 {
			t.Errorf("line %d: msgs %d, %v msgs/s, %v bytes/s, size %d", i+1, r.Msgs, r.MsgsPerSec, r.BytesPerSec, r.Size)
		}
		if (r.Scenario == "broadcast") != (r.SubMsgsPerSec > 0) || r.SubMsgsPerSecMin > r.SubMsgsPerSec {
			t.Errorf("line %d: %s with sub_msgs_per_sec %v, min %v", i+1, r.Scenario, r.SubMsgsPerSec, r.SubMsgsPerSecMin)
		}
		// CPU may round to nothing on a machine busy with other work.
		if r.DurationSec <= 0 || r.CPUSec < 0 || r.CPUPerMsgNs < 0 {
			t.Errorf("line %d: duration %v s, cpu %v s, %v ns/msg", i+1, r.DurationSec, r.CPUSec, r.CPUPerMsgNs)
		}
		if r.Cores != runtime.NumCPU() || r.GoVersion != runtime.Version() || r.CPUModel == "" ||
			r.GOOS != runtime.GOOS || r.GOARCH != runtime.GOARCH {
			t.Errorf("line %d: machine %+v", i+1, r.machine)
		}
		if slices.Contains(latencyScenarios, r.Scenario) {
			if r.P50Ns <= 0 || r.P99Ns < r.P50Ns || r.P999Ns < r.P99Ns {
				t.Errorf("line %d: p50 %d, p99 %d, p999 %d", i+1, r.P50Ns, r.P99Ns, r.P999Ns)
			}
		} else if r.P50Ns != 0 || r.P99Ns != 0 || r.P999Ns != 0 {
			t.Errorf("line %d: latency figures for %s", i+1, r.Scenario)
		}
		wantRing, wantSpin := 0, int64(0)
		switch r.Transport {
		case "ring":
			wantRing, wantSpin = 64<<10, ring.AdaptiveSpin.Nanoseconds()
		case "ipc", "c":
			wantRing, wantSpin = 64<<10, ring.AdaptiveSpin.Nanoseconds()
		case "uds", "futex":
		default:
			t.Errorf("line %d: transport %q", i+1, r.Transport)
		}
		if r.RingSize != wantRing || r.SpinNs != wantSpin {
			t.Errorf("line %d: %s with ring_size %d, spin_ns %d", i+1, r.Transport, r.RingSize, r.SpinNs)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("results\n got %q\nwant %q", got, want)
	}
	if stderr.Len() > 0 {
		t.Logf("stderr:\n%s", stderr.String())
	}
}

// TestZeroCopy runs the -zerocopy scenarios over every transport: the
// ring and ipc rows hand frames off in place (zerocopy true, "-zc" in the
// table, the sequence numbers and tags still checked), the others copy
// as before (zerocopy false), and a scenario without a zero-copy form
// is unaffected. Sizes beyond the 16 bytes the zero-copy links move.
func TestZeroCopy(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"-json", "-zerocopy", "-scenario", "spsc,call,pingpong,dispatch", "-duration", "300ms", "-size", "1000",
		"-rate", "0", "-ring-size", "64KiB", "-transport", "ring,ipc,uds"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run %q: exit status %d\nstderr:\n%s", args, code, stderr.String())
	}
	var got []string
	for i, line := range strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n") {
		var r result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if r.Msgs == 0 || r.Size != 1000 {
			t.Errorf("line %d: %d msgs of %d bytes", i+1, r.Msgs, r.Size)
		}
		got = append(got, fmt.Sprintf("%s/%s/%v", r.Scenario, r.Transport, r.ZeroCopy))
	}
	want := []string{"spsc/ring/true", "spsc/uds/false", "pingpong/ring/false", "pingpong/uds/false", "call/ipc/true", "call/uds/false",
		"dispatch/ipc/true", "dispatch/uds/false"}
	if !slices.Equal(got, want) {
		t.Errorf("rows\n got %q\nwant %q", got, want)
	}
	stdout.Reset()
	args = []string{"-zerocopy", "-scenario", "call", "-duration", "300ms", "-rate", "0", "-transport", "ipc,uds"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run %q: exit status %d\nstderr:\n%s", args, code, stderr.String())
	}
	for _, want := range []string{" ipc-zc ", "ipc-zc/uds", "-zerocopy: the frame is handed off in place"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestTable(t *testing.T) {
	var stdout, stderr bytes.Buffer
	// call runs at its default rates; at 1,000/s a window of 300 ms
	// holds 300 calls, enough to survive a loaded machine's stalls.
	args := []string{"-scenario", "spsc,call", "-duration", "300ms", "-spin", "-1ns"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run %q: exit status %d\nstderr:\n%s", args, code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"machine:  ", fmt.Sprintf("%d cores", runtime.NumCPU()), runtime.Version(),
		"wait sleep (ring and ipc)", "\nspsc ", " ring ", " uds ", "ring/uds", "one write(2) per",
		"\ncall ", " ipc ", "ipc/uds", "Client.CallInto",
		" max  ", " 1k  ", " 10k  ", " futex ", "ipc/futex", "FUTEX_WAIT", "clock_nanosleep",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestFlags(t *testing.T) {
	tests := []struct {
		args []string
		err  string // "" for success
		chk  func(*config) bool
	}{
		{nil, "", func(c *config) bool {
			var names []string
			for _, s := range c.scenarios {
				names = append(names, s.name)
			}
			return slices.Equal(names, []string{"spsc", "pingpong", "mpsc", "call", "pipeline", "dispatch", "fanin"}) &&
				slices.Equal(c.sizes, []int{64}) && slices.Equal(c.producers, []int{2}) &&
				slices.Equal(c.clients, []int{32}) && c.rates == nil &&
				slices.Equal(c.ratesFor(c.scenarios[3]), []int{0, 1000, 10000}) &&
				slices.Equal(c.ratesFor(c.scenarios[6]), []int{1000}) &&
				slices.Equal(c.ratesFor(c.scenarios[0]), []int{0}) &&
				slices.Equal(c.goroutines, []int{16}) &&
				c.duration == 1500*time.Millisecond && c.warmup == 150*time.Millisecond && c.ringSize == 1<<20 &&
				c.topicRingSize == 0 &&
				slices.Equal(c.transports, transports) && c.spin == 0 && !c.json
		}},
		{[]string{"-scenario", "all"}, "", func(c *config) bool { return len(c.scenarios) == len(scenarios) }},
		{[]string{"-scenario", "mpsc,spsc,mpsc"}, "", func(c *config) bool {
			return len(c.scenarios) == 2 && c.scenarios[0].name == "spsc" && c.scenarios[1].name == "mpsc"
		}},
		{[]string{"-transport", "uds,ring"}, "", func(c *config) bool { return slices.Equal(c.transports, []string{"ring", "uds"}) }},
		{[]string{"-size", "16,4KiB,1k", "-ring-size", "64k"}, "", func(c *config) bool {
			return slices.Equal(c.sizes, []int{16, 4096, 1024}) && c.ringSize == 65536 && c.topicRingSize == 65536
		}},
		{[]string{"-producers", "1,2,8"}, "", func(c *config) bool { return slices.Equal(c.producers, []int{1, 2, 8}) }},
		{[]string{"-goroutines", "1,4"}, "", func(c *config) bool { return slices.Equal(c.goroutines, []int{1, 4}) }},
		{[]string{"-transport", "ipc"}, "", func(c *config) bool { return slices.Equal(c.transports, []string{"ipc"}) }},
		{[]string{"-scenario", "call", "-size", "4KiB", "-ring-size", "4KiB", "-transport", "uds"}, "", nil},
		{[]string{"-scenario", "call", "-size", "2KiB", "-ring-size", "4KiB"}, "raise -ring-size", nil},
		{[]string{"-scenario", "dispatch", "-ring-size", "1KiB"}, "ipc rings take", nil},
		{[]string{"-scenario", "spsc", "-ring-size", "1KiB", "-size", "16"}, "", nil},
		{[]string{"-goroutines", "0"}, "count", nil},
		{[]string{"-duration", "10s"}, "", func(c *config) bool { return c.warmup == 500*time.Millisecond }},
		{[]string{"-size", "1MiB", "-transport", "uds"}, "", nil},
		{[]string{"-scenario", "nope"}, "unknown", nil},
		{[]string{"-transport", "tcp"}, "unknown", nil},
		{[]string{"-size", "8", "-scenario", "mpsc"}, "checks", nil},
		{[]string{"-size", "1MiB"}, "raise -ring-size", nil},
		{[]string{"-ring-size", "3000"}, "power of two", nil},
		{[]string{"-producers", "0"}, "count", nil},
		{[]string{"-duration", "0s"}, "positive", nil},
		{[]string{"extra"}, "unexpected", nil},
		{[]string{"-rate", "0,500", "-scenario", "call,fanin"}, "", func(c *config) bool {
			return slices.Equal(c.ratesFor(c.scenarios[0]), []int{0, 500}) && slices.Equal(c.ratesFor(c.scenarios[1]), []int{0, 500})
		}},
		{[]string{"-rate", "0"}, "", func(c *config) bool { return slices.Equal(c.ratesFor(c.scenarios[0]), []int{0}) }},
		{[]string{"-clients", "1,8"}, "", func(c *config) bool { return slices.Equal(c.clients, []int{1, 8}) }},
		{[]string{"-rate", "-5"}, "-rate", nil},
		{[]string{"-rate", "fast"}, "-rate", nil},
		{[]string{"-rate", "1.5"}, "-rate", nil},
		{[]string{"-rate", "2000000"}, "-rate", nil},
		{[]string{"-rate", ","}, "none given", nil},
		{[]string{"-rate", "1000", "-scenario", "spsc", "-size", "15"}, "stamps", nil},
		{[]string{"-rate", "0", "-scenario", "spsc", "-size", "15"}, "", nil},
		{[]string{"-rate", "1000", "-scenario", "mpsc", "-size", "23"}, "stamps", nil},
		{[]string{"-rate", "1000", "-scenario", "dispatch", "-size", "16"}, "", nil},
		{[]string{"-scenario", "call", "-size", "8"}, "", nil},
		{[]string{"-clients", "0"}, "-clients", nil},
		{[]string{"-clients", "x"}, "-clients", nil},
		{[]string{"-clients", "5000"}, "-clients", nil},
		{[]string{"-clients", ""}, "none given", nil},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cfg, err := parseFlags(tt.args, io.Discard)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.chk != nil && !tt.chk(cfg) {
				t.Errorf("config %+v", cfg)
			}
		})
	}
}

func TestCPUModel(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct{ text, want string }{
		{"processor\t: 0\nmodel name\t: AMD  EPYC 7B13\nflags\t: x\n\nprocessor\t: 1\nmodel name\t: other\n", "AMD EPYC 7B13"},
		{"processor\t: 0\nBogoMIPS\t: 50.00\nModel\t: Raspberry Pi 4\n", "Raspberry Pi 4"},
		{"nothing here\n", "unknown"},
	} {
		p := dir + "/cpuinfo"
		if err := os.WriteFile(p, []byte(tt.text), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := cpuModel(p); got != tt.want {
			t.Errorf("cpuModel(%q) = %q, want %q", tt.text, got, tt.want)
		}
	}
	if got := cpuModel(dir + "/missing"); got != "unknown" {
		t.Errorf("missing file: %q", got)
	}
}

// TestLoopsDoNotAllocate runs the measured loops in one process, over a
// ring in Go memory and over a socket pair, and checks that the heap
// allocations do not grow with the frames moved.
func TestLoopsDoNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's bookkeeping allocates")
	}
	const size = 64
	newRing := func(t *testing.T, producers int) ([]byte, *ring.Options) {
		n, err := ring.Size(ring.Geometry{DataSize: 64 << 10, Producers: producers})
		if err != nil {
			t.Fatal(err)
		}
		mem := make([]byte, n)
		if err := ring.Init(mem, ring.Geometry{DataSize: 64 << 10, Producers: producers}); err != nil {
			t.Fatal(err)
		}
		return mem, &ring.Options{}
	}
	ringLink := func(t *testing.T, producers int) (frameWriter, frameReader) {
		mem, opts := newRing(t, producers)
		p, err := ring.NewProducer(mem, opts)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ring.NewConsumer(mem, opts)
		if err != nil {
			t.Fatal(err)
		}
		return ringWriter{p}, ringReader{c}
	}
	udsLink := func(t *testing.T) (frameWriter, frameReader, frameWriter, frameReader) {
		a, b := connectedPair(t)
		return udsWriter{a}, newUDSReader(b), udsWriter{b}, newUDSReader(a)
	}
	// Each case wires both ends of its links: the near side runs the
	// parent's loop, the far side a child's, both in this process.
	cases := []struct {
		name string
		wire func(t *testing.T) (near func(h *harness, m *meter) error, far func() (uint64, error), stop func())
	}{
		{"stream/ring", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			w, r := ringLink(t, 0)
			return func(h *harness, m *meter) error { return receiveStream(h, r, make([]byte, size), m, nil) },
				func() (uint64, error) { return sendStream(w, payload(size), 0, callPacer(0, 0, 1)) },
				func() { r.Close() }
		}},
		{"stream/uds", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			w, r, _, _ := udsLink(t)
			return func(h *harness, m *meter) error { return receiveStream(h, r, make([]byte, size), m, nil) },
				func() (uint64, error) { return sendStream(w, payload(size), 0, callPacer(0, 0, 1)) },
				func() { r.Close() }
		}},
		{"mpsc/ring", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			w, r := ringLink(t, 1)
			return func(h *harness, m *meter) error {
					return receiveTagged(h, r, make([]byte, size), 0, make([]uint64, 1), m, nil)
				},
				func() (uint64, error) {
					buf := payload(size)
					binary.LittleEndian.PutUint64(buf, 0) // producer id
					return sendStream(w, buf, 8, callPacer(0, 0, 1))
				},
				func() { r.Close() }
		}},
		{"pingpong/ring", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			w1, r1 := ringLink(t, 0)
			w2, r2 := ringLink(t, 0)
			lat := newHistogram()
			return func(h *harness, m *meter) error {
					return ping(h, w1, r2, make([]byte, size), make([]byte, size), lat, m, callPacer(0, 0, 1))
				},
				func() (uint64, error) { return echo(r1, w2, make([]byte, size)) },
				func() { w1.Close(); r2.Close() }
		}},
		{"pingpong/uds", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			w1, r1, w2, r2 := udsLink(t)
			lat := newHistogram()
			return func(h *harness, m *meter) error {
					return ping(h, w1, r2, make([]byte, size), make([]byte, size), lat, m, callPacer(0, 0, 1))
				},
				func() (uint64, error) { return echo(r1, w2, make([]byte, size)) },
				func() { w1.Close() }
		}},
	}
	// The ipc cases serve the bench service in this process, as the
	// ipc-server child does, and return when the client closes.
	ipcLink := func(t *testing.T, opts *ipc.ClientOptions) (*ipc.Client, func() (uint64, error)) {
		addr, f, err := newIPCListener()
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		started := make(chan struct{})
		served := make(chan error, 1)
		var sent uint64
		go func() {
			var err error
			sent, err = serveBench(ln, childParams{Size: size, RingSize: 64 << 10}, func() { close(started) })
			served <- err
		}()
		<-started
		o := ipc.ClientOptions{}
		if opts != nil {
			o = *opts
		}
		cl, err := ipc.Dial(t.Context(), addr, benchService, &o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl, func() (uint64, error) { err := <-served; return sent, err }
	}
	cases = append(cases, []struct {
		name string
		wire func(t *testing.T) (near func(h *harness, m *meter) error, far func() (uint64, error), stop func())
	}{
		{"call/ipc", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			cl, far := ipcLink(t, nil)
			lat := newHistogram()
			return func(h *harness, m *meter) error {
					return callLoop(h, ipcCaller{cl}, 0, payload(size), make([]byte, size), lat, m, callPacer(0, 0, 1))
				},
				far, func() { cl.Close() }
		}},
		{"call/uds", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			a, b := connectedPair(t)
			lat := newHistogram()
			return func(h *harness, m *meter) error {
					return callLoop(h, newUDSCaller(a, size), 0, payload(size), make([]byte, size), lat, m, callPacer(0, 0, 1))
				},
				func() (uint64, error) { return echoRPC(b, size) },
				func() { a.Close() }
		}},
		{"call/uds/paced", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			a, b := connectedPair(t)
			lat := newHistogram()
			return func(h *harness, m *meter) error {
					return callLoop(h, newUDSCaller(a, size), 0, payload(size), make([]byte, size), lat, m, callPacer(20000, 0, 1))
				},
				func() (uint64, error) { return echoRPC(b, size) },
				func() { a.Close() }
		}},
		{"call/futex", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			l, err := newFutexLink(make([]byte, futexMemSize(size)), size)
			if err != nil {
				t.Fatal(err)
			}
			lat := newHistogram()
			return func(h *harness, m *meter) error {
					return callLoop(h, &futexCaller{l: l}, 0, payload(size), make([]byte, size), lat, m, callPacer(0, 0, 1))
				},
				func() (uint64, error) { return futexEcho(l) },
				l.close
		}},
		{"pipeline/uds", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			a, b := connectedPair(t)
			mux := newUDSMux(a, 2, size)
			lat := newHistogram()
			return func(h *harness, m *meter) error {
					go mux.demux(h)
					return callLoop(h, muxCaller{mux, 1}, 1, payload(size), make([]byte, size), lat, m, callPacer(0, 0, 1))
				},
				func() (uint64, error) { return echoRPC(b, size) },
				func() { mux.closing.Store(true); a.Close(); <-mux.dead }
		}},
		{"dispatch/ipc", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			sink := &dispatchSink{size: size, done: make(chan struct{})}
			cl, far := ipcLink(t, &ipc.ClientOptions{OnDispatch: sink.receive})
			return func(h *harness, m *meter) error {
					sink.h = h // before the stream starts
					if _, err := cl.Call(t.Context(), benchStream, nil); err != nil {
						return err
					}
					<-sink.done
					*m = sink.m
					return sink.err
				},
				far, func() { cl.Close() }
		}},
	}...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			near, far, stop := tc.wire(t)
			h := newHarness(&runConfig{})
			var wg sync.WaitGroup
			var farErr error
			wg.Go(func() { _, farErr = far() })
			// Warm up (first-use allocations), then count over the window.
			var m meter
			var before, after runtime.MemStats
			done := make(chan error, 1)
			go func() { done <- near(h, &m) }()
			time.Sleep(50 * time.Millisecond)
			runtime.ReadMemStats(&before)
			h.phase.Store(phaseMeasure)
			time.Sleep(100 * time.Millisecond)
			h.phase.Store(phaseDone)
			err := <-done
			runtime.ReadMemStats(&after)
			stop()
			wg.Wait()
			if err != nil || farErr != nil {
				t.Fatalf("near side: %v; far side: %v", err, farErr)
			}
			frames := m.at[1] - m.at[0]
			allocs := after.Mallocs - before.Mallocs
			t.Logf("%d frames, %d allocations", frames, allocs)
			if frames < 200 {
				t.Skipf("only %d frames moved; too few to tell", frames)
			}
			if allocs > 50 {
				if strings.HasPrefix(tc.name, "dispatch/ipc") {
					// The server (in this process) is not ours: when the
					// client's ring is full, Conn.Dispatch copies the
					// body into its queue, reusing only a few buffers.
					// The parent's loop is checked on its own below.
					t.Logf("%d allocations for %d frames, in ipc.Conn.Dispatch's queue", allocs, frames)
					return
				}
				t.Errorf("%d allocations for %d frames", allocs, frames)
			}
		})
	}
}

// TestDispatchSinkDoesNotAllocate checks the parent's side of dispatch/ipc
// alone: TestLoopsDoNotAllocate counts the in-process server's allocations
// too.
func TestDispatchSinkDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's bookkeeping allocates")
	}
	h := newHarness(&runConfig{})
	h.phase.Store(phaseMeasure)
	sink := &dispatchSink{h: h, size: 64, done: make(chan struct{})}
	body := make([]byte, 64)
	allocs := testing.AllocsPerRun(1000, func() {
		putTag(body, sink.next)
		sink.receive(benchFrame, body)
	})
	if sink.err != nil || sink.over {
		t.Fatalf("sink stopped: %v", sink.err)
	}
	if allocs != 0 {
		t.Errorf("%v allocations per message", allocs)
	}
}

// connectedPair returns both ends of a socket pair as the parent and a
// child would hold them, closed when the test ends.
func connectedPair(t *testing.T) (net.Conn, net.Conn) {
	a, f, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	b, err := openSocket(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestLargeRings runs ipc with rings above the ipc defaults' bounds
// (server MaxRingSize and the client's, 16 MiB) and many fanin clients:
// the benchmark's server and clients must make room for what its flags
// allow.
func TestLargeRings(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"-json", "-scenario", "call,fanin", "-transport", "ipc", "-rate", "0", "-ring-size", "32MiB",
		"-clients", "12", "-duration", "200ms"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run %q: exit status %d\nstderr:\n%s", args, code, stderr.String())
	}
	if n := strings.Count(stdout.String(), "\n"); n != 2 {
		t.Errorf("%d results, want 2:\n%s", n, stdout.String())
	}
}

// TestZeroCopyJobs: -zerocopy applies where the scenario and transport
// hand frames off in place, at every size (a body beyond its ring goes
// through the connection's body segment, for calls and for
// ReserveDispatch), and a large zero-copy dispatch run works end to end.
func TestZeroCopyJobs(t *testing.T) {
	cfg, err := parseFlags([]string{"-zerocopy", "-scenario", "call,dispatch", "-size", "64,64KiB",
		"-ring-size", "64KiB", "-rate", "0", "-transport", "ipc,uds"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, j := range cfg.jobs() {
		got = append(got, fmt.Sprintf("%s/%s/%d/%v", j.sc.name, j.transport, j.rc.size, j.rc.zerocopy))
	}
	want := []string{
		"call/ipc/64/true", "call/uds/64/false", "call/ipc/65536/true", "call/uds/65536/false",
		"dispatch/ipc/64/true", "dispatch/uds/64/false", "dispatch/ipc/65536/true", "dispatch/uds/65536/false",
	}
	if !slices.Equal(got, want) {
		t.Errorf("jobs\n got %q\nwant %q", got, want)
	}
	var stdout, stderr bytes.Buffer
	args := []string{"-json", "-zerocopy", "-scenario", "dispatch", "-transport", "ipc", "-rate", "0",
		"-size", "64KiB", "-ring-size", "64KiB", "-duration", "200ms"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run %q: exit status %d\nstderr:\n%s", args, code, stderr.String())
	}
	if !strings.Contains(stdout.String(), `"zerocopy":true`) {
		t.Errorf("no zero-copy row:\n%s", stdout.String())
	}
}
