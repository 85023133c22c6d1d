//go:build !linux

package ring

import "runtime"

// osYield yields to other goroutines only: off Linux there is no
// dependency-free way to offer the OS thread to other processes.
func osYield() { runtime.Gosched() }
