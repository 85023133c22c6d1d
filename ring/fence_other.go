//go:build !linux

package ring

import "sync/atomic"

var fences struct {
	issued atomic.Uint64
}

var fencesDisabled atomic.Bool

// AsymmetricFences reports false: only Linux has membarrier(2), so
// producers keep a full barrier on every publish (docs/design.md 2.6.6).
func AsymmetricFences() bool { return false }

func asymmetricFences() bool { return false }

func fenceOthers() { fences.issued.Add(1) }
