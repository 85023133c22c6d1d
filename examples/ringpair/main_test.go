package main

import (
	"os"
	"os/exec"
	"testing"
)

// The README's example runs and prints the three records in order.
func TestRingPair(t *testing.T) {
	if os.Getenv("RINGPAIR_CONSUMER") == "1" {
		t.Skip("consumer side runs through main")
	}
	bin := t.TempDir() + "/ringpair"
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	want := "record type 1: \"hello #1\"\nrecord type 2: \"hello #2\"\nrecord type 3: \"hello #3\"\n"
	if got := string(out); got != want {
		t.Fatalf("output:\n%s\nwant:\n%s", got, want)
	}
}
