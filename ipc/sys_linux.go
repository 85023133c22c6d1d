package ipc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerCred reads SO_PEERCRED: the peer's pid, uid and gid as of connect
// (client side: as of listen).
func peerCred(c *net.UnixConn) (Cred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var uc *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		uc, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", serr)
	}
	return Cred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid}, nil
}

// rawFd returns the descriptor behind c. The caller must keep c alive
// while it uses the number.
func rawFd(rc syscall.RawConn) int {
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) }) //nolint:errcheck // an error leaves -1
	return fd
}

// writeToken writes one wake token without waiting: a peer that does not
// read its socket must not stall this side. It returns nil once the byte
// went out, unix.EAGAIN if the socket buffer is full, or another error if
// the socket is broken.
func writeToken(fd uintptr, b []byte) error {
	_, full, err := writeNonblock(fd, b)
	if full {
		return unix.EAGAIN
	}
	return err
}

// writeTokenSeen is writeToken through unix.Write, whose system call
// the Go runtime sees: while the write runs, the runtime may hand this
// goroutine's P, and the goroutines queued on it, to another thread.
// See sockWaker.behind for when that is worth its cost.
func writeTokenSeen(fd uintptr, b []byte) error {
	for {
		if _, err := unix.Write(int(fd), b); err != unix.EINTR {
			return err
		}
	}
}

// acceptNow accepts one pending connection without waiting; it returns
// nil, nil when there is none.
func acceptNow(l *net.UnixListener) (*net.UnixConn, error) {
	rc, err := l.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var aerr error
	// A listener's RawConn has no Read; Control is enough, since Go keeps
	// the descriptor non-blocking and accept4 says EAGAIN when idle.
	if err := rc.Control(func(fd uintptr) {
		for {
			nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if aerr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return nil, err
	}
	if aerr == unix.EAGAIN || aerr == unix.ECONNABORTED {
		return nil, nil
	}
	if aerr != nil {
		return nil, fmt.Errorf("accept: %w", aerr)
	}
	f := os.NewFile(uintptr(nfd), "ipc-conn")
	defer f.Close() // FileConn dups it
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("accept: %w: not a unix socket", ErrProtocol)
	}
	return uc, nil
}

// Listen opens a Unix stream listener at address: a filesystem path, or a
// Linux abstract socket name written "@name". A path gets file mode mode
// (0 means 0600), set on the socket itself and never through a symlink
// (see listenPath). An existing file at the path is removed only if it is a
// socket that no one listens on any more; anything else is an error.
func Listen(address string, mode os.FileMode) (*net.UnixListener, error) {
	if address == "" {
		return nil, fmt.Errorf("listen: %w: empty address", os.ErrInvalid)
	}
	if address[0] == '@' {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: address, Net: "unix"})
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", address, err)
		}
		return l, nil
	}
	if mode == 0 {
		mode = 0o600
	}
	if err := removeStale(address); err != nil {
		return nil, err
	}
	l, err := listenPath(address, mode.Perm())
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", address, err)
	}
	return l, nil
}

// testHookListenBound, set by tests, runs once the socket file exists and
// before its mode is checked: where an attacker who can write the
// directory would swap it.
var testHookListenBound func(path string)

// listenPath binds a Unix stream socket at path with file mode perm,
// without ever following a symlink at path. The mode is set on the socket
// before bind (Linux creates the file with the socket inode's mode, less
// the umask), so the file is never more open than asked. To undo the
// umask's narrowing, the path is then opened with O_PATH|O_NOFOLLOW, which
// refers to a symlink itself rather than its target; the file must be a
// socket, and only then is its mode set through that descriptor. The old
// os.Chmod(path) followed a symlink an attacker put there and could open
// any file of ours to everyone.
func listenPath(path string, perm os.FileMode) (*net.UnixListener, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), "ipc-listener")
	defer f.Close() // FileListener dups it
	if err := unix.Fchmod(fd, uint32(perm)); err != nil {
		return nil, os.NewSyscallError("fchmod", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, os.NewSyscallError("bind", err)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		os.Remove(path)
		return nil, os.NewSyscallError("listen", err)
	}
	if h := testHookListenBound; h != nil {
		h(path)
	}
	if err := setSocketMode(path, perm); err != nil {
		return nil, err // the path is not ours any more: leave it alone
	}
	fl, err := net.FileListener(f)
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	l := fl.(*net.UnixListener)
	l.SetUnlinkOnClose(true)
	return l, nil
}

// setSocketMode gives the socket file at path mode perm, refusing
// anything at path that is not a socket (a symlink included).
func setSocketMode(path string, perm os.FileMode) error {
	pfd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("open", err)
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return os.NewSyscallError("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%w: the socket file was replaced (mode %#o)", os.ErrExist, st.Mode)
	}
	if os.FileMode(st.Mode).Perm() == perm {
		return nil
	}
	// fchmod does not work on an O_PATH descriptor; chmod of its
	// /proc/self/fd entry reaches the inode it refers to, a socket.
	if err := os.Chmod(fmt.Sprintf("/proc/self/fd/%d", pfd), perm); err != nil {
		return err
	}
	return nil
}

// removeStale removes a socket file left by a server that is gone: it
// must be a socket (never a regular file or a symlink someone planted) and
// a connect to it must be refused.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("listen %s: %w: exists and is not a socket", path, os.ErrExist)
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return fmt.Errorf("listen %s: %w: a server is listening", path, os.ErrExist)
	}
	if !errors.Is(err, unix.ECONNREFUSED) {
		return fmt.Errorf("listen %s: probe existing socket: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("listen %s: remove stale socket: %w", path, err)
	}
	return nil
}

// ListenerFd returns the descriptor of a listener from Listen, for an
// external poll loop: when it polls readable, call Server.AcceptReady.
// The listener keeps owning it.
func ListenerFd(l *net.UnixListener) (int, error) {
	rc, err := l.SyscallConn()
	if err != nil {
		return -1, err
	}
	return rawFd(rc), nil
}

// writeNonblock writes b to a non-blocking socket until all of it is out,
// the socket is full (full) or the write fails: n is what went out.
func writeNonblock(fd uintptr, b []byte) (n int, full bool, err error) {
	for n < len(b) {
		k, werr := rawWrite(int(fd), b[n:])
		switch {
		case werr == unix.EINTR:
			continue
		case werr == unix.EAGAIN:
			return n, true, nil
		case werr != nil:
			return n, false, werr
		}
		n += k
	}
	return n, false, nil
}

// writeNow writes b with one non-blocking write: it never waits for
// buffer space (used for reject replies on the accepting goroutine).
func writeNow(c *net.UnixConn, b []byte) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	if err := rc.Control(func(fd uintptr) {
		for {
			var n int
			n, werr = unix.Write(int(fd), b)
			if werr == unix.EINTR {
				continue
			}
			if werr == nil && n < len(b) {
				werr = unix.EAGAIN
			}
			return
		}
	}); err != nil {
		return err
	}
	return werr
}
