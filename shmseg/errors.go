package shmseg

import (
	"errors"
	"fmt"
)

// Errors returned by this package. They are always wrapped with context,
// such as the segment name or the header field at fault, so test for them
// with errors.Is. Errors from the operating system are wrapped too:
// errors.Is(err, os.ErrExist) reports that CreateNamed found the name taken,
// and errors.Is(err, os.ErrNotExist) that OpenNamed or Unlink did not find
// it.
var (
	// ErrBadName reports a segment name that is empty, longer than 200
	// bytes, contains '/' or NUL, or is "." or "..".
	ErrBadName = errors.New("invalid segment name")

	// ErrBadMagic reports a segment that does not start with the shmseg
	// magic number: it was not created by this package, or not yet
	// initialised.
	ErrBadMagic = errors.New("bad magic number")

	// ErrBadVersion reports a header written by an incompatible version of
	// this package.
	ErrBadVersion = errors.New("unsupported header version")

	// ErrTooSmall reports a segment, buffer or requested payload too small
	// to hold what it must.
	ErrTooSmall = errors.New("segment too small")

	// ErrBadChecksum reports a header whose checksum does not match its
	// contents: it was corrupted or is being rewritten.
	ErrBadChecksum = errors.New("header checksum mismatch")

	// ErrSizeMismatch reports a header whose recorded header size or total
	// size disagrees with the layout or with the size of the file.
	ErrSizeMismatch = errors.New("segment size does not match header")

	// ErrNotSealed reports a descriptor passed to OpenFile that is not a
	// memfd sealed against both shrinking and growing. Mapping it would let
	// the sender truncate the file and raise SIGBUS in this process.
	ErrNotSealed = errors.New("memfd not sealed against resizing")

	// ErrNotShmem reports a descriptor passed to OpenFile whose file is
	// not on tmpfs/shmem: a hugetlbfs memfd (its sender can take its
	// pages away by punching a hole, and this process dies of SIGBUS at
	// its next access), or a file of a disk or pseudo file system.
	ErrNotShmem = errors.New("segment file not on tmpfs/shmem")
)

// A HeaderError reports which header field failed validation. Its Err is
// one of the sentinel errors above, so errors.Is sees through it.
//
// Field is one of "length" (the buffer was shorter than the header fields;
// Err is ErrTooSmall), "magic", "version", "checksum", "headerSize" or
// "totalSize" (both ErrSizeMismatch). For the checksum, Got is the stored
// value and Want the one computed over the header; for totalSize, Want is
// the actual size of the segment.
type HeaderError struct {
	Field string
	Got   uint64
	Want  uint64
	Err   error
}

func (e *HeaderError) Error() string {
	// Magic numbers and hashes read better in hex, sizes in decimal.
	format := "header %s is %d, want %d: %v"
	if e.Field == "magic" || e.Field == "checksum" {
		format = "header %s is %#016x, want %#016x: %v"
	}
	return fmt.Sprintf(format, e.Field, e.Got, e.Want, e.Err)
}

func (e *HeaderError) Unwrap() error { return e.Err }
