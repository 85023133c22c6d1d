// Package spin holds the CPU's spin-wait hint, for the polling loops of
// ring and ipc.
package spin

import _ "unsafe" // for go:linkname

// Pause executes the CPU's spin-wait hint (PAUSE on amd64, YIELD on
// arm64) n times: about 11 ns each on the Xeon this was tuned on. A
// poller that pauses between looks at a word the peer writes leaves the
// cache line with the peer for that long.
func Pause(n uint32) { procyield(n) }

// procyield is the runtime's, which it keeps linkable for this use
// (go.dev/issue/67401); nothing else in the standard library offers a
// spin-wait hint.
//
//go:linkname procyield runtime.procyield
func procyield(cycles uint32)
