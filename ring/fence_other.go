//go:build !linux

package ring

import "sync/atomic"

var fences struct {
	issued atomic.Uint64
}

var fencesDisabled atomic.Bool

// asymmetricFences: only Linux has membarrier(2); producers keep a full
// barrier on every publish.
func asymmetricFences() bool { return false }

func fenceOthers() { fences.issued.Add(1) }
