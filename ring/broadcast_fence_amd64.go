package ring

// loadFence orders the reader's plain loads of a record before its
// atomic load of the writer's intent (the seqlock check). On amd64 loads
// are not reordered with other loads (TSO), and Go's atomic load is a
// plain MOV, so nothing is needed.
func (r *BroadcastReader) loadFence() { _ = r.fence }
