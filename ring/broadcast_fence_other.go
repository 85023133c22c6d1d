//go:build !amd64

package ring

import "sync/atomic"

// loadFence orders the reader's plain loads of a record before its
// atomic load of the writer's intent (the seqlock check). On weaker
// architectures (arm64) an acquire load does not hold back the plain
// loads before it, but a sequentially consistent store does (it is a
// release, and a release store followed by an acquire load stays in
// order), so the reader stores to a word of its own.
func (r *BroadcastReader) loadFence() { atomic.StoreUint32(&r.fence, 0) }
