//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/ringipc/ringipc/ipc"
)

// The ipc scenarios (call, pipeline, dispatch) run an ipc server in a
// child process and its client in the parent. The parent opens the
// listening socket on a fresh abstract address and hands it to the child
// as fd 3, so that the address is known and listening before the child
// has even started; the child serves it and says ready, and the parent
// dials. The run ends when the parent closes its client: the child sees
// the connection end, and its server role returns.
//
// The child's service answers benchEcho with a copy of the request body
// (ResponseWriter.Respond) and benchStream by starting a goroutine that
// dispatches frames carrying sequence numbers 0, 1, ... as fast as
// Conn.Dispatch takes them, until the connection ends.

const (
	benchService = 1
	benchEcho    = 1 // respond with the request body
	benchStream  = 2 // start the dispatch stream, respond empty
	benchFrame   = 3 // the id of every dispatch message of the stream
	benchEchoZC  = 4 // respond in place with a body of the request's size, its head copied (-zerocopy)
)

// maxIPCRing is the largest ring the child's server is configured to grant.
const maxIPCRing = 1 << 30

// maxIPCBody is the largest body every ring of an ipc connection with
// rings of dataSize bytes carries.
func maxIPCBody(dataSize int) int {
	return min(ipc.MaxRequestBody(dataSize), ipc.MaxResponseBody(dataSize), ipc.MaxDispatchBody(dataSize))
}

func init() {
	registerChild("ipc-server", ipcServerChild)
}

var ipcAddrSeq atomic.Uint64

// newIPCListener opens a listener on a fresh abstract address and returns
// the address and a descriptor of the listening socket for the child. The
// parent's own descriptor is closed: the socket lives on in the file,
// which the caller closes once the child has started.
func newIPCListener() (string, *os.File, error) {
	addr := fmt.Sprintf("@ringbench-%d-%d", os.Getpid(), ipcAddrSeq.Add(1))
	l, err := ipc.Listen(addr, 0)
	if err != nil {
		return "", nil, err
	}
	f, err := l.File()
	l.Close() // abstract: there is no file to unlink
	if err != nil {
		return "", nil, fmt.Errorf("listener: %w", err)
	}
	return addr, f, nil
}

// spawnIPCServer starts the ipc server child on a fresh listener and
// waits until it serves; it returns the address to dial.
func spawnIPCServer(h *harness) (string, error) {
	addr, f, err := newIPCListener()
	if err != nil {
		return "", err
	}
	err = h.spawn("ipc-server", h.rc.childParams(0), f)
	f.Close()
	if err != nil {
		return "", err
	}
	if err := h.waitReady(); err != nil {
		return "", err
	}
	return addr, nil
}

// startIPC spawns the server child, waits until it serves and dials it.
// The client is closed when the measurement aborts; the caller closes it
// when its loops are over, which ends the run.
func startIPC(h *harness, opts *ipc.ClientOptions) (*ipc.Client, error) {
	rc := h.rc
	addr, err := spawnIPCServer(h)
	if err != nil {
		return nil, err
	}
	o := ipc.ClientOptions{}
	if opts != nil {
		o = *opts
	}
	o.RequestRingSize, o.ResponseRingSize, o.DispatchRingSize = rc.ringSize, rc.ringSize, rc.ringSize
	o.MaxRingSize = maxIPCRing // accept the rings asked for, above the default bound
	o.Spin = rc.spin
	ctx, cancel := context.WithTimeout(bg, readyTimeout)
	defer cancel()
	cl, err := ipc.Dial(ctx, addr, benchService, &o)
	if err != nil {
		if herr := h.err(); herr != nil {
			return nil, herr // the child died: that is the cause
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	if cl.MaxRequest() < rc.size {
		cl.Close()
		return nil, fmt.Errorf("the server granted requests of up to %d bytes, want %d", cl.MaxRequest(), rc.size)
	}
	h.onAbort(func() { cl.Close() })
	return cl, nil
}

// ipcServerChild serves the bench service on the listener it was given
// until the parent's connection ends. It returns the frames it sent:
// responses plus dispatch messages.
func ipcServerChild(cc *childCtx) (uint64, error) {
	ln, err := net.FileListener(cc.files[0])
	cc.files[0].Close()
	if err != nil {
		return 0, fmt.Errorf("listener: %w", err)
	}
	return serveBench(ln, cc.p, cc.ready)
}

// serveBench serves the bench service on ln, calls ready, and returns
// once p.Clients connections (at least one) have ended: the parent's, or
// fanin's clients.
func serveBench(ln net.Listener, p childParams, ready func()) (uint64, error) {
	// The server's admission limits make room for the benchmark's own
	// clients, all of one uid and dialing at once (fanin), with rings of
	// up to maxIPCRing: the defaults would refuse the ninth handshake in
	// progress, and the memory of three 1 GiB rings.
	clients := max(p.Clients, 1)
	srv, err := ipc.NewServer(&ipc.Config{
		RingSize:            p.RingSize,
		MaxRingSize:         maxIPCRing,
		Spin:                p.Spin,
		MaxHandshakesPerUID: max(clients, ipc.DefaultMaxHandshakesPerUID),
		MaxConnsPerUID:      max(clients, ipc.DefaultMaxConnsPerUID),
		MaxConns:            max(clients, ipc.DefaultMaxConns),
		MaxMemory:           max(int64(clients)*(3*int64(p.RingSize)+1<<20), ipc.DefaultMaxMemory),
		// The dispatch scenario measures a client that keeps up at its
		// own pace: the producer waits for it rather than disconnect it.
		DispatchPolicy: ipc.PolicyBlock,
	})
	if err != nil {
		ln.Close()
		return 0, err
	}
	var (
		responses atomic.Uint64
		streams   sync.WaitGroup
		streamMu  sync.Mutex
		streamN   uint64
		streamErr error
		gone      = make(chan struct{})
		goneOnce  sync.Once
		left      atomic.Int64
	)
	left.Store(int64(max(p.Clients, 1)))
	stream := func(c *ipc.Conn) {
		n, err := dispatchStream(c, payload(p.Size), callPacer(p.Rate, 0, 1), p.ZeroCopy)
		streamMu.Lock()
		streamN += n
		streamErr = errors.Join(streamErr, err)
		streamMu.Unlock()
	}
	err = srv.Register(&ipc.Service{
		ID:   benchService,
		Name: "ringbench",
		OnDisconnect: func(c *ipc.Conn, err error) {
			if left.Add(-1) == 0 {
				goneOnce.Do(func() { close(gone) })
			}
		},
		Handlers: map[uint16]ipc.Handler{
			benchEcho: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) {
				if w.Respond(r.Data) == nil {
					responses.Add(1)
				}
			}),
			benchEchoZC: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) {
				b, err := w.Reserve(len(r.Data))
				if err != nil {
					return
				}
				copy(b, head(r.Data))
				if w.Commit() == nil {
					responses.Add(1)
				}
			}),
			benchStream: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) {
				c := r.Conn
				streams.Go(func() { stream(c) })
				w.Respond(nil)
			}),
		},
	})
	if err != nil {
		ln.Close()
		return 0, err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	ready()
	var runErr error
	select {
	case <-gone: // the parent, or every fanin client, closed: the run is over
	case err := <-served:
		runErr = fmt.Errorf("serve: %w", err)
	}
	streams.Wait()
	srv.Close()
	streamMu.Lock()
	defer streamMu.Unlock()
	return responses.Load() + streamN, errors.Join(runErr, streamErr)
}

// dispatchStream dispatches body with sequence numbers 0, 1, ... in its
// first 8 bytes until the connection ends, and returns how many it sent.
// Paced by pc, it sends each in its slot, stamped at byte 8 (see stamps).
// Dispatch waits (serveBench sets Config.DispatchPolicy to PolicyBlock) when the ring and
// the connection's queue are full. With zc (-zerocopy) each message is
// reserved in the ring (Conn.ReserveDispatch, which waits for room) and
// only its head written.
func dispatchStream(c *ipc.Conn, body []byte, pc *pacer, zc bool) (uint64, error) {
	for seq := uint64(0); ; seq++ {
		putTag(body, seq)
		if pc.paced() {
			putTag(body[8:], uint64(pc.monoSlot(pc.wait())))
		}
		var err error
		if zc {
			var d ipc.DispatchReservation
			if d, err = c.ReserveDispatch(bg, benchFrame, len(body)); err == nil {
				copy(d.Bytes(), head(body))
				err = d.Commit()
			}
		} else {
			err = c.Dispatch(bg, benchFrame, body)
		}
		if err != nil {
			select {
			case <-c.Done(): // the parent closed its client
				return seq, nil
			default:
			}
			if errors.Is(err, ipc.ErrDisconnected) {
				return seq, nil
			}
			return seq, fmt.Errorf("dispatch %d: %w", seq, err)
		}
	}
}
