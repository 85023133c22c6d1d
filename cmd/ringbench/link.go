//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
	"golang.org/x/sys/unix"
)

// A link carries fixed-size frames one way between two processes. Every
// scenario runs one loop against these interfaces, so that its ring and
// uds variants have the same shape and differ only in how the links are
// made. Neither side allocates per frame.
type frameWriter interface {
	writeFrame(b []byte) error
	Close() error
}

type frameReader interface {
	// readFrame fills all of b with the next frame; a frame of another
	// size is an error.
	readFrame(b []byte) error
	Close() error
}

// ringFrameType is the record type of every frame.
const ringFrameType = 1

// bg is the context of every blocking ring call in a measured loop: a
// context that can end would cost a cleanup registration per futex sleep.
// Loops end when a side closes the ring instead.
var bg = context.Background()

// ringWriter copies each frame into the ring (Write), as a socket write
// copies it into the kernel.
type ringWriter struct{ p *ring.Producer }

func (w ringWriter) writeFrame(b []byte) error { return w.p.Write(bg, ringFrameType, b) }

// Close closes the ring for every side, which is how a run ends (an
// mpsc child's too).
func (w ringWriter) Close() error { return w.p.CloseRing() }

// ringReader copies each frame out of the ring (ReadInto), as a socket
// read copies it out of the kernel.
type ringReader struct{ c *ring.Consumer }

func (r ringReader) readFrame(b []byte) error {
	typ, n, err := r.c.ReadInto(bg, b)
	if err != nil {
		return err
	}
	if n != len(b) || typ != ringFrameType {
		return fmt.Errorf("record of type %d and %d bytes, want type %d and %d bytes", typ, n, ringFrameType, len(b))
	}
	return nil
}

func (r ringReader) Close() error { return r.c.Close() }

// zcHead is how many leading bytes of a frame the zero-copy links
// (-zerocopy) write and read: the sequence number or tag and a paced
// frame's stamp. The rest of the frame is left as the ring holds it, so
// that a row measures the hand-off alone, not the fill or the copy.
const zcHead = 16

// head returns the part of b a zero-copy link moves.
func head(b []byte) []byte { return b[:min(zcHead, len(b))] }

// zcRingWriter reserves each frame in the ring and commits it with only
// its head written (-zerocopy).
type zcRingWriter struct{ p *ring.Producer }

func (w zcRingWriter) writeFrame(b []byte) error {
	r, err := w.p.Reserve(bg, ringFrameType, len(b))
	if err != nil {
		return err
	}
	copy(r.Bytes(), head(b))
	return r.Commit()
}

func (w zcRingWriter) Close() error { return w.p.CloseRing() }

// zcRingReader peeks at each frame in place, reads only its head and
// releases it (-zerocopy).
type zcRingReader struct{ c *ring.Consumer }

func (r zcRingReader) readFrame(b []byte) error {
	rec, err := r.c.Peek(bg)
	if err != nil {
		return err
	}
	if len(rec.Data) != len(b) || rec.Type != ringFrameType {
		return fmt.Errorf("record of type %d and %d bytes, want type %d and %d bytes", rec.Type, len(rec.Data), ringFrameType, len(b))
	}
	copy(b, head(rec.Data))
	return r.c.Release()
}

func (r zcRingReader) Close() error { return r.c.Close() }

// udsWriter writes each frame with one write(2), the naive use of a
// stream socket: no batching, no length prefix (frames have a fixed size).
type udsWriter struct{ c net.Conn }

func (w udsWriter) writeFrame(b []byte) error {
	_, err := w.c.Write(b)
	return err
}

func (w udsWriter) Close() error { return w.c.Close() }

// udsReadBuffer is the bufio.Reader size of a uds reader.
const udsReadBuffer = 64 << 10

// udsReader reads frames through a bufio.Reader, one io.ReadFull each.
type udsReader struct {
	c  net.Conn
	br *bufio.Reader
}

func newUDSReader(c net.Conn) udsReader {
	return udsReader{c: c, br: bufio.NewReaderSize(c, udsReadBuffer)}
}

func (r udsReader) readFrame(b []byte) error {
	_, err := io.ReadFull(r.br, b)
	return err
}

func (r udsReader) Close() error { return r.c.Close() }

var (
	_ frameWriter = ringWriter{}
	_ frameReader = ringReader{}
	_ frameWriter = zcRingWriter{}
	_ frameReader = zcRingReader{}
	_ frameWriter = udsWriter{}
	_ frameReader = udsReader{}
)

// endOfRun reports whether err is how a loop learns that the other side
// ended the run: a closed ring or a closed socket.
func endOfRun(err error) bool {
	return errors.Is(err, ring.ErrClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNRESET)
}

// Segment kinds in the shmseg header. A single ring uses shmseg's
// documented kind 1; a pair of rings is private to this benchmark.
const (
	segKindRing     = 1          // Params[0] data size, [1] producer slots
	segKindRingPair = 0x52420002 // two SPSC rings, Params[0] data size of each
)

// ringPairOffset returns where the second ring of a pair starts (the
// first is at 0, and both are 4096-byte aligned) and the bytes both take.
func ringPairOffset(dataSize int) (second, total int, err error) {
	n, err := ring.Size(ring.Geometry{DataSize: dataSize})
	if err != nil {
		return 0, 0, err
	}
	n = (n + 4095) &^ 4095
	return n, 2 * n, nil
}

// newRingSegment creates a memfd segment holding one ring of geometry g
// (or, when pair is set, two SPSC rings of g's data size, see
// ringPairOffset), initialized and ready to hand to children.
func newRingSegment(g ring.Geometry, pair bool) (*shmseg.Segment, error) {
	kind, size := uint32(segKindRing), 0
	var err error
	if pair {
		kind = segKindRingPair
		_, size, err = ringPairOffset(g.DataSize)
	} else {
		size, err = ring.Size(g)
	}
	if err != nil {
		return nil, err
	}
	seg, err := shmseg.CreateMemfd("ringbench", shmseg.Geometry{
		Kind: kind, Params: [6]uint64{uint64(g.DataSize), uint64(g.Producers)},
	}, size)
	if err != nil {
		return nil, err
	}
	mem := seg.Payload()
	err = ring.Init(mem, g)
	if err == nil && pair {
		second, _, _ := ringPairOffset(g.DataSize)
		err = ring.Init(mem[second:], g)
	}
	if err != nil {
		return nil, errors.Join(err, seg.Close())
	}
	return seg, nil
}

// openRingSegment attaches a child to the segment passed as f and checks
// that it holds what the parent said it would.
func openRingSegment(f *os.File, pair bool, dataSize int) (*shmseg.Segment, error) {
	seg, err := shmseg.OpenFile(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	want := uint32(segKindRing)
	if pair {
		want = segKindRingPair
	}
	if g := seg.Geometry(); g.Kind != want || g.Params[0] != uint64(dataSize) {
		return nil, errors.Join(fmt.Errorf("segment kind %#x with data size %d, want kind %#x with %d",
			g.Kind, g.Params[0], want, dataSize), seg.Close())
	}
	return seg, nil
}

// socketPair returns a connected AF_UNIX SOCK_STREAM pair: the parent's
// end as a net.Conn, and the child's as a file for exec.Cmd.ExtraFiles,
// which the caller closes once the child has started.
func socketPair() (net.Conn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "uds-parent")
	theirs := os.NewFile(uintptr(fds[1]), "uds-child")
	c, err := net.FileConn(mine) // a dup in non-blocking mode; ours is not needed after
	mine.Close()
	if err != nil {
		theirs.Close()
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return c, theirs, nil
}

// openSocket turns the socket a child was given into a net.Conn.
func openSocket(f *os.File) (net.Conn, error) {
	c, err := net.FileConn(f)
	f.Close()
	return c, err
}
