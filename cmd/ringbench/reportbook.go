//go:build linux

package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ringipc/ringipc/cmd/ringbench/internal/benchreport"
)

// reportBook keeps what -report needs until the suite ends: each result
// with its latency distribution (the histogram's cumulative counts, one
// point per non-empty bucket), and the text table as -json-less ringbench
// prints it. A nil *reportBook keeps nothing.
type reportBook struct {
	dir   string
	table bytes.Buffer
	rep   *reporter // writes the table into table
	page  benchreport.Page
}

func newReportBook(cfg *config, mach machine, start time.Time, args []string) *reportBook {
	b := &reportBook{dir: cfg.reportDir}
	tcfg := *cfg
	tcfg.json = false // the page shows the table even when stdout has JSON
	b.rep = newReporter(&b.table, &tcfg, mach, start)
	kernel := ""
	if mach.kernel != "" {
		kernel = ", kernel " + mach.kernel
	}
	b.page = benchreport.Page{
		Command: commandLine(args),
		Started: start,
		Machine: fmt.Sprintf("%s, %d cores, %s/%s%s, %s; load average %.2f at start",
			mach.CPUModel, mach.Cores, mach.GOOS, mach.GOARCH, kernel, mach.GoVersion, mach.LoadAvg1m),
		Settings: fmt.Sprintf("%v per result after %v warm-up; ring data area %s; wait %s",
			cfg.duration, cfg.warmup, benchreport.SizeText(cfg.ringSize), waitPolicy(cfg.spin)),
	}
	return b
}

func (b *reportBook) begin() {
	if b != nil {
		b.rep.begin()
	}
}

func (b *reportBook) add(sc *scenario, transport string, rc *runConfig, m measurement) {
	if b == nil {
		return
	}
	b.rep.add(sc, transport, rc, m)
	res := newResult(sc, transport, rc, m, machine{})
	row := benchreport.Row{
		Scenario: sc.name, Transport: transport, Size: rc.size, Rate: rc.rate,
		Params:     job{sc: sc, transport: transport, rc: rc}.params(),
		MsgsPerSec: res.MsgsPerSec, BytesPerSec: res.BytesPerSec, CPUPerMsgNs: res.CPUPerMsgNs,
	}
	if m.lat != nil && m.lat.count() > 0 {
		row.Latency, row.Samples = latencyCDF(m.lat), m.lat.count()
	}
	b.page.Rows = append(b.page.Rows, row)
}

// write writes the report, and says where unless quiet.
func (b *reportBook) write(stderr io.Writer, quiet bool) error {
	if b == nil {
		return nil
	}
	b.rep.end()
	b.page.Table = b.table.String()
	files, err := benchreport.Write(b.dir, &b.page)
	if err == nil && !quiet {
		fmt.Fprintf(stderr, "ringbench: report in %s (%d files)\n", files[len(files)-1], len(files))
	}
	return err
}

// commandLine shows the arguments as a shell would take them back.
func commandLine(args []string) string {
	out := []string{"ringbench"}
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`*?[]{}()<>|&;#~!") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out = append(out, a)
	}
	return strings.Join(out, " ")
}

// latencyCDF returns h's distribution as steps: for each non-empty
// bucket, the fraction of the recordings at most its largest value (kept
// within the exact minimum and maximum), after a first step at the
// minimum with fraction 0. It is empty when nothing was recorded.
func latencyCDF(h *histogram) []benchreport.Point {
	if h.total == 0 {
		return nil
	}
	out := []benchreport.Point{{Nanos: float64(h.min)}}
	var seen uint64
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		seen += c
		lo, w := histBucket(i)
		v := min(max(lo+w-1, h.min), h.max)
		out = append(out, benchreport.Point{Nanos: float64(v), Fraction: float64(seen) / float64(h.total)})
	}
	return out
}
