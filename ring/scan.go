package ring

import (
	"encoding/binary"
	"sync/atomic"
)

// Looking ahead: a consumer that handles one record at a time (ipc's
// server, running a handler on the record it peeked) may need to know
// what the producer has committed behind it, without consuming it: ipc
// looks for the cancel records of requests still waiting, and of the one
// being handled.

// PeekedAt returns the position of the record the last Peek returned and
// the position just past it (where the next record starts); ok is false
// if no record is peeked. Positions count bytes since the ring was
// created; compare them by difference.
func (c *Consumer) PeekedAt() (pos, next uint64, ok bool) {
	if !c.peeked {
		return c.head, c.head, false
	}
	return c.head, c.head + c.curSize, true
}

// Scan visits the records committed from position from on, without
// consuming them: fn gets each record's position and a view of it, valid
// only during the call. It stops at the tail, after max records (padding
// and skipped records, which it passes over without visiting, count too,
// so its work is bounded), or at a record it cannot make sense of. It
// returns the position to scan from next time (from itself if it passed
// nothing), and more: whether it stopped for max, with committed records
// left to look at.
//
// from must be a record boundary the consumer has not released yet:
// PeekedAt's next while a record is peeked, or a position Scan returned
// since. Scan may run on another goroutine than the consumer's, as long
// as the consumer releases nothing at or past from meanwhile (the
// caller's lock): it reads only the ring's fixed geometry, the shared
// tail, and committed bytes.
//
// Scan trusts no word it reads (each length, flag and position is
// bounded, so hostile memory cannot make it read outside the data area
// or loop), but neither does it verify checksums: a record it visits may
// be one Peek will find corrupt when it gets there. Use what it shows
// only for advice the producer could as well have given honestly. Single
// producer rings only: on an MPSC ring it visits nothing.
func (c *Consumer) Scan(from uint64, max int, fn func(pos uint64, r Record)) (next uint64, more bool) {
	if c.multi {
		return from, false
	}
	m := &c.s.m
	t := atomic.LoadUint64(c.s.tail)
	if t-from > m.size || from%recordAlign != 0 {
		return from, false // from is past the tail, or not a position of this lap
	}
	h := from
	for seen := 0; h != t; seen++ {
		if seen == max {
			return h, true
		}
		off := h & m.mask
		w := atomic.LoadUint64(word64(c.s.data, int(off)))
		fl := wordFlags(w)
		if wordState(w) != stateCommitted || w&(slotMask<<slotShift|genMask<<genShift) != 0 || fl&^(flagPad|flagSkip) != 0 {
			break
		}
		n := wordLen(w)
		rs := recordSize(n)
		if fl&flagPad != 0 {
			rs = headerSize + n
			if off+rs != m.size || rs > t-h {
				break
			}
			h += rs
			continue
		}
		if n > m.maxP || off+rs > m.size || rs > t-h {
			break
		}
		if fl&flagSkip == 0 {
			typ := binary.LittleEndian.Uint32(c.s.data[off+8:])
			end := off + headerSize + n
			fn(h, Record{Type: typ, Data: c.s.data[off+headerSize : end : end]})
		}
		h += rs
	}
	return h, false
}
