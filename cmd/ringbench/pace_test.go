//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"github.com/ringipc/ringipc/cmd/ringbench/internal/benchreport"
	"strings"
	"testing"
	"time"
)

// TestPacerSchedule checks the schedule's promises without timing
// anything: slots are one period apart from the offset, whatever the
// sender's delays, and wait never returns before its slot.
func TestPacerSchedule(t *testing.T) {
	const rate = 20000 // 50 µs
	period := time.Second / rate
	p := newPacer(rate, 7*time.Microsecond)
	if !p.paced() {
		t.Fatal("a pacer at 20000/s is not paced")
	}
	for k := range 50 {
		slot := p.wait()
		if want := 7*time.Microsecond + time.Duration(k)*period; slot != want {
			t.Fatalf("slot %d at %v, want %v", k, slot, want)
		}
		if now := p.since(); now < slot {
			t.Fatalf("slot %d at %v returned at %v, before it", k, slot, now)
		}
	}
}

// TestPacerLate: a sender a second behind its schedule gets the slots it
// missed, in order and at once: the schedule does not move to hide the
// lateness.
func TestPacerLate(t *testing.T) {
	p := newPacer(1000, 0)
	p.base = p.base.Add(-time.Second)
	p.mono -= int64(time.Second)
	for k := range 100 {
		if slot := p.wait(); slot != time.Duration(k)*time.Millisecond {
			t.Fatalf("late slot %d at %v, want %v", k, slot, time.Duration(k)*time.Millisecond)
		}
	}
}

func TestPacerUnpaced(t *testing.T) {
	p := newPacer(0, time.Second)
	if p.paced() {
		t.Fatal("rate 0 is paced")
	}
	before := p.since()
	if got := p.wait(); got < before {
		t.Errorf("unpaced wait returned %v, before %v", got, before)
	}
}

func TestRateText(t *testing.T) {
	for r, want := range map[int]string{0: "max", 50: "50", 1000: "1k", 1500: "1.5k", 10000: "10k", 1234: "1234", 2000000: "2M"} {
		if got := benchreport.RateText(r); got != want {
			t.Errorf("benchreport.RateText(%d) = %q, want %q", r, got, want)
		}
	}
}

// TestPacedRows runs every scenario paced through the re-exec path, each
// over every transport, at a rate low enough for any machine, and checks
// that no row moved more messages than its schedule allows: a sender
// never sends before its slot, and its slots start after run was called,
// so whatever the machine's speed, a row holds at most rate x senders x
// (the time run took) messages, plus one per sender. Unpaced, the same
// window would hold thousands. Every message of the window is timed.
func TestPacedRows(t *testing.T) {
	const rate = 200
	var stdout, stderr bytes.Buffer
	// 80 messages per sender in a window: enough to survive a loaded
	// machine's stalls, far below what an unpaced sender moves.
	args := []string{"-json", "-scenario", "all", "-rate", "200", "-duration", "400ms", "-size", "32",
		"-producers", "2", "-goroutines", "2", "-clients", "3", "-subscribers", "1", "-ring-size", "64KiB"}
	start := time.Now()
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run %q: exit status %d\nstderr:\n%s", args, code, stderr.String())
	}
	took := time.Since(start).Seconds()
	seen := map[string]bool{}
	for i, line := range strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n") {
		var r result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %d: %v\n%s", i+1, err, line)
		}
		seen[r.Scenario+"/"+r.Transport] = true
		senders := 1
		// broadcast's subscriber (-subscribers 1) times what it receives
		// in its own window, whose edges it sees up to one message apart
		// from the publisher.
		slack := uint64(0)
		switch r.Scenario {
		case "mpsc":
			senders = 2
		case "pipeline":
			senders = 2
		case "fanin":
			senders = 3
			if r.Clients != 3 {
				t.Errorf("line %d: clients %d, want 3", i+1, r.Clients)
			}
		case "broadcast":
			slack = 1
		}
		if r.Rate != rate || r.Msgs == 0 || r.CPUSec < 0 || r.CPUPerMsgNs < 0 {
			t.Errorf("line %d: rate %d, msgs %d, cpu %v s, %v ns/msg", i+1, r.Rate, r.Msgs, r.CPUSec, r.CPUPerMsgNs)
		}
		if r.LatSamples+slack < r.Msgs || r.LatSamples > r.Msgs+uint64(senders)+slack || r.P99Ns < r.P50Ns || r.P999Ns < r.P99Ns {
			t.Errorf("line %d: %s/%s timed %d of %d messages: p50 %d, p99 %d, p999 %d",
				i+1, r.Scenario, r.Transport, r.LatSamples, r.Msgs, r.P50Ns, r.P99Ns, r.P999Ns)
		}
		if bound := uint64(rate*float64(senders)*took) + uint64(senders); r.Msgs > bound {
			t.Errorf("line %d: %s/%s moved %d messages, its schedule allows %d in %.2f s", i+1, r.Scenario, r.Transport, r.Msgs, bound, took)
		}
	}
	for _, sc := range scenarios {
		for tr := range sc.runs {
			if !seen[sc.name+"/"+tr] {
				t.Errorf("no %s/%s row in\n%s", sc.name, tr, stdout.String())
			}
		}
	}
}

func TestSI(t *testing.T) {
	for v, want := range map[float64]string{
		0: "0  ", 999.4: "999  ", 999.6: "1.0 k", 1000.2: "1.0 k", 31608: "31.6 k",
		999_940: "999.9 k", 999_960: "1.00 M", 45e6: "45.00 M", 2.5e9: "2.50 G",
	} {
		if got := si(v); got != want {
			t.Errorf("si(%v) = %q, want %q", v, got, want)
		}
	}
}
