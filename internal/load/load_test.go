package load

import (
	"runtime"
	"testing"
)

// parseRunnable reads the running-thread count of a /proc/loadavg line,
// and refuses what is not one.
func TestParseRunnable(t *testing.T) {
	for _, c := range []struct {
		line string
		want int
	}{
		{"0.10 0.20 0.30 2/345 6789\n", 2},
		{"12.00 8.50 3.10 37/1024 1\n", 37},
		{"0.10 0.20 0.30 /345 6789", -1},
		{"0.10 0.20 0.30 2345 6789", -1},
		{"0.10 0.20", -1},
		{"", -1},
		{"0 0 0 99999999999/1 1", -1},
	} {
		if got := parseRunnable([]byte(c.line)); got != c.want {
			t.Errorf("parseRunnable(%q) = %d, want %d", c.line, got, c.want)
		}
	}
}

// RunnableThreads reads the machine's count: at least this goroutine's
// thread runs while it reads.
func TestRunnableThreads(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/loadavg is Linux's")
	}
	if n := RunnableThreads(); n < 1 {
		t.Fatalf("RunnableThreads = %d, want >= 1", n)
	}
}

// Sampling allocates nothing.
func TestSampleAllocs(t *testing.T) {
	if n := testing.AllocsPerRun(200, func() { Busy(); Overloaded() }); n != 0 {
		t.Errorf("sampling allocates %.1f times per call", n)
	}
}
