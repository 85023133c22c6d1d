//go:build linux

package ipc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
	"golang.org/x/sys/unix"
)

// ClientOptions tune Dial. The zero value asks for the server's defaults.
type ClientOptions struct {
	// Ring data sizes to ask for: powers of two; 0 leaves the choice to
	// the server, which clamps what it is asked to its limits.
	RequestRingSize  int
	ResponseRingSize int
	DispatchRingSize int
	// Features to ask for (Feature... bits); Client.Features says what
	// the server granted.
	Features uint32
	// Wait is how the client waits on its rings (ring.WaitPolicy): the
	// zero value lets Spin decide, and with Spin 0 that is
	// ring.WaitAdaptive, which polls only while the server answers
	// within the budget and sleeps at once otherwise.
	Wait ring.WaitPolicy
	// Spin is the polling budget (ring.Options.Spin): with Wait left 0, 0
	// means adaptive, a positive value a fixed budget (ring.WaitSpin), a
	// negative value sleep at once (ring.WaitSleep).
	Spin time.Duration
	// NonBlocking makes calls fail with ErrTryAgain instead of waiting
	// when the request ring is full.
	NonBlocking bool
	// OnDispatch, when set, receives every dispatch message on a goroutine
	// of the client; body is valid only during the call. Recv is then
	// unavailable.
	OnDispatch func(id uint16, body []byte)
	// AuthorizeServer judges the server's credentials (SO_PEERCRED of the
	// socket, as of the server's listen) right after connect, before the
	// client sends anything; an error ends Dial with
	// ErrUnauthorizedServer. Nil means DefaultAuthorizeServer. Whoever
	// can bind the address first is "the server": see docs/ipc.md,
	// Security and limits, for when a path socket in a protected
	// directory is the better guard.
	AuthorizeServer func(Cred) error
	// MaxRingSize bounds the ring sizes the client accepts from the
	// server (a power of two, at most RingSizeLimit; 0 means
	// DefaultMaxRingSize). A ring size asked for above it is an error;
	// the server may grant no more than was asked (or MinRingSize if
	// less was asked), and for a size left to the server, no more than
	// MaxRingSize. A larger grant fails Dial before the segment is
	// mapped.
	MaxRingSize int
}

// DefaultAuthorizeServer is the server check of a client whose
// ClientOptions.AuthorizeServer is nil. A client running as root (euid
// 0) talks only to a server running as root: any local user can bind an
// abstract name, or a path in a directory it can write, before the real
// server does, and a root client would then hand requests (and trust the
// answers of) that user. Other clients accept any server: they have no
// privilege an impostor could borrow, and services commonly run as their
// own user. Set AuthorizeServer to pin the server's uid.
func DefaultAuthorizeServer(c Cred) error {
	if os.Geteuid() == 0 && c.UID != 0 {
		return fmt.Errorf("a root client accepts only a root server, not uid %d", c.UID)
	}
	return nil
}

// maxRing returns the largest ring size the client accepts.
func (o *ClientOptions) maxRing() (uint64, error) {
	if o.MaxRingSize == 0 {
		return DefaultMaxRingSize, nil
	}
	m := o.MaxRingSize
	if m < MinRingSize || !isPow2(uint64(m)) || uint64(m) > RingSizeLimit {
		return 0, fmt.Errorf("%w: MaxRingSize %d is not a power of two in [%d, %d]", os.ErrInvalid, m, MinRingSize, uint64(RingSizeLimit))
	}
	return uint64(m), nil
}

// Client is a connection to a service.
//
// A Client is safe for concurrent use by many goroutines. Calls from
// different goroutines are pipelined: each request carries a correlation
// id, and responses are matched to their callers whatever their order.
type Client struct {
	// Set by Dial, read-only afterwards.
	nc          *net.UnixConn
	rc          syscall.RawConn
	seg         *shmseg.Segment
	ctl         []byte
	reqP        *ring.Producer
	respC       *ring.Consumer
	dispC       *ring.Consumer
	waker       *sockWaker
	serverCred  Cred
	features    uint32
	maxReq      int
	maxDisp     int
	nonBlocking bool
	onDispatch  func(uint16, []byte)

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
	// waits for room in the request ring, dispLock guards dispC.
	spaceLock chan struct{}
	dispLock  chan struct{}

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

	// ctlMu keeps the segment mapped while FlowControl reads the control
	// block: FlowControl holds it shared, and teardown takes it
	// exclusively to set ctlGone before it unmaps.
	ctlMu   sync.RWMutex
	ctlGone bool
	// testHookFlowControl, set only by tests, runs in FlowControl after
	// its check of ctlGone, before it reads the control block.
	testHookFlowControl func()

	notifyOnce sync.Once
	efd        atomic.Int32 // eventfd of DispatchFd, -1 until created
	rearm      chan struct{}
	notifyErr  error
}

// waiter is one call in flight. Whoever takes it out of Client.waiters
// (the reader that found its response, or kill) fills in the result and
// then signals ch, unless it is the caller itself; until then the caller
// does not touch the result fields, afterwards only the caller does.
type waiter struct {
	ch chan struct{} // buffered 1
	// gen counts the waiter's trips back to the pool (putWaiter). A
	// PendingCall or Response keeps the gen it was made with, so a copy
	// that outlived its call finds a different one and cannot act on
	// the waiter's next call. Atomic: a stale handle may look at it
	// while the waiter serves another goroutine.
	gen atomic.Uint64
	waiterState
}

// waiterState is what putWaiter clears.
type waiterState struct {
	pending bool   // in Client.waiters; guarded by Client.mu
	corr    uint64 // its correlation id while pending; guarded by Client.mu
	reader  bool   // the caller holds the reader role
	into    bool   // CallInto: copy into buf
	zc      bool   // zero copy: hand over the reader role with the record
	stage   zcStage
	buf     []byte
	out     []byte
	n       int
	err     error
	view    []byte
}

// Dial connects to the server at address (a path, or "@name" for an
// abstract socket) and opens service. ctx bounds the connect and the
// handshake. opts may be nil. While the server refuses because its
// handshake slots are all taken (ErrLimit with LimitHandshakes or
// LimitHandshakesPerUID), Dial tries again, waiting 1 ms doubling up to
// 100 ms, until ctx ends; every other refusal is returned at once.
func Dial(ctx context.Context, address string, service uint16, opts *ClientOptions) (*Client, error) {
	if opts == nil {
		opts = &ClientOptions{}
	}
	maxRing, err := opts.maxRing()
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	var sizes [3]uint64
	for i, s := range []int{opts.RequestRingSize, opts.ResponseRingSize, opts.DispatchRingSize} {
		if s < 0 || (s != 0 && !isPow2(uint64(s))) {
			return nil, fmt.Errorf("dial: %w: ring size %d is not a power of two", os.ErrInvalid, s)
		}
		if uint64(s) > maxRing {
			return nil, fmt.Errorf("dial: %w: ring size %d above MaxRingSize %d", os.ErrInvalid, s, maxRing)
		}
		sizes[i] = uint64(s)
	}
	// A server whose handshake slots are all taken refuses at once
	// (LimitHandshakes, LimitHandshakesPerUID): that is the server being
	// busy for a moment, not a verdict, so try again until ctx ends.
	var delay time.Duration
	var busy error // the last refusal for full handshake slots
	for {
		cl, err := dialOnce(ctx, address, service, sizes, opts)
		var rej *RejectError
		if err == nil || !errors.As(err, &rej) || rej.Status != statusLimit ||
			(rej.Code != LimitHandshakes && rej.Code != LimitHandshakesPerUID) {
			if err != nil && busy != nil && ctx.Err() != nil {
				err = fmt.Errorf("%w (%w)", ctx.Err(), busy)
			}
			return cl, err
		}
		busy = err
		delay = min(max(2*delay, dialRetryMin), dialRetryMax)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
	}
}

// Dial's waits between tries while the server's handshake slots are full.
const (
	dialRetryMin = time.Millisecond
	dialRetryMax = 100 * time.Millisecond
)

func dialOnce(ctx context.Context, address string, service uint16, sizes [3]uint64, opts *ClientOptions) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", address)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	uc := nc.(*net.UnixConn)
	cl, err := handshake(ctx, uc, service, sizes, opts)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	return cl, nil
}

func handshake(ctx context.Context, uc *net.UnixConn, service uint16, sizes [3]uint64, opts *ClientOptions) (*Client, error) {
	if dl, ok := ctx.Deadline(); ok {
		uc.SetDeadline(dl) //nolint:errcheck
	}
	stop := context.AfterFunc(ctx, func() { uc.SetDeadline(time.Unix(1, 0)) }) //nolint:errcheck
	defer stop()
	cred, err := peerCred(uc)
	if err != nil {
		return nil, err
	}
	authorize := opts.AuthorizeServer
	if authorize == nil {
		authorize = DefaultAuthorizeServer
	}
	if err := authorize(cred); err != nil {
		return nil, fmt.Errorf("%w: pid %d uid %d gid %d: %w", ErrUnauthorizedServer, cred.PID, cred.UID, cred.GID, err)
	}
	limits, err := grantLimits(sizes, opts)
	if err != nil {
		return nil, err
	}
	h := hello{version: Version, service: service, features: opts.Features, sizes: sizes}
	var hb [helloSize]byte
	h.encode(hb[:])
	// A server judges the client's credentials at accept, before the
	// hello: it may have refused and closed already, and then the write
	// fails while its reject reply waits to be read. Read it first.
	_, helloErr := uc.Write(hb[:])
	var rb [replySize]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	var fds []int
	for got := 0; got < replySize; {
		n, oobn, _, _, err := uc.ReadMsgUnix(rb[got:], oob)
		if oobn > 0 {
			fds = append(fds, parseRights(oob[:oobn])...)
		}
		if (err != nil || n == 0) && helloErr != nil {
			closeFds(fds)
			return nil, ctxErr(ctx, fmt.Errorf("send hello: %w", helloErr))
		}
		if err != nil {
			closeFds(fds)
			return nil, ctxErr(ctx, fmt.Errorf("read handshake reply: %w", err))
		}
		if n == 0 {
			closeFds(fds)
			return nil, fmt.Errorf("read handshake reply: %w: connection closed", ErrDisconnected)
		}
		got += n
	}
	r, err := decodeReply(rb[:])
	if err != nil {
		closeFds(fds)
		return nil, err
	}
	if r.status != statusOK {
		closeFds(fds)
		rej := &RejectError{Status: r.status, Code: r.detail}
		if r.status == statusBadVersion {
			return nil, fmt.Errorf("%w: server speaks version %d, client %d", rej, r.version, Version)
		}
		return nil, rej
	}
	if r.version != Version {
		closeFds(fds)
		return nil, fmt.Errorf("%w: server speaks version %d, client %d", ErrVersion, r.version, Version)
	}
	if len(fds) != 1 {
		closeFds(fds)
		return nil, fmt.Errorf("%w: %d descriptors with the reply, want 1", ErrProtocol, len(fds))
	}
	f := os.NewFile(uintptr(fds[0]), "ringipc-conn")
	// Judged before mapping: a segment of whatever size the server chose
	// would cost address space, and rings of that size memory.
	if err := checkSizes(&r, limits, f); err != nil {
		f.Close()
		return nil, err
	}
	seg, err := shmseg.OpenFile(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("attach connection segment: %w", err)
	}
	cl, err := attachClient(uc, seg, &r, cred, opts)
	if err != nil {
		seg.Close()
		return nil, err
	}
	uc.SetDeadline(time.Time{}) //nolint:errcheck
	cl.start()
	return cl, nil
}

// grantLimits returns the largest size of each ring the client accepts
// in the reply: what it asked for (raised to MinRingSize, as the server
// raises it), or MaxRingSize where it left the choice to the server.
func grantLimits(asked [3]uint64, opts *ClientOptions) ([3]uint64, error) {
	maxRing, err := opts.maxRing()
	if err != nil {
		return asked, err
	}
	var lim [3]uint64
	for i, a := range asked {
		lim[i] = maxRing
		if a != 0 {
			lim[i] = min(max(a, MinRingSize), maxRing)
		}
	}
	return lim, nil
}

// checkSizes refuses ring sizes above the client's limits and a segment
// larger than the granted rings need, from the reply and the size of f
// (fstat): nothing of the segment is mapped yet.
func checkSizes(r *reply, limits [3]uint64, f *os.File) error {
	names := [3]string{"request", "response", "dispatch"}
	for i, s := range r.sizes {
		if s > limits[i] {
			return fmt.Errorf("%w: server granted a %d-byte %s ring, above the %d bytes this client accepts",
				ErrTooLarge, s, names[i], limits[i])
		}
		if !isPow2(s) || s < MinRingSize {
			return fmt.Errorf("%w: %s ring size %d", ErrProtocol, names[i], s)
		}
	}
	_, need := layout(r.sizes, ringBytes)
	need = alignUp(need, uint64(os.Getpagesize()))
	if r.payload > need {
		return fmt.Errorf("%w: segment payload %d bytes, the granted rings need %d", ErrProtocol, r.payload, need)
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("attach connection segment: %w", err)
	}
	if fi.Size() != int64(shmseg.HeaderSize+r.payload) {
		return fmt.Errorf("%w: segment of %d bytes, the reply says %d of payload", ErrProtocol, fi.Size(), r.payload)
	}
	return nil
}

func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}

func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range msgs {
		if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}

func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// attachClient checks the reply against the segment it came with and
// attaches the rings. Every number comes from the peer: check it all.
func attachClient(uc *net.UnixConn, seg *shmseg.Segment, r *reply, cred Cred, opts *ClientOptions) (*Client, error) {
	mem := seg.Payload()
	g := seg.Geometry()
	if g != segmentGeometry(r.sizes, r.offs) {
		return nil, fmt.Errorf("%w: segment geometry %+v disagrees with the reply", ErrProtocol, g)
	}
	if r.ctlOff != 0 || r.payload != uint64(len(mem)) {
		return nil, fmt.Errorf("%w: control offset %d, payload %d (mapped %d)", ErrProtocol, r.ctlOff, r.payload, len(mem))
	}
	end := uint64(ctlSize)
	for i := range 3 {
		s, off := r.sizes[i], r.offs[i]
		if !isPow2(s) || s < MinRingSize || s > RingSizeLimit || off%ringAlign != 0 || off < end {
			return nil, fmt.Errorf("%w: ring %d: size %d at offset %d", ErrProtocol, i, s, off)
		}
		end = off + ringBytes(s)
		if end > uint64(len(mem)) {
			return nil, fmt.Errorf("%w: ring %d ends at %d, past the payload (%d)", ErrProtocol, i, end, len(mem))
		}
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	cl := &Client{
		nc:          uc,
		rc:          rc,
		seg:         seg,
		ctl:         mem[:ctlSize:ctlSize],
		serverCred:  cred,
		features:    r.features,
		maxReq:      MaxRequestBody(int(r.sizes[0])),
		maxDisp:     MaxDispatchBody(int(r.sizes[2])),
		nonBlocking: opts.NonBlocking,
		onDispatch:  opts.OnDispatch,
		spaceLock:   make(chan struct{}, 1),
		dispLock:    make(chan struct{}, 1),
		readerWake:  make(chan struct{}, 1),
		roleFreed:   make(chan struct{}, 1),
		ctx:         ctx,
		cancel:      cancel,
		done:        make(chan struct{}),
		torn:        make(chan struct{}),
		rearm:       make(chan struct{}, 1),
	}
	if uint32(cl.maxReq) != r.maxReq || uint32(cl.maxDisp) != r.maxDisp {
		cancel()
		return nil, fmt.Errorf("%w: reply limits %d/%d disagree with the ring sizes", ErrProtocol, r.maxReq, r.maxDisp)
	}
	cl.efd.Store(-1)
	cl.waker = newSockWaker(mem, r.offs, []int{wReqProd, wRespCons, wDispCons}, rc, cl.done)
	o := ringOptions(opts.Wait, opts.Spin, cl.waker)
	region := func(i int) []byte { return mem[r.offs[i] : r.offs[i]+ringBytes(r.sizes[i])] }
	if cl.reqP, err = ring.NewProducer(region(0), o); err == nil {
		if cl.respC, err = ring.NewConsumer(region(1), o); err == nil {
			cl.dispC, err = ring.NewConsumer(region(2), o)
		}
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%w: attach rings: %w", ErrProtocol, err)
	}
	for i := range 3 {
		g, err := ring.ReadGeometry(region(i))
		if err != nil || uint64(g.DataSize) != r.sizes[i] || g.Producers != 0 {
			cancel()
			return nil, fmt.Errorf("%w: ring %d geometry %+v, reply says %d bytes", ErrProtocol, i, g, r.sizes[i])
		}
	}
	if err := checkGrant(r, opts.Features, region); err != nil {
		cancel()
		return nil, err
	}
	return cl, nil
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
	cl.kill(readTokenLoop(cl.nc, cl.rc, cl.waker, cl.done))
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
	nerr := cl.nc.Close()
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
	cl.dispLock <- struct{}{}
	cl.ctlMu.Lock()
	cl.ctlGone = true
	cl.ctlMu.Unlock()
	serr := cl.seg.Close()
	var eerr error
	if fd := cl.efd.Load(); fd >= 0 {
		eerr = unix.Close(int(fd))
	}
	cl.tornErr = errors.Join(closeErr("close socket", nerr), serr, closeErr("close dispatch fd", eerr))
	close(cl.torn)
}

// Close ends the connection and releases its resources. Calls in flight
// fail with ErrDisconnected. It waits until the shared memory is unmapped,
// which needs every Response to be released. Idempotent: every call
// returns what releasing the resources failed with (the socket, the
// segment, the dispatch descriptor; errors.Join), nil normally.
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
			return fmt.Errorf("%w: server closed the connection", ErrDisconnected)
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

// MaxRequest returns the largest request body the request ring accepts.
func (cl *Client) MaxRequest() int { return cl.maxReq }

// FlowControl is the dispatch flow-control state the server publishes.
type FlowControl struct {
	Active  bool   // messages wait in the server's queue: the ring was full
	Queued  uint32 // how many
	Dropped uint64 // messages the server dropped for this client
	Events  uint64 // times the server's queue started filling
}

// FlowControl reads the server's flow-control state for this connection.
// Once the connection has been torn down it returns the zero value.
func (cl *Client) FlowControl() FlowControl {
	cl.ctlMu.RLock()
	defer cl.ctlMu.RUnlock()
	if cl.ctlGone {
		return FlowControl{}
	}
	if cl.testHookFlowControl != nil {
		cl.testHookFlowControl()
	}
	return FlowControl{
		Active:  atomic.LoadUint32(word32(cl.ctl, ctlFlow)) != 0,
		Queued:  atomic.LoadUint32(word32(cl.ctl, ctlQueued)),
		Dropped: atomic.LoadUint64(word64(cl.ctl, ctlDropped)),
		Events:  atomic.LoadUint64(word64(cl.ctl, ctlFlowEvents)),
	}
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

// Message is a dispatch message.
type Message struct {
	ID   uint16
	Data []byte
}

// Recv returns the next dispatch message (a copy), waiting until one
// arrives, ctx ends or the connection does. With ClientOptions.OnDispatch
// set, Recv, TryRecv and DispatchFd return ErrOnDispatch.
func (cl *Client) Recv(ctx context.Context) (Message, error) {
	if cl.onDispatch != nil {
		return Message{}, ErrOnDispatch
	}
	if err := cl.lock(ctx, cl.dispLock); err != nil {
		return Message{}, err
	}
	rec, err := cl.dispC.Peek(ctx)
	var m Message
	if err == nil {
		m, err = cl.takeMessage(rec)
	}
	<-cl.dispLock
	if err != nil {
		return Message{}, cl.ringErr(err)
	}
	return m, nil
}

// TryRecv returns the next dispatch message without waiting, or
// ErrTryAgain. With DispatchFd, call it until ErrTryAgain each time the
// descriptor polls readable.
func (cl *Client) TryRecv() (Message, error) {
	if cl.onDispatch != nil {
		return Message{}, ErrOnDispatch
	}
	if err := cl.lock(cl.ctx, cl.dispLock); err != nil {
		return Message{}, err
	}
	rec, err := cl.dispC.TryPeek()
	var m Message
	if err == nil {
		m, err = cl.takeMessage(rec)
	}
	<-cl.dispLock
	if err == ring.ErrEmpty {
		cl.resetNotify()
		return Message{}, ErrTryAgain
	}
	if err != nil {
		return Message{}, cl.ringErr(err)
	}
	return m, nil
}

// dispatchID returns the message id of a dispatch record. The type's
// bits 16..31 must be zero (docs/ipc.md 5.3): a record with any of them
// set is not a message of this protocol, and delivering it under its
// low 16 bits would hand the application something the server never
// meant. It ends the connection instead, with ErrProtocol.
func (cl *Client) dispatchID(rec ring.Record) (uint16, error) {
	if rec.Type>>16 != 0 {
		err := fmt.Errorf("%w: dispatch record type %#x", ErrProtocol, rec.Type)
		cl.kill(err)
		return 0, err
	}
	return uint16(rec.Type), nil
}

// takeMessage copies a dispatch record out and releases it; dispLock held.
func (cl *Client) takeMessage(rec ring.Record) (Message, error) {
	id, err := cl.dispatchID(rec)
	if err != nil {
		return Message{}, err
	}
	m := Message{ID: id, Data: append([]byte(nil), rec.Data...)}
	return m, cl.dispC.Release()
}

func (cl *Client) dispatchLoop() {
	defer cl.wg.Done()
	for {
		if err := cl.lock(cl.ctx, cl.dispLock); err != nil {
			return
		}
		rec, err := cl.dispC.Peek(cl.ctx)
		if err == nil {
			var id uint16
			if id, err = cl.dispatchID(rec); err == nil {
				cl.onDispatch(id, rec.Data)
				err = cl.dispC.Release()
			}
		}
		<-cl.dispLock
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				cl.kill(cl.ringErr(err))
			}
			return
		}
	}
}

// DispatchFd returns an eventfd that polls readable while dispatch
// messages may be waiting, for an external poll loop: when readable, call
// TryRecv until it returns ErrTryAgain, which re-arms it. It stays
// readable once the connection has ended. The Client owns the descriptor.
func (cl *Client) DispatchFd() (int, error) {
	if cl.onDispatch != nil {
		return -1, ErrOnDispatch
	}
	cl.notifyOnce.Do(func() {
		fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		if err != nil {
			cl.notifyErr = fmt.Errorf("dispatch fd: %w", err)
			return
		}
		// Teardown closes the descriptor it finds stored; goTracked
		// orders the store before teardown looks, or refuses.
		if !cl.goTracked(func() { cl.efd.Store(int32(fd)) }, cl.notifyLoop) {
			unix.Close(fd)
			cl.notifyErr = fmt.Errorf("dispatch fd: %w", ErrDisconnected)
		}
	})
	return int(cl.efd.Load()), cl.notifyErr
}

// notifyLoop waits (parked on the socket) for a dispatch message, makes
// the eventfd readable, and waits for TryRecv to find the ring empty.
func (cl *Client) notifyLoop() {
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	for {
		err := cl.lock(cl.ctx, cl.dispLock)
		if err == nil {
			// Peeking leaves the record in place for TryRecv.
			_, err = cl.dispC.Peek(cl.ctx)
			<-cl.dispLock
		}
		unix.Write(int(cl.efd.Load()), one) //nolint:errcheck // a full counter is still readable
		if err != nil {
			return
		}
		select {
		case <-cl.rearm:
		case <-cl.done:
			return
		}
	}
}

func (cl *Client) resetNotify() {
	fd := cl.efd.Load()
	if fd < 0 {
		return
	}
	var b [8]byte
	unix.Read(int(fd), b[:]) //nolint:errcheck // EAGAIN: already reset
	select {
	case cl.rearm <- struct{}{}:
	default:
	}
}
