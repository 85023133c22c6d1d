package shmseg

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/edsrzf/mmap-go"
)

// maxNameLen bounds segment names. It stays well below NAME_MAX (255) and
// the 249 bytes memfd_create accepts, leaving room for prefixes a caller
// may add.
const maxNameLen = 200

// NamedOptions configures CreateNamed.
type NamedOptions struct {
	// Mode holds the permission bits of the new file; 0 means 0600. It is
	// applied exactly, regardless of the process umask.
	Mode os.FileMode
}

// A Segment is a mapped shared-memory segment. Its methods are safe for
// concurrent use; see the package Caveats for the lifetime of Payload.
type Segment struct {
	// Set by the constructor and never changed, except that Close unmaps m
	// and closes f.
	f       *os.File
	m       mmap.MMap // whole mapping, header included
	payload []byte    // m[HeaderSize:], capacity clipped to the mapping
	geom    Geometry
	name    string

	closeOnce sync.Once
	closed    atomic.Bool // set before unmapping, read by Payload
}

var _ io.Closer = (*Segment)(nil)

// Payload returns the mapped bytes after the header. Its length is the
// payload size rounded up to the page size, and it starts 4096-byte
// aligned (page aligned only where pages are 4 KiB; see the package doc).
// The slice is valid until Close; Payload returns nil once Close has
// begun.
func (s *Segment) Payload() []byte {
	if s.closed.Load() {
		return nil
	}
	return s.payload
}

// Geometry returns the Geometry recorded in the header, as read when the
// segment was created or attached.
func (s *Segment) Geometry() Geometry { return s.geom }

// Size returns the size of the whole mapping, header included.
func (s *Segment) Size() int { return len(s.m) }

// File returns the segment's descriptor, for example to pass to another
// process with SCM_RIGHTS or exec.Cmd.ExtraFiles. The Segment owns it:
// do not close it, and do not use it after Close.
func (s *Segment) File() *os.File { return s.f }

// Name returns the name under /dev/shm, or "" for a memfd segment.
func (s *Segment) Name() string { return s.name }

// Close unmaps the segment and closes its descriptor. It does not remove a
// named segment; see Unlink. Only the first call does the work and returns
// its errors; later and concurrent calls wait for it and return nil, so
// that once any Close has returned the mapping is gone.
func (s *Segment) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		var uerr, cerr error
		// Keep the length: Size stays meaningful after Close, and
		// mmap.MMap.Unmap would otherwise reset it to nil.
		m := s.m
		if e := m.Unmap(); e != nil {
			uerr = fmt.Errorf("shmseg: unmap: %w", e)
		}
		if e := s.f.Close(); e != nil {
			cerr = fmt.Errorf("shmseg: close: %w", e)
		}
		err = errors.Join(uerr, cerr)
	})
	return err
}

// checkName enforces the name rules shared by memfd and /dev/shm segments.
// A '/' or a dot name would let a /dev/shm name escape the directory or
// name the directory itself; NUL would truncate the name in the kernel.
func checkName(name string) error {
	if name == "" || len(name) > maxNameLen || name == "." || name == ".." ||
		strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("shmseg: name %q: %w", name, ErrBadName)
	}
	return nil
}

// totalSize returns the size of a segment holding payloadSize bytes:
// the header plus the payload rounded up to whole pages, so that the
// payload's length is a whole number of pages and it can be used to its
// last byte. (The mapping ends on a page boundary only where pages are
// 4 KiB, since the header is 4096 bytes everywhere.)
func totalSize(payloadSize int) (int, error) {
	if payloadSize <= 0 {
		return 0, fmt.Errorf("shmseg: payload size %d: %w", payloadSize, ErrTooSmall)
	}
	page := os.Getpagesize()
	if payloadSize > math.MaxInt-HeaderSize-page {
		return 0, fmt.Errorf("shmseg: payload size %d is too large", payloadSize)
	}
	rounded := (payloadSize + page - 1) / page * page
	return HeaderSize + rounded, nil
}

// initFile turns f, a fresh empty file, into a segment of total bytes:
// it sizes it, writes the header, runs seal (if any) and maps it. On error
// it unmaps what it mapped; closing f, and removing a named file, is left to
// the caller, which created them.
func initFile(f *os.File, g Geometry, total int, name string, seal func(*os.File) error) (*Segment, error) {
	if err := f.Truncate(int64(total)); err != nil {
		return nil, fmt.Errorf("shmseg: size segment: %w", err)
	}
	h := encodeHeader(g, uint64(total))
	// Written through the descriptor rather than the mapping, so the header
	// is complete before seal runs and before anything is mapped.
	if _, err := f.WriteAt(h[:], 0); err != nil {
		return nil, fmt.Errorf("shmseg: write header: %w", err)
	}
	if seal != nil {
		if err := seal(f); err != nil {
			return nil, err
		}
	}
	m, err := mapFile(f, total)
	if err != nil {
		return nil, err
	}
	return newSegment(f, m, g, name), nil
}

// attachFile maps f, a segment of size bytes, and validates its header.
// On error it leaves f open: the caller decides whether to close it.
func attachFile(f *os.File, size int64, name string) (*Segment, error) {
	// Checked before mapping: mapping a file shorter than HeaderSize and
	// then reading the header would fault (SIGBUS) past the end of file.
	if size < HeaderSize {
		return nil, fmt.Errorf("shmseg: open %s: file size %d, want at least %d: %w",
			f.Name(), size, HeaderSize, ErrTooSmall)
	}
	if uint64(size) > math.MaxInt {
		return nil, fmt.Errorf("shmseg: open %s: file size %d does not fit in memory", f.Name(), size)
	}
	m, err := mapFile(f, int(size))
	if err != nil {
		return nil, err
	}
	g, err := decodeHeader(m, uint64(size))
	if err != nil {
		_ = m.Unmap() // a read-write mapping that was only read: nothing to lose
		return nil, fmt.Errorf("shmseg: open header of %s: %w", f.Name(), err)
	}
	return newSegment(f, m, g, name), nil
}

// mapFile is the one place where the project maps memory: ipc's
// connection segments, ringbench's rings and examples/ringpair all come
// through shmseg. (The hostile-peer tests map with their own system calls
// on purpose: they share no code with what they attack.)
func mapFile(f *os.File, size int) (mmap.MMap, error) {
	m, err := mmap.MapRegion(f, size, mmap.RDWR, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("shmseg: map %s: %w", f.Name(), err)
	}
	return m, nil
}

func newSegment(f *os.File, m mmap.MMap, g Geometry, name string) *Segment {
	return &Segment{
		f:       f,
		m:       m,
		payload: m[HeaderSize:len(m):len(m)],
		geom:    g,
		name:    name,
	}
}
