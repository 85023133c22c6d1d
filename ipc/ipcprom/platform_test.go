//go:build linux

package ipcprom_test

import (
	"testing"

	"github.com/ringipc/ringipc/internal/linuxonly"
)

// ipcprom, like the ipc it reads, is Linux-only: elsewhere only doc.go
// builds.
func TestLinuxOnly(t *testing.T) { linuxonly.Check(t, "doc.go") }
