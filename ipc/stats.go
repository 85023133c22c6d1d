//go:build linux

package ipc

import (
	"cmp"
	"slices"
	"sync/atomic"
)

// Stats are counters of a connection or, summed over every connection it
// has served, of a server. Each field is read atomically, the struct as a
// whole is not a consistent snapshot.
type Stats struct {
	Connections       uint64 // server: connections established
	Rejected          uint64 // server: connections refused (any reason, limits included)
	Limited           uint64 // server: connections refused for a limit (ErrLimit)
	AcceptErrors      uint64 // server: accepts that failed (EMFILE, ...) and were retried
	HandshakeTimeouts uint64 // server: clients dropped for not finishing the handshake in time
	Calls             uint64 // requests received
	Responses         uint64 // responses sent (errors included)
	ErrorResponses    uint64 // responses with an error status
	Panics            uint64 // handler panics recovered
	Dispatches        uint64 // dispatch messages written to the ring
	Dropped           uint64 // dispatch messages dropped (PolicyDrop)
	FlowEvents        uint64 // times a dispatch queue started filling
	QueueDepth        uint64 // dispatch messages queued now
	QueueBytes        uint64 // bytes of the dispatch messages queued now
	BytesIn           uint64 // request body bytes
	BytesOut          uint64 // response and dispatch body bytes
	// Errors counts the connections ended by a protocol violation or as
	// slow consumers: ProtocolErrors + SlowConsumers. It is kept for
	// existing users; the two parts tell a hostile or broken peer from a
	// merely slow one.
	Errors         uint64
	TokensIn       uint64 // wake tokens received
	TokensOut      uint64 // wake tokens sent
	Open           uint64 // server: connections open now
	ProtocolErrors uint64 // connections ended by a protocol violation (ErrProtocol)
	SlowConsumers  uint64 // connections ended as slow consumers (ErrSlowConsumer)
	LostDispatches uint64 // dispatch messages still queued when their connection ended, never sent
	// Cancelled counts the requests answered "cancelled" (FeatureCancel):
	// skipped because the client's cancel or the call's deadline came
	// before their handler started, or whose handler that ended without
	// an answer. Also counted in ErrorResponses.
	Cancelled uint64
}

// ServiceStats are the counters of one registered service: Stats summed
// over the connections to it, live and past (the server-only fields stay
// 0 but Open and Rejected), and, with Config.Timing, its latency
// histograms.
type ServiceStats struct {
	ID    uint16
	Name  string
	Stats Stats // Open: connections to the service now; Rejected: handshakes for it refused
	// Handler is the time handlers ran, from the call to ServeIPC to its
	// return (empty unless Config.Timing). A call is recorded after its
	// handler returns, so after the client may hold its response.
	Handler Histogram
	// Queue is the time from taking a request from the ring to its
	// handler's start (empty unless Config.Timing). The wire carries no
	// commit time, so the wait in the ring before the server looked is
	// not in it: this is the server's own delay (routing, and in an
	// EventLoop the time a taken request waits for its turn).
	Queue Histogram
}

// serviceStats is a service's shared state, allocated by Register so
// that a connection reaches it through its *Service with no map lookup.
type serviceStats struct {
	rejected       atomic.Uint64
	retired        connCounters
	handler, queue histogram
}

type connCounters struct {
	calls, responses, errResponses, dispatches, dropped, flowEvents atomic.Uint64
	bytesIn, bytesOut, errors, panics                               atomic.Uint64
	protocolErrors, slowConsumers, lostDispatches                   atomic.Uint64
	cancelled                                                       atomic.Uint64
}

// counterField pairs a connection counter with the Stats field it adds to.
type counterField struct {
	k *atomic.Uint64
	s *uint64
}

// fields is the one list of a connection's counters, each with its field
// of s; addTo and retire both walk it, so a new counter is added here
// only.
func (k *connCounters) fields(s *Stats) [14]counterField {
	return [...]counterField{
		{&k.calls, &s.Calls},
		{&k.responses, &s.Responses},
		{&k.errResponses, &s.ErrorResponses},
		{&k.dispatches, &s.Dispatches},
		{&k.dropped, &s.Dropped},
		{&k.flowEvents, &s.FlowEvents},
		{&k.bytesIn, &s.BytesIn},
		{&k.bytesOut, &s.BytesOut},
		{&k.errors, &s.Errors},
		{&k.panics, &s.Panics},
		{&k.protocolErrors, &s.ProtocolErrors},
		{&k.slowConsumers, &s.SlowConsumers},
		{&k.lostDispatches, &s.LostDispatches},
		{&k.cancelled, &s.Cancelled},
	}
}

func (k *connCounters) addTo(s *Stats) {
	for _, f := range k.fields(s) {
		*f.s += f.k.Load()
	}
}

// serverCounters: the server's own counters plus the totals of the
// connections it has retired.
type serverCounters struct {
	connections, rejected, handshakeTimeouts atomic.Uint64
	limited, acceptErrors                    atomic.Uint64
	retired                                  connCounters
	tokensIn, tokensOut                      atomic.Uint64
}

func (s *serverCounters) retire(k *connCounters) { s.retired.take(k) }

// take adds k's counters to its own.
func (t *connCounters) take(k *connCounters) {
	var unused Stats
	to := t.fields(&unused)
	for i, f := range k.fields(&unused) {
		to[i].k.Add(f.k.Load())
	}
}

// Stats returns the connection's counters.
func (c *Conn) Stats() Stats {
	var s Stats
	c.addStats(&s)
	return s
}

// addStats adds the connection's counters to s.
func (c *Conn) addStats(s *Stats) {
	c.qMu.Lock()
	c.moveDispCounts()
	c.stats.addTo(s)
	s.QueueDepth += uint64(c.q.len())
	s.QueueBytes += uint64(c.qBytes)
	c.qMu.Unlock()
	s.TokensIn += c.waker.tokensIn.Load()
	s.TokensOut += c.waker.tokensOut.Load()
}

// Stats returns the server's counters: its own, and the sums over live
// and past connections.
func (s *Server) Stats() Stats {
	var st Stats
	st.Connections = s.stats.connections.Load()
	st.Rejected = s.stats.rejected.Load()
	st.HandshakeTimeouts = s.stats.handshakeTimeouts.Load()
	st.Limited = s.stats.limited.Load()
	st.AcceptErrors = s.stats.acceptErrors.Load()
	// Retired totals and the live list are read together under s.mu,
	// which forget holds while it moves a connection from one to the
	// other.
	s.mu.Lock()
	s.stats.retired.addTo(&st)
	st.TokensIn = s.stats.tokensIn.Load()
	st.TokensOut = s.stats.tokensOut.Load()
	conns := s.connsLocked()
	s.mu.Unlock()
	st.Open = uint64(len(conns))
	for _, c := range conns {
		c.addStats(&st)
	}
	return st
}

// ServiceStats returns the counters of each registered service, ordered
// by service id.
func (s *Server) ServiceStats() []ServiceStats {
	// As in Stats, retired totals and the live list are read under s.mu.
	s.mu.Lock()
	svcs := make([]*Service, 0, len(s.services))
	for _, svc := range s.services {
		svcs = append(svcs, svc)
	}
	slices.SortFunc(svcs, func(a, b *Service) int { return cmp.Compare(a.ID, b.ID) })
	out := make([]ServiceStats, len(svcs))
	at := make(map[uint16]*ServiceStats, len(svcs))
	for i, svc := range svcs {
		o := &out[i]
		o.ID, o.Name = svc.ID, svc.Name
		svc.stats.retired.addTo(&o.Stats)
		at[svc.ID] = o
	}
	conns := s.connsLocked()
	s.mu.Unlock()
	for i, svc := range svcs {
		o := &out[i]
		o.Stats.Rejected = svc.stats.rejected.Load()
		o.Handler = svc.stats.handler.snapshot()
		o.Queue = svc.stats.queue.snapshot()
	}
	for _, c := range conns {
		if o := at[c.svc.ID]; o != nil {
			o.Stats.Open++
			c.addStats(&o.Stats)
		}
	}
	return out
}
