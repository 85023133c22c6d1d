//go:build !linux

package ring

// runnableThreads cannot tell off Linux.
func runnableThreads() int { return -1 }
