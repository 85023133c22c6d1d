// Package shmseg creates and attaches to shared-memory segments: a region
// of memory that several processes map at once, with a small checksummed
// header in front of a 4096-byte aligned payload.
//
// A segment is either an anonymous memfd (CreateMemfd), whose descriptor is
// handed to the peer over a Unix socket (SCM_RIGHTS) or through
// exec.Cmd.ExtraFiles and attached with OpenFile, or a named file under
// /dev/shm (CreateNamed, OpenNamed, Unlink) that unrelated processes find
// by name.
//
// The header records a Geometry: a kind tag and six parameters chosen by
// the caller (ring sizes, for instance). shmseg stores and checksums the
// Geometry but never interprets it; the layer above decides what a kind
// means and checks the parameters it reads back. The wire layout of the
// header is described in header.go and in docs/segment.md.
//
// Prefer memfd segments. They are sealed against shrinking and growing, so
// no peer can truncate them under a mapping, and they disappear with the
// last descriptor and mapping, so a crash leaves nothing behind. OpenFile
// accepts only tmpfs/shmem files: a hugetlbfs memfd, sealed or not, lets
// its sender take the pages back and raise SIGBUS in the receiver.
//
// # Caveats
//
// Mapping lifetime. The slice returned by Payload points into the mapping,
// not into Go memory. After Close it refers to unmapped pages: using it, or
// any slice derived from it, faults and kills the process. Close only when
// no goroutine still touches the payload. shmseg installs no finalizer that
// unmaps a forgotten Segment, because the garbage collector cannot see
// those slices and would unmap memory still in use; a Segment that is never
// closed keeps its mapping until the process exits.
//
// Trust. The header is validated once, when the segment is attached. From
// then on every process mapping the segment may write any byte of it,
// header included, at any time; Geometry returns the copy taken at attach
// time and the header is never read again. Anything the caller keeps in the
// payload, such as offsets or lengths, must be read once into a local and
// checked before use, and shared indices must be accessed with sync/atomic.
// The race detector does not see accesses to mapped memory.
//
// Named segments. A file under /dev/shm cannot be sealed: any process with
// write permission can truncate it, and touching a page beyond the new end
// of file raises SIGBUS in every process that maps it. Use named segments
// only among mutually trusting processes, and remove them with Unlink; they
// outlive the processes that created them. OpenNamed does not check who
// owns the file.
//
// Page size. HeaderSize is fixed at 4096 bytes so that the layout does not
// depend on the machine. Where pages are larger than 4096 bytes the payload
// is 4096-byte aligned but not page aligned.
//
// Concurrency. The methods of Segment are safe for concurrent use,
// including Close. Synchronising access to the payload is up to the caller.
package shmseg
