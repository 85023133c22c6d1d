package benchreport

import (
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// rows makes a run of call over three transports at two sizes and three
// rates, and one pingpong result, with made-up but plausible figures.
func rows() []Row {
	var out []Row
	row := func(sc, tr string, size, rate int, f float64) Row {
		r := Row{
			Scenario: sc, Transport: tr, Size: size, Rate: rate,
			MsgsPerSec: 1e5 / f, BytesPerSec: 1e5 / f * float64(size), CPUPerMsgNs: 2000 * f,
			Samples: 1000,
		}
		if rate > 0 {
			r.MsgsPerSec = float64(rate) * 0.99
		}
		for q := 0; q <= 10; q++ {
			r.Latency = append(r.Latency, Point{Nanos: 1000 * f * float64(q+1), Fraction: float64(q) / 10})
		}
		return r
	}
	for _, size := range []int{16, 4096} {
		for _, rate := range []int{0, 1000, 10000} {
			for i, tr := range []string{"ipc", "uds", "futex"} {
				r := row("call", tr, size, rate, float64(i+1))
				r.Params = "1 client"
				out = append(out, r)
			}
		}
	}
	return append(out, row("pingpong", "ring", 64, 0, 1), row("pingpong", "uds", 64, 0, 2))
}

func TestWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out") // Write creates it
	page := &Page{Command: "ringbench -report out/ -size '16,4KiB'", Started: time.Now(),
		Machine: "a test <machine>", Settings: "none", Table: "scenario ... <table>\n", Rows: rows()}
	files, err := Write(dir, page)
	if err != nil {
		t.Fatal(err)
	}
	index := filepath.Join(dir, "index.html")
	if len(files) == 0 || files[len(files)-1] != index {
		t.Fatalf("files %q do not end with %s", files, index)
	}
	html, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	checkPNGs(t, dir, string(html))
	// call: 2 sizes x 3 rates of latency, 2 plots against size at each
	// rate and against rate (1k, 10k) at each size; pingpong: latency.
	if want := 6 + 3*2 + 2*2 + 1 + 1; len(files) != want {
		t.Errorf("%d files, want %d: %q", len(files), want, files)
	}
	for _, want := range []string{
		"Scenarios run: call, pingpong.", "a test &lt;machine&gt;", "&lt;table&gt;",
		"ringbench -report out/ -size &#39;16,4KiB&#39;",
		"latency-call-4-KiB-rate-10k-1-client.png", "latency-pingpong-64-B-rate-max.png",
		"size-call-rate-max-throughput.png", "size-call-rate-1k-cpu.png",
		"rate-call-16-B-throughput.png", "rate-call-4-KiB-cpu.png",
	} {
		if !strings.Contains(string(html), want) {
			t.Errorf("index.html lacks %q", want)
		}
	}
}

// checkPNGs checks that every image the page shows is a PNG that decodes,
// and that every PNG in dir is shown.
func checkPNGs(t *testing.T, dir, html string) {
	t.Helper()
	var shown []string
	for _, m := range regexp.MustCompile(`<img src="([^"]+)"`).FindAllStringSubmatch(html, -1) {
		shown = append(shown, m[1])
		f, err := os.Open(filepath.Join(dir, m[1]))
		if err != nil {
			t.Error(err)
			continue
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", m[1], err)
		} else if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
			t.Errorf("%s: %v", m[1], b)
		}
	}
	all, _ := filepath.Glob(filepath.Join(dir, "*.png"))
	for _, f := range all {
		if !slices.Contains(shown, filepath.Base(f)) {
			t.Errorf("%s is not on the page", f)
		}
	}
	if len(shown) == 0 {
		t.Error("the page shows no image")
	}
}

// A run without sweeps or latencies still makes a page, without figures.
func TestWriteNoFigures(t *testing.T) {
	dir := t.TempDir()
	rs := []Row{{Scenario: "spsc", Transport: "ring", Size: 64, MsgsPerSec: 1e6, BytesPerSec: 64e6, CPUPerMsgNs: 100}}
	files, err := Write(dir, &Page{Rows: rs, Table: "spsc row"})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 {
		t.Errorf("files %q, want index.html alone", files)
	}
	html, _ := os.ReadFile(files[0])
	if !strings.Contains(string(html), "Scenarios run: spsc.") || strings.Contains(string(html), "<img") {
		t.Errorf("index.html:\n%s", html)
	}
}

func TestTicks(t *testing.T) {
	for _, tt := range []struct {
		lo, hi float64
		want   []string
	}{
		{20, 40, []string{"20", "40"}}, // one 1-2-5 value: the ends too
		{21, 40, []string{"21", "40"}},
		{0.5, 30, []string{"0.5", "1", "2", "5", "10", "20"}},
		{900, 120000, []string{"1k", "2k", "5k", "10k", "20k", "50k", "100k"}},
	} {
		var got []string
		for _, tk := range logTicks(tt.lo, tt.hi) {
			got = append(got, tk.Label)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("logTicks(%v, %v) = %q, want %q", tt.lo, tt.hi, got, tt.want)
		}
	}
	if x := nines(1, 1000); x < 2.99 || x > 3.01 {
		t.Errorf("nines(1, 1000) = %v, want 3", x)
	}
	if x := nines(0.5, 1000); x < 0.3 || x > 0.31 {
		t.Errorf("nines(0.5, 1000) = %v, want log10(2)", x)
	}
}
