//go:build linux && !race

package ipc

const raceOn = false
