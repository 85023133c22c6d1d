package shmseg

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpenFileRejectsNotShmem: OpenFile takes only files of tmpfs/shmem.
// The case that matters is a hugetlbfs memfd, sealed and with a valid
// header: everything else about it passes, and its sender could punch a
// hole and take the huge pages back, so that our next access raises
// SIGBUS. Huge pages are not always to be had, so the same check is also
// driven by files that are always available: a procfs file, and a disk
// file when the temporary directory is not itself tmpfs.
func TestOpenFileRejectsNotShmem(t *testing.T) {
	t.Run("procfs", func(t *testing.T) {
		f, err := os.Open("/proc/self/stat")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		expectNotShmem(t, f)
	})
	t.Run("disk file", func(t *testing.T) {
		dir := t.TempDir()
		if isTmpfs(t, dir) {
			// Then the file is on tmpfs, which is allowed, and it is the
			// seal check that refuses it (TestOpenFileRejectsUnsealed).
			t.Skipf("%s is on tmpfs", dir)
		}
		f, err := os.Create(filepath.Join(dir, "segment"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		const total = HeaderSize + 8192
		if err := f.Truncate(total); err != nil {
			t.Fatal(err)
		}
		writeHeader(t, f, total)
		expectNotShmem(t, f)
	})
	t.Run("hugetlbfs memfd", func(t *testing.T) {
		f := hugeSegment(t)
		expectNotShmem(t, f)
	})
	t.Run("memfd is tmpfs", func(t *testing.T) {
		// The premise of the check: what memfd_create makes without
		// MFD_HUGETLB reports tmpfs, so honest segments pass.
		s, err := CreateMemfd("fs-check", testGeometry, 4096)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := checkShmem(s.File()); err != nil {
			t.Fatal(err)
		}
	})
}

func expectNotShmem(t *testing.T, f *os.File) {
	t.Helper()
	s, err := OpenFile(f)
	if !errors.Is(err, ErrNotShmem) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("OpenFile: got %v, want ErrNotShmem", err)
	}
	assertOpen(t, f)
}

func isTmpfs(t *testing.T, path string) bool {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Type == unix.TMPFS_MAGIC
}

// hugeSegment returns a sealed hugetlbfs memfd holding a valid segment
// header: one OpenFile would accept but for its file system. It needs a
// free huge page; as root it reserves one for the test (and gives it
// back), else, or if the kernel has none to give, it skips.
func hugeSegment(t *testing.T) *os.File {
	t.Helper()
	size := hugePageSize(t)
	fd, err := unix.MemfdCreate("huge", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_HUGETLB)
	if err != nil {
		t.Skipf("memfd_create(MFD_HUGETLB): %v", err)
	}
	f := os.NewFile(uintptr(fd), "huge memfd")
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		t.Skipf("ftruncate of a hugetlbfs memfd: %v", err)
	}
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err == unix.ENOMEM && os.Geteuid() == 0 {
		reserveHugePage(t)
		m, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	}
	if err != nil {
		f.Close()
		t.Skipf("no huge page to map (%v): run as root, or set vm.nr_hugepages", err)
	}
	// Registered after reserveHugePage's clean-up, so it runs first: the
	// page is free again when the reservation is given back.
	t.Cleanup(func() { f.Close() })
	// hugetlbfs has no write(2): the header goes in through the mapping.
	h := encodeHeader(testGeometry, uint64(size))
	copy(m, h[:])
	if err := unix.Munmap(m); err != nil {
		t.Fatal(err)
	}
	addSeals(t, f, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL)
	return f
}

// hugePageSize reads the default huge page size from /proc/meminfo.
func hugePageSize(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Skipf("no /proc/meminfo: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Hugepagesize:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err == nil && kb > 0 {
				return kb << 10
			}
		}
	}
	t.Skip("the kernel reports no huge page size")
	return 0
}

// reserveHugePage raises vm.nr_hugepages by one for the test and sets it
// back afterwards.
func reserveHugePage(t *testing.T) {
	t.Helper()
	const knob = "/proc/sys/vm/nr_hugepages"
	b, err := os.ReadFile(knob)
	if err != nil {
		t.Skipf("read %s: %v", knob, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s holds %q", knob, b)
	}
	if err := os.WriteFile(knob, []byte(strconv.Itoa(n+1)), 0); err != nil {
		t.Skipf("reserve a huge page: %v", err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(knob, []byte(strconv.Itoa(n)), 0); err != nil {
			t.Errorf("give the huge page back (%s = %d): %v", knob, n, err)
		}
	})
}
