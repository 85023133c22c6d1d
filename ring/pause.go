package ring

import _ "unsafe" // for go:linkname

// procyield executes the CPU's spin-wait hint (PAUSE on amd64, YIELD on
// arm64) cycles times. The runtime keeps it linkable for this use
// (go.dev/issue/67401); nothing else in the standard library offers a
// spin-wait hint.
//
//go:linkname procyield runtime.procyield
func procyield(cycles uint32)
