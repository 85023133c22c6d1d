//go:build linux

package ipc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
	"golang.org/x/sys/unix"
)

// Client is a connection to a service.
//
// A Client is safe for concurrent use by many goroutines. Calls from
// different goroutines are pipelined: each request carries a correlation
// id, and responses are matched to their callers whatever their order.
//
// Which file owns which group of its fields: dial.go sets the read-only
// ones; call.go owns the request path and the reader role (sendMu,
// spaceLock, mu and below to goMu); recv.go owns the dispatch side
// (dispLock, ctlMu, the DispatchFd fields); client.go the lifecycle
// (ctx, done, kill, teardown, wg).
type Client struct {
	// Set by Dial (dial.go), read-only afterwards.
	sock        *quietSock // the socket; rc is it, as the code that waits on it sees it
	rc          syscall.RawConn
	seg         *shmseg.Segment
	ctl         []byte
	reqP        *ring.Producer
	respC       *ring.Consumer
	dispC       *ring.Consumer
	waker       *sockWaker
	serverCred  Cred
	features    uint32
	ringSizes   [3]int // request, response, dispatch data sizes granted
	ringReq     int    // the largest request body the request ring carries
	maxReq      int    // the largest bodies, in the ring or (large) a body segment
	maxResp     int
	maxDisp     int
	srvResp     int     // the largest response body the server sends: status 3 above it
	large       bool    // FeatureLarge granted (large.go)
	respIn      *bodyIn // response bodies; the reader role's
	dispIn      *bodyIn // dispatch bodies; dispLock's
	nonBlocking bool
	onDispatch  func(uint16, []byte)
	// cancelOn: FeatureCancel was granted, so calls send their deadlines
	// and abandoned calls a cancel record (cancel_client.go);
	// clockOffset is what to add to a CLOCK_MONOTONIC deadline of ours
	// to get the server's (0 unless it runs in another time namespace).
	cancelOn    bool
	clockOffset int64

	// Cancels kept for later (cancel_client.go): cancelQ[:cancelN] under
	// cancelMu, and their count for a lock-free look on the send path.
	cancelMu      sync.Mutex
	cancelQ       [MaxQueuedCancels]uint64
	cancelN       int
	cancelsQueued atomic.Int32

	// Counters for Stats (client_stats.go), added to by any goroutine.
	cancelsSent, cancelsDropped, dispatchTooLarge atomic.Uint64
	progressBytes                                 atomic.Uint64 // ClientStats.ProgressBytes

	// sendMu guards reqP and nextCorr. It is held to reserve, fill and
	// commit one request (by a PendingCall, until Send or Abort), never
	// while waiting for room: a caller that finds the request ring full
	// lets go of it and waits as the holder of spaceLock. sendGone
	// (set by teardown) says the request ring is unmapped.
	sendMu   sync.Mutex
	nextCorr uint64
	sendGone bool

	// Channel locks (buffered 1; a send acquires), so that waiting for
	// them honours contexts: spaceLock is held by the one caller that
	// waits for room in the request ring, dispLock guards dispC (recv.go).
	spaceLock chan struct{}
	dispLock  chan struct{}
	// largeLock (FeatureLarge) is held by the one caller writing a large
	// request: from waiting for the segment to the commit of its
	// descriptor (a PendingCall: from Reserve to Send or Abort). reqOut is
	// its.
	largeLock chan struct{}
	reqOut    bodyOut
	// near: the server's last verdict on how near this client reads
	// (noteNear), which decides how large requests are written (near.go).
	near atomic.Bool

	// mu guards the call state (call.go): waiters (calls sent and not yet
	// answered, by correlation id), orphans
	// (responses still to come for calls abandoned after their request
	// went out), reading (the reader role is held: see call.go) and dead
	// (kill has failed every waiter; nothing registers any more).
	mu      sync.Mutex
	waiters callTable
	orphans int
	reading bool
	dead    bool

	// readerWake hands the reader role to the background reader; roleFreed
	// tells teardown that the role was let go. Both buffered 1.
	readerWake chan struct{}
	roleFreed  chan struct{}

	// woken counts callers signalled whose goroutines have not yet
	// taken the signal: runnable, about to send their next call. A
	// reader with nothing to read lets them run first (call.go).
	woken atomic.Int64

	// goMu guards goStopped, which teardown sets before it waits for wg:
	// from then on no goroutine may be added to wg (a WaitGroup must not
	// grow from zero while Wait runs), see goTracked.
	goMu      sync.Mutex
	goStopped bool

	ctx      context.Context // ends with the connection
	cancel   context.CancelFunc
	done     chan struct{} // closed by kill, after err is set
	killOnce sync.Once
	err      error
	torn     chan struct{} // closed when teardown has finished
	tornErr  error         // what releasing the resources failed with; written before torn is closed
	wg       sync.WaitGroup

	// ctlMu (recv.go) keeps the segment mapped while FlowControl reads the control
	// block: FlowControl holds it shared, and teardown takes it
	// exclusively to set ctlGone before it unmaps.
	ctlMu   sync.RWMutex
	ctlGone bool
	// testHookFlowControl, set only by tests, runs in FlowControl after
	// its check of ctlGone, before it reads the control block.
	testHookFlowControl func()

	// DispatchFd's eventfd and its notify loop (recv.go).
	notifyOnce sync.Once
	efd        atomic.Int32 // eventfd of DispatchFd, -1 until created
	rearm      chan struct{}
	notifyErr  error
}

func (cl *Client) start() {
	cl.wg.Add(2)
	go cl.readLoop()
	go cl.backgroundReader()
	if cl.onDispatch != nil {
		cl.wg.Add(1)
		go cl.dispatchLoop()
	}
}

// readLoop reads wake tokens (readTokenLoop); end of file or a reset
// means the server closed the connection, exited or died, and every
// blocked call ends.
func (cl *Client) readLoop() {
	defer cl.wg.Done()
	err := readTokenLoop(cl.rc, cl.waker, cl.done)
	if errors.Is(err, ErrDisconnected) {
		err = cl.withCloseReason(err, true)
	}
	cl.kill(err)
}

// kill ends the connection: the rings are closed, which wakes everyone
// blocked in them, and done is closed. Teardown follows on its own
// goroutine once every holder of a lock has let go.
func (cl *Client) kill(err error) {
	cl.killOnce.Do(func() {
		cl.err = err
		cl.reqP.Close()  //nolint:errcheck // always nil
		cl.respC.Close() //nolint:errcheck
		cl.dispC.Close() //nolint:errcheck
		cl.cancel()
		close(cl.done)
		cl.failWaiters()
		go cl.teardown()
	})
}

func (cl *Client) teardown() {
	nerr := cl.sock.Close()
	cl.goMu.Lock()
	cl.goStopped = true
	cl.goMu.Unlock()
	cl.wg.Wait()
	cl.waker.close()
	cl.sendMu.Lock()
	cl.sendGone = true
	cl.sendMu.Unlock()
	select {
	case <-cl.readerWake:
		// Handed to the background reader just before kill, which then
		// returned without it: do its last duty.
		cl.drainAndFail()
	default:
	}
	cl.takeRoleForGood()
	var bellErr error
	if b := cl.waker.bells[wRespCons]; b != nil {
		bellErr = closeErr("close response bell", b.close()) // no caller sleeps on it any more
	}
	cl.dispLock <- struct{}{}
	var berr error
	if cl.large {
		cl.largeLock <- struct{}{}
		berr = closeErr("unmap body segments", errors.Join(cl.reqOut.close(), cl.respIn.close(), cl.dispIn.close()))
	}
	cl.ctlMu.Lock()
	cl.ctlGone = true
	cl.ctlMu.Unlock()
	serr := cl.seg.Close()
	var eerr error
	if fd := cl.efd.Load(); fd >= 0 {
		eerr = unix.Close(int(fd))
	}
	cl.tornErr = errors.Join(closeErr("close socket", nerr), serr, closeErr("close dispatch fd", eerr), bellErr, berr)
	close(cl.torn)
}

// Close ends the connection and releases its resources. Calls in flight
// fail with ErrDisconnected. It waits until the shared memory is unmapped,
// which needs every Response to be released. Idempotent: every call
// returns what releasing the resources failed with (the socket, the
// segment, the dispatch descriptor, the response bell; errors.Join), nil
// normally.
func (cl *Client) Close() error {
	cl.kill(fmt.Errorf("%w: %w", ErrDisconnected, ErrClosed))
	<-cl.torn
	return cl.tornErr
}

// closeErr wraps the error of closing what, ignoring nil.
func closeErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("ipc: %s: %w", what, err)
}

// Done is closed when the connection has ended.
func (cl *Client) Done() <-chan struct{} { return cl.done }

// Err returns why the connection ended, or nil while it is up.
func (cl *Client) Err() error {
	select {
	case <-cl.done:
		return cl.err
	default:
		return nil
	}
}

// deadErr is the error of an operation that found the connection ended.
func (cl *Client) deadErr() error {
	<-cl.done
	if errors.Is(cl.err, ErrDisconnected) {
		return cl.err
	}
	return fmt.Errorf("%w: %w", ErrDisconnected, cl.err)
}

// ringErr maps an error of a ring operation.
func (cl *Client) ringErr(err error) error {
	switch {
	case errors.Is(err, ring.ErrClosed):
		select {
		case <-cl.done:
			return cl.deadErr()
		default:
			return cl.withCloseReason(fmt.Errorf("%w: server closed the connection", ErrDisconnected), false)
		}
	case errors.Is(err, ring.ErrCorrupt):
		err = fmt.Errorf("%w: %w", ErrProtocol, err)
		cl.kill(err)
		return err
	}
	return err
}

// ServerCred returns the server's credentials (SO_PEERCRED at connect).
func (cl *Client) ServerCred() Cred { return cl.serverCred }

// Features returns the feature bits the server granted.
func (cl *Client) Features() uint32 { return cl.features }

// MaxRequest returns the largest request body a call may send: what the
// request ring carries or, with FeatureLarge, the smaller of
// ClientOptions.MaxMessage and the server's Config.MaxMessage if that is
// more. A larger one fails with ErrTooLarge.
func (cl *Client) MaxRequest() int { return cl.maxReq }

// MaxResponse returns the largest response body the client receives:
// what the response ring carries or, with FeatureLarge,
// ClientOptions.MaxMessage if that is more. A call whose response is
// larger (or above the server's limits) fails with ErrTooLarge.
func (cl *Client) MaxResponse() int { return cl.maxResp }

// MaxDispatch returns the largest dispatch message body the client
// receives, as MaxResponse; Recv returns ErrTooLarge for a larger one
// (and OnDispatch does not see it).
func (cl *Client) MaxDispatch() int { return cl.maxDisp }

// Large reports whether the connection carries bodies larger than its
// rings (FeatureLarge was asked for and granted).
func (cl *Client) Large() bool { return cl.large }

// RingSizes returns the data sizes of the request, response and dispatch
// rings as the server granted them: what was asked, rounded up to a power
// of two, then clamped to the server's limits (Config.MaxRingSize,
// MinRingSize), or the server's Config.RingSize where 0 was asked.
func (cl *Client) RingSizes() (request, response, dispatch int) {
	return cl.ringSizes[0], cl.ringSizes[1], cl.ringSizes[2]
}

// reqTooLarge is the error of a request body of n bytes above maxReq.
func (cl *Client) reqTooLarge(n int) error {
	if cl.large {
		return tooLarge("call: request", n, cl.maxReq, raiseLarge)
	}
	return tooLarge("call: request", n, cl.maxReq, raiseReqRing)
}

// lock acquires a channel lock, giving up when ctx ends or the
// connection does.
func (cl *Client) lock(ctx context.Context, l chan struct{}) error {
	select {
	case l <- struct{}{}:
		return nil
	default:
	}
	select {
	case l <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-cl.done:
		return cl.deadErr()
	}
}

// goTracked runs setup (if not nil) and starts f on a goroutine counted
// in wg, unless teardown has begun; it reports whether it did. Both
// happen under goMu, so teardown either waits for f or sees what setup
// did.
func (cl *Client) goTracked(setup func(), f func()) bool {
	cl.goMu.Lock()
	defer cl.goMu.Unlock()
	if cl.goStopped {
		return false
	}
	if setup != nil {
		setup()
	}
	cl.wg.Add(1)
	go func() {
		defer cl.wg.Done()
		f()
	}()
	return true
}
