//go:build linux

package ipc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
)

// Conn is the server's side of one client connection.
//
// Its methods are safe for concurrent use, with one exception: Process is
// for the external poll loop only and must not run concurrently with
// itself. Dispatch may be called from any goroutine at any time, also
// after the connection ended (it then fails with ErrDisconnected).
//
// Which file owns which group of its fields: construction and lifecycle
// (ctx, done, kill, teardown) are in conn.go and handshake.go; the
// request path in serve.go (goroutines) and process.go (event loop,
// pending, again, pmu); the dispatch queue (qMu and below) in
// dispatch.go; stats in stats.go.
type Conn struct {
	// backlog is the loop's walk (backlog.go), owned by serveLoop.
	backlog connBacklog

	// Set at construction (newConn), read-only afterwards.
	srv      *Server
	id       uint64
	svc      *Service
	sel      Selector
	cred     Cred
	sock     *quietSock // the socket; rc is it, as the code that waits on it sees it
	rc       syscall.RawConn
	seg      *shmseg.Segment
	ctl      []byte // control block in shared memory; server writes it
	reply    reply
	reqC     *ring.Consumer
	respP    *ring.Producer
	dispP    *ring.Producer
	waker    *sockWaker
	maxReq   int // ring limits: bodies up to these go in the ring
	maxResp  int
	maxDisp  int
	large    bool    // FeatureLarge granted: larger bodies, up to maxMsg, go in body segments
	progress bool    // FeatureProgress granted with FeatureLarge: large responses come with progress notes
	maxMsg   int     // Config.MaxMessage
	reqIn    *bodyIn // request bodies (large.go); nil without FeatureLarge
	qLimit   int
	policy   Policy
	external bool
	log      *slog.Logger
	adm      *admission // the server's limits this connection holds; nil until the handshake charged it

	// testHookNoted, set by a test's handler before it responds, runs
	// after each progress note respondInNotes commits, on the handler's
	// goroutine.
	testHookNoted func()

	// nearJ judges how near the client reads, for respondInNotes's
	// stores (near.go); the connection loop's.
	nearJ nearJudge

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
	ending   chan struct{} // closed first thing by kill, before it takes qMu
	killOnce sync.Once
	err      error

	privMu  sync.Mutex
	private any

	// Request-path state (serve.go, process.go), owned by the goroutine
	// running the loop (or Process): never touched by anyone else.
	req      Request
	rw       ResponseWriter
	tokBuf   [tokenSmall]byte
	pending  []*pendingResp // external mode: responses awaiting ring space
	respOut  bodyOut        // response body segment (large.go)
	again    bool           // external mode: Process stopped at MaxTurnRequests
	pendFree []*pendingResp

	// The client's cancels and deadlines (cancel.go): shared by the loop
	// and the token reader under cx.mu.
	cx cancelState

	// The dispatch queue (dispatch.go). The dispatch producer belongs to
	// whoever holds qMu while the queue is empty (Dispatch's direct
	// write), and to the flusher (goroutine or Process) while it is not:
	// the flusher pops an entry only after committing it, so a non-empty
	// queue keeps every Dispatch away from the producer. A zero-copy
	// dispatch (dispatchzc.go) owns it while zcHeld: waiting for room
	// (without qMu), then reserved (holding qMu until Commit or Abort).
	qMu      sync.Mutex
	q        deque
	qBytes   int           // bytes of the queued messages, also counted in Server.queued until qDead
	qDead    bool          // set by kill: nobody may write the ring any more
	flushing bool          // a flusher goroutine is running
	room     chan struct{} // buffered 1: a token when a full queue gains room; closed by kill
	waiting  int           // Dispatch calls waiting for room (PolicyBlock)
	free     [][]byte      // recycled queue buffers
	batch    []qitem       // the flusher's: entries being written, still queued
	zcHeld   bool          // a ReserveDispatch owns the producer (dispatchzc.go)
	zcSeq    uint64        // numbers ReserveDispatch's reservations, under qMu
	zcLive   atomic.Uint64 // the live DispatchReservation's number, 0 if none
	// Direct dispatches (and their bytes) not yet in stats: counted
	// under the qMu the write holds anyway, and moved to stats every
	// dispCountEvery, by addStats and when the connection retires, since
	// two atomic adds per message cost a 64-byte dispatch 10-20% of its
	// rate.
	dispN, dispBytes uint64
	// Large dispatches (large_server.go) take turns through dispLarge
	// (buffered 1), which guards dispOut and dispTimer.
	dispLarge chan struct{}
	dispOut   bodyOut
	dispTimer *time.Timer
	dispWant  int         // the body size writeLarge waits to have room for
	dispReady func() bool // its wait's condition, built once

	// External mode lifecycle (process.go), under pmu: started once
	// EventLoop.AddConn returned; running while Process runs; pendingOut
	// when the last Process left responses waiting for room (Shutdown
	// then lets a later Process send them before it ends the
	// connection). Teardown happens only when neither Process runs nor
	// can start.
	pmu        sync.Mutex
	started    bool
	running    bool
	pendingOut bool

	wg           sync.WaitGroup // reader and flusher goroutines
	teardownOnce sync.Once
	tornErr      error // what releasing the resources failed with; written in teardown, before forget
	stats        connCounters
}

func ringBytes(dataSize uint64) uint64 {
	n, _ := ring.Size(ring.Geometry{DataSize: int(dataSize)})
	return uint64(n)
}

// newConn creates the connection's segment and rings. On error nothing is
// left behind.
func newConn(s *Server, uc *net.UnixConn, svc *Service, cred Cred, sizes [3]uint64, features uint32) (_ *Conn, err error) {
	sock, err := newQuietSock(uc)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			sock.release()
		}
	}()
	offs, total := layout(sizes, ringBytes)
	seg, err := shmseg.CreateMemfd("ringipc-conn", segmentGeometry(sizes, offs), int(total))
	if err != nil {
		return nil, fmt.Errorf("create connection segment: %w", err)
	}
	c := &Conn{
		srv:       s,
		id:        s.nextID.Add(1),
		svc:       svc,
		sel:       s.selector(),
		cred:      cred,
		sock:      sock,
		rc:        sock,
		seg:       seg,
		qLimit:    s.cfg.DispatchQueue,
		policy:    s.cfg.DispatchPolicy,
		external:  s.cfg.EventLoop != nil,
		done:      make(chan struct{}),
		ending:    make(chan struct{}),
		dispLarge: make(chan struct{}, 1),
		room:      make(chan struct{}, 1),
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
	c.waker = newSockWaker(mem, offs, []int{wReqCons, wRespProd, wDispProd}, sock, c.done)
	c.waker.behind = s.backlog.behind
	if features&FeatureCancel != 0 {
		c.cx.on = true
		c.cx.visitFn = c.cx.visit
		c.waker.onReqToken = c.reqToken
		// Before the reply: the client reads it once it has the segment.
		atomic.StoreUint64(word64(c.ctl, ctlClock), uint64(monoClockNow()))
	}
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
	if features&FeatureLarge != 0 {
		c.progress = features&FeatureProgress != 0
		c.large, c.maxMsg = true, s.cfg.MaxMessage
		atomic.StoreUint64(word64(c.ctl, ctlMaxMessage), uint64(c.maxMsg))
		c.reqIn = newBodyIn("request", max(c.maxMsg, c.maxReq), "the server's Config.MaxMessage raises it")
		c.waker.bodies[0] = c.reqIn // tokReqBody
		c.respOut = bodyOut{tok: tokRespBody, limit: c.maxMsg}
		c.dispOut = bodyOut{tok: tokDispBody, limit: c.maxMsg}
		c.dispReady = func() bool { return c.isEnding() || c.dispOut.room(c.dispP, c.dispWant) }
		// Body segments count against Config.MaxMemory like the rings.
		charge := func(old, new int) error {
			if c.adm == nil {
				return nil
			}
			return s.chargeBody(c.adm, old, new)
		}
		c.reqIn.charge, c.respOut.charge, c.dispOut.charge = charge, charge, charge
	}
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
	c.sock.release()
}

// start runs an established connection: goroutines, or the event loop.
func (c *Conn) start() {
	// The handshake (and its reply) used the net.UnixConn; from here on
	// the socket is polled for input only (quietSock).
	if err := c.sock.quiet(!c.external); err != nil {
		c.kill(fmt.Errorf("%w: %w", ErrDisconnected, err))
		c.teardown()
		return
	}
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

// kill ends the connection: it records why, closes the rings (waking
// every sleeper of both sides), and cancels handlers. Only the first call
// counts. The shared memory stays mapped until teardown.
func (c *Conn) kill(err error) {
	c.killOnce.Do(func() {
		c.err = err
		// First, without qMu: a large Dispatch holds qMu while it waits
		// for the client (dispatchLarge), and must see the end.
		close(c.ending)
		c.dispP.Close() //nolint:errcheck // always nil
		c.qMu.Lock()
		c.qDead = true
		c.srv.queued.Add(-int64(c.qBytes)) // nobody will flush them
		c.stats.lostDispatches.Add(uint64(c.q.len()))
		close(c.room)
		c.qMu.Unlock()
		c.storeCloseReason(err)
		c.reqC.Close()  //nolint:errcheck // always nil
		c.respP.Close() //nolint:errcheck
		c.dispP.Close() //nolint:errcheck
		c.cancel()
		if c.cx.on {
			c.connEnded()
		}
		close(c.done)
		if errors.Is(err, ErrProtocol) || errors.Is(err, ErrSlowConsumer) {
			if errors.Is(err, ErrProtocol) {
				c.stats.protocolErrors.Add(1)
			} else {
				c.stats.slowConsumers.Add(1)
			}
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
			c.kill(errShutdown)
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
		nerr := c.sock.Close()
		c.wg.Wait()
		c.waker.close()
		c.svc.OnDisconnect(c, c.err)
		var berr error
		if c.large {
			// The loop has ended (this is it, or Process can no more
			// start); a large Dispatch may still be writing: wait for it
			// (it sees ending and returns).
			c.dispLarge <- struct{}{}
			berr = errors.Join(c.reqIn.close(), c.respOut.close(), c.dispOut.close())
		}
		c.tornErr = errors.Join(closeErr("close socket", nerr), c.seg.Close(), closeErr("unmap body segments", berr))
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

// Close ends the connection. The client's calls fail with ErrDisconnected
// (and ErrClosedByServer, which tells the client that the server is
// still up).
// It does not wait for the teardown (a handler may call it), so it
// returns nil; Server.Close reports what releasing a connection it closed
// failed with, and the Logger every such failure.
func (c *Conn) Close() error {
	c.kill(errConnClosed)
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

// MaxDispatch returns the largest dispatch body Dispatch sends: what the
// dispatch ring carries or, with FeatureLarge, Config.MaxMessage if that
// is more. A client whose ClientOptions.MaxMessage is smaller refuses a
// larger message when it arrives (its Recv returns ErrTooLarge).
func (c *Conn) MaxDispatch() int {
	if c.large {
		return max(c.maxDisp, c.maxMsg)
	}
	return c.maxDisp
}

// maxResponse is the largest response body a handler may send.
func (c *Conn) maxResponse() int {
	if c.large {
		return max(c.maxResp, c.maxMsg)
	}
	return c.maxResp
}

// Large reports whether the connection carries bodies larger than its
// rings (FeatureLarge was asked for and granted).
func (c *Conn) Large() bool { return c.large }
