//go:build !amd64 || race

package ring

import "sync/atomic"

// storeRelease stores v at *w, at least as a release store: sync/atomic's
// Store, which is one on arm64 (STLR) and, under the race detector, on
// amd64 too (where a normal build's Store would be a full barrier).
func storeRelease(w *uint64, v uint64) { atomic.StoreUint64(w, v) }
