//go:build linux

package main

import (
	"bytes"
	"html"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReport runs a short suite with -report through the re-exec path and
// checks the report: the page shows the table that went to stdout, names
// every scenario run, and every image it shows is a valid PNG; one
// latency figure per scenario and set of parameters, and throughput and
// CPU plots against size for the size sweep. It asserts nothing about
// the figures themselves: the machine may be loaded.
func TestReport(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	var stdout, stderr bytes.Buffer
	// Paced at 1,000/s, a window of 300 ms holds 300 round trips, enough
	// to survive a loaded machine's stalls.
	args := []string{"-scenario", "pingpong,call", "-size", "16,64", "-rate", "1000",
		"-transport", "ring,ipc,uds,futex", "-duration", "300ms", "-ring-size", "64KiB", "-report", dir}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run %q: exit status %d\nstderr:\n%s", args, code, stderr.String())
	}
	index, err := os.ReadFile(filepath.Join(dir, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	page := string(index)
	pres := regexp.MustCompile(`(?s)<pre>(.*?)</pre>`).FindAllStringSubmatch(page, -1)
	if len(pres) != 2 || pres[0][1] != commandLine(args) || html.UnescapeString(pres[1][1]) != stdout.String() {
		t.Errorf("the page lacks the command or the table printed on stdout:\n%s\npage:\n%s", stdout.String(), page)
	}
	for _, want := range []string{
		"Scenarios run: pingpong, call.", "load average",
		"latency-pingpong-16-B-rate-1k.png", "latency-call-64-B-rate-1k.png",
		"size-pingpong-rate-1k-throughput.png", "size-call-rate-1k-cpu.png",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("index.html lacks %q", want)
		}
	}
	shown := regexp.MustCompile(`<img src="([^"]+)"`).FindAllStringSubmatch(page, -1)
	// 2 scenarios x 2 sizes of latency, 2 x 2 against size, none against
	// rate (one rate).
	if len(shown) != 8 {
		t.Errorf("the page shows %d images, want 8", len(shown))
	}
	for _, m := range shown {
		f, err := os.Open(filepath.Join(dir, m[1]))
		if err != nil {
			t.Error(err)
			continue
		}
		if _, err := png.Decode(f); err != nil {
			t.Errorf("%s: %v", m[1], err)
		}
		f.Close()
	}
	// Progress, without -quiet: 4 pingpong (ring, uds) and 6 call (ipc,
	// uds, futex) measurements.
	for _, want := range []string{"ringbench: 1 of 10: pingpong over ring, 16 B, rate 1k; at least ",
		"ringbench: 10 of 10: call over futex, 64 B, rate 1k; about ", "ringbench: report in "} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

// -quiet and -json silence the progress; -json's lines stay alone on
// stdout with -report.
func TestQuiet(t *testing.T) {
	for _, flag := range []string{"-quiet", "-json"} {
		var stdout, stderr bytes.Buffer
		args := []string{flag, "-scenario", "spsc", "-transport", "ring", "-duration", "100ms", "-ring-size", "64KiB",
			"-report", t.TempDir()}
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Fatalf("run %q: exit status %d\nstderr:\n%s", args, code, stderr.String())
		}
		if stderr.Len() != 0 {
			t.Errorf("%s: stderr:\n%s", flag, stderr.String())
		}
		if flag == "-json" && (!strings.HasPrefix(stdout.String(), "{") || strings.Count(stdout.String(), "\n") != 1) {
			t.Errorf("-json -report: stdout:\n%s", stdout.String())
		}
	}
}

// A -report directory that cannot be made is a bad flag, refused before
// measuring.
func TestReportBadDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-report", filepath.Join(file, "out")}, &stdout, &stderr); code != 2 {
		t.Errorf("exit status %d, want 2; stderr:\n%s", code, stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("measured before refusing: %s", stdout.String())
	}
}
