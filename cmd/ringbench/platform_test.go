//go:build linux

package main

import (
	"testing"

	"github.com/ringipc/ringipc/internal/linuxonly"
)

// ringbench measures ipc, which is Linux-only: elsewhere it builds as
// doc.go and a main that says so.
func TestLinuxOnly(t *testing.T) { linuxonly.Check(t, "doc.go", "main_other.go") }
