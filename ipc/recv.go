//go:build linux

package ipc

// Receiving dispatch messages: Recv and TryRecv, the OnDispatch loop, the
// external loop's DispatchFd, and the server's flow-control state.

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

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
		m, err = cl.takeMessage(rec)
	}
	<-cl.dispLock
	if err == ring.ErrEmpty {
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
