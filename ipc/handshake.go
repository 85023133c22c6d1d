//go:build linux

package ipc

// The server's side of the handshake (docs/ipc.md §3): read and judge the
// hello, build the connection, reply with its segment or a reject.

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// serveHandshake runs the handshake of one accepted socket. It returns
// the established connection, registered with the server, or nil after
// closing the socket.
func (s *Server) serveHandshake(uc *net.UnixConn, cred Cred, log *slog.Logger, a *admission) *Conn {
	deadline := time.Now().Add(s.cfg.HandshakeTimeout)
	uc.SetDeadline(deadline) //nolint:errcheck // a failure shows up as a read error
	var hb [helloSize]byte
	if _, err := io.ReadFull(uc, hb[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.stats.handshakeTimeouts.Add(1)
		}
		log.Info("ipc: handshake: no hello", "err", err)
		uc.Close()
		return nil
	}
	h, err := decodeHello(hb[:])
	if err != nil {
		s.reject(uc, log, statusBadHello, 0, err)
		return nil
	}
	if h.version != Version {
		s.reject(uc, log, statusBadVersion, 0, fmt.Errorf("%w: client speaks %d, server %d", ErrVersion, h.version, Version))
		return nil
	}
	if h.features&FeatureTopic != 0 {
		s.serveSubscribe(uc, cred, log, a, h) // a topic subscription (topic.go)
		return nil
	}
	s.mu.Lock()
	svc := s.services[h.service]
	s.mu.Unlock()
	if svc == nil {
		s.reject(uc, log, statusUnknownService, 0, fmt.Errorf("%w: %d", ErrUnknownService, h.service))
		return nil
	}
	var sizes [3]uint64
	for i, want := range h.sizes {
		// A size that is not a power of two is rounded up to one; one
		// too large to round is nonsense.
		want = roundRingSize64(want)
		switch {
		case want == 0:
			sizes[i] = uint64(s.cfg.RingSize)
		case !isPow2(want):
			svc.stats.rejected.Add(1)
			s.reject(uc, log, statusBadHello, 0, fmt.Errorf("%w: ring size %d", ErrProtocol, want))
			return nil
		default:
			sizes[i] = min(max(want, MinRingSize), uint64(s.cfg.MaxRingSize))
		}
	}
	if _, total := layout(sizes, ringBytes); !s.charge(a, total) {
		s.stats.limited.Add(1)
		svc.stats.rejected.Add(1)
		s.reject(uc, log, statusLimit, LimitMemory, fmt.Errorf("%w: %d bytes of rings over the memory budget", ErrLimit, total))
		return nil
	}
	grantable := uint32(knownFeatures)
	if s.cfg.MaxMessage < 0 {
		grantable &^= FeatureLarge | FeatureProgress
	}
	c, err := newConn(s, uc, svc, cred, sizes, h.features&grantable)
	if err != nil {
		svc.stats.rejected.Add(1)
		s.reject(uc, log, statusUnavailable, 0, err)
		return nil
	}
	c.adm = a
	if err := svc.OnConnect(c); err != nil {
		var code RejectCode
		errors.As(err, &code)
		c.destroy()
		svc.stats.rejected.Add(1)
		s.reject(uc, log, statusRejected, uint32(code), err)
		return nil
	}
	// From here on the connection exists for the service: whatever
	// happens, teardown runs OnDisconnect once.
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		c.kill(ErrServerClosed)
		c.teardown()
		return nil
	}
	s.conns[c] = struct{}{}
	// From now on Shutdown and Close end it as a connection, whose
	// teardown closes the socket: stop() must not close it too as a
	// pending handshake (endHandshake forgets it only later).
	delete(s.handshake, uc)
	s.wg.Add(1)
	s.mu.Unlock()
	s.stats.connections.Add(1)

	var rb [replySize]byte
	c.reply.encode(rb[:])
	if _, _, err := uc.WriteMsgUnix(rb[:], unix.UnixRights(int(c.seg.File().Fd())), nil); err != nil {
		log.Info("ipc: handshake: send reply", "err", err)
		c.kill(fmt.Errorf("%w: send handshake reply: %w", ErrDisconnected, err))
		c.teardown()
		return nil
	}
	uc.SetDeadline(time.Time{}) //nolint:errcheck
	// The server keeps its memfd descriptor (the Segment owns it) until
	// teardown: one descriptor per connection besides the socket and its
	// input poller (quietSock).
	log.Debug("ipc: connected", "conn", c.id, "service", svc.ID)
	return c
}

func (s *Server) reject(uc *net.UnixConn, log *slog.Logger, status, code uint32, why error) {
	s.stats.rejected.Add(1)
	log.Info("ipc: handshake rejected", "status", status, "err", why)
	r := reply{version: Version, status: status, detail: code}
	var rb [replySize]byte
	r.encode(rb[:])
	uc.Write(rb[:]) //nolint:errcheck // best effort: the client may be gone
	uc.Close()
}
