package ring

import "sync/atomic"

// Knowing when the consumer is done with one record, for a producer that
// lends something alongside it (package ipc's large bodies, kept in a
// buffer of their own that the record only describes): the producer notes
// the record's End at Commit and asks Released before it reuses what it
// lent. Single-producer rings only.

// End returns the ring position just past the reserved record: once the
// consumer has released the record, Producer.Released(End) is true.
func (r Reservation) End() uint64 { return r.pos + recordSize(wordLen(r.word)) }

// Released reports whether the consumer has handed back every record
// before position pos (a Reservation's End), by one atomic load of its
// head. The consumer hands space back in batches (see Consumer.Release),
// so a record it released may count as unreleased until its next batch,
// its next wait or its Flush.
//
// The head is the consumer's word: a lying consumer can make this report
// true early, which only lets the producer reuse what the liar was lent.
func (p *Producer) Released(pos uint64) bool {
	return int64(atomic.LoadUint64(p.s.head)-pos) >= 0
}

// Flush hands every released record back to the producers now rather
// than with the next batch, and wakes a producer that waits for room:
// for a consumer that has released a record its producer waits on
// (Producer.Released) and may not peek again for a while.
func (c *Consumer) Flush() { c.publish() }
