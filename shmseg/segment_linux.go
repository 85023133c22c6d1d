package shmseg

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// shmDir is where named segments live: the tmpfs that shm_open(3) uses.
const shmDir = "/dev/shm/"

// requiredSeals are the seals OpenFile insists on. With both, the size of
// the memfd is fixed for good (seals can be added but never removed), so no
// process can truncate it under our mapping and raise SIGBUS here.
const requiredSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW

// testHookCreateNamed, when set by a test, runs in CreateNamed right after
// the file is created, to exercise the clean-up of a failed constructor.
var testHookCreateNamed func(*os.File) error

// CreateMemfd creates an anonymous memfd segment (MFD_CLOEXEC|
// MFD_ALLOW_SEALING) of HeaderSize+payloadSize bytes, payloadSize > 0
// rounded up to the page size. It writes the header, seals the memfd with
// F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL so that nobody can resize it, and
// maps it read-write and shared. The name, subject to the same rules as
// CreateNamed's, only labels the memfd in /proc/<pid>/fd.
func CreateMemfd(name string, g Geometry, payloadSize int) (*Segment, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	total, err := totalSize(payloadSize)
	if err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("shmseg: memfd_create %q: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	s, err := initFile(f, g, total, "", sealMemfd)
	if err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// sealMemfd fixes the size of f. F_SEAL_SEAL stops anyone from adding
// F_SEAL_WRITE later, which would turn the segment read-only under the
// peers; the kernel would refuse that while writable mappings exist, but
// there is no reason to leave the door open.
func sealMemfd(f *os.File) error {
	err := control(f, func(fd uintptr) error {
		_, err := unix.FcntlInt(fd, unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL)
		return err
	})
	if err != nil {
		return fmt.Errorf("shmseg: seal %s: %w", f.Name(), err)
	}
	return nil
}

// OpenFile attaches to a segment whose descriptor was received from
// another process (SCM_RIGHTS or exec.Cmd.ExtraFiles). It requires a file
// of the kernel's shared memory file system (tmpfs/shmem, what
// memfd_create makes without MFD_HUGETLB; ErrNotShmem otherwise), sealed
// against shrinking and growing (ErrNotSealed otherwise), a file size of
// at least HeaderSize that matches the size in the header, and a valid
// header. On success the Segment owns f and Close closes it; on error f is
// left open and remains the caller's.
func OpenFile(f *os.File) (*Segment, error) {
	if err := checkShmem(f); err != nil {
		return nil, err
	}
	var seals int
	err := control(f, func(fd uintptr) error {
		var err error
		seals, err = unix.FcntlInt(fd, unix.F_GET_SEALS, 0)
		return err
	})
	if errors.Is(err, unix.EINVAL) {
		// Not a memfd, or a file system without seals: nothing stops
		// the sender from truncating it.
		return nil, fmt.Errorf("shmseg: open %s: get seals: %w: %w", f.Name(), err, ErrNotSealed)
	}
	if err != nil {
		return nil, fmt.Errorf("shmseg: open %s: get seals: %w", f.Name(), err)
	}
	if seals&requiredSeals != requiredSeals {
		return nil, fmt.Errorf("shmseg: open %s: seals %#x lack F_SEAL_SHRINK|F_SEAL_GROW: %w",
			f.Name(), seals, ErrNotSealed)
	}
	size, err := regularSize(f)
	if err != nil {
		return nil, err
	}
	return attachFile(f, size, "")
}

// CreateNamed creates the segment /dev/shm/<name> exclusively, with
// O_CREAT|O_EXCL|O_NOFOLLOW|O_RDWR|O_CLOEXEC, so it fails if the name exists
// in any form, a symbolic link included (errors.Is(err, os.ErrExist)). It
// then sets the mode, sizes the file for payloadSize > 0 bytes rounded up
// to the page size, writes the header and maps it. If any step after the
// creation fails, it removes the file again. opts may be nil.
func CreateNamed(name string, g Geometry, payloadSize int, opts *NamedOptions) (*Segment, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	total, err := totalSize(payloadSize)
	if err != nil {
		return nil, err
	}
	mode := os.FileMode(0o600)
	if opts != nil && opts.Mode != 0 {
		if opts.Mode&^os.ModePerm != 0 {
			return nil, fmt.Errorf("shmseg: create %s: mode %v has bits other than permissions", name, opts.Mode)
		}
		mode = opts.Mode
	}
	path := shmDir + name
	// O_EXCL alone already refuses to follow a symbolic link at path; O_NOFOLLOW
	// states the intent. Following a link planted by another user in the
	// world-writable /dev/shm would create or truncate a file of the
	// attacker's choosing with our privileges (CVE-2019-12779).
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return nil, fmt.Errorf("shmseg: create: %w", err)
	}
	s, err := initNamed(f, g, total, name, mode)
	if err != nil {
		f.Close()
		// /dev/shm is sticky: only we (or root) can remove our file,
		// so the name still refers to it.
		if uerr := unix.Unlink(path); uerr != nil {
			err = errors.Join(err, fmt.Errorf("shmseg: remove %s after failed create: %w", path, uerr))
		}
		return nil, err
	}
	return s, nil
}

func initNamed(f *os.File, g Geometry, total int, name string, mode os.FileMode) (*Segment, error) {
	// open(2) applied the umask, which may have cleared bits the caller
	// asked for; fchmod sets them exactly. The umask can only narrow the
	// mode, so the file was never more open than requested.
	if err := f.Chmod(mode); err != nil {
		return nil, fmt.Errorf("shmseg: create: %w", err)
	}
	if testHookCreateNamed != nil {
		if err := testHookCreateNamed(f); err != nil {
			return nil, err
		}
	}
	return initFile(f, g, total, name, nil)
}

// OpenNamed attaches to the existing segment /dev/shm/<name>, opened with
// O_RDWR|O_NOFOLLOW|O_CLOEXEC so that a symbolic link at the name is
// refused. It checks that the file is a regular file at least HeaderSize
// bytes long whose size matches the header, maps it and validates the
// header.
func OpenNamed(name string) (*Segment, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(shmDir+name, os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("shmseg: open: %w", err)
	}
	size, err := regularSize(f)
	if err == nil {
		var s *Segment
		if s, err = attachFile(f, size, name); err == nil {
			return s, nil
		}
	}
	f.Close()
	return nil, err
}

// Unlink removes /dev/shm/<name>. Processes that have the segment mapped
// keep using it; the memory is freed when the last of them closes it.
func Unlink(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	path := shmDir + name
	if err := unix.Unlink(path); err != nil {
		return fmt.Errorf("shmseg: unlink %s: %w", path, err)
	}
	return nil
}

// checkShmem refuses a descriptor whose file is not on tmpfs/shmem, the
// file system of every memfd made without MFD_HUGETLB. Seals fix a file's
// size, but on hugetlbfs (which supports them too) the sender can still
// punch a hole with fallocate and let the huge pages go to someone else:
// the kernel then has no page to give our next access and raises SIGBUS.
// A shmem page is allocated on demand, from ordinary memory, so a hole
// reads as zeros. Anything else (a disk file, a procfs file) has no
// business being a shared segment either.
func checkShmem(f *os.File) error {
	var st unix.Statfs_t
	err := control(f, func(fd uintptr) error { return unix.Fstatfs(int(fd), &st) })
	if err != nil {
		return fmt.Errorf("shmseg: open %s: statfs: %w", f.Name(), err)
	}
	if st.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("shmseg: open %s: file system magic %#x, want tmpfs %#x: %w",
			f.Name(), st.Type, unix.TMPFS_MAGIC, ErrNotShmem)
	}
	return nil
}

// regularSize returns the size of f from fstat. Anything but a regular
// file is refused: a device or FIFO has no meaningful size to map.
func regularSize(f *os.File) (int64, error) {
	var st unix.Stat_t
	err := control(f, func(fd uintptr) error { return unix.Fstat(int(fd), &st) })
	if err != nil {
		return 0, fmt.Errorf("shmseg: stat %s: %w", f.Name(), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, fmt.Errorf("shmseg: open %s: not a regular file (mode %#o)", f.Name(), st.Mode)
	}
	return st.Size, nil
}

// control runs fn on the descriptor of f. Unlike f.Fd, it neither switches
// f to blocking mode nor races with a concurrent Close.
func control(f *os.File, fn func(fd uintptr) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(fd) }); err != nil {
		// Control fails only once f is closed, with an internal error
		// that callers cannot test for; report it as os.ErrClosed, as
		// the methods of os.File do.
		return fmt.Errorf("%w (%v)", os.ErrClosed, err)
	}
	return ferr
}
