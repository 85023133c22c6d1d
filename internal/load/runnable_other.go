//go:build !linux

package load

// RunnableThreads cannot tell off Linux.
func RunnableThreads() int { return -1 }
