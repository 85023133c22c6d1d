//go:build !linux || ringipc_futexpoll

package ring

// futexWakes: the futex package's Wait polls the word and its Wake does
// nothing, so a reader that must notice a cancelled context (which
// cannot change the word) sleeps in slices of BroadcastPollSlice.
const futexWakes = false
