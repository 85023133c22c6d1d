//go:build linux

package main

import (
	"fmt"
	"github.com/ringipc/ringipc/cmd/ringbench/internal/benchreport"
	"io"
	"strings"
	"time"
)

// progress tells on stderr which measurement runs and about how long the
// suite has left, so that a run of minutes is not silent. It stays quiet
// with -json (whose readers are scripts) and -quiet; the table on stdout
// is the same either way.
type progress struct {
	w     io.Writer // nil: quiet
	total int
	start time.Time
	guess time.Duration // a measurement's time before one has been timed
}

func newProgress(w io.Writer, cfg *config, total int, start time.Time) *progress {
	p := &progress{total: total, start: start, guess: cfg.warmup + cfg.duration}
	if !cfg.json && !cfg.quiet {
		p.w = w
	}
	return p
}

// step reports that measurement i (from 0) of the suite starts.
func (p *progress) step(i int, j job) {
	if p.w == nil {
		return
	}
	left := time.Duration(p.total-i) * p.guess
	about := "at least"
	if i > 0 {
		// Measured so far: each measurement also starts and stops its
		// processes, which the guess leaves out.
		left = time.Since(p.start) / time.Duration(i) * time.Duration(p.total-i)
		about = "about"
	}
	fmt.Fprintf(p.w, "ringbench: %d of %d: %s; %s %s left\n", i+1, p.total, j.describe(), about, (left + time.Second - 1).Truncate(time.Second))
}

// describe names a measurement's scenario, transport and parameters.
func (j job) describe() string {
	parts := []string{j.sc.name + " over " + j.transport, benchreport.SizeText(j.rc.size), "rate " + benchreport.RateText(j.rc.rate)}
	if p := j.params(); p != "" {
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// params names the counts that the scenario is run once for each of:
// "" when it runs once.
func (j job) params() string {
	var parts []string
	if j.sc.perProducers {
		parts = append(parts, fmt.Sprintf("%d producers", j.rc.producers))
	}
	if j.sc.perGoroutine {
		parts = append(parts, fmt.Sprintf("%d goroutines", j.rc.goroutines))
	}
	if j.sc.perClients {
		parts = append(parts, fmt.Sprintf("%d clients", j.rc.clients))
	}
	return strings.Join(parts, ", ")
}
