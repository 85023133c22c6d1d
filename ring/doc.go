// Package ring is a lock-free ring of variable-size records in memory that
// may be shared between processes: one consumer and either one producer
// (SPSC) or many producers, goroutines and processes alike (MPSC).
//
// A ring lives in any []byte: Go heap memory (handy in tests), or a shared
// mapping such as a shmseg.Segment's payload. Init lays out a new ring
// (InitZeroed does so in memory already zero, such as a fresh memfd,
// without touching the data area's pages); NewProducer and NewConsumer
// attach handles to an existing one after checking its magic, version,
// geometry and checksum.
//
// Producers reserve space and commit it (zero copy), or Write a copy.
// A producer that learns the size while writing reserves the most it may
// need and commits only what it wrote (Reservation.CommitN); the rest
// goes back to the ring.
// The consumer peeks at the next record and releases it (zero copy), or
// reads a copy. Every record header carries a checksum seeded with the
// record's position, so a header left from an earlier lap never verifies;
// the payload can be covered too (Geometry.PayloadChecksum).
//
// Waiting polls while polling pays and sleeps at once otherwise
// (Options.Wait, WaitPolicy), then sleeps on a futex or through a Waker;
// Waiter exposes that protocol to loops that wait outside the ring's
// calls.
// A side wakes the other only after that side has announced that it
// sleeps, so two busy processes exchange records without system calls.
// On Linux a streaming SPSC producer also stops paying a full barrier per
// record: the consumer, when it announces a sleep, makes the producer's
// CPU execute the barrier instead (membarrier(2); every process using
// rings registers for it at its first ring; docs/design.md 2.6.6).
// Off Linux the package builds and works with stand-ins: the futex
// package polls instead of sleeping, and ProcessAlive cannot tell a dead
// MPSC producer from a live one (see its doc).
//
// A producer's Close says that producer is done. On an SPSC ring that ends
// the stream: the consumer drains what was committed, then sees ErrClosed.
// On an MPSC ring it only frees the producer's slot and the others go on;
// Producer.CloseRing (or Consumer.Close) ends the stream for everybody.
//
// In an MPSC ring, every claim names its producer slot. A producer that dies
// between claim and commit does not block the ring: once the operating
// system reports the owner gone, the consumer turns the claim into padding.
//
// A broadcast ring (InitBroadcast, BroadcastWriter, BroadcastReader) has
// one writer and any number of readers that never write its memory, so
// they may map it read-only. The writer never waits: a reader that falls
// more than a lap behind gets an *OverrunError (ErrOverrun) saying what
// it lost and reads on from a recent record, and every record it does
// return was confirmed not to have been overwritten while it was read.
// Readers sleep in FUTEX_WAIT and announce that out of band
// (BroadcastReaderOptions.Announce, BroadcastWriter.Arm), since they
// cannot set a wait word; on a machine with more runnable threads than
// CPUs they sleep in short slices instead, unannounced, while slices
// keep finding records (BroadcastBusySlice). TryReadInto copies and confirms committed records
// a batch at a time and reads small ones from that copy.
//
// A side that waits polls while polling pays (WaitPolicy), then sleeps:
// through its Waker, or for Waiter.WaitKernel and WaitReply first in
// FUTEX_WAIT for a few milliseconds. That FUTEX_WAIT has no timeout
// (arming one costs two exits to the hypervisor in a virtual machine):
// while any goroutine of the process sleeps so, one goroutine of the
// package watches the sleepers and ends the sleeps that last their
// length; it exits when none is left (docs/design.md 2.6.2). On an
// overloaded machine (twice as many runnable threads as CPUs) those
// waits sleep through the Waker alone, and the package's futex sleeps
// hand their P back to the Go scheduler while they last
// (futex.WaitHandoff, docs/design.md 2.6.5).
//
// # Caveats
//
// Shared memory is a trust boundary. Every word read from it is read once
// and validated; a violation is ErrCorrupt, never a panic, and the
// consumer stays in that error state. A peer can still rewrite a payload
// after it has been verified: a zero-copy view is only as trustworthy as
// the peer.
//
// A zero-copy view returned by Peek is valid until Release; a Reservation's
// bytes are valid until Commit or Abort. Neither may be kept past that.
//
// An SPSC Producer and every Consumer are not safe for concurrent use: one
// goroutine at a time. An MPSC Producer is safe for concurrent use by many
// goroutines. Close is safe to call from any goroutine at any time.
//
// The layout is little-endian and described in docs/design.md.
package ring
