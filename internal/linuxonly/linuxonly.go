// Package linuxonly lets the tests of a Linux-only package pin that it is
// one: a package such as ipc builds on other systems as its doc.go alone
// (plus any file it names), so `GOOS=darwin go vet ./...` passes and its
// documentation renders there. A new file that forgets its linux build
// constraint would compile on darwin without the rest of the package and
// break that build; Check catches it on Linux, in the package's own tests.
package linuxonly

import (
	"go/build"
	"slices"
	"testing"
)

// Check fails t unless the package in the current directory, as built for
// darwin, holds exactly the files named in portable (sources and tests).
func Check(t testing.TB, portable ...string) {
	t.Helper()
	ctx := build.Default
	ctx.GOOS, ctx.GOARCH, ctx.CgoEnabled = "darwin", "arm64", false
	p, err := ctx.ImportDir(".", 0)
	if err != nil {
		t.Fatalf("import for darwin: %v", err)
	}
	got := slices.Concat(p.GoFiles, p.TestGoFiles, p.XTestGoFiles)
	slices.Sort(got)
	want := slices.Sorted(slices.Values(portable))
	if !slices.Equal(got, want) {
		t.Errorf("files built for darwin: %q, want %q: a file of this Linux-only package lacks //go:build linux", got, want)
	}
}
