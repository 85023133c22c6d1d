//go:build linux

package ipc

// Serving requests: a connection's goroutines (readLoop, serveLoop) and
// the handling of one request that both modes share (handle, serve). The
// event-loop mode's turn is in process.go.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/ringipc/ringipc/ring"
)

// readLoop reads wake tokens (readTokenLoop); end of file (or a reset)
// is the client leaving or dying, noticed here at once.
func (c *Conn) readLoop() {
	defer c.wg.Done()
	c.kill(readTokenLoop(c.rc, c.waker, c.done))
}

// serveLoop handles requests one by one, draining the ring before it
// sleeps (see nextRequest).
func (c *Conn) serveLoop() {
	defer c.teardown()
	defer c.backlog.end(&c.srv.backlog)
	for {
		rec, err := c.nextRequest()
		if err != nil {
			c.kill(c.loopErr(err))
			return
		}
		if !c.handleOne(rec) || c.isDead() {
			return
		}
	}
}

// handleOne handles the request rec and releases its record: the body of
// both modes' loops (serveLoop here, process in process.go). It reports
// false once releasing failed, which has killed the connection.
func (c *Conn) handleOne(rec ring.Record) bool {
	c.handle(rec)
	err := c.reqC.Release()
	if c.large && rec.Type&typeLarge != 0 {
		// The client may wait to write the body segment again.
		c.reqC.Flush()
	}
	if err != nil {
		c.kill(c.ringErr("release request", err))
		return false
	}
	return true
}

// nextRequest waits for the next request record. The loop polls while
// requests come densely, then sleeps first in the kernel (the client's
// commit wakes it with one FUTEX_WAKE: no token, no netpoller, no
// hand-off from the reader goroutine) for a few milliseconds, then in
// the netpoller: an idle connection holds no thread (ring.Waiter's
// WaitKernel, which also bounds the kernel sleepers of the process).
func (c *Conn) nextRequest() (ring.Record, error) {
	var rec ring.Record
	var err error
	looks := 0
	werr := c.reqC.Waiter().WaitKernel(c.loopCtx, func() bool {
		looks++
		rec, err = c.reqC.TryPeek()
		return err != ring.ErrEmpty
	})
	// WaitKernel looks once before anything else: a request found then
	// was waiting already (the server's backlog, backlog.go).
	if looks == 1 && werr == nil {
		c.backlog.found(&c.srv.backlog)
	} else {
		c.backlog.waited(&c.srv.backlog)
	}
	if werr != nil {
		return ring.Record{}, werr
	}
	return rec, err
}

// loopErr turns the loop's ring error into the connection's end reason.
func (c *Conn) loopErr(err error) error {
	switch {
	case c.draining.Load():
		return errShutdown
	case errors.Is(err, ring.ErrClosed):
		return fmt.Errorf("%w: client closed the connection", ErrDisconnected)
	case errors.Is(err, context.Canceled):
		return ErrDisconnected
	}
	return c.ringErr("read request", err)
}

// handle runs the handler of one request record and sends its response.
func (c *Conn) handle(rec ring.Record) {
	data := rec.Data
	typ := rec.Type
	large := c.large && typ&typeLarge != 0
	if large {
		typ &^= typeLarge // the large bit rides on a request's other bits
	}
	hdr, dl, hasDL, cancel, ok := c.requestKind(typ, data)
	if !ok || (cancel && large) {
		c.kill(fmt.Errorf("%w: request record type %#x with %d bytes", ErrProtocol, rec.Type, len(data)))
		return
	}
	if cancel {
		c.cancelRecord()
		return
	}
	body := data[hdr:]
	if large {
		if body, ok = c.requestBody(binary.LittleEndian.Uint64(data), body); !ok {
			return
		}
	}
	var taken time.Duration
	timing := c.srv.cfg.Timing
	if timing {
		taken = monoNow()
	}
	corr := binary.LittleEndian.Uint64(data)
	id := uint16(rec.Type)
	c.stats.calls.Add(1)
	c.stats.bytesIn.Add(uint64(len(body)))
	c.rw = ResponseWriter{c: c, corr: corr}
	if c.cx.on && c.begin(corr, dl, hasDL) {
		// Cancelled, or past its deadline, before its handler started.
		c.stats.cancelled.Add(1)
		if _, err := c.rw.reserve(respCancelled, 0, 0); err == nil {
			c.rw.Commit() //nolint:errcheck // a failure ends the connection
		}
		return
	}
	h := c.sel.Select(c.svc.ID, id)
	if h == nil {
		if c.cx.on {
			c.end()
		}
		if _, err := c.rw.reserve(respUnknownMessage, 0, 0); err == nil {
			c.rw.Commit() //nolint:errcheck // a failure ends the connection
		}
		return
	}
	c.req = Request{Conn: c, ID: id, Data: body, ctx: c.ctx}
	if timing {
		c.serveTimed(h, taken)
	} else {
		c.serve(h)
	}
	if c.cx.on && c.end() {
		c.rw.cancelled = true
		c.stats.cancelled.Add(1)
	}
	c.rw.finish()
	c.req = Request{}
}

// serveTimed runs a handler and records its queueing time (since the
// request was taken from the ring) and its own in the service's
// histograms (Config.Timing).
func (c *Conn) serveTimed(h Handler, taken time.Duration) {
	start := monoNow()
	c.serve(h)
	end := monoNow()
	st := c.svc.stats
	st.handler.observe(end - start)
	st.queue.observe(start - taken)
}

// serve runs a handler. A panic is the handler's bug, not the
// connection's or the server's: it is logged and counted, and the call
// gets a respPanic response (unless the handler had already answered),
// while the connection goes on serving.
func (c *Conn) serve(h Handler) {
	defer func() {
		if v := recover(); v != nil {
			c.rw.panicked = true
			c.stats.panics.Add(1)
			c.log.Error("ipc: handler panicked", "service", c.svc.ID, "msg", c.req.ID,
				"panic", v, "stack", string(debug.Stack()))
		}
	}()
	h.ServeIPC(&c.rw, &c.req)
}
