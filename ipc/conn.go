//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
)

// Conn is the server's side of one client connection.
//
// Its methods are safe for concurrent use, with one exception: Process is
// for the external poll loop only and must not run concurrently with
// itself. Dispatch may be called from any goroutine at any time, also
// after the connection ended (it then fails with ErrDisconnected).
type Conn struct {
	// Set at construction, read-only afterwards.
	srv      *Server
	id       uint64
	svc      *Service
	sel      Selector
	cred     Cred
	nc       *net.UnixConn
	rc       syscall.RawConn
	seg      *shmseg.Segment
	ctl      []byte // control block in shared memory; server writes it
	reply    reply
	reqC     *ring.Consumer
	respP    *ring.Producer
	dispP    *ring.Producer
	waker    *sockWaker
	maxReq   int
	maxResp  int
	maxDisp  int
	qLimit   int
	policy   Policy
	external bool
	log      *slog.Logger
	adm      *admission // the server's limits this connection holds; nil until the handshake charged it

	// ctx ends when the connection is killed: handlers and blocking ring
	// calls stop. loopCtx also ends at drain, which only stops the loop
	// from waiting for more requests.
	ctx        context.Context
	cancel     context.CancelFunc
	loopCtx    context.Context
	loopCancel context.CancelFunc
	draining   atomic.Bool

	// done is closed by kill, after err is set and the rings are closed:
	// a receive from done happens after both.
	done     chan struct{}
	killOnce sync.Once
	err      error

	privMu  sync.Mutex
	private any

	// Request-path state, owned by the goroutine running the loop (or
	// Process): never touched by anyone else.
	req      Request
	rw       ResponseWriter
	tokBuf   [tokenSmall]byte
	pending  []*pendingResp // external mode: responses awaiting ring space
	again    bool           // external mode: Process stopped at MaxTurnRequests
	pendFree []*pendingResp

	// The dispatch queue. The dispatch producer belongs to whoever holds
	// qMu while the queue is empty (Dispatch's direct write), and to the
	// flusher (goroutine or Process) while it is not: the flusher pops an
	// entry only after committing it, so a non-empty queue keeps every
	// Dispatch away from the producer.
	qMu      sync.Mutex
	q        deque
	qBytes   int           // bytes of the queued messages, also counted in Server.queued until qDead
	qDead    bool          // set by kill: nobody may write the ring any more
	flushing bool          // a flusher goroutine is running
	room     chan struct{} // buffered 1: a token when a full queue gains room; closed by kill
	waiting  int           // Dispatch calls waiting for room (PolicyBlock)
	free     [][]byte      // recycled queue buffers
	batch    []qitem       // the flusher's: entries being written, still queued

	// External mode lifecycle, under pmu: started once EventLoop.AddConn
	// returned; running while Process runs; pendingOut when the last
	// Process left responses waiting for room (Shutdown then lets a later
	// Process send them before it ends the connection). Teardown happens
	// only when neither Process runs nor can start.
	pmu        sync.Mutex
	started    bool
	running    bool
	pendingOut bool

	wg           sync.WaitGroup // reader and flusher goroutines
	teardownOnce sync.Once
	tornErr      error // what releasing the resources failed with; written in teardown, before forget
	stats        connCounters
}

type pendingResp struct {
	status uint32
	b      []byte
}

func ringBytes(dataSize uint64) uint64 {
	n, _ := ring.Size(ring.Geometry{DataSize: int(dataSize)})
	return uint64(n)
}

// newConn creates the connection's segment and rings. On error nothing is
// left behind.
func newConn(s *Server, uc *net.UnixConn, svc *Service, cred Cred, sizes [3]uint64, features uint32) (*Conn, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	offs, total := layout(sizes, ringBytes)
	seg, err := shmseg.CreateMemfd("ringipc-conn", segmentGeometry(sizes, offs), int(total))
	if err != nil {
		return nil, fmt.Errorf("create connection segment: %w", err)
	}
	c := &Conn{
		srv:      s,
		id:       s.nextID.Add(1),
		svc:      svc,
		sel:      s.selector(),
		cred:     cred,
		nc:       uc,
		rc:       rc,
		seg:      seg,
		qLimit:   s.cfg.DispatchQueue,
		policy:   s.cfg.DispatchPolicy,
		external: s.cfg.EventLoop != nil,
		done:     make(chan struct{}),
		room:     make(chan struct{}, 1),
	}
	c.log = s.log.With("conn", c.id)
	mem := seg.Payload()
	c.ctl = mem[:ctlSize:ctlSize]
	for i := range 3 {
		g := ring.Geometry{DataSize: int(sizes[i]), PayloadChecksum: features&FeaturePayloadChecksum != 0}
		// A fresh memfd reads as zeros: writing only the control areas
		// keeps the data areas unallocated until records are written
		// (48 MiB of server memory for a client asking for the largest
		// rings, before OnConnect could even refuse it).
		if err := ring.InitZeroed(mem[offs[i]:], g); err != nil {
			seg.Close()
			return nil, fmt.Errorf("init ring: %w", err)
		}
	}
	c.waker = newSockWaker(mem, offs, []int{wReqCons, wRespProd, wDispProd}, rc, c.done)
	opts := ringOptions(s.cfg.Wait, s.cfg.Spin, c.waker)
	// Attaching freshly initialised rings cannot fail.
	c.reqC, _ = ring.NewConsumer(mem[offs[0]:], opts)
	c.respP, _ = ring.NewProducer(mem[offs[1]:], opts)
	c.dispP, _ = ring.NewProducer(mem[offs[2]:], opts)
	if c.reqC == nil || c.respP == nil || c.dispP == nil {
		seg.Close()
		return nil, fmt.Errorf("attach rings: %w", ErrProtocol)
	}
	c.maxReq = MaxRequestBody(int(sizes[0]))
	c.maxResp = MaxResponseBody(int(sizes[1]))
	c.maxDisp = MaxDispatchBody(int(sizes[2]))
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.loopCtx, c.loopCancel = context.WithCancel(c.ctx)
	c.reply = reply{
		version:  Version,
		status:   statusOK,
		features: features,
		sizes:    sizes,
		offs:     offs,
		ctlOff:   0,
		payload:  uint64(len(mem)),
		maxReq:   uint32(c.maxReq),
		maxDisp:  uint32(c.maxDisp),
	}
	if c.external {
		// Nobody sleeps in the ring in external mode, so announce the
		// wait for requests up front: the client's first Commit must
		// send a token that makes the descriptor readable.
		c.reqC.Waiter().Arm()
	}
	return c, nil
}

// destroy releases a connection that never got established.
func (c *Conn) destroy() {
	c.cancel()
	c.seg.Close()
}

// start runs an established connection: goroutines, or the event loop.
func (c *Conn) start() {
	if c.external {
		c.srv.cfg.EventLoop.AddConn(c)
		c.pmu.Lock()
		c.started = true
		c.pmu.Unlock()
		if c.isDead() {
			c.teardown()
		}
		return
	}
	c.wg.Add(1)
	go c.readLoop()
	go c.serveLoop()
}

// readLoop reads wake tokens (readTokenLoop); end of file (or a reset)
// is the client leaving or dying, noticed here at once.
func (c *Conn) readLoop() {
	defer c.wg.Done()
	c.kill(readTokenLoop(c.nc, c.rc, c.waker, c.done))
}

// serveLoop handles requests one by one, draining the ring before it
// sleeps (see nextRequest).
func (c *Conn) serveLoop() {
	defer c.teardown()
	for {
		rec, err := c.nextRequest()
		if err != nil {
			c.kill(c.loopErr(err))
			return
		}
		c.handle(rec)
		if err := c.reqC.Release(); err != nil {
			c.kill(c.ringErr("release request", err))
			return
		}
		if c.isDead() {
			return
		}
	}
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
	werr := c.reqC.Waiter().WaitKernel(c.loopCtx, func() bool {
		rec, err = c.reqC.TryPeek()
		return err != ring.ErrEmpty
	})
	if werr != nil {
		return ring.Record{}, werr
	}
	return rec, err
}

// loopErr turns the loop's ring error into the connection's end reason.
func (c *Conn) loopErr(err error) error {
	switch {
	case c.draining.Load():
		return ErrServerClosed
	case errors.Is(err, ring.ErrClosed):
		return fmt.Errorf("%w: client closed the connection", ErrDisconnected)
	case errors.Is(err, context.Canceled):
		return ErrDisconnected
	}
	return c.ringErr("read request", err)
}

// ringErr maps a ring error: a closed ring means the connection ended,
// corruption is the peer breaking the protocol, which ends the connection
// whichever path (handler, Dispatch, flusher) found it.
func (c *Conn) ringErr(op string, err error) error {
	switch {
	case errors.Is(err, ring.ErrClosed), errors.Is(err, context.Canceled):
		if c.isDead() && c.err != nil {
			return fmt.Errorf("%s: %w", op, c.err)
		}
		return fmt.Errorf("%s: %w", op, ErrDisconnected)
	case errors.Is(err, ring.ErrCorrupt):
		err = fmt.Errorf("%s: %w: %w", op, ErrProtocol, err)
		c.kill(err)
		return err
	}
	return fmt.Errorf("%s: %w", op, err)
}

// handle runs the handler of one request record and sends its response.
func (c *Conn) handle(rec ring.Record) {
	data := rec.Data
	if len(data) < reqHdrSize || rec.Type>>16 != 0 {
		c.kill(fmt.Errorf("%w: request record type %#x with %d bytes", ErrProtocol, rec.Type, len(data)))
		return
	}
	corr := binary.LittleEndian.Uint64(data)
	id := uint16(rec.Type)
	c.stats.calls.Add(1)
	c.stats.bytesIn.Add(uint64(len(data) - reqHdrSize))
	c.rw = ResponseWriter{c: c, corr: corr}
	h := c.sel.Select(c.svc.ID, id)
	if h == nil {
		if _, err := c.rw.reserve(respUnknownMessage, 0, 0); err == nil {
			c.rw.Commit() //nolint:errcheck // a failure ends the connection
		}
		return
	}
	c.req = Request{Conn: c, ID: id, Data: data[reqHdrSize:], ctx: c.ctx}
	c.serve(h)
	c.rw.finish()
	c.req = Request{}
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

// Process is the external poll loop's entry point (Config.EventLoop): call
// it when Fd polls readable, and when a Requeuer loop was asked to. It reads the wake tokens, handles every
// request available, flushes what waits for ring space, and returns
// without blocking (handlers aside). Once the connection has ended it tears
// it down and returns an error matching ErrDisconnected (or the reason it
// ended); drop the descriptor from the poll set then. Calls must not
// overlap: one that does returns ErrConcurrentProcess, and one on a
// server without Config.EventLoop ErrNoEventLoop.
func (c *Conn) Process() error {
	if !c.external {
		return ErrNoEventLoop
	}
	c.pmu.Lock()
	if c.running {
		c.pmu.Unlock()
		return ErrConcurrentProcess
	}
	if c.isDead() {
		c.pmu.Unlock()
		return c.endErr()
	}
	c.running = true
	c.pmu.Unlock()

	c.again = false
	c.process()

	c.pmu.Lock()
	c.running = false
	c.pendingOut = len(c.pending) > 0
	end := c.draining.Load() && !c.pendingOut
	c.pmu.Unlock()
	if end {
		c.kill(ErrServerClosed) // Shutdown, and nothing left to answer
	}
	if c.isDead() {
		c.teardown()
		return c.endErr()
	}
	if c.again {
		c.srv.cfg.EventLoop.(Requeuer).Requeue(c)
	}
	return nil
}

func (c *Conn) endErr() error {
	<-c.done
	if errors.Is(c.err, ErrDisconnected) {
		return c.err
	}
	return fmt.Errorf("%w: %w", ErrDisconnected, c.err)
}

func (c *Conn) process() {
	if err := c.readTokensTurn(); err != nil {
		c.kill(err)
		return
	}
	c.drainTokenChans()
	if !c.flushPendingArmed() {
		c.flushQueueNow()
		return
	}
	_, capped := c.srv.cfg.EventLoop.(Requeuer)
	for handled := 0; !c.isDead(); handled++ {
		if capped && handled == c.srv.cfg.MaxTurnRequests {
			// Others' turn: the loop calls Process again (Requeue), so
			// the request word stays unarmed.
			c.again = true
			break
		}
		rec, err := c.reqC.TryPeek()
		if err == ring.ErrEmpty {
			c.reqC.Waiter().Arm()
			rec, err = c.reqC.TryPeek()
			if err == ring.ErrEmpty {
				break
			}
			c.reqC.Waiter().Disarm()
		}
		if err != nil {
			c.kill(c.loopErr(err))
			return
		}
		c.handle(rec)
		if err := c.reqC.Release(); err != nil {
			c.kill(c.ringErr("release request", err))
			return
		}
		if len(c.pending) > 0 && !c.flushPendingArmed() {
			break // wait for the client to free response space
		}
	}
	c.flushQueueNow()
}

// drainTokenChans empties the wake channels, which nothing waits on in
// external mode.
func (c *Conn) drainTokenChans() {
	for _, ch := range c.waker.local {
		if ch != nil {
			select {
			case <-ch:
			default:
			}
		}
	}
}

// flushPendingArmed writes out responses kept aside, arming the response
// producer word when the ring is still full (then it returns false).
func (c *Conn) flushPendingArmed() bool {
	if c.flushPending() {
		return true
	}
	c.respP.Waiter().Arm()
	if c.flushPending() {
		c.respP.Waiter().Disarm()
		return true
	}
	return false
}

func (c *Conn) flushPending() bool {
	for len(c.pending) > 0 {
		p := c.pending[0]
		r, err := c.respP.TryReserve(p.status, len(p.b))
		if err == ring.ErrFull {
			return false
		}
		if err != nil {
			c.kill(c.ringErr("respond", err))
			return false
		}
		copy(r.Bytes(), p.b)
		if err := r.Commit(); err != nil {
			c.kill(c.ringErr("respond", err))
			return false
		}
		c.stats.bytesOut.Add(uint64(len(p.b) - respHdrSize))
		c.pending[0] = nil
		c.pending = c.pending[1:]
		c.freePending(p)
	}
	c.pending = c.pending[:0:0]
	return true
}

func (c *Conn) newPending(status uint32, n int) *pendingResp {
	for i := len(c.pendFree) - 1; i >= 0; i-- {
		if p := c.pendFree[i]; cap(p.b) >= n {
			c.pendFree = append(c.pendFree[:i], c.pendFree[i+1:]...)
			p.status, p.b = status, p.b[:n]
			return p
		}
	}
	return &pendingResp{status: status, b: make([]byte, n)}
}

func (c *Conn) freePending(p *pendingResp) {
	if len(c.pendFree) < 16 {
		c.pendFree = append(c.pendFree, p)
	}
}

// kill ends the connection: it records why, closes the rings (waking
// every sleeper of both sides), and cancels handlers. Only the first call
// counts. The shared memory stays mapped until teardown.
func (c *Conn) kill(err error) {
	c.killOnce.Do(func() {
		c.err = err
		c.qMu.Lock()
		c.qDead = true
		c.srv.queued.Add(-int64(c.qBytes)) // nobody will flush them
		close(c.room)
		c.qMu.Unlock()
		c.reqC.Close()  //nolint:errcheck // always nil
		c.respP.Close() //nolint:errcheck
		c.dispP.Close() //nolint:errcheck
		c.cancel()
		close(c.done)
		if errors.Is(err, ErrProtocol) || errors.Is(err, ErrSlowConsumer) {
			c.stats.errors.Add(1)
			c.log.Warn("ipc: connection closed", "err", err)
		} else {
			c.log.Debug("ipc: connection closed", "err", err)
		}
		if c.external {
			c.pmu.Lock()
			idle := c.started && !c.running
			c.pmu.Unlock()
			if idle {
				go c.teardown()
			}
		}
	})
}

// drain asks the loop to stop once it finds the request ring empty. In
// external mode requests are handled only inside Process: if no Process
// runs and no response waits for room, the connection ends now (requests
// that came since the last Process are not handled); else Process ends it
// once it has handled what it found and every response is out (draining
// is set under pmu, which Process holds to start and to finish, so one of
// the two sees it).
func (c *Conn) drain() {
	if c.external {
		c.pmu.Lock()
		c.draining.Store(true)
		idle := !c.running && !c.pendingOut
		c.pmu.Unlock()
		if idle {
			c.kill(ErrServerClosed)
		}
		return
	}
	c.draining.Store(true)
	c.loopCancel()
}

// teardown releases everything once no goroutine of ours touches the
// rings: it closes the socket, waits for the reader and flusher, runs
// OnDisconnect, and unmaps the segment.
func (c *Conn) teardown() {
	c.teardownOnce.Do(func() {
		<-c.done
		if c.external {
			c.srv.cfg.EventLoop.RemoveConn(c)
		}
		nerr := c.nc.Close()
		c.wg.Wait()
		c.waker.close()
		c.svc.OnDisconnect(c, c.err)
		c.tornErr = errors.Join(closeErr("close socket", nerr), c.seg.Close())
		if c.tornErr != nil {
			c.log.Warn("connection teardown", "err", c.tornErr)
		}
		c.srv.forget(c)
		if h := c.srv.testHookTornDown; h != nil {
			h(c)
		}
	})
}

func (c *Conn) isDead() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Close ends the connection. The client's calls fail with ErrDisconnected.
// It does not wait for the teardown (a handler may call it), so it
// returns nil; Server.Close reports what releasing a connection it closed
// failed with, and the Logger every such failure.
func (c *Conn) Close() error {
	c.kill(fmt.Errorf("%w: closed by the server", ErrDisconnected))
	return nil
}

// Done is closed when the connection has ended (not necessarily torn down
// yet).
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is up.
func (c *Conn) Err() error {
	if !c.isDead() {
		return nil
	}
	return c.err
}

// ID is the connection's number, unique within the server.
func (c *Conn) ID() uint64 { return c.id }

// Cred returns the client's credentials.
func (c *Conn) Cred() Cred { return c.cred }

// Service returns the id of the service the client connected to.
func (c *Conn) Service() uint16 { return c.svc.ID }

// Private returns the value set by SetPrivate.
func (c *Conn) Private() any {
	c.privMu.Lock()
	defer c.privMu.Unlock()
	return c.private
}

// SetPrivate attaches a value of the service's choosing to the connection,
// typically in OnConnect.
func (c *Conn) SetPrivate(v any) {
	c.privMu.Lock()
	c.private = v
	c.privMu.Unlock()
}

// Fd returns the connection's socket descriptor for an external poll loop.
// The connection owns it; it is closed at teardown, after
// EventLoop.RemoveConn.
func (c *Conn) Fd() int { return rawFd(c.rc) }

// MaxDispatch returns the largest dispatch body the client's ring accepts.
func (c *Conn) MaxDispatch() int { return c.maxDisp }
