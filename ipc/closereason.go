//go:build linux

package ipc

// Close reasons (docs/ipc.md §4.1 and §7). With FeatureCloseReason the
// server stores why it ends a connection in the control block before it
// closes the rings, and the client reads the word once, when it finds
// the rings closed or the socket at its end: a shutdown, a close, a slow
// consumer or a protocol violation can then be told from a crash, which
// leaves the word 0.

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// The server's end reasons that a client can be told apart: errShutdown
// ends the connections Shutdown drains (it still matches ErrServerClosed,
// as before the reason existed), errConnClosed those Conn.Close ends.
var (
	errShutdown   = fmt.Errorf("%w (%w)", ErrServerClosed, ErrServerShutdown)
	errConnClosed = fmt.Errorf("%w: %w", ErrDisconnected, ErrClosedByServer)
)

// closeReason is the close reason word a connection ended by err stores:
// closeNone for ends the server did not choose (the client left or
// died, the socket failed), which the client then never reads.
func closeReason(err error) uint32 {
	switch {
	case errors.Is(err, ErrServerShutdown):
		return closeShutdown
	case errors.Is(err, ErrServerClosed):
		return closeServerClosed
	case errors.Is(err, ErrClosedByServer):
		return closeConn
	case errors.Is(err, ErrSlowConsumer):
		return closeSlowConsumer
	case errors.Is(err, ErrProtocol):
		return closeProtocol
	}
	return closeNone
}

// storeCloseReason publishes why the connection ends, if the client
// asked to be told; kill calls it before closing the rings, so that the
// store happens before the ring close (an atomic exchange) through
// which, or through the socket's end after it, the client learns of the
// end. The segment is mapped until teardown, which follows kill.
func (c *Conn) storeCloseReason(err error) {
	if c.reply.features&FeatureCloseReason == 0 {
		return
	}
	if r := closeReason(err); r != closeNone {
		atomic.StoreUint32(word32(c.ctl, ctlCloseReason), r)
	}
}

// withCloseReason adds the server's reason to err, the error of a
// connection the server ended: its rings were found closed, or (eof)
// its socket at end of file. The word is read once, and only with
// FeatureCloseReason granted; a 0 at end of file means the server ended
// without closing (ErrPeerDied). A value the protocol does not define
// is reported as a number, with no sentinel: the server is not trusted
// to name one.
func (cl *Client) withCloseReason(err error, eof bool) error {
	if cl.features&FeatureCloseReason == 0 {
		return err
	}
	cl.ctlMu.RLock()
	if cl.ctlGone {
		cl.ctlMu.RUnlock()
		return err
	}
	r := atomic.LoadUint32(word32(cl.ctl, ctlCloseReason))
	cl.ctlMu.RUnlock()
	var why error
	switch r {
	case closeNone:
		if !eof {
			return err
		}
		why = ErrPeerDied
	case closeShutdown:
		why = ErrServerShutdown
	case closeServerClosed:
		why = ErrServerClosed
	case closeConn:
		why = ErrClosedByServer
	case closeSlowConsumer:
		why = ErrSlowConsumer
	case closeProtocol:
		why = fmt.Errorf("%w by this client, the server says", ErrProtocol)
	default:
		return fmt.Errorf("%w (close reason %d)", err, r)
	}
	return fmt.Errorf("%w: %w", err, why)
}
