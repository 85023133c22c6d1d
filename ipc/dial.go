//go:build linux

package ipc

// Dialing: the client's side of the handshake (docs/ipc.md §3), from the
// connect to an attached Client.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
	"golang.org/x/sys/unix"
)

// ClientOptions tune Dial. The zero value asks for the server's defaults.
type ClientOptions struct {
	// Ring data sizes to ask for; a size that is not a power of two is
	// rounded up to one. 0 leaves the choice to the server, which clamps
	// what it is asked to its limits: Client.RingSizes says what it
	// granted.
	RequestRingSize  int
	ResponseRingSize int
	DispatchRingSize int
	// Features to ask for (Feature... bits); Client.Features says what
	// the server granted. Dial asks for FeatureCloseReason whatever this
	// says.
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
	// MaxMessage is the largest body the client sends in a request and
	// accepts in a response or dispatch message: bodies larger than
	// their ring travel in a body segment (FeatureLarge, which the client
	// asks for unless MaxMessage is negative; docs/ipc.md §5.4). The
	// server's Config.MaxMessage bounds requests too: Client.MaxRequest
	// says the smaller. 0 means DefaultMaxMessage; negative means no
	// large bodies. At most MaxMessageLimit.
	MaxMessage int
	// MaxRingSize bounds the ring sizes the client accepts from the
	// server (rounded up to a power of two, at most RingSizeLimit; 0
	// means DefaultMaxRingSize). A ring size asked for above it is an error;
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
	m := roundRingSize(o.MaxRingSize)
	if m < MinRingSize || !isPow2(uint64(m)) || uint64(m) > RingSizeLimit {
		return 0, fmt.Errorf("%w: MaxRingSize %d is not in [%d, %d]", os.ErrInvalid, o.MaxRingSize, MinRingSize, uint64(RingSizeLimit))
	}
	return uint64(m), nil
}

// asked returns the feature bits the client asks for: Features, and
// FeatureLarge with FeatureProgress unless MaxMessage is negative.
func (o *ClientOptions) asked() uint32 {
	if o.MaxMessage < 0 {
		return o.Features &^ (FeatureLarge | FeatureProgress)
	}
	if !askProgress {
		return o.Features&^FeatureProgress | FeatureLarge
	}
	return o.Features | FeatureLarge | FeatureProgress
}

// askProgress: Dial asks for FeatureProgress with FeatureLarge. (A
// variable so that a test can dial as a client that does not.)
var askProgress = true

// maxMessage returns ClientOptions.MaxMessage with its default.
func (o *ClientOptions) maxMessage() int {
	if o.MaxMessage == 0 {
		return DefaultMaxMessage
	}
	return o.MaxMessage
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
	if opts.MaxMessage > MaxMessageLimit {
		return nil, fmt.Errorf("dial: %w: MaxMessage %d above MaxMessageLimit %d", os.ErrInvalid, opts.MaxMessage, MaxMessageLimit)
	}
	var sizes [3]uint64
	for i, asked := range []int{opts.RequestRingSize, opts.ResponseRingSize, opts.DispatchRingSize} {
		s := roundRingSize(asked)
		if s < 0 || (s != 0 && !isPow2(uint64(s))) {
			return nil, fmt.Errorf("dial: %w: ring size %d", os.ErrInvalid, asked)
		}
		if uint64(s) > maxRing {
			return nil, fmt.Errorf("dial: %w: ring size %d (rounded up to %d) above MaxRingSize %d", os.ErrInvalid, asked, s, maxRing)
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

// bindDeadline makes uc's reads and writes end with ctx: at its
// deadline, or at once when it is cancelled. The caller calls stop when
// the handshake is over.
func bindDeadline(ctx context.Context, uc *net.UnixConn) (stop func() bool) {
	if dl, ok := ctx.Deadline(); ok {
		uc.SetDeadline(dl) //nolint:errcheck
	}
	return context.AfterFunc(ctx, func() { uc.SetDeadline(time.Unix(1, 0)) }) //nolint:errcheck
}

// judgeServer reads the server's credentials and judges them with
// authorize (nil: DefaultAuthorizeServer), before the client sends
// anything.
func judgeServer(uc *net.UnixConn, authorize func(Cred) error) (Cred, error) {
	cred, err := peerCred(uc)
	if err != nil {
		return cred, err
	}
	if authorize == nil {
		authorize = DefaultAuthorizeServer
	}
	if err := authorize(cred); err != nil {
		return cred, fmt.Errorf("%w: pid %d uid %d gid %d: %w", ErrUnauthorizedServer, cred.PID, cred.UID, cred.GID, err)
	}
	return cred, nil
}

func handshake(ctx context.Context, uc *net.UnixConn, service uint16, sizes [3]uint64, opts *ClientOptions) (*Client, error) {
	// Asked for always; the hello and the grant check both see them.
	withDefaults := *opts
	withDefaults.Features |= defaultFeatures
	opts = &withDefaults
	stop := bindDeadline(ctx, uc)
	defer stop()
	cred, err := judgeServer(uc, opts.AuthorizeServer)
	if err != nil {
		return nil, err
	}
	limits, err := grantLimits(sizes, opts)
	if err != nil {
		return nil, err
	}
	h := hello{version: Version, service: service, features: opts.asked(), sizes: sizes}
	var hb [helloSize]byte
	h.encode(hb[:])
	// A server judges the client's credentials at accept, before the
	// hello: it may have refused and closed already, and then the write
	// fails while its reject reply waits to be read. Read it first.
	sent := monoClockNow() // the server's ctlClock reading comes after this
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
	gotReply := monoClockNow() // and before this
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
	if cl.features&FeatureCancel != 0 {
		cl.cancelOn = true
		cl.clockOffset = clockOffset(int64(atomic.LoadUint64(word64(cl.ctl, ctlClock))), sent, gotReply)
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
func attachClient(uc *net.UnixConn, seg *shmseg.Segment, r *reply, cred Cred, opts *ClientOptions) (_ *Client, err error) {
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
	sock, err := newQuietSock(uc)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			sock.release()
		}
	}()
	rc := syscall.RawConn(sock)
	ctx, cancel := context.WithCancel(context.Background())
	cl := &Client{
		sock:        sock,
		rc:          rc,
		seg:         seg,
		ctl:         mem[:ctlSize:ctlSize],
		serverCred:  cred,
		features:    r.features,
		ringSizes:   [3]int{int(r.sizes[0]), int(r.sizes[1]), int(r.sizes[2])},
		ringReq:     MaxRequestBody(int(r.sizes[0])),
		maxReq:      MaxRequestBody(int(r.sizes[0])),
		maxResp:     MaxResponseBody(int(r.sizes[1])),
		srvResp:     MaxResponseBody(int(r.sizes[1])),
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
	if err := checkGrant(r, opts.asked(), region); err != nil {
		cancel()
		return nil, err
	}
	if r.features&FeatureLarge != 0 {
		// Read once: the server's limit for requests, written before
		// the reply.
		srvMax := atomic.LoadUint64(word64(cl.ctl, ctlMaxMessage))
		if srvMax == 0 {
			cancel()
			return nil, fmt.Errorf("%w: FeatureLarge granted with a MaxMessage of 0", ErrProtocol)
		}
		own := opts.maxMessage()
		cl.large = true
		cl.maxReq = max(cl.maxReq, int(min(srvMax, uint64(own))))
		cl.maxResp = max(cl.maxResp, own)
		cl.srvResp = max(cl.srvResp, int(min(srvMax, MaxMessageLimit)))
		cl.maxDisp = max(cl.maxDisp, own)
		cl.reqOut = bodyOut{tok: tokReqBody, limit: cl.maxReq}
		cl.respIn = newBodyIn("response", cl.maxResp, "ClientOptions.MaxMessage raises it")
		cl.dispIn = newBodyIn("dispatch message", cl.maxDisp, "ClientOptions.MaxMessage raises it")
		cl.waker.bodies[tokRespBody-tokReqBody] = cl.respIn
		cl.waker.bodies[tokDispBody-tokReqBody] = cl.dispIn
		cl.largeLock = make(chan struct{}, 1)
	}
	// The handshake is over: from here on the socket is polled for input
	// only (quietSock).
	if err := sock.quiet(true); err != nil {
		cancel()
		return nil, err
	}
	if b, err := newBell(); err == nil {
		// Without one (out of descriptors), answers wake callers
		// through the word's channel, one thread more per answer.
		cl.waker.bells[wRespCons] = b
	}
	return cl, nil
}
