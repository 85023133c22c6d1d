//go:build !linux

package main

import (
	"fmt"
	"os"
)

// ringbench measures package ipc, which is Linux-only, and starts its
// children with Linux process attributes.
func main() {
	fmt.Fprintln(os.Stderr, "ringbench: runs on Linux only")
	os.Exit(2)
}
