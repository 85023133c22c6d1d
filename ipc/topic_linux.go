//go:build linux

package ipc

import (
	"fmt"
	"os"
	"strconv"

	"github.com/ringipc/ringipc/ring"
	"golang.org/x/sys/unix"
)

// topicSeals are the seals of a topic's memfd: its size is fixed (no
// SIGBUS for a subscriber), and no new writable mapping or write(2) is
// possible for anyone, even through a descriptor reopened read-write
// from /proc; the server's own mapping, made before, stays writable.
const topicSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_FUTURE_WRITE | unix.F_SEAL_SEAL

// create makes the topic's memfd, maps it, lays out the ring, seals it
// and opens the read-only descriptor subscribers get.
func (t *Topic) create() (err error) {
	g := ring.BroadcastGeometry{DataSize: t.cfg.RingSize, PayloadChecksum: t.cfg.PayloadChecksum}
	n, err := ring.BroadcastSize(g)
	if err != nil {
		return err
	}
	n = int(alignUp(uint64(n), uint64(os.Getpagesize())))
	fd, err := unix.MemfdCreate("ringipc-topic-"+strconv.FormatUint(uint64(t.cfg.ID), 10), unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	t.f = os.NewFile(uintptr(fd), "ringipc-topic")
	defer func() {
		if err != nil {
			if t.mem != nil {
				unix.Munmap(t.mem)
			}
			if t.ro != nil {
				t.ro.Close()
			}
			t.f.Close()
		}
	}()
	if err := unix.Ftruncate(fd, int64(n)); err != nil {
		return fmt.Errorf("size topic memfd: %w", err)
	}
	if t.mem, err = unix.Mmap(fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return fmt.Errorf("map topic memfd: %w", err)
	}
	if err := ring.InitBroadcast(t.mem, g); err != nil {
		return err
	}
	if t.w, err = ring.NewBroadcastWriter(t.mem); err != nil {
		return err
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, topicSeals); err != nil {
		return fmt.Errorf("seal topic memfd: %w", err)
	}
	rfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("read-only descriptor of the topic memfd: %w", err)
	}
	t.ro = os.NewFile(uintptr(rfd), "ringipc-topic-ro")
	return nil
}
