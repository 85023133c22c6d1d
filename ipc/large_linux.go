package ipc

// The system calls of large bodies (large.go): body segments and the
// body tokens that carry them.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var pageSize = os.Getpagesize()

// newBodySegment creates a body segment of size bytes: a memfd sealed
// against shrinking, growing and further seals (so the receiver can map
// it without fear of SIGBUS), mapped read-write here, and sent with a
// body token tok. Only the mapping is kept: it holds the memfd.
func newBodySegment(size int, tok byte, ctx context.Context, done <-chan struct{}, rc syscall.RawConn) ([]byte, error) {
	fd, err := unix.MemfdCreate("ringipc-body", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("body segment: memfd_create: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return nil, fmt.Errorf("body segment of %d bytes: ftruncate: %w", size, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return nil, fmt.Errorf("body segment: seal: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("body segment of %d bytes: mmap: %w", size, err)
	}
	if err := sendBodyToken(ctx, done, rc, tok, fd); err != nil {
		unix.Munmap(mem) //nolint:errcheck // ours, of the right length
		return nil, err
	}
	return mem, nil
}

// mapBodySegment maps a body segment the peer sent: a memfd on tmpfs
// (not hugetlbfs, whose pages its owner could take away) sealed against
// shrinking, mapped read-write and shared up to limit bytes (page
// rounded) however large the file is. Every number comes from the peer's
// file: fstat and the seals are read once, here.
func mapBodySegment(fd, limit int) ([]byte, error) {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return nil, fmt.Errorf("fstatfs: %w", err)
	}
	if fs.Type != unix.TMPFS_MAGIC {
		return nil, fmt.Errorf("not a tmpfs memfd (filesystem %#x)", fs.Type)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("seals: %w", err)
	}
	if seals&unix.F_SEAL_SHRINK == 0 {
		return nil, fmt.Errorf("not sealed against shrinking (seals %#x)", seals)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size <= 0 {
		return nil, fmt.Errorf("mode %#o, size %d", st.Mode, st.Size)
	}
	n := int(min(st.Size, int64(alignInt(limit, pageSize))))
	mem, err := unix.Mmap(fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes: %w", n, err)
	}
	return mem, nil
}

func unmapBody(mem []byte) error { return unix.Munmap(mem) }

func closeFd(fd int) { unix.Close(fd) } //nolint:errcheck // a descriptor we own, closed once

// errPeerNotReading: a body token found the socket full for as long as
// the sender could wait: the peer does not read its socket.
var errPeerNotReading = errors.New("the peer does not read its socket")

// sendBodyToken sends body token tok with the descriptor fd. The socket
// is full only if the peer stopped reading it (an honest peer has at most
// a few wake tokens outstanding), so a full socket is waited for in 5 ms
// slices of poll(2) until ctx ends or done is closed, and a nil ctx (an
// external loop, which must not wait) does not wait at all.
func sendBodyToken(ctx context.Context, done <-chan struct{}, rc syscall.RawConn, tok byte, fd int) error {
	b := []byte{tok}
	oob := unix.UnixRights(fd)
	for {
		var serr error
		if err := rc.Control(func(s uintptr) {
			for {
				serr = unix.Sendmsg(int(s), b, oob, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
				if serr != unix.EINTR {
					return
				}
			}
		}); err != nil {
			return fmt.Errorf("send body segment: %w", err)
		}
		if serr != unix.EAGAIN {
			if serr != nil {
				return fmt.Errorf("send body segment: %w", serr)
			}
			return nil
		}
		if ctx == nil {
			return fmt.Errorf("send body segment: %w", errPeerNotReading)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("send body segment: %w (%w)", err, errPeerNotReading)
		}
		select {
		case <-done:
			return fmt.Errorf("send body segment: %w", ErrDisconnected)
		default:
		}
		rc.Control(func(s uintptr) { //nolint:errcheck // the next Sendmsg says
			unix.Poll([]unix.PollFd{{Fd: int32(s), Events: unix.POLLOUT}}, int(5*time.Millisecond/time.Millisecond)) //nolint:errcheck
		})
	}
}

// recvTokens reads what tokens are there without waiting, with any
// descriptors that came with them (body tokens): n bytes, the
// descriptors, or eof when the peer has closed (or reset) the
// connection. A control message the buffer truncated is an error (its
// descriptors are lost).
func recvTokens(rc syscall.RawConn, buf, oob []byte) (n int, fds []int, eof bool, err error) {
	var rerr error
	var oobn, flags int
	cerr := rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, flags, rerr = recvmsg(int(fd), buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
			if rerr != unix.EINTR {
				return true
			}
		}
	})
	if cerr != nil {
		return 0, nil, true, cerr
	}
	switch {
	case rerr == unix.EAGAIN:
		return 0, nil, false, nil
	case rerr == unix.ECONNRESET:
		return 0, nil, true, nil
	case rerr != nil:
		return 0, nil, true, rerr
	}
	if oobn > 0 {
		fds = parseRights(oob[:oobn])
	}
	if flags&unix.MSG_CTRUNC != 0 {
		closeFds(fds)
		return n, nil, false, fmt.Errorf("%w: more descriptors than one body token carries", ErrProtocol)
	}
	if n == 0 {
		closeFds(fds)
		return 0, nil, true, nil
	}
	return n, fds, false, nil
}

// recvmsg is recvmsg(2) without the sender's address, which the token
// readers have no use for and whose decoding (unix.Recvmsg,
// net.UnixConn.ReadMsgUnix) allocates on every read from a bound peer.
func recvmsg(fd int, p, oob []byte, flags int) (n, oobn, recvflags int, err error) {
	var msg unix.Msghdr
	var iov unix.Iovec
	if len(p) > 0 {
		iov.Base = &p[0]
		iov.SetLen(len(p))
	}
	msg.Iov = &iov
	msg.SetIovlen(1)
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	r, err := rawRecvmsg(fd, &msg, flags)
	if err != nil {
		return 0, 0, 0, err
	}
	return r, int(msg.Controllen), int(msg.Flags), nil
}

// tokenReader reads tokens blocking in the netpoller, with their
// descriptors; its closure is built once, so that a read allocates
// nothing.
type tokenReader struct {
	rc    syscall.RawConn
	rn    readNexter // rc, if it can wait before its first try; else nil
	buf   []byte
	oob   []byte
	n     int
	oobn  int
	flags int
	err   error
	read  func(uintptr) bool
}

func newTokenReader(rc syscall.RawConn, buf, oob []byte) *tokenReader {
	r := &tokenReader{rc: rc, buf: buf, oob: oob}
	r.rn, _ = rc.(readNexter)
	r.read = func(fd uintptr) bool {
		for {
			r.n, r.oobn, r.flags, r.err = recvmsg(int(fd), r.buf, r.oob, unix.MSG_CMSG_CLOEXEC)
			switch r.err {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // wait in the netpoller
			}
			return true
		}
	}
	return r
}

// readNexter is a RawConn that can wait before its first try
// (quietSock.ReadNext).
type readNexter interface {
	ReadNext(f func(fd uintptr) bool) error
}

// next reads one run of tokens: n bytes, the descriptors that came with
// them; n == 0 with a nil error is end of file. drained says the last
// run was shorter than the buffer, so the socket had nothing more then:
// a quiet socket then waits for input before it reads.
func (r *tokenReader) next(drained bool) (n int, fds []int, err error) {
	var cerr error
	if drained && r.rn != nil {
		cerr = r.rn.ReadNext(r.read)
	} else {
		cerr = r.rc.Read(r.read)
	}
	if cerr != nil {
		return 0, nil, cerr
	}
	if r.err != nil {
		return 0, nil, r.err
	}
	if r.oobn > 0 {
		fds = parseRights(r.oob[:r.oobn])
	}
	if r.flags&unix.MSG_CTRUNC != 0 {
		closeFds(fds)
		return 0, nil, fmt.Errorf("%w: more descriptors than one body token carries", ErrProtocol)
	}
	return r.n, fds, nil
}
