package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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
}

// TestEndToEnd runs every scenario over both transports, briefly, through
// the re-exec path, and checks the JSON lines. It asserts nothing about
// speed: the machine may be loaded.
func TestEndToEnd(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"-json", "-scenario", "all", "-duration", "200ms", "-size", "16",
		"-producers", "1,3", "-ring-size", "64KiB"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run %q: exit status %d\nstderr:\n%s", args, code, stderr.String())
	}
	var want []string
	for _, s := range scenarios {
		prods := []int{1}
		if s.perProducers {
			prods = []int{1, 3}
		}
		for _, p := range prods {
			for _, tr := range transports {
				if s.runs[tr] != nil {
					want = append(want, fmt.Sprintf("%s/%s/%d", s.name, tr, p))
				}
			}
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
		got = append(got, fmt.Sprintf("%s/%s/%d", r.Scenario, r.Transport, r.Producers))
		if r.Msgs == 0 || r.MsgsPerSec <= 0 || r.BytesPerSec != r.MsgsPerSec*16 || r.Size != 16 {
			t.Errorf("line %d: msgs %d, %v msgs/s, %v bytes/s, size %d", i+1, r.Msgs, r.MsgsPerSec, r.BytesPerSec, r.Size)
		}
		// CPU may round to nothing on a machine busy with other work.
		if r.DurationSec <= 0 || r.CPUSec < 0 || r.CPUPerMsgNs < 0 {
			t.Errorf("line %d: duration %v s, cpu %v s, %v ns/msg", i+1, r.DurationSec, r.CPUSec, r.CPUPerMsgNs)
		}
		if r.Cores != runtime.NumCPU() || r.GoVersion != runtime.Version() || r.CPUModel == "" ||
			r.GOOS != runtime.GOOS || r.GOARCH != runtime.GOARCH {
			t.Errorf("line %d: machine %+v", i+1, r.machine)
		}
		if r.Scenario == "pingpong" {
			if r.P50Ns <= 0 || r.P99Ns < r.P50Ns || r.P999Ns < r.P99Ns {
				t.Errorf("line %d: p50 %d, p99 %d, p999 %d", i+1, r.P50Ns, r.P99Ns, r.P999Ns)
			}
		} else if r.P50Ns != 0 || r.P99Ns != 0 || r.P999Ns != 0 {
			t.Errorf("line %d: latency figures for %s", i+1, r.Scenario)
		}
		if (r.Transport == "ring") != (r.RingSize == 64<<10 && r.SpinNs == ring.DefaultSpin.Nanoseconds()) {
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

func TestTable(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"-scenario", "spsc", "-duration", "100ms", "-spin", "-1ns"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run %q: exit status %d\nstderr:\n%s", args, code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"machine:  ", fmt.Sprintf("%d cores", runtime.NumCPU()), runtime.Version(),
		"spin 0s", "\nspsc ", " ring ", " uds ", "ring/uds", "one write(2) per",
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
			return len(c.scenarios) == 3 && slices.Equal(c.sizes, []int{64}) && slices.Equal(c.producers, []int{2}) &&
				c.duration == 2*time.Second && c.warmup == 200*time.Millisecond && c.ringSize == 1<<20 &&
				slices.Equal(c.transports, transports) && c.spin == 0 && !c.json
		}},
		{[]string{"-scenario", "all"}, "", func(c *config) bool { return len(c.scenarios) == len(scenarios) }},
		{[]string{"-scenario", "mpsc,spsc,mpsc"}, "", func(c *config) bool {
			return len(c.scenarios) == 2 && c.scenarios[0].name == "spsc" && c.scenarios[1].name == "mpsc"
		}},
		{[]string{"-transport", "uds,ring"}, "", func(c *config) bool { return slices.Equal(c.transports, []string{"ring", "uds"}) }},
		{[]string{"-size", "16,4KiB,1k", "-ring-size", "64k"}, "", func(c *config) bool {
			return slices.Equal(c.sizes, []int{16, 4096, 1024}) && c.ringSize == 65536
		}},
		{[]string{"-producers", "1,2,8"}, "", func(c *config) bool { return slices.Equal(c.producers, []int{1, 2, 8}) }},
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
		a, f, err := socketPair()
		if err != nil {
			t.Fatal(err)
		}
		b, err := openSocket(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close(); b.Close() })
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
			return func(h *harness, m *meter) error { return receiveStream(h, r, make([]byte, size), m) },
				func() (uint64, error) { return sendStream(w, payload(size), 0) },
				func() { r.Close() }
		}},
		{"stream/uds", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			w, r, _, _ := udsLink(t)
			return func(h *harness, m *meter) error { return receiveStream(h, r, make([]byte, size), m) },
				func() (uint64, error) { return sendStream(w, payload(size), 0) },
				func() { r.Close() }
		}},
		{"mpsc/ring", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			w, r := ringLink(t, 1)
			return func(h *harness, m *meter) error {
					return receiveTagged(h, r, make([]byte, size), 0, make([]uint64, 1), m)
				},
				func() (uint64, error) {
					buf := payload(size)
					binary.LittleEndian.PutUint64(buf, 0) // producer id
					return sendStream(w, buf, 8)
				},
				func() { r.Close() }
		}},
		{"pingpong/ring", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			w1, r1 := ringLink(t, 0)
			w2, r2 := ringLink(t, 0)
			lat := newHistogram()
			return func(h *harness, m *meter) error {
					return ping(h, w1, r2, make([]byte, size), make([]byte, size), lat, m)
				},
				func() (uint64, error) { return echo(r1, w2, make([]byte, size)) },
				func() { w1.Close(); r2.Close() }
		}},
		{"pingpong/uds", func(t *testing.T) (func(*harness, *meter) error, func() (uint64, error), func()) {
			w1, r1, w2, r2 := udsLink(t)
			lat := newHistogram()
			return func(h *harness, m *meter) error {
					return ping(h, w1, r2, make([]byte, size), make([]byte, size), lat, m)
				},
				func() (uint64, error) { return echo(r1, w2, make([]byte, size)) },
				func() { w1.Close() }
		}},
	}
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
				t.Errorf("%d allocations for %d frames", allocs, frames)
			}
		})
	}
}
