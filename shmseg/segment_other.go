//go:build !linux

package shmseg

import (
	"errors"
	"fmt"
	"os"
)

// Segments rely on memfd seals and /dev/shm, which only Linux provides.
// These stubs let portable code that mentions the API still compile.

// CreateMemfd returns an error wrapping errors.ErrUnsupported.
func CreateMemfd(name string, g Geometry, payloadSize int) (*Segment, error) {
	return nil, unsupported("CreateMemfd")
}

// OpenFile returns an error wrapping errors.ErrUnsupported.
func OpenFile(f *os.File) (*Segment, error) { return nil, unsupported("OpenFile") }

// CreateNamed returns an error wrapping errors.ErrUnsupported.
func CreateNamed(name string, g Geometry, payloadSize int, opts *NamedOptions) (*Segment, error) {
	return nil, unsupported("CreateNamed")
}

// OpenNamed returns an error wrapping errors.ErrUnsupported.
func OpenNamed(name string) (*Segment, error) { return nil, unsupported("OpenNamed") }

// Unlink returns an error wrapping errors.ErrUnsupported.
func Unlink(name string) error { return unsupported("Unlink") }

func unsupported(op string) error {
	return fmt.Errorf("shmseg: %s: %w", op, errors.ErrUnsupported)
}
