//go:build linux && !ringipc_futexpoll

package ring

// futexWakes: the futex package's Wake reaches a sleeper in Wait, so a
// reader may sleep without a limit and be interrupted.
const futexWakes = true
