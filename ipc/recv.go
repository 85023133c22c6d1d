//go:build linux

package ipc

// Receiving dispatch messages: Recv and TryRecv, the OnDispatch loop, the
// external loop's DispatchFd, and the server's flow-control state.

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/ringipc/ringipc/internal/spin"
	"github.com/ringipc/ringipc/ring"
	"golang.org/x/sys/unix"
)

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

// Message is a dispatch message.
type Message struct {
	ID   uint16
	Data []byte
}

// Recv returns the next dispatch message (a copy), waiting until one
// arrives, ctx ends or the connection does. With ClientOptions.OnDispatch
// set, Recv, TryRecv and DispatchFd return ErrOnDispatch.
func (cl *Client) Recv(ctx context.Context) (Message, error) {
	return cl.recv(ctx, true)
}

// TryRecv returns the next dispatch message without waiting, or
// ErrTryAgain. With DispatchFd, call it until ErrTryAgain each time the
// descriptor polls readable.
func (cl *Client) TryRecv() (Message, error) {
	m, err := cl.recv(cl.ctx, false)
	if err == ring.ErrEmpty {
		cl.resetNotify()
		return Message{}, ErrTryAgain
	}
	return m, err
}

// recv is Recv (wait) and TryRecv: it takes the next message under
// dispLock. A lock error comes back as it is, a ring error through
// ringErr, except TryPeek's bare ring.ErrEmpty.
func (cl *Client) recv(ctx context.Context, wait bool) (Message, error) {
	if cl.onDispatch != nil {
		return Message{}, ErrOnDispatch
	}
	if err := cl.lock(ctx, cl.dispLock); err != nil {
		return Message{}, err
	}
	var rec ring.Record
	var err error
	if wait {
		rec, err = cl.dispC.Peek(ctx)
	} else {
		rec, err = cl.dispC.TryPeek()
	}
	var m Message
	if err == nil {
		m, err = cl.takeMessage(ctx, rec)
	}
	<-cl.dispLock
	if err == ring.ErrEmpty {
		return Message{}, err
	}
	if errors.Is(err, ErrTooLarge) || errors.Is(err, ErrProtocol) {
		return Message{}, err
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
	hi := rec.Type >> 16
	if cl.large {
		hi &^= typeLarge >> 16
	}
	if hi != 0 {
		err := fmt.Errorf("%w: dispatch record type %#x", ErrProtocol, rec.Type)
		cl.kill(err)
		return 0, err
	}
	return uint16(rec.Type), nil
}

// takeMessage copies a dispatch record out and releases it; dispLock
// held. A large message above ClientOptions.MaxMessage is released
// unread and returned as an ErrTooLarge error.
func (cl *Client) takeMessage(ctx context.Context, rec ring.Record) (Message, error) {
	id, body, large, err := cl.dispatchBody(ctx, rec)
	if err != nil && !errors.Is(err, ErrTooLarge) {
		return Message{}, err
	}
	var m Message
	if err == nil {
		m = Message{ID: id, Data: append([]byte(nil), body...)}
	}
	if rerr := cl.releaseDisp(large); rerr != nil {
		return Message{}, rerr
	}
	return m, err
}

// dispatchBody returns a dispatch record's id and body: the record's
// payload, or with the large bit its body in the dispatch body segment.
func (cl *Client) dispatchBody(ctx context.Context, rec ring.Record) (id uint16, body []byte, large bool, err error) {
	if id, err = cl.dispatchID(rec); err != nil {
		return 0, nil, false, err
	}
	if rec.Type&typeLarge == 0 {
		return id, rec.Data, false, nil
	}
	body, _, err = cl.largeBody(ctx, cl.dispIn, rec.Data)
	return id, body, true, err
}

// releaseDisp releases the dispatch record read last; a large one at
// once (the server may wait to reuse its segment).
func (cl *Client) releaseDisp(large bool) error {
	if large {
		return releaseLarge(cl.dispC)
	}
	return cl.dispC.Release()
}

// dispatchBatch bounds the messages dispatchLoop delivers under one hold
// of dispLock (teardown, which takes the lock, waits for at most this
// many callbacks): taking the lock for each cost a 64-byte message about
// a quarter of its handling.
const dispatchBatch = 64

func (cl *Client) dispatchLoop() {
	defer cl.wg.Done()
	var lg linger
	for {
		if err := cl.lock(cl.ctx, cl.dispLock); err != nil {
			return
		}
		rec, err := cl.dispC.Peek(cl.ctx)
		for n := 1; err == nil; n++ {
			if err = cl.deliver(rec); err != nil || n == dispatchBatch {
				break
			}
			if rec, err = cl.dispC.TryPeek(); err == ring.ErrEmpty && lg.should() {
				spin.Pause(lingerPause)
				rec, err = cl.dispC.TryPeek()
				lg.result(err != ring.ErrEmpty)
			}
			if err == ring.ErrEmpty {
				err = nil
				break
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

// deliver hands one dispatch record to OnDispatch and releases it;
// dispLock held. A message above ClientOptions.MaxMessage is not
// delivered (counted in ClientStats.DispatchTooLarge); the connection
// goes on.
func (cl *Client) deliver(rec ring.Record) error {
	id, body, large, err := cl.dispatchBody(cl.ctx, rec)
	if err != nil && !errors.Is(err, ErrTooLarge) {
		return err
	}
	if err == nil {
		cl.onDispatch(id, body)
	} else {
		cl.dispatchTooLarge.Add(1)
	}
	return cl.releaseDisp(large)
}

// Lingering. A dispatch loop that handles messages faster than the
// server writes them finds the ring empty after each one, and its next
// look (Peek polls) pulls the ring's tail line from the server on every
// message, which stalls the server's next commit: the stream fell from 17
// M to 5 M msgs/s once the loop stopped taking dispLock per message. So
// after a message, finding the ring empty, the loop waits lingerPause
// spin-wait hints (about 3 µs) and looks once more, which lets a dense
// stream pile up a batch. It lingers while lingering finds messages (a
// found one gives lingerCredit more, a miss halves the credit) and then
// only one time in lingerProbeEvery, so a sparse stream, where a linger
// finds nothing, pays about 0.2 µs per message for the probes.
// Measured (ringbench dispatch, 64 B, 3 interleaved runs of each build
// on the 2-vCPU Xeon): 16.1-16.9 M msgs/s before, 20.6-21.8 M with
// batches and lingering, CPU per message 116-117 ns before, 89-93 ns
// with; at 1,000 and 100,000 msgs/s latency and CPU did not move.
const (
	lingerPause      = 300
	lingerCredit     = 4
	lingerProbeEvery = 16
)

// linger is the dispatch loop's lingering decision; owned by the loop.
type linger struct {
	credit uint8
	misses uint8
}

// should reports whether to linger now.
func (l *linger) should() bool {
	if l.credit > 0 {
		return true
	}
	l.misses++
	return l.misses%lingerProbeEvery == 0
}

// result records whether a linger found a message.
func (l *linger) result(found bool) {
	if found {
		l.credit = lingerCredit
	} else {
		l.credit /= 2
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
