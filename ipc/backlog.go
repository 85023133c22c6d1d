//go:build linux

package ipc

import "sync/atomic"

// backlog tells whether a server is behind on more than one connection:
// whether the loops of at least two connections, coming back for their
// next request, have lately been finding it there already, where a
// server that keeps up finds its loops asleep when requests come.
//
// It gates the answers that go last (sockWaker.behind). The yield and
// the system call the runtime sees pay off only when other connections'
// loops queue behind the writer, and each may wake a thread of a process
// that has an idle P: with 8 fan-in clients (a server busy a third of
// the time) they cost about 7% more CPU per call, and a higher p99, when
// the machine's load alone decided, and a single pipelined connection,
// always behind but with no other loop to hold up, read about 7% fewer
// calls a second in two sets of runs of three (docs/design.md 2.6.5). With 32 client processes calling 1,000 times
// a second each on 2 vCPUs (ringbench fanin), 18% of the loops' returns
// found their next request waiting; with 8 clients, 0.07%; with one
// paced client, none.
//
// Each loop keeps a walk between 0 and backlogMax (connBacklog): up
// backlogUp for a request found waiting, down one for a wait, so that
// it stays above 0 while more than one return in backlogUp+1 finds its
// request waiting, and drops to 0 within backlogMax waits once the loop
// catches up. The server counts the loops whose walk is above 0.
type backlog struct {
	conns atomic.Int32 // connections whose walk is above 0
}

const (
	backlogUp  = 32
	backlogMax = 256
)

// behind reports whether at least two connections are behind.
func (b *backlog) behind() bool { return b.conns.Load() >= 2 }

// connBacklog is one connection loop's walk, owned by the loop.
type connBacklog struct {
	n int32
}

// found records that the loop found its next request already there.
func (c *connBacklog) found(b *backlog) {
	if c.n == 0 {
		b.conns.Add(1)
	}
	c.n = min(c.n+backlogUp, backlogMax)
}

// waited records that the loop had to wait for its next request.
func (c *connBacklog) waited(b *backlog) {
	if c.n == 0 {
		return
	}
	if c.n--; c.n == 0 {
		b.conns.Add(-1)
	}
}

// end takes the loop out of the server's count: the connection ends.
func (c *connBacklog) end(b *backlog) {
	if c.n > 0 {
		c.n = 0
		b.conns.Add(-1)
	}
}
