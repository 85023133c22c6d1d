package shmseg

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// helperEnv, set in the environment of a re-executed test binary, turns
// TestHelperProcess into the child side of TestMemfdChildProcess.
const helperEnv = "SHMSEG_TEST_HELPER"

// testName returns a /dev/shm name unique to this process and test, and
// removes whatever ends up under it when the test finishes.
func testName(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("shmseg-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_"))
	if len(name) > maxNameLen {
		name = name[:maxNameLen]
	}
	t.Cleanup(func() {
		if err := unix.Unlink(shmDir + name); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Errorf("remove %s: %v", name, err)
		}
	})
	return name
}

func closeOnCleanup(t testing.TB, s *Segment) {
	t.Helper()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}

func newMemfd(t testing.TB, payloadSize int) *Segment {
	t.Helper()
	s, err := CreateMemfd("test", testGeometry, payloadSize)
	if err != nil {
		t.Fatalf("CreateMemfd: %v", err)
	}
	closeOnCleanup(t, s)
	return s
}

func newNamed(t testing.TB, name string, payloadSize int, opts *NamedOptions) *Segment {
	t.Helper()
	s, err := CreateNamed(name, testGeometry, payloadSize, opts)
	if err != nil {
		t.Fatalf("CreateNamed: %v", err)
	}
	closeOnCleanup(t, s)
	return s
}

func exists(t testing.TB, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lstat %s: %v", path, err)
	}
	return err == nil
}

func pattern(i int) byte { return byte(i*7 + 3) }

// childAnswer is what the child writes at the start of the payload.
const childAnswer = "child was here"

func TestMemfdChildProcess(t *testing.T) {
	s := newMemfd(t, 3*os.Getpagesize()+5)
	p := s.Payload()
	for i := range p {
		p[i] = pattern(i)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	// A race-enabled binary sleeps a second at exit by default, waiting
	// for late reports; the child has no goroutines to wait for.
	cmd.Env = append(os.Environ(), helperEnv+"=memfd",
		"GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	cmd.ExtraFiles = []*os.File{s.File()} // becomes fd 3 in the child
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	// The child has exited, and its writes to the shared pages are visible.
	if got := string(p[:len(childAnswer)]); got != childAnswer {
		t.Fatalf("payload starts with %q, want the child's answer %q", got, childAnswer)
	}
	for i := len(childAnswer); i < len(p); i++ {
		if p[i] != pattern(i) {
			t.Fatalf("payload[%d] = %d, want %d", i, p[i], pattern(i))
		}
	}
}

// TestHelperProcess is the child side of TestMemfdChildProcess. It does
// nothing unless started by it.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "memfd" {
		return
	}
	if err := helperMemfd(); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func helperMemfd() error {
	f := os.NewFile(3, "inherited memfd")
	s, err := OpenFile(f)
	if err != nil {
		f.Close()
		return err
	}
	if g := s.Geometry(); g != testGeometry {
		return fmt.Errorf("geometry %+v, want %+v", g, testGeometry)
	}
	if s.Name() != "" || s.File() != f {
		return fmt.Errorf("Name %q, File %v: want \"\" and the inherited file", s.Name(), s.File())
	}
	p := s.Payload()
	if want := s.Size() - HeaderSize; len(p) != want || want != 4*os.Getpagesize() {
		return fmt.Errorf("payload length %d, size %d", len(p), s.Size())
	}
	for i := range p {
		if p[i] != pattern(i) {
			return fmt.Errorf("payload[%d] = %d, want %d", i, p[i], pattern(i))
		}
	}
	copy(p, childAnswer)
	return s.Close()
}

func TestMemfdSealed(t *testing.T) {
	s := newMemfd(t, 1)
	fd := int(s.File().Fd())
	for _, size := range []int64{0, HeaderSize, int64(s.Size()) + 1, 2 * int64(s.Size())} {
		if err := unix.Ftruncate(fd, size); !errors.Is(err, unix.EPERM) {
			t.Errorf("ftruncate to %d: got %v, want EPERM", size, err)
		}
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		t.Fatalf("F_GET_SEALS: %v", err)
	}
	const want = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
	if seals != want {
		t.Errorf("seals %#x, want %#x", seals, want)
	}
	// F_SEAL_SEAL: nobody can add F_SEAL_WRITE and freeze the peers.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); !errors.Is(err, unix.EPERM) {
		t.Errorf("adding F_SEAL_WRITE: got %v, want EPERM", err)
	}
	if fi, err := s.File().Stat(); err != nil || fi.Size() != int64(s.Size()) {
		t.Errorf("size after failed truncations: %v, %v; want %d", fi.Size(), err, s.Size())
	}
}

// rawMemfd makes an unsealed memfd of size bytes, bypassing CreateMemfd.
// flags may add MFD_ALLOW_SEALING.
func rawMemfd(t testing.TB, flags int, size int) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("raw", unix.MFD_CLOEXEC|flags)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	f := os.NewFile(uintptr(fd), "raw memfd")
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	return f
}

// writeHeader writes a valid header for a segment of total bytes into f.
func writeHeader(t testing.TB, f *os.File, total int) {
	t.Helper()
	h := encodeHeader(testGeometry, uint64(total))
	if _, err := f.WriteAt(h[:], 0); err != nil {
		t.Fatal(err)
	}
}

func addSeals(t testing.TB, f *os.File, seals int) {
	t.Helper()
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		t.Fatalf("F_ADD_SEALS %#x: %v", seals, err)
	}
}

// validMemfd makes a memfd holding a valid segment of total bytes, with
// the given seals.
func validMemfd(t testing.TB, flags, seals, total int) *os.File {
	t.Helper()
	f := rawMemfd(t, flags, total)
	writeHeader(t, f, total)
	if seals != 0 {
		addSeals(t, f, seals)
	}
	return f
}

// assertOpen checks that f is still open, as OpenFile must leave it on error.
func assertOpen(t testing.TB, f *os.File) {
	t.Helper()
	if _, err := f.Stat(); err != nil {
		t.Fatalf("OpenFile closed the caller's file on error: %v", err)
	}
}

func TestOpenFileRejectsUnsealed(t *testing.T) {
	const total = HeaderSize + 8192
	named := func(t testing.TB) *os.File {
		s := newNamed(t, testName(t), 8192, nil)
		f, err := os.OpenFile(shmDir+s.Name(), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	tests := []struct {
		name string
		file func(t testing.TB) *os.File
	}{
		{"no seals", func(t testing.TB) *os.File {
			return validMemfd(t, unix.MFD_ALLOW_SEALING, 0, total)
		}},
		{"shrink only", func(t testing.TB) *os.File {
			return validMemfd(t, unix.MFD_ALLOW_SEALING, unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL, total)
		}},
		{"grow only", func(t testing.TB) *os.File {
			return validMemfd(t, unix.MFD_ALLOW_SEALING, unix.F_SEAL_GROW, total)
		}},
		{"sealing not allowed", func(t testing.TB) *os.File {
			return validMemfd(t, 0, 0, total)
		}},
		{"named segment", named},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.file(t)
			s, err := OpenFile(f)
			if !errors.Is(err, ErrNotSealed) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("OpenFile: got %v, want ErrNotSealed", err)
			}
			assertOpen(t, f)
		})
	}
}

func TestOpenFileBadSegment(t *testing.T) {
	page := os.Getpagesize()
	tests := []struct {
		name    string
		size    int
		total   int // size recorded in the header; 0 for no header at all
		wantErr error
	}{
		{"empty", 0, 0, ErrTooSmall},
		{"header fields only", headerLen, headerLen, ErrTooSmall},
		{"one byte short of the header", HeaderSize - 1, HeaderSize - 1, ErrTooSmall},
		{"zeroes", HeaderSize + page, 0, ErrBadMagic},
		{"header claims more", HeaderSize + page, HeaderSize + 2*page, ErrSizeMismatch},
		{"header claims less", HeaderSize + 2*page, HeaderSize + page, ErrSizeMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := rawMemfd(t, unix.MFD_ALLOW_SEALING, tt.size)
			if tt.total != 0 {
				writeHeader(t, f, tt.total)
			}
			addSeals(t, f, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
			s, err := OpenFile(f)
			if !errors.Is(err, tt.wantErr) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("OpenFile: got %v, want %v", err, tt.wantErr)
			}
			assertOpen(t, f)
		})
	}
}

func TestOpenFileClosedFile(t *testing.T) {
	f := validMemfd(t, unix.MFD_ALLOW_SEALING, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW, HeaderSize+4096)
	f.Close()
	if _, err := OpenFile(f); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("OpenFile of a closed file: got %v, want os.ErrClosed", err)
	}
}

func TestNamedSharing(t *testing.T) {
	name := testName(t)
	a := newNamed(t, name, 10000, nil)
	b, err := OpenNamed(name)
	if err != nil {
		t.Fatalf("OpenNamed: %v", err)
	}
	closeOnCleanup(t, b)

	if a.Name() != name || b.Name() != name {
		t.Errorf("names %q, %q; want %q", a.Name(), b.Name(), name)
	}
	if b.Geometry() != testGeometry || a.Geometry() != testGeometry {
		t.Errorf("geometry %+v / %+v, want %+v", a.Geometry(), b.Geometry(), testGeometry)
	}
	if a.Size() != b.Size() || len(a.Payload()) != len(b.Payload()) {
		t.Fatalf("sizes differ: %d/%d, payloads %d/%d", a.Size(), b.Size(), len(a.Payload()), len(b.Payload()))
	}
	pa, pb := a.Payload(), b.Payload()
	copy(pa, "from a")
	copy(pb[len(pb)-6:], "from b")
	if string(pb[:6]) != "from a" || string(pa[len(pa)-6:]) != "from b" {
		t.Fatalf("writes not shared: b sees %q, a sees %q", pb[:6], pa[len(pa)-6:])
	}
}

func TestCreateNamedExists(t *testing.T) {
	name := testName(t)
	a := newNamed(t, name, 1, nil)
	copy(a.Payload(), "first")
	s, err := CreateNamed(name, Geometry{Kind: 9}, 1, nil)
	if !errors.Is(err, os.ErrExist) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("second CreateNamed: got %v, want os.ErrExist", err)
	}
	// The failed attempt must not have removed or rewritten the first.
	b, err := OpenNamed(name)
	if err != nil {
		t.Fatalf("OpenNamed after failed create: %v", err)
	}
	closeOnCleanup(t, b)
	if b.Geometry() != testGeometry || string(b.Payload()[:5]) != "first" {
		t.Fatalf("segment changed by a failed create: %+v %q", b.Geometry(), b.Payload()[:5])
	}
}

func setUmask(t testing.TB, mask int) {
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

func TestCreateNamedMode(t *testing.T) {
	tests := []struct {
		name  string
		umask int
		mode  os.FileMode
		want  os.FileMode
	}{
		{"default", 0o022, 0, 0o600},
		{"default despite open umask", 0, 0, 0o600},
		{"group readable", 0o077, 0o640, 0o640},
		{"world writable despite umask", 0o022, 0o666, 0o666},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setUmask(t, tt.umask)
			var opts *NamedOptions
			if tt.mode != 0 {
				opts = &NamedOptions{Mode: tt.mode}
			}
			s := newNamed(t, testName(t), 1, opts)
			fi, err := os.Stat(shmDir + s.Name())
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode(); got != tt.want {
				t.Fatalf("mode %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("not a permission", func(t *testing.T) {
		name := testName(t)
		s, err := CreateNamed(name, testGeometry, 1, &NamedOptions{Mode: os.ModeSetuid | 0o600})
		if err == nil {
			s.Close()
			t.Fatal("CreateNamed with a setuid mode succeeded")
		}
		if exists(t, shmDir+name) {
			t.Fatal("failed CreateNamed left a file behind")
		}
	})
}

// TestNamedSymlink plants a symbolic link at the segment's name, as another
// user of the world-writable /dev/shm could (CVE-2019-12779). Neither
// CreateNamed nor OpenNamed may follow it.
func TestNamedSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "victim")
	const content = "do not touch"
	if err := os.WriteFile(target, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}

	name := testName(t)
	if err := os.Symlink(target, shmDir+name); err != nil {
		t.Fatal(err)
	}
	if s, err := CreateNamed(name, testGeometry, 1, &NamedOptions{Mode: 0o666}); !errors.Is(err, os.ErrExist) {
		if s != nil {
			s.Close()
		}
		t.Errorf("CreateNamed over a symlink: got %v, want os.ErrExist", err)
	}
	if s, err := OpenNamed(name); !errors.Is(err, unix.ELOOP) {
		if s != nil {
			s.Close()
		}
		t.Errorf("OpenNamed of a symlink: got %v, want ELOOP", err)
	}
	got, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != content || after.Mode() != before.Mode() || after.Size() != before.Size() {
		t.Errorf("target changed: %q, mode %v, size %d", got, after.Mode(), after.Size())
	}
	if fi, err := os.Lstat(shmDir + name); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the planted symlink was removed or replaced: %v, %v", fi, err)
	}

	// A dangling link is the dangerous case: following it would create
	// the target.
	t.Run("dangling", func(t *testing.T) {
		target := filepath.Join(dir, "created-through-link")
		name := testName(t)
		if err := os.Symlink(target, shmDir+name); err != nil {
			t.Fatal(err)
		}
		if s, err := CreateNamed(name, testGeometry, 1, nil); !errors.Is(err, os.ErrExist) {
			if s != nil {
				s.Close()
			}
			t.Errorf("CreateNamed over a dangling symlink: got %v, want os.ErrExist", err)
		}
		if s, err := OpenNamed(name); err == nil {
			s.Close()
			t.Errorf("OpenNamed of a dangling symlink succeeded")
		}
		if exists(t, target) {
			t.Errorf("%s was created through the link", target)
		}
	})
}

func TestBadNames(t *testing.T) {
	for _, bad := range badNames {
		t.Run(bad.desc, func(t *testing.T) {
			name := bad.name
			if _, err := CreateNamed(name, testGeometry, 1, nil); !errors.Is(err, ErrBadName) {
				t.Errorf("CreateNamed(%q): got %v, want ErrBadName", name, err)
			}
			if _, err := OpenNamed(name); !errors.Is(err, ErrBadName) {
				t.Errorf("OpenNamed(%q): got %v, want ErrBadName", name, err)
			}
			if err := Unlink(name); !errors.Is(err, ErrBadName) {
				t.Errorf("Unlink(%q): got %v, want ErrBadName", name, err)
			}
			if _, err := CreateMemfd(name, testGeometry, 1); !errors.Is(err, ErrBadName) {
				t.Errorf("CreateMemfd(%q): got %v, want ErrBadName", name, err)
			}
		})
	}
}

func TestUnlink(t *testing.T) {
	name := testName(t)
	s := newNamed(t, name, 1, nil)
	if err := Unlink(name); err != nil {
		t.Fatalf("Unlink: %v", err)
	}
	if exists(t, shmDir+name) {
		t.Fatal("file still there after Unlink")
	}
	if _, err := OpenNamed(name); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OpenNamed after Unlink: got %v, want os.ErrNotExist", err)
	}
	if err := Unlink(name); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("second Unlink: got %v, want os.ErrNotExist", err)
	}
	// The mapping outlives the name.
	copy(s.Payload(), "still mapped")
	if string(s.Payload()[:12]) != "still mapped" {
		t.Fatal("payload unusable after Unlink")
	}
}

func TestCloseIdempotent(t *testing.T) {
	segments := map[string]func(t *testing.T) *Segment{
		"memfd": func(t *testing.T) *Segment { return newMemfd(t, 1) },
		"named": func(t *testing.T) *Segment { return newNamed(t, testName(t), 1, nil) },
	}
	for kind, create := range segments {
		t.Run(kind, func(t *testing.T) {
			s := create(t)
			size := s.Size()
			if err := s.Close(); err != nil {
				t.Fatalf("first Close: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if s.Payload() != nil {
				t.Error("Payload after Close is not nil")
			}
			if s.Size() != size {
				t.Errorf("Size after Close = %d, want %d", s.Size(), size)
			}
			if _, err := s.File().Stat(); !errors.Is(err, os.ErrClosed) {
				t.Errorf("descriptor after Close: got %v, want os.ErrClosed", err)
			}
		})
	}
	t.Run("concurrent", func(t *testing.T) {
		s, err := CreateMemfd("concurrent", testGeometry, 1)
		if err != nil {
			t.Fatal(err)
		}
		const n = 8
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { errs[i] = s.Close() })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("Close %d: %v", i, err)
			}
		}
		if _, err := s.File().Stat(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("descriptor after Close: got %v, want os.ErrClosed", err)
		}
	})
}

func TestPayloadGeometry(t *testing.T) {
	page := os.Getpagesize()
	for _, c := range []struct{ payload, want int }{
		{1, page},
		{page, page},
		{page + 1, 2 * page},
		{10*page - 1, 10 * page},
	} {
		t.Run(fmt.Sprint(c.payload), func(t *testing.T) {
			for _, s := range []*Segment{newMemfd(t, c.payload), newNamed(t, testName(t), c.payload, nil)} {
				p := s.Payload()
				if len(p) != c.want || cap(p) != c.want || s.Size() != HeaderSize+c.want {
					t.Fatalf("payload len %d cap %d size %d, want %d and %d",
						len(p), cap(p), s.Size(), c.want, HeaderSize+c.want)
				}
				addr := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
				if addr%HeaderSize != 0 || (page == HeaderSize && addr%uintptr(page) != 0) {
					t.Fatalf("payload at %#x is not page aligned", addr)
				}
				// The whole payload is backed: touching its last byte
				// must not fault.
				p[len(p)-1] = 1
			}
		})
	}
}

func TestCreateCleanupOnError(t *testing.T) {
	for _, size := range []int{0, -1} {
		name := testName(t)
		if _, err := CreateNamed(name, testGeometry, size, nil); !errors.Is(err, ErrTooSmall) {
			t.Errorf("CreateNamed payload %d: got %v, want ErrTooSmall", size, err)
		}
		if exists(t, shmDir+name) {
			t.Errorf("CreateNamed payload %d left a file behind", size)
		}
		if _, err := CreateMemfd("x", testGeometry, size); !errors.Is(err, ErrTooSmall) {
			t.Errorf("CreateMemfd payload %d: got %v, want ErrTooSmall", size, err)
		}
	}

	t.Run("after the file exists", func(t *testing.T) {
		injected := errors.New("injected failure")
		var created bool
		testHookCreateNamed = func(f *os.File) error {
			created = exists(t, f.Name())
			return injected
		}
		t.Cleanup(func() { testHookCreateNamed = nil })
		name := testName(t)
		if _, err := CreateNamed(name, testGeometry, 1, nil); !errors.Is(err, injected) {
			t.Fatalf("CreateNamed: got %v, want the injected error", err)
		}
		if !created {
			t.Fatal("hook ran before the file was created")
		}
		if exists(t, shmDir+name) {
			t.Fatal("failed CreateNamed left its file behind")
		}
	})
}

// writeShm puts a raw file under /dev/shm, as a broken or hostile creator
// might.
func writeShm(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(shmDir+name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestOpenNamedBadFile(t *testing.T) {
	valid := func(total int) []byte {
		b := make([]byte, total)
		h := encodeHeader(testGeometry, uint64(total))
		copy(b, h[:])
		return b
	}
	page := os.Getpagesize()
	tests := []struct {
		name    string
		data    []byte
		wantErr error
	}{
		// Shorter than the header: reading the header through a mapping
		// would raise SIGBUS, so the size must be checked first.
		{"empty", nil, ErrTooSmall},
		{"100 bytes", valid(HeaderSize)[:100], ErrTooSmall},
		{"one byte short", valid(HeaderSize)[:HeaderSize-1], ErrTooSmall},
		{"zeroes", make([]byte, HeaderSize+page), ErrBadMagic},
		{"longer than header says", append(valid(HeaderSize+page), make([]byte, page)...), ErrSizeMismatch},
		{"shorter than header says", valid(HeaderSize + 2*page)[:HeaderSize+page], ErrSizeMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := testName(t)
			writeShm(t, name, tt.data)
			s, err := OpenNamed(name)
			if !errors.Is(err, tt.wantErr) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("OpenNamed: got %v, want %v", err, tt.wantErr)
			}
		})
	}
	// O_RDWR opens a FIFO without blocking; it must then be refused
	// rather than mapped.
	t.Run("fifo", func(t *testing.T) {
		name := testName(t)
		if err := unix.Mkfifo(shmDir+name, 0o600); err != nil {
			t.Fatal(err)
		}
		if s, err := OpenNamed(name); err == nil {
			s.Close()
			t.Fatal("OpenNamed of a FIFO succeeded")
		}
	})
	t.Run("directory", func(t *testing.T) {
		name := testName(t)
		if err := os.Mkdir(shmDir+name, 0o700); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(shmDir + name) })
		if s, err := OpenNamed(name); err == nil {
			s.Close()
			t.Fatal("OpenNamed of a directory succeeded")
		}
	})
}

func TestOpenNamedMissing(t *testing.T) {
	if _, err := OpenNamed(testName(t)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OpenNamed: got %v, want os.ErrNotExist", err)
	}
}

// TestOpenNamedSharesMemfdLayout checks that both kinds of segment carry
// the same bytes: a header written by CreateMemfd reads back byte for byte
// like one written by CreateNamed.
func TestOpenNamedSharesMemfdLayout(t *testing.T) {
	m := newMemfd(t, 1)
	n := newNamed(t, testName(t), 1, nil)
	hm := make([]byte, HeaderSize)
	hn := make([]byte, HeaderSize)
	if _, err := m.File().ReadAt(hm, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := n.File().ReadAt(hn, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(hm, hn) {
		t.Fatal("memfd and named headers differ")
	}
	if !bytes.Equal(hm[headerLen:], make([]byte, HeaderSize-headerLen)) {
		t.Fatal("header padding is not zero")
	}
}
