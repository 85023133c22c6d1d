//go:build !race

package ring

// storeRelease stores v at *w with a plain MOV: on amd64 (TSO) a release
// store, ordered after every store before it, with no full barrier. The
// race detector cannot see it, so race builds use storerel_other.go.
//
//go:noescape
func storeRelease(w *uint64, v uint64)
