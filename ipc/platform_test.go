//go:build linux

package ipc

import (
	"testing"

	"github.com/ringipc/ringipc/internal/linuxonly"
)

// ipc is Linux-only (see the package doc): elsewhere only doc.go builds.
func TestLinuxOnly(t *testing.T) { linuxonly.Check(t, "doc.go") }
