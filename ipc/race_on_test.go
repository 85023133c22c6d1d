//go:build linux && race

package ipc

// raceOn: the race detector is on, and sync.Pool drops a quarter of what
// is put in it, so a pooled object is sometimes allocated again.
const raceOn = true
