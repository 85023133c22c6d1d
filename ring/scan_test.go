package ring

import (
	"encoding/binary"
	"sync/atomic"
	"testing"
)

func TestScan(t *testing.T) {
	mem := make([]byte, mustSize(t, Geometry{DataSize: 4096}))
	if err := Init(mem, Geometry{DataSize: 4096}); err != nil {
		t.Fatal(err)
	}
	p, _ := NewProducer(mem, nil)
	c, _ := NewConsumer(mem, nil)
	type seen struct {
		pos uint64
		typ uint32
		n   int
	}
	scan := func(from uint64, max int) (got []seen, next uint64) {
		next, _ = c.Scan(from, max, func(pos uint64, r Record) { got = append(got, seen{pos, r.Type, len(r.Data)}) })
		return got, next
	}
	if _, _, ok := c.PeekedAt(); ok {
		t.Fatal("PeekedAt with nothing peeked")
	}
	// Rounds of 5 records of 200 bytes (224 with header and alignment):
	// the data area is no multiple of that, so some rounds wrap with
	// padding in the middle.
	for lap := range 8 {
		for i := range 5 {
			if err := p.TryWrite(uint32(10*lap+i), make([]byte, 200)); err != nil {
				t.Fatal(err)
			}
		}
		r, err := c.TryPeek()
		if err != nil || r.Type != uint32(10*lap) {
			t.Fatalf("lap %d: peek %v, %v", lap, r.Type, err)
		}
		pos, next, ok := c.PeekedAt()
		if !ok || (next-pos != 224 && next%4096 != 224) {
			t.Fatalf("PeekedAt = %d, %d, %v", pos, next, ok)
		}
		// Scans of at most 2 records each (padding counts) visit the
		// other 4 in order.
		var got []seen
		for from := next; ; {
			part, end := scan(from, 2)
			if len(part) > 2 {
				t.Fatalf("lap %d: a scan of at most 2 visited %d", lap, len(part))
			}
			got = append(got, part...)
			if end == from {
				break
			}
			from = end
		}
		if len(got) != 4 || (got[0].pos != next && got[0].pos%4096 != 0) {
			t.Fatalf("lap %d: scans visited %+v", lap, got)
		}
		for i, r := range got {
			if r.typ != uint32(10*lap+1+i) || r.n != 200 {
				t.Fatalf("lap %d: scans visited %+v", lap, got)
			}
		}
		// The scan consumed nothing: every record is still there.
		for i := range 5 {
			r, err := c.TryPeek()
			if err != nil || r.Type != uint32(10*lap+i) {
				t.Fatalf("lap %d record %d: %v, %v", lap, i, r.Type, err)
			}
			if err := c.Release(); err != nil {
				t.Fatal(err)
			}
		}
		c.TryPeek() // hands the space back
	}
}

// TestScanHostile: words the producer scribbles stop the scan; they never
// make it read out of bounds, loop, or visit past the tail.
func TestScanHostile(t *testing.T) {
	mem := make([]byte, mustSize(t, Geometry{DataSize: 4096}))
	if err := Init(mem, Geometry{DataSize: 4096}); err != nil {
		t.Fatal(err)
	}
	p, _ := NewProducer(mem, nil)
	c, _ := NewConsumer(mem, nil)
	for i := range 4 {
		if err := p.TryWrite(uint32(i), make([]byte, 8)); err != nil {
			t.Fatal(err)
		}
	}
	data := c.s.data
	count := func(from uint64) int {
		n := 0
		c.Scan(from, 1000, func(uint64, Record) { n++ })
		return n
	}
	if n := count(0); n != 4 {
		t.Fatalf("clean ring: %d records", n)
	}
	orig := binary.LittleEndian.Uint64(data[32:])
	for name, w := range map[string]uint64{
		"huge length":   orig&^lenMask | lenMask,
		"not committed": orig &^ (0xF << stateShift),
		"slot bits":     orig | 1<<slotShift,
		"slack flag":    orig | flagSlack,
		"pad mid-ring":  orig | flagPad,
		"past the tail": orig&^lenMask | 4000,
	} {
		atomic.StoreUint64(word64(data, 32), w)
		if n := count(0); n != 1 {
			t.Errorf("%s: visited %d records, want the first only", name, n)
		}
	}
	atomic.StoreUint64(word64(data, 32), orig)
	if n := count(8); n != 0 {
		t.Errorf("a misaligned start visited %d", n)
	}
	if n := count(1 << 20); n != 0 {
		t.Errorf("a start past the tail visited %d", n)
	}
}

func mustSize(t *testing.T, g Geometry) int {
	t.Helper()
	n, err := Size(g)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// FuzzScan: whatever the producer wrote into the data area and the tail
// word, and wherever the caller starts, Scan stays in bounds, visits at
// most max records, each a view inside the data area of at most
// MaxPayload bytes, and never returns a position past the tail.
func FuzzScan(f *testing.F) {
	f.Add([]byte{}, uint64(0), uint64(0))
	var rec [48]byte
	binary.LittleEndian.PutUint64(rec[0:], stateCommitted<<stateShift|8)
	binary.LittleEndian.PutUint32(rec[8:], 1<<17)
	binary.LittleEndian.PutUint64(rec[32:], stateCommitted<<stateShift|flagPad|4000)
	f.Add(rec[:], uint64(0), uint64(32))
	f.Add(rec[:], uint64(4096), uint64(4096+32))
	f.Add(rec[:], uint64(0), uint64(1<<63))
	f.Fuzz(func(t *testing.T, data []byte, from, tail uint64) {
		const size = 4096
		mem := make([]byte, mustSize(t, Geometry{DataSize: size}))
		if err := Init(mem, Geometry{DataSize: size}); err != nil {
			t.Fatal(err)
		}
		c, err := NewConsumer(mem, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(data); i += size {
			copy(c.s.data, data[i:])
		}
		atomic.StoreUint64(c.s.tail, tail)
		const max = 64
		visited := 0
		next, more := c.Scan(from, max, func(pos uint64, r Record) {
			visited++
			if pos-from >= size || uint64(len(r.Data)) > c.s.m.maxP {
				t.Fatalf("visited a record at %d (from %d) of %d bytes", pos, from, len(r.Data))
			}
		})
		if visited > max || (more && next == from) {
			t.Fatalf("visited %d records, more %v at %d", visited, more, next)
		}
		if next != from && (next-from > tail-from || tail-from > size) {
			t.Fatalf("scan from %d with tail %d stopped at %d", from, tail, next)
		}
	})
}
