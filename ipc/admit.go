//go:build linux

package ipc

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"time"
)

// Limit codes: the RejectError.Code of a connection refused because it
// would pass one of the server's limits (RejectError matches ErrLimit).
// A client may retry later: the limit is the server's state, not a
// verdict on the client.
const (
	LimitHandshakes       = 1 // Config.MaxHandshakes (external poll loop only; Serve waits instead)
	LimitHandshakesPerUID = 2 // Config.MaxHandshakesPerUID
	LimitConns            = 3 // Config.MaxConns
	LimitConnsPerUID      = 4 // Config.MaxConnsPerUID
	LimitMemory           = 5 // Config.MaxMemory
)

// Defaults of the admission limits (Config fields of the same names).
const (
	DefaultMaxHandshakes       = 64
	DefaultMaxHandshakesPerUID = 8
	DefaultMaxConns            = 4096
	DefaultMaxConnsPerUID      = 1024
	DefaultMaxMemory           = 1 << 30
)

// acceptBatch bounds the connections one AcceptReady call takes, so that
// a flood of connects cannot hold an external poll loop in one call: the
// listener stays readable and the loop comes back after serving others.
const acceptBatch = 64

// Accept back-off after a temporary failure (EMFILE, ENFILE, ...): the
// failed connection stays in the backlog, so retrying at once would spin.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// admission is one accepted socket's share of the server's limits, from
// accept until the connection is gone. Its fields are guarded by
// Server.mu.
type admission struct {
	uid  uint32
	hs   bool   // counted in the uid's handshakes (the total is hsSem)
	conn bool   // counted in MaxConns and the uid's connections
	mem  uint64 // ring and body-segment memory charged against MaxMemory
	gone bool   // released: nothing more may be charged to it
	// sub: the socket became a topic subscription, whose goroutine
	// releases the admission when it ends. Set and read by the
	// handshake goroutine only.
	sub bool
}

// uidUse is what one uid holds; entries are removed when they reach zero.
type uidUse struct{ hs, conns int }

// admit judges a socket just accepted, before any goroutine, buffer or
// shared memory is spent on it: its SO_PEERCRED credentials go through
// Authorize, then the connection and handshake limits. A refused socket
// gets its reject reply (written without waiting) and is closed at once.
// slot says whether the caller holds a handshake slot (hsSem) for it;
// admit releases it on refusal, else the handshake goroutine does.
func (s *Server) admit(uc *net.UnixConn, slot bool) {
	cred, err := peerCred(uc)
	if err != nil {
		s.log.Warn("ipc: accept", "err", err)
		s.freeSlot(slot)
		uc.Close()
		return
	}
	log := s.log.With("pid", cred.PID, "uid", cred.UID)
	if err := s.cfg.Authorize(cred); err != nil {
		s.freeSlot(slot)
		s.refuse(uc, log, statusUnauthorized, 0, err)
		return
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		s.freeSlot(slot)
		uc.Close()
		return
	}
	u := s.uids[cred.UID]
	if u == nil {
		u = &uidUse{}
	}
	var code uint32
	switch {
	case s.nconns >= s.cfg.MaxConns:
		code = LimitConns
	case u.conns >= s.cfg.MaxConnsPerUID:
		code = LimitConnsPerUID
	case u.hs >= s.cfg.MaxHandshakesPerUID:
		code = LimitHandshakesPerUID
	case !slot:
		code = LimitHandshakes
	}
	if code != 0 {
		s.mu.Unlock()
		s.freeSlot(slot)
		s.stats.limited.Add(1)
		s.refuse(uc, log, statusLimit, code, fmt.Errorf("%w: limit %d", ErrLimit, code))
		return
	}
	s.uids[cred.UID] = u
	u.conns++
	u.hs++
	s.nconns++
	a := &admission{uid: cred.UID, hs: true, conn: true}
	s.handshake[uc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		c := s.serveHandshake(uc, cred, log, a)
		s.endHandshake(uc, a)
		if c != nil {
			c.start()
		} else if !a.sub {
			s.release(a)
		}
	}()
}

func (s *Server) freeSlot(slot bool) {
	if slot {
		<-s.hsSem
	}
}

// endHandshake forgets the handshake of uc and gives back its slots
// (at once, so that whoever sees it gone from Server.handshake can take
// its slot).
func (s *Server) endHandshake(uc *net.UnixConn, a *admission) {
	s.mu.Lock()
	delete(s.handshake, uc)
	if a.hs {
		a.hs = false
		s.uids[a.uid].hs--
		s.dropUID(a.uid)
	}
	s.mu.Unlock()
	<-s.hsSem
}

// charge adds n bytes of ring memory to a, unless that would take the
// server past MaxMemory.
func (s *Server) charge(a *admission, n uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mem+n > uint64(s.cfg.MaxMemory) {
		return false
	}
	s.mem += n
	a.mem += n
	return true
}

// chargeBody moves a's charge for one body segment from old bytes to
// new (a segment replaced by a larger one, or 0 for none), unless that
// would take the server past MaxMemory: an error matching ErrLimit, and
// nothing charged. Once a is released it refuses any growth.
func (s *Server) chargeBody(a *admission, old, new int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if new <= old {
		d := min(uint64(old-new), a.mem)
		s.mem -= d
		a.mem -= d
		return nil
	}
	if a.gone {
		return fmt.Errorf("body segment: %w", ErrDisconnected)
	}
	d := uint64(new - old)
	if s.mem+d > uint64(s.cfg.MaxMemory) {
		return fmt.Errorf("%w: a %d-byte body segment would take the server's shared memory past Config.MaxMemory (%d bytes)", ErrLimit, new, s.cfg.MaxMemory)
	}
	s.mem += d
	a.mem += d
	return nil
}

// release gives back everything a still holds except its handshake
// slots; calling it again does nothing.
func (s *Server) release(a *admission) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mem -= a.mem
	a.mem = 0
	a.gone = true
	if a.conn {
		a.conn = false
		s.nconns--
		s.uids[a.uid].conns--
		s.dropUID(a.uid)
	}
}

// dropUID forgets a uid that holds nothing; mu held.
func (s *Server) dropUID(uid uint32) {
	if u := s.uids[uid]; u != nil && u.hs == 0 && u.conns == 0 {
		delete(s.uids, uid)
	}
}

// refuse sends a reject reply without waiting (a fresh socket's buffer
// always takes the 96 bytes; a socket that does not is not worth a wait)
// and closes the socket.
func (s *Server) refuse(uc *net.UnixConn, log *slog.Logger, status, code uint32, why error) {
	s.stats.rejected.Add(1)
	log.Info("ipc: connection refused", "status", status, "code", code, "err", why)
	r := reply{version: Version, status: status, detail: code}
	var rb [replySize]byte
	r.encode(rb[:])
	writeNow(uc, rb[:]) //nolint:errcheck // best effort: the client may be gone
	uc.Close()
}

// temporaryAccept reports whether an accept error leaves the listener
// usable: out of descriptors or kernel memory (the connection waits in
// the backlog), or a connection aborted before it was taken.
func temporaryAccept(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// backoff waits d (doubled from the last wait, within the bounds) or
// until the server closes; it returns the wait to use next time and
// whether the server is still open.
func (s *Server) backoff(d time.Duration) (time.Duration, bool) {
	d = min(max(2*d, acceptBackoffMin), acceptBackoffMax)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return d, true
	case <-s.done:
		return d, false
	}
}
