//go:build linux

package ring

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// bcMem maps a fresh broadcast ring outside the Go heap, as a shared
// segment would be: the reader's unsynchronised copy of bytes the writer
// may be overwriting is the protocol (confirmed afterwards), and the race
// detector, which does not watch such mappings, must not judge it.
func bcMem(t testing.TB, g BroadcastGeometry) []byte {
	t.Helper()
	size, err := BroadcastSize(g)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	if err := InitBroadcast(mem, g); err != nil {
		t.Fatal(err)
	}
	return mem
}

func newBC(t testing.TB, g BroadcastGeometry, opts *BroadcastReaderOptions) (*BroadcastWriter, *BroadcastReader, []byte) {
	t.Helper()
	mem := bcMem(t, g)
	w, err := NewBroadcastWriter(mem)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewBroadcastReader(mem, opts)
	if err != nil {
		t.Fatal(err)
	}
	return w, r, mem
}

// fill makes a payload of n bytes that says which record it is: every
// 8-byte word holds k, so a torn copy (parts of two records) shows.
func bcFill(buf []byte, k uint64, n int) []byte {
	buf = buf[:n]
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], k)
	}
	for i := n &^ 7; i < n; i++ {
		buf[i] = byte(k)
	}
	return buf
}

// check reports whether p is an intact fill of some record, and which.
func bcCheck(p []byte) (uint64, bool) {
	if len(p) < 8 {
		return 0, true
	}
	k := binary.LittleEndian.Uint64(p)
	for i := 0; i+8 <= len(p); i += 8 {
		if binary.LittleEndian.Uint64(p[i:]) != k {
			return k, false
		}
	}
	for i := len(p) &^ 7; i < len(p); i++ {
		if p[i] != byte(k) {
			return k, false
		}
	}
	return k, true
}

func bcSizeFor(k uint64) int { return 8 + int(k*37%200) }

func TestBroadcastRoundTrip(t *testing.T) {
	for _, sum := range []bool{false, true} {
		w, r, mem := newBC(t, BroadcastGeometry{DataSize: 1024, PayloadChecksum: sum}, nil)
		r2, err := NewBroadcastReader(mem, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.TryReadInto(nil); err != ErrEmpty {
			t.Fatalf("empty ring: %v", err)
		}
		buf := make([]byte, 256)
		var dst []byte
		// Many laps, the reader keeping up: every wrap and padding case.
		for k := uint64(0); k < 500; k++ {
			if err := w.Write(uint32(k), bcFill(buf, k, bcSizeFor(k))); err != nil {
				t.Fatal(err)
			}
			for _, rd := range []*BroadcastReader{r, r2} {
				rec, err := rd.TryReadInto(dst)
				if err != nil {
					t.Fatalf("record %d: %v", k, err)
				}
				got, ok := bcCheck(rec.Data)
				if rec.Type != uint32(k) || got != k || !ok || len(rec.Data) != bcSizeFor(k) {
					t.Fatalf("record %d: type %d, payload of %d (%d bytes)", k, rec.Type, got, len(rec.Data))
				}
				dst = rec.Data
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.TryReadInto(dst); err != ErrClosed {
			t.Fatalf("after close: %v", err)
		}
		if err := w.Write(0, nil); err != ErrClosed {
			t.Fatalf("write after close: %v", err)
		}
	}
}

func TestBroadcastCloseDrains(t *testing.T) {
	w, r, _ := newBC(t, BroadcastGeometry{DataSize: 1024}, nil)
	for k := range uint64(3) {
		w.Write(1, bcFill(make([]byte, 8), k, 8))
	}
	w.Close()
	for k := range uint64(3) {
		rec, err := r.TryReadInto(nil)
		if got, _ := bcCheck(rec.Data); err != nil || got != k {
			t.Fatalf("record %d after close: %v, %d", k, err, got)
		}
	}
	if _, err := r.TryReadInto(nil); err != ErrClosed {
		t.Fatalf("drained: %v", err)
	}
}

func TestBroadcastTooLarge(t *testing.T) {
	w, _, _ := newBC(t, BroadcastGeometry{DataSize: 1024}, nil)
	if w.MaxPayload() != MaxBroadcastPayload(1024) {
		t.Fatal(w.MaxPayload())
	}
	if err := w.Write(0, make([]byte, w.MaxPayload()+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize: %v", err)
	}
	if err := w.Write(0, make([]byte, w.MaxPayload())); err != nil {
		t.Fatalf("max size: %v", err)
	}
}

// A reader that stops for more than a lap learns it was overrun, exactly
// by how much, and reads on from a recent record with the numbering
// intact.
func TestBroadcastOverrunCounts(t *testing.T) {
	const size = 4096
	w, r, _ := newBC(t, BroadcastGeometry{DataSize: size}, nil)
	buf := make([]byte, 64)
	w.Write(0, bcFill(buf, 0, 48))
	if _, err := r.TryReadInto(nil); err != nil {
		t.Fatal(err)
	}
	const total = 1000 // 64-byte records: 15 laps
	for k := uint64(1); k <= total; k++ {
		w.Write(uint32(k), bcFill(buf, k, 48))
	}
	_, err := r.TryReadInto(nil)
	var oe *OverrunError
	if !errors.As(err, &oe) || !errors.Is(err, ErrOverrun) {
		t.Fatalf("lapped reader: %v", err)
	}
	if !oe.Known {
		t.Fatalf("lost count unknown: %v", oe)
	}
	got := uint64(0)
	next := 1 + oe.Records
	for {
		rec, err := r.TryReadInto(nil)
		if err == ErrEmpty {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		k, ok := bcCheck(rec.Data)
		if !ok || k != next || rec.Type != uint32(k) {
			t.Fatalf("after overrun: record %d (intact %v), want %d", k, ok, next)
		}
		next++
		got++
	}
	if got+oe.Records != total || got == 0 {
		t.Fatalf("read %d + lost %d, want %d written", got, oe.Records, total)
	}
	if oe.Bytes != oe.Records*64 {
		t.Fatalf("lost %d bytes for %d records of 64", oe.Bytes, oe.Records)
	}
	if st := r.Stats(); st.Overruns != 1 || st.LostRecords != oe.Records || st.LostBytes != oe.Bytes {
		t.Fatalf("stats %+v for %v", st, oe)
	}
}

// A zero-copy view whose bytes the writer overwrote while it was in use
// fails Release: the torn data is never confirmed.
func TestBroadcastPeekOverwritten(t *testing.T) {
	const size = 1024
	w, r, _ := newBC(t, BroadcastGeometry{DataSize: size}, nil)
	buf := make([]byte, 64)
	w.Write(0, bcFill(buf, 0, 64))
	rec, err := r.TryPeek()
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := bcCheck(rec.Data); k != 0 || !ok {
		t.Fatal("peek", k, ok)
	}
	// The writer goes round once more, over the peeked bytes.
	for k := uint64(1); w.Tail() < size+128; k++ {
		w.Write(1, bcFill(buf, k, 64))
	}
	if k, ok := bcCheck(rec.Data); k == 0 && ok {
		t.Fatal("the writer did not overwrite the view; the test proves nothing")
	}
	if err := r.Release(); !errors.Is(err, ErrOverrun) {
		t.Fatalf("release of an overwritten view: %v", err)
	}
	// The reader resumed at the mark and reads intact records on.
	for {
		rec, err := r.TryReadInto(nil)
		if err == ErrEmpty {
			break
		}
		if _, ok := bcCheck(rec.Data); err != nil || !ok {
			t.Fatalf("after overrun: %v, intact %v", err, ok)
		}
	}
}

// The writer races a reader that falls behind again and again: every
// record the reader gets is intact and in order, and what it read plus
// what it was told it lost is exactly what was written.
func TestBroadcastLappingNeverTorn(t *testing.T) {
	const size = 4096
	w, r, _ := newBC(t, BroadcastGeometry{DataSize: size}, nil)
	buf := make([]byte, 256)
	w.Write(0, bcFill(buf, 0, 8))
	if _, err := r.TryReadInto(nil); err != nil {
		t.Fatal(err)
	}
	const total = 200_000
	go func() {
		b := make([]byte, 256)
		for k := uint64(1); k <= total; k++ {
			w.Write(uint32(k), bcFill(b, k, bcSizeFor(k)))
		}
		w.Close()
	}()
	var read, lost uint64
	exact := true
	next := uint64(1)
	dst := make([]byte, 256)
	for i := 0; ; i++ {
		rec, err := r.TryReadInto(dst)
		var oe *OverrunError
		switch {
		case err == ErrClosed:
			if lost == 0 {
				t.Log("the reader was never lapped on this run")
			}
			if exact && read+lost != total {
				t.Fatalf("read %d + lost %d != %d written", read, lost, total)
			}
			t.Logf("read %d, lost %d in %d overruns", read, lost, r.Stats().Overruns)
			return
		case err == ErrEmpty:
			continue
		case errors.As(err, &oe):
			exact = exact && oe.Known
			lost += oe.Records
			next += oe.Records
			continue
		case err != nil:
			t.Fatal(err)
		}
		k, ok := bcCheck(rec.Data)
		if !ok || len(rec.Data) != bcSizeFor(k) || rec.Type != uint32(k) {
			t.Fatalf("torn record: %d bytes, first word %d", len(rec.Data), k)
		}
		if exact && k != next {
			t.Fatalf("record %d, want %d", k, next)
		}
		next = k + 1
		read++
		if i%16 == 0 {
			// Fall behind: copy the record a few more times.
			for range 64 {
				dst = append(dst[:0], rec.Data...)
			}
		}
	}
}

// A reader sleeping with an announcement is woken by the next write, by
// Close, and by its context; the writer wakes sleepers only while one has
// announced itself.
func TestBroadcastWakeups(t *testing.T) {
	w, r, mem := newBC(t, BroadcastGeometry{DataSize: 4096}, nil)
	r2, err := NewBroadcastReader(mem, &BroadcastReaderOptions{Wait: WaitSleep, Announce: func(seen uint64) error { w.Arm(seen); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	_ = r
	const n = 400
	done := make(chan error, 1)
	go func() {
		var dst []byte
		for k := uint64(0); k < n; k++ {
			rec, err := r2.ReadInto(context.Background(), dst)
			if err != nil {
				done <- err
				return
			}
			if got, _ := bcCheck(rec.Data); got != k {
				done <- errors.New("out of order")
				return
			}
			dst = rec.Data
		}
		_, err := r2.ReadInto(context.Background(), dst)
		done <- err
	}()
	buf := make([]byte, 8)
	for k := uint64(0); k < n; k++ {
		w.Write(0, bcFill(buf, k, 8))
		if k%8 == 0 {
			// Now and then, wait until the reader has announced that it
			// sleeps, so that the next write must wake it.
			for !w.Armed() && len(done) == 0 {
				runtime.Gosched()
			}
		}
	}
	w.Close()
	if err := <-done; err != ErrClosed {
		t.Fatalf("reader: %v", err)
	}

	// Context: a sleeping reader returns when its context ends.
	w2, _, mem2 := newBC(t, BroadcastGeometry{DataSize: 1024}, nil)
	r3, _ := NewBroadcastReader(mem2, &BroadcastReaderOptions{Wait: WaitSleep, Announce: func(seen uint64) error { w2.Arm(seen); return nil }})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := r3.ReadInto(ctx, nil); errc <- err }()
	for !w2.Armed() { // the reader has announced itself: it sleeps, or is about to
		runtime.Gosched()
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled reader: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if _, err := r3.ReadInto(ctx, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reader with a deadline: %v", err)
	}
	// An announcement that fails ends the wait with its error (on a
	// ring whose writer is not armed: an armed one needs none).
	boom := errors.New("boom")
	_, _, mem3 := newBC(t, BroadcastGeometry{DataSize: 1024}, nil)
	r4, _ := NewBroadcastReader(mem3, &BroadcastReaderOptions{Wait: WaitSleep, Announce: func(uint64) error { return boom }})
	if _, err := r4.ReadInto(context.Background(), nil); err != boom {
		t.Fatalf("failed announcement: %v", err)
	}
}

// Arm after the tail moved wakes at once (the reader's announcement was
// late); Arm with the current tail waits for the next write.
func TestBroadcastArm(t *testing.T) {
	w, _, _ := newBC(t, BroadcastGeometry{DataSize: 1024}, nil)
	w.Arm(w.Tail())
	if w.Wakes() != 0 {
		t.Fatal("woke with nothing new")
	}
	w.Write(0, nil)
	if w.Wakes() != 1 {
		t.Fatal("write did not wake the armed reader")
	}
	w.Write(0, nil)
	if w.Wakes() != 1 {
		t.Fatal("write woke with nobody armed")
	}
	w.Arm(0) // seen an old tail
	if w.Wakes() != 2 {
		t.Fatal("late announcement not woken at once")
	}
}

func TestBroadcastAllocs(t *testing.T) {
	w, r, _ := newBC(t, BroadcastGeometry{DataSize: 1 << 16}, nil)
	p := make([]byte, 64)
	dst := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(1000, func() {
		w.Write(1, p)
		if _, err := r.TryReadInto(dst); err != nil {
			t.Fatal(err)
		}
		w.Write(1, p)
		if _, err := r.TryPeek(); err != nil {
			t.Fatal(err)
		}
		if err := r.Release(); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per write and read", n)
	}
}

// Readers can work from a read-only mapping: they never store to the
// ring, not even to sleep or be interrupted.
func TestBroadcastReaderReadOnlyMapping(t *testing.T) {
	g := BroadcastGeometry{DataSize: 1 << 16} // no lapping
	size, _ := BroadcastSize(g)
	fd, err := unix.MemfdCreate("bc", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatal(err)
	}
	wm, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(wm)
	rm, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(rm)
	InitBroadcast(wm, g)
	w, _ := NewBroadcastWriter(wm)
	r, err := NewBroadcastReader(rm, &BroadcastReaderOptions{Wait: WaitSleep, Announce: func(seen uint64) error { w.Arm(seen); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		for k := uint64(0); ; k++ {
			rec, err := r.ReadInto(context.Background(), nil)
			if err != nil {
				errc <- err
				return
			}
			if got, ok := bcCheck(rec.Data); got != k || !ok {
				errc <- errors.New("wrong record")
				return
			}
			if k == 40 {
				r.Interrupt()
			}
		}
	}()
	buf := make([]byte, 100)
	for k := uint64(0); k < 100; k++ {
		w.Write(0, bcFill(buf, k, 100))
	}
	w.Close()
	if err := <-errc; err != ErrClosed {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r2, _ := NewBroadcastReader(rm, nil)
	if err := r2.Wait(ctx); err != nil {
		t.Fatal("closed ring: wait", err)
	}
}

func TestBroadcastAttachChecks(t *testing.T) {
	g := BroadcastGeometry{DataSize: 1024}
	mem := bcMem(t, g)
	if _, err := NewConsumer(mem, nil); !errors.Is(err, ErrBadLayout) {
		t.Fatalf("a broadcast ring attached as a ring: %v", err)
	}
	if err := InitBroadcast(mem, BroadcastGeometry{DataSize: 1000}); !errors.Is(err, ErrBadLayout) {
		t.Fatalf("size not a power of two: %v", err)
	}
	if err := InitBroadcast(mem[:100], g); !errors.Is(err, ErrBadLayout) {
		t.Fatalf("short memory: %v", err)
	}
	if _, err := NewBroadcastReader(mem[:bcDataOff+512], nil); !errors.Is(err, ErrBadLayout) {
		t.Fatalf("truncated ring: %v", err)
	}
	ring := newMem(t, Geometry{DataSize: 1024}, 0)
	if _, err := NewBroadcastReader(ring, nil); !errors.Is(err, ErrBadLayout) {
		t.Fatalf("a ring attached as broadcast: %v", err)
	}
	mem[offSeed] ^= 1
	if _, err := NewBroadcastReader(mem, nil); !errors.Is(err, ErrBadLayout) {
		t.Fatalf("meta checksum: %v", err)
	}
	if g2, err := ReadBroadcastGeometry(bcMem(t, BroadcastGeometry{DataSize: 2048, PayloadChecksum: true})); err != nil || g2.DataSize != 2048 || !g2.PayloadChecksum {
		t.Fatal(g2, err)
	}
}

// Hostile or broken shared memory: a reader reports ErrCorrupt (sticky)
// or an overrun, never a panic, a hang or a bad view.
func TestBroadcastCorrupt(t *testing.T) {
	le := binary.LittleEndian
	cases := map[string]func(mem []byte){
		"checksum": func(mem []byte) { mem[bcDataOff+12] ^= 1 },
		// Past a record that passes, in the same batch (checkSums
		// stops there, and peek must check it).
		"checksum, second record": func(mem []byte) { mem[bcDataOff+32+12] ^= 1 },
		"type, second record":     func(mem []byte) { mem[bcDataOff+32+4] ^= 1 },
		"length":                  func(mem []byte) { le.PutUint32(mem[bcDataOff:], 5000) },
		"padding":                 func(mem []byte) { le.PutUint32(mem[bcDataOff:], 16|bcPadFlag) },
		"tail unaligned":          func(mem []byte) { le.PutUint64(mem[bcOffTail:], 40) },
		"sequence": func(mem []byte) {
			// A valid record numbered out of turn at the second slot.
			le.PutUint32(mem[bcDataOff+32+8:], 7)
			s := bcSum(le.Uint64(mem[offSeed:]), 32, le.Uint32(mem[bcDataOff+32:]), 0, 7, 0)
			le.PutUint32(mem[bcDataOff+32+12:], s)
		},
	}
	for name, mut := range cases {
		t.Run(name, func(t *testing.T) {
			w, r, mem := newBC(t, BroadcastGeometry{DataSize: 1024}, nil)
			w.Write(0, make([]byte, 16))
			w.Write(0, make([]byte, 16))
			mut(mem)
			var err error
			for range 3 {
				if _, err = r.TryReadInto(nil); err != nil {
					break
				}
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v", err)
			}
			if _, err2 := r.TryReadInto(nil); err2 != err {
				t.Fatalf("not sticky: %v", err2)
			}
		})
	}
	t.Run("tail backwards", func(t *testing.T) {
		w, r, mem := newBC(t, BroadcastGeometry{DataSize: 1024}, nil)
		w.Write(0, make([]byte, 16))
		r.TryReadInto(nil)
		le.PutUint64(mem[bcOffTail:], 0)
		if _, err := r.TryReadInto(nil); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("tail far ahead", func(t *testing.T) {
		_, r, mem := newBC(t, BroadcastGeometry{DataSize: 1024}, nil)
		le.PutUint64(mem[bcOffTail:], 1<<40)
		le.PutUint64(mem[bcOffIntent:], 1<<62)
		for range 3 {
			if _, err := r.TryReadInto(nil); !errors.Is(err, ErrOverrun) && !errors.Is(err, ErrCorrupt) && err != ErrEmpty {
				t.Fatalf("got %v", err)
			}
		}
	})
	t.Run("release without peek", func(t *testing.T) {
		_, r, _ := newBC(t, BroadcastGeometry{DataSize: 1024}, nil)
		if err := r.Release(); !errors.Is(err, ErrPending) {
			t.Fatalf("got %v", err)
		}
	})
}

func BenchmarkBroadcastWrite(b *testing.B) {
	w, _, _ := newBC(b, BroadcastGeometry{DataSize: 1 << 20}, nil)
	p := make([]byte, 64)
	b.ReportAllocs()
	b.SetBytes(64)
	for b.Loop() {
		w.Write(1, p)
	}
}

// BenchmarkBroadcastReadWrite: one writer goroutine, one reader; the
// reader's rate (what it got, not what it lost) is reported.
func BenchmarkBroadcastReadWrite(b *testing.B) {
	w, r, _ := newBC(b, BroadcastGeometry{DataSize: 1 << 20}, nil)
	p := make([]byte, 64)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for range 256 {
				w.Write(1, p)
			}
		}
	}()
	dst := make([]byte, 0, 64)
	b.ReportAllocs()
	var lost uint64
	for b.Loop() {
		for {
			_, err := r.TryReadInto(dst)
			if err == nil {
				break
			}
			var oe *OverrunError
			if errors.As(err, &oe) {
				lost += oe.Records
			}
		}
	}
	close(stop)
	wg.Wait()
	b.ReportMetric(float64(lost)/float64(b.N), "lost/op")
}

// A reader started at an earlier position (the tail when its writer's
// process accepted it) reads everything from there, with the records'
// numbering known; a position that cannot be one is refused.
func TestBroadcastReaderAt(t *testing.T) {
	w, _, mem := newBC(t, BroadcastGeometry{DataSize: 4096}, nil)
	buf := make([]byte, 64)
	for k := range uint64(10) {
		w.Write(0, bcFill(buf, k, 40))
	}
	start := w.Tail()
	for k := uint64(10); k < 30; k++ {
		w.Write(0, bcFill(buf, k, 40))
	}
	r, err := NewBroadcastReaderAt(mem, start, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k := uint64(10); k < 30; k++ {
		rec, err := r.TryReadInto(nil)
		if got, ok := bcCheck(rec.Data); err != nil || got != k || !ok {
			t.Fatalf("record %d: %v, got %d", k, err, got)
		}
	}
	for _, bad := range []uint64{start + 8, w.Tail() + 16, w.Tail() - 4096 - 16} {
		if _, err := NewBroadcastReaderAt(mem, bad, nil); !errors.Is(err, ErrCorrupt) {
			t.Errorf("start at %d (tail %d): %v", bad, w.Tail(), err)
		}
	}
	// Lapped before its first record, it still counts what it lost.
	r2, err := NewBroadcastReaderAt(mem, w.Tail(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k := uint64(30); k < 300; k++ {
		w.Write(0, bcFill(buf, k, 40))
	}
	var oe *OverrunError
	if _, err := r2.TryReadInto(nil); !errors.As(err, &oe) || !oe.Known || oe.Records == 0 {
		t.Fatalf("lapped new reader: %v", err)
	}
	rec, err := r2.TryReadInto(nil)
	if got, _ := bcCheck(rec.Data); err != nil || got != 30+oe.Records {
		t.Fatalf("after the overrun: record %d, %v; lost %d", got, err, oe.Records)
	}
}

// A writer that takes over a ring numbers on, so its readers read on.
func TestBroadcastWriterTakeover(t *testing.T) {
	w, r, mem := newBC(t, BroadcastGeometry{DataSize: 1024}, nil)
	buf := make([]byte, 64)
	for k := range uint64(40) { // past a wrap
		w.Write(0, bcFill(buf, k, 24))
		if _, err := r.TryReadInto(nil); err != nil {
			t.Fatal(err)
		}
	}
	w2, err := NewBroadcastWriter(mem)
	if err != nil {
		t.Fatal(err)
	}
	for k := uint64(40); k < 80; k++ {
		w2.Write(0, bcFill(buf, k, 24))
		rec, err := r.TryReadInto(nil)
		if got, _ := bcCheck(rec.Data); err != nil || got != k {
			t.Fatalf("record %d after the takeover: %v, %d", k, err, got)
		}
	}
}

// BenchmarkBroadcastRead: a reader's cost per record, the records already
// in the ring (no writer racing it).
func BenchmarkBroadcastRead(b *testing.B) {
	w, r, _ := newBC(b, BroadcastGeometry{DataSize: 1 << 22}, nil)
	p := make([]byte, 64)
	dst := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for range 1000 {
			w.Write(1, p)
		}
		b.StartTimer()
		for range 1000 {
			if _, err := r.TryReadInto(dst); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// A broadcast reader's zero options sleep at once; the policies asked
// for explicitly resolve as everywhere else.
func TestBroadcastReaderWaitDefault(t *testing.T) {
	for _, tc := range []struct {
		p      WaitPolicy
		spin   time.Duration
		want   WaitPolicy
		budget time.Duration
	}{
		{WaitDefault, 0, WaitSleep, 0},
		{WaitDefault, -time.Nanosecond, WaitSleep, 0},
		{WaitDefault, time.Millisecond, WaitSpin, time.Millisecond},
		{WaitAdaptive, 0, WaitAdaptive, AdaptiveSpin},
		{WaitSpin, 0, WaitSpin, DefaultSpin},
	} {
		got, budget := resolveBroadcastWait(tc.p, tc.spin)
		if got != tc.want || budget != tc.budget {
			t.Errorf("resolveBroadcastWait(%v, %v) = %v, %v; want %v, %v", tc.p, tc.spin, got, budget, tc.want, tc.budget)
		}
	}
}

// TryReadInto reads small records from a confirmed batch copy: records
// longer than the batch, records the batch holds only part of, and
// TryPeek/Release between them all read intact and in order.
func TestBroadcastBatchBoundaries(t *testing.T) {
	const size = 1 << 16
	w, r, _ := newBC(t, BroadcastGeometry{DataSize: size}, nil)
	buf := make([]byte, 8192)
	// 40 bytes to 7 KiB: records that end inside, at and past a batch,
	// and records longer than a batch.
	sizeOf := func(k uint64) int { return 40 + int(k*977%7000) }
	var dst []byte
	next := uint64(0)
	for k := uint64(0); k < 2000; k++ {
		if err := w.Write(uint32(k), bcFill(buf, k, sizeOf(k))); err != nil {
			t.Fatal(err)
		}
		if k%5 != 4 {
			continue // let a few pile up, so that batches hold several
		}
		for {
			var rec Record
			var err error
			peek := next%3 == 0
			if peek {
				rec, err = r.TryPeek()
			} else {
				rec, err = r.TryReadInto(dst)
			}
			if err == ErrEmpty {
				break
			}
			if err != nil {
				t.Fatalf("record %d: %v", next, err)
			}
			got, ok := bcCheck(rec.Data)
			if !ok || got != next || rec.Type != uint32(next) || len(rec.Data) != sizeOf(next) {
				t.Fatalf("record %d: got %d (intact %v), %d bytes", next, got, ok, len(rec.Data))
			}
			if peek {
				if err := r.Release(); err != nil {
					t.Fatalf("release %d: %v", next, err)
				}
			} else {
				dst = rec.Data
			}
			next++
		}
	}
	if next != 2000 {
		t.Fatalf("read %d of 2000", next)
	}
}

// Records in a confirmed batch are intact copies: they are delivered
// after the writer laps the reader, and the overrun comes after them.
func TestBroadcastBatchThenOverrun(t *testing.T) {
	const size = 4096
	w, r, _ := newBC(t, BroadcastGeometry{DataSize: size}, nil)
	buf := make([]byte, 64)
	for k := uint64(0); k < 10; k++ {
		w.Write(uint32(k), bcFill(buf, k, 48))
	}
	if rec, err := r.TryReadInto(nil); err != nil || rec.Type != 0 {
		t.Fatalf("first record: %v, type %d", err, rec.Type)
	}
	for k := uint64(10); k < 1000; k++ { // 15 laps over the batch's bytes
		w.Write(uint32(k), bcFill(buf, k, 48))
	}
	for k := uint64(1); k < 10; k++ {
		rec, err := r.TryReadInto(nil)
		if err != nil {
			t.Fatalf("record %d of the batch: %v", k, err)
		}
		if got, ok := bcCheck(rec.Data); !ok || got != k {
			t.Fatalf("record %d of the batch: got %d, intact %v", k, got, ok)
		}
	}
	_, err := r.TryReadInto(nil)
	var oe *OverrunError
	if !errors.As(err, &oe) || !oe.Known || oe.Records == 0 {
		t.Fatalf("after the batch: %v", err)
	}
	rec, err := r.TryReadInto(nil)
	if got, ok := bcCheck(rec.Data); err != nil || !ok || got != 10+oe.Records {
		t.Fatalf("after the overrun: %v, record %d (intact %v), want %d", err, got, ok, 10+oe.Records)
	}
}

// slicingPair is a writer and a reader over a ring of size bytes whose
// reader, having an Announce, sleeps in busy-machine slices (the tests
// call sliceOutcome themselves, as Wait does after a slice).
func slicingPair(t *testing.T, size int) (*BroadcastWriter, *BroadcastReader) {
	t.Helper()
	mem := bcMem(t, BroadcastGeometry{DataSize: size})
	w, err := NewBroadcastWriter(mem)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewBroadcastReader(mem, &BroadcastReaderOptions{Announce: func(uint64) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return w, r
}

// The slice credit of a busy machine's reader (BroadcastBusySlice), fed
// what slices bring: a batch's worth adds one, less halves it, nothing
// halves it only after drySlices such slices in a row.
func TestBroadcastSliceCredit(t *testing.T) {
	w, r := slicingPair(t, 64<<10)
	credit := func() int32 { return r.slices.credit.Load() }
	drain := func() { // as the reader does after a slice
		for {
			if _, err := r.TryReadInto(nil); err == ErrEmpty {
				return
			} else if err != nil {
				t.Fatal(err)
			}
		}
	}
	if credit() != creditMax {
		t.Fatalf("a new reader's slice credit: %d, want %d", credit(), creditMax)
	}
	for i := range drySlices - 1 {
		if r.sliceOutcome(); credit() != creditMax {
			t.Fatalf("after %d empty slices: credit %d, want %d", i+1, credit(), creditMax)
		}
	}
	if r.sliceOutcome(); credit() != creditMax/2 {
		t.Fatalf("after %d empty slices: credit %d, want %d", drySlices, credit(), creditMax/2)
	}
	r.sliceOutcome() // one empty slice: the run starts again
	w.Write(1, make([]byte, 64))
	if r.sliceOutcome(); credit() != creditMax/4 {
		t.Fatalf("after a slice that brought one record: credit %d, want %d", credit(), creditMax/4)
	}
	drain()
	for range drySlices - 1 { // the record broke the run of empty slices
		if r.sliceOutcome(); credit() != creditMax/4 {
			t.Fatalf("empty slices after a record: credit %d, want %d", credit(), creditMax/4)
		}
	}
	for range richBytes / 64 {
		w.Write(1, make([]byte, 64))
	}
	if r.sliceOutcome(); credit() != creditMax/4+1 {
		t.Fatalf("after a slice that brought a batch: credit %d, want %d", credit(), creditMax/4+1)
	}
}

// On a busy machine a reader with the default wait options sleeps a
// slice at a time, unannounced, while slices bring records; once they
// come back empty it announces itself. One that asked for WaitSleep, or
// a machine that is not busy, announces at once. Records written while
// it sleeps end the wait.
func TestBroadcastBusySlices(t *testing.T) {
	for _, tc := range []struct {
		name     string
		busy     bool
		wait     WaitPolicy
		announce bool
	}{
		{"busy, default", true, WaitDefault, false},
		{"busy, WaitSleep", true, WaitSleep, true},
		{"idle, default", false, WaitDefault, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := broadcastBusy
			broadcastBusy = func() bool { return tc.busy }
			t.Cleanup(func() { broadcastBusy = old })
			var announced atomic.Int32
			announcing := make(chan struct{}, 1)
			mem := bcMem(t, BroadcastGeometry{DataSize: 1024})
			w, err := NewBroadcastWriter(mem)
			if err != nil {
				t.Fatal(err)
			}
			opts := &BroadcastReaderOptions{Wait: tc.wait, Announce: func(seen uint64) error {
				announced.Add(1)
				w.Arm(seen)
				select {
				case announcing <- struct{}{}:
				default:
				}
				return nil
			}}
			r, err := NewBroadcastReader(mem, opts)
			if err != nil {
				t.Fatal(err)
			}
			if tc.announce {
				// An empty ring: waiting runs to the context's end.
				ctx, cancel := context.WithTimeout(context.Background(), 3*BroadcastBusySlice)
				for err == nil {
					err = r.Wait(ctx)
				}
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("wait on an empty ring: %v", err)
				}
				if announced.Load() == 0 {
					t.Fatal("never announced")
				}
			} else {
				// As if slices had been bringing records: slices go on
				// whatever this part's bring.
				r.slices.credit.Store(1 << 20)
				// Unannounced, nothing can end the wait but a record, a
				// close or the context: it must give the caller back
				// its turn after a slice, so that a caller who watches
				// something else (a dead writer's socket) sees it.
				if err := r.Wait(context.Background()); err != nil {
					t.Fatalf("unannounced wait: %v", err)
				}
				// A slice does not watch a cancellable context, which
				// would cost allocations per slice, thousands a second.
				cctx, ccancel := context.WithCancel(context.Background())
				if n := testing.AllocsPerRun(5, func() { r.Wait(cctx) }); n != 0 {
					t.Errorf("%v allocations per slice with a cancellable context", n)
				}
				ccancel()
				if err := r.Wait(cctx); !errors.Is(err, context.Canceled) {
					t.Fatalf("wait with a cancelled context: %v", err)
				}
				if announced.Load() != 0 {
					t.Fatalf("announced %d times while slices went on", announced.Load())
				}
				// Empty slices use the credit up (a full credit: three
				// halvings, each after drySlices empty slices), and the
				// next wait announces itself.
				r.slices.credit.Store(creditMax)
				r.dry = 0
				for i := range 3 * drySlices {
					if err := r.Wait(context.Background()); err != nil || r.ready() {
						t.Fatalf("empty slice %d: %v, ready %v", i, err, r.ready())
					}
				}
				if announced.Load() != 0 {
					t.Fatalf("announced %d times after empty slices with credit left", announced.Load())
				}
			}
			done := make(chan error, 1)
			go func() {
				_, err := r.ReadInto(context.Background(), nil)
				done <- err
			}()
			if !tc.announce {
				<-announcing // no credit left: the wait announced itself
			}
			w.Write(1, []byte("x"))
			if err := <-done; err != nil {
				t.Fatalf("read: %v", err)
			}
		})
	}
}

// The writer stays armed while its wake-ups find sleepers, and a reader
// that finds it armed sleeps without announcing itself; a wake-up that
// finds nobody disarms it and moves the wake word once more (for a reader
// that saw it armed just before), and the next sleeper announces again.
// The futex wake is replaced to choose how many sleepers it finds.
func TestBroadcastStickyArm(t *testing.T) {
	found, calls := 0, 0
	old := bcFutexWake
	bcFutexWake = func(*uint32, int) (int, error) { calls++; return found, nil }
	t.Cleanup(func() { bcFutexWake = old })
	w, _, mem := newBC(t, BroadcastGeometry{DataSize: 1024}, nil)
	wake := func() uint32 { return atomic.LoadUint32(word32(mem, bcOffWake)) }
	announced := 0
	r, err := NewBroadcastReader(mem, &BroadcastReaderOptions{Wait: WaitSleep, Announce: func(seen uint64) error {
		announced++
		w.Arm(seen)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	sleep := func() { // on an empty ring, until a short deadline
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		defer cancel()
		var err error
		for err == nil { // Wait may return early: look again
			err = r.Wait(ctx)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("wait on an empty ring: %v", err)
		}
	}
	readOne := func() {
		if _, err := r.TryReadInto(nil); err != nil {
			t.Fatal(err)
		}
	}

	sleep()
	if announced != 1 || !w.Armed() || calls != 0 {
		t.Fatalf("first sleep: announced %d, armed %v, wakes %d", announced, w.Armed(), calls)
	}
	found = 1
	w0 := wake()
	w.Write(0, nil)
	if !w.Armed() || calls != 1 || wake() != w0+1 {
		t.Fatalf("a wake-up that found a sleeper: armed %v, wakes %d, wake word +%d", w.Armed(), calls, wake()-w0)
	}
	readOne()
	sleep()
	if announced != 1 {
		t.Fatalf("slept again with the writer armed: %d announcements, want 1", announced)
	}
	found = 0
	w0 = wake()
	w.Write(0, nil)
	if w.Armed() || calls != 3 || wake() != w0+2 {
		t.Fatalf("a wake-up that found nobody: armed %v, wakes %d (want 3), wake word +%d (want 2)", w.Armed(), calls, wake()-w0)
	}
	w.Write(0, nil)
	if calls != 3 {
		t.Fatal("a write woke with the writer disarmed")
	}
	readOne()
	readOne()
	sleep()
	if announced != 2 || !w.Armed() {
		t.Fatalf("after the writer disarmed: %d announcements (want 2), armed %v", announced, w.Armed())
	}
}

// Readers that find the writer armed sleep without announcing, and every
// write still wakes all of them: records written one at a time, each only
// once every reader has read the one before (so each write finds readers
// asleep, about to sleep, or still reading), reach every reader. A lost
// wake-up leaves a reader behind, and the test fails at its deadline.
func TestBroadcastStickyArmNoLostWakeup(t *testing.T) {
	const readers, records = 4, 300
	w, _, mem := newBC(t, BroadcastGeometry{DataSize: 4096}, nil)
	var got [readers]atomic.Uint64
	errs := make(chan error, readers)
	for i := range readers {
		r, err := NewBroadcastReader(mem, &BroadcastReaderOptions{Wait: WaitSleep, Announce: func(seen uint64) error {
			w.Arm(seen)
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			var dst []byte
			for k := uint64(0); ; k++ {
				rec, err := r.ReadInto(context.Background(), dst)
				if err != nil {
					errs <- err
					return
				}
				if v, ok := bcCheck(rec.Data); !ok || v != k {
					errs <- fmt.Errorf("reader %d: record %d carries %d", i, k, v)
					return
				}
				dst = rec.Data
				got[i].Store(k + 1)
			}
		}()
	}
	deadline := time.Now().Add(time.Minute) // a hang guard, not a timing
	buf := make([]byte, 8)
	for k := uint64(0); k < records; k++ {
		w.Write(0, bcFill(buf, k, 8))
		for i := range readers {
			for got[i].Load() <= k {
				if time.Now().After(deadline) {
					t.Fatalf("reader %d stuck at record %d of %d (writer armed %v)", i, got[i].Load(), k+1, w.Armed())
				}
				runtime.Gosched()
			}
		}
	}
	w.Close()
	for range readers {
		if err := <-errs; err != ErrClosed {
			t.Fatal(err)
		}
	}
}

// A busy-machine slice doubles after a wake-up that found 4 batches or
// more, up to busySliceMax, unless the next slice would take more than
// a quarter of the ring at the rate this one saw; it halves when this
// one did, down to BroadcastBusySlice; a wait that does not slice
// starts the next run short.
func TestBroadcastSliceLength(t *testing.T) {
	const lap = 1 << 20
	s := BroadcastBusySlice
	for _, tc := range []struct {
		cur, took time.Duration
		avail     uint64
		want      time.Duration
	}{
		{0, 0, 4 * richBytes, 2 * s},                               // plenty: longer
		{s, s, 4*richBytes - 1, s},                                 // less: the same
		{4 * s, 4 * s, 0, 4 * s},                                   // nothing: the same
		{s, s, lap / 8, 2 * s},                                     // the next would take a quarter: still longer
		{s, s, lap/8 + 1, s},                                       // more than a quarter: the same
		{2 * s, 2 * s, lap/4 + 1, s},                               // this one took more than a quarter: shorter
		{2 * s, 8 * s, lap/4 + 1, 4 * s},                           // it did, but over four times as long (a late wake-up)
		{busySliceMax, busySliceMax, 64 * richBytes, busySliceMax}, // capped
		{2 * s, 2 * s, 1 << 63, s},                                 // a hostile tail: shorter, still bounded
		{s, s, 1 << 63, s},
	} {
		if got := nextSlice(tc.cur, tc.took, tc.avail, lap); got != tc.want {
			t.Errorf("nextSlice(%v, %v, %d) = %v, want %v", tc.cur, tc.took, tc.avail, got, tc.want)
		}
	}
	// The reader applies it to what each slice found.
	w, r := slicingPair(t, lap)
	for n := 0; n < 4*richBytes; n += 64 + 16 {
		w.Write(1, make([]byte, 64))
	}
	if r.sliceOutcome(); r.slice != 2*s {
		t.Fatalf("after a slice that found %d bytes: next slice %v, want %v", atomic.LoadUint64(r.tail)-r.pos, r.slice, 2*s)
	}
}
