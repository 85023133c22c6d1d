//go:build linux

package ipc

// callTable holds the calls in flight of a Client, under Client.mu. A
// call's correlation id names its slot: the low 32 bits are the slot
// index, the high 32 a sequence number, so that a late or forged id for
// a reused slot does not match the call now in it. Slots are reused
// through a free list and the table only grows, to the largest number of
// calls ever in flight at once: registering and matching cost an index,
// not a hash.
type callTable struct {
	slots []*waiter
	free  []uint32 // indices of empty slots
	n     int      // calls in the table
}

// add registers w under a correlation id made of seq and a free slot.
func (t *callTable) add(w *waiter, seq uint64) uint64 {
	var i uint32
	if k := len(t.free); k > 0 {
		i = t.free[k-1]
		t.free = t.free[:k-1]
	} else {
		i = uint32(len(t.slots))
		t.slots = append(t.slots, nil)
	}
	w.corr = seq<<32 | uint64(i)
	t.slots[i] = w
	t.n++
	return w.corr
}

// take removes and returns the call with correlation id corr, or nil if
// no call in flight has it.
func (t *callTable) take(corr uint64) *waiter {
	i := uint32(corr)
	if uint64(i) >= uint64(len(t.slots)) {
		return nil
	}
	w := t.slots[i]
	if w == nil || w.corr != corr {
		return nil
	}
	t.slots[i] = nil
	t.free = append(t.free, i)
	t.n--
	return w
}

// get returns the call with correlation id corr, leaving it in the
// table (a stream part: more records follow for it), or nil.
func (t *callTable) get(corr uint64) *waiter {
	i := uint32(corr)
	if uint64(i) >= uint64(len(t.slots)) {
		return nil
	}
	if w := t.slots[i]; w != nil && w.corr == corr {
		return w
	}
	return nil
}

// len returns the number of calls in flight.
func (t *callTable) len() int { return t.n }

// takeAll removes every call and passes it to f.
func (t *callTable) takeAll(f func(*waiter)) {
	for _, w := range t.slots {
		if w != nil {
			t.take(w.corr)
			f(w)
		}
	}
}
