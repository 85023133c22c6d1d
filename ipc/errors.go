//go:build linux

package ipc

import (
	"errors"
	"fmt"
	"os"
)

// Errors returned by this package. Test them with errors.Is, never with
// ==: most come wrapped with context. Errors from the ring and the
// operating system are wrapped too, so errors.Is(err,
// context.DeadlineExceeded) and the like keep working. An argument or
// configuration a method cannot take is an error matching os.ErrInvalid.
// Close and Shutdown join (errors.Join) what releasing resources failed
// with. (Inside the package, ring.ErrFull and ring.ErrEmpty are compared
// with ==, which the ring's error contract allows for them.)
var (
	// ErrDisconnected: the connection ended (the peer closed it, exited
	// or was killed, or this side closed it) while or before the call ran.
	ErrDisconnected = errors.New("ipc: disconnected")
	// ErrUnknownService: the server has no service with the requested id.
	ErrUnknownService = errors.New("ipc: unknown service")
	// ErrUnknownMessage: the service has no handler for the message id.
	ErrUnknownMessage = errors.New("ipc: unknown message id")
	// ErrRejected: the server refused the connection: its authorization
	// callback or the service's OnConnect said no. A *RejectError says why.
	ErrRejected = errors.New("ipc: connection rejected")
	// ErrLimit: the server refused the connection because one of its
	// limits is reached (too many connections or handshakes, in all or
	// for the client's uid, or the shared-memory budget); it also matches
	// ErrRejected. RejectError.Code says which (Limit... constants).
	ErrLimit = errors.New("ipc: server limit reached")
	// ErrVersion: the peers speak different protocol versions.
	ErrVersion = errors.New("ipc: protocol version mismatch")
	// ErrHandler: the handler answered with an error; a *HandlerError
	// carries its code and text.
	ErrHandler = errors.New("ipc: handler error")
	// ErrHandlerPanic: the handler panicked before it answered. The
	// server recovered, logged it and goes on serving the connection.
	ErrHandlerPanic = errors.New("ipc: handler panicked")
	// ErrTooLarge: the message is above a limit of the connection, so
	// nothing was sent (or, for a response or dispatch message, it was
	// not delivered); the error's text names the size, the limit and
	// what raises it. From Dial: the server granted a ring larger than
	// the client accepts (ClientOptions.MaxRingSize, docs/ipc.md 3.2).
	ErrTooLarge = errors.New("ipc: message too large")
	// ErrTryAgain: a non-blocking call found the ring full; nothing was
	// sent.
	ErrTryAgain = errors.New("ipc: ring full, try again")
	// ErrDropped: a dispatch message was discarded under PolicyDrop
	// because the client is not reading.
	ErrDropped = errors.New("ipc: dispatch message dropped")
	// ErrSlowConsumer: the connection was closed under PolicyDisconnect
	// because the client did not read its dispatch messages (a client
	// sees it beside ErrDisconnected).
	ErrSlowConsumer = errors.New("ipc: slow consumer disconnected")
	// ErrProtocol: the peer broke the protocol (bad handshake bytes, a
	// malformed record, an unknown wake token, corrupt shared memory).
	// A client also sees it beside ErrDisconnected when the server ended
	// the connection because it judged that the client broke it.
	ErrProtocol = errors.New("ipc: protocol violation")
	// ErrServerClosed: Serve was called after Shutdown or Close, or
	// returned because of them; a connection they ended reports it to
	// OnDisconnect. On a client, beside ErrDisconnected: the server
	// closed the connection as it closed (Server.Close, or a Shutdown
	// whose context ended first).
	ErrServerClosed = errors.New("ipc: server closed")
	// ErrServerShutdown: on a client, beside ErrDisconnected, the server
	// ended the connection in Server.Shutdown, after answering the
	// requests it had; in OnDisconnect, beside ErrServerClosed, the
	// connection was drained by Shutdown.
	ErrServerShutdown = errors.New("ipc: server shut down")
	// ErrClosedByServer: on a client, beside ErrDisconnected, the server
	// ended this one connection (Conn.Close).
	ErrClosedByServer = errors.New("ipc: connection closed by the server")
	// ErrPeerDied: on a client, beside ErrDisconnected, the server's
	// socket ended without the server saying why: it crashed, was
	// killed, or exited without closing. Only a server that granted
	// FeatureCloseReason can be told apart this way; with another, the
	// error is ErrDisconnected alone.
	ErrPeerDied = errors.New("ipc: server died without closing the connection")
	// ErrReconnecting: a Reconnector has no connection up (it waits to
	// redial, or dials); the call was not sent, so it may be repeated.
	// Its text says why there is none (the last connection's end or the
	// last attempt's failure), but it matches neither ErrDisconnected
	// nor a close reason: those say a request may have been handled.
	ErrReconnecting = errors.New("ipc: reconnecting")
	// ErrShortBuffer: CallInto's buffer was too small for the response,
	// which was discarded; the returned n is the size needed.
	ErrShortBuffer = errors.New("ipc: short buffer")
	// ErrClosed is returned by operations on a Client or Conn after
	// Close; it is os.ErrClosed.
	ErrClosed = os.ErrClosed
	// ErrUnauthorizedServer: Dial refused the server's credentials
	// (ClientOptions.AuthorizeServer, or DefaultAuthorizeServer) before
	// sending it anything.
	ErrUnauthorizedServer = errors.New("ipc: server not authorized")
	// ErrCallDone: a zero-copy call's handle was used after it ended. A
	// PendingCall ends with exactly one Send or Abort, a Response with
	// exactly one Release; a second call (on the handle or a copy) does
	// nothing but return this.
	ErrCallDone = errors.New("ipc: zero-copy call already sent, aborted or released")
)

// RejectError is the reason a server turned a connection away.
type RejectError struct {
	Status uint32 // the reply's status code
	Code   uint32 // the service's OnConnect code, or the Limit... code of ErrLimit
}

func (e *RejectError) Error() string {
	switch e.Status {
	case statusUnauthorized:
		return "ipc: connection rejected: not authorized"
	case statusRejected:
		return fmt.Sprintf("ipc: connection rejected by service (code %d)", e.Code)
	case statusUnknownService:
		return "ipc: connection rejected: unknown service"
	case statusBadVersion:
		return "ipc: connection rejected: protocol version mismatch"
	case statusBadHello:
		return "ipc: connection rejected: malformed hello"
	case statusUnavailable:
		return "ipc: connection rejected: server unavailable"
	case statusLimit:
		return fmt.Sprintf("ipc: connection rejected: server limit %d reached", e.Code)
	}
	return fmt.Sprintf("ipc: connection rejected (status %d)", e.Status)
}

// Is lets errors.Is match the sentinel the status stands for.
func (e *RejectError) Is(target error) bool {
	switch target {
	case ErrRejected:
		return true
	case ErrUnknownService:
		return e.Status == statusUnknownService
	case ErrVersion:
		return e.Status == statusBadVersion
	case ErrProtocol:
		return e.Status == statusBadHello
	case ErrLimit:
		return e.Status == statusLimit
	}
	return false
}

// RejectCode is returned by a Service's OnConnect to refuse a connection
// with a code the client sees in RejectError.Code. Any other error refuses
// with code 0.
type RejectCode uint32

func (c RejectCode) Error() string { return fmt.Sprintf("ipc: rejected with code %d", uint32(c)) }

// HandlerError is an error response: a handler called
// ResponseWriter.Fail. It matches ErrHandler.
type HandlerError struct {
	Code int32
	Msg  string
}

func (e *HandlerError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("ipc: handler error %d", e.Code)
	}
	return fmt.Sprintf("ipc: handler error %d: %s", e.Code, e.Msg)
}

func (e *HandlerError) Is(target error) bool { return target == ErrHandler }

// errUnknownMessage and errHandlerPanic are preallocated so that the
// client's error path for these statuses does not allocate.
var (
	errUnknownMessage = fmt.Errorf("call: %w", ErrUnknownMessage)
	errHandlerPanic   = fmt.Errorf("call: %w", ErrHandlerPanic)
)

// tooLarge is the error of a body above a limit: it names the size, the
// limit and what raises it, and wraps ErrTooLarge.
func tooLarge(what string, n, limit int, raise string) error {
	return fmt.Errorf("%s of %d bytes: %w: the limit is %d; %s", what, n, ErrTooLarge, limit, raise)
}

// What raises each limit, for tooLarge.
const (
	raiseReqRing  = "a larger ClientOptions.RequestRingSize raises it, up to the server's Config.MaxRingSize"
	raiseRespRing = "a larger ClientOptions.ResponseRingSize raises it, up to the server's Config.MaxRingSize"
	raiseDispRing = "a larger ClientOptions.DispatchRingSize raises it, up to the server's Config.MaxRingSize"
	raiseLarge    = "ClientOptions.MaxMessage and the server's Config.MaxMessage raise it"
)

// Errors of a method called when it cannot be: the API used against its
// documentation. Like the others they may come wrapped.
var (
	// ErrOnDispatch: Recv, TryRecv and DispatchFd are unavailable
	// because ClientOptions.OnDispatch receives the dispatch messages.
	ErrOnDispatch = errors.New("ipc: dispatch messages go to ClientOptions.OnDispatch")
	// ErrOnMessage: a Subscription's Recv, RecvInto and TryRecv are
	// unavailable because SubscribeOptions.OnMessage receives the topic's
	// messages.
	ErrOnMessage = errors.New("ipc: topic messages go to SubscribeOptions.OnMessage")
	// ErrResponded: the handler has already answered (Respond, Fail, or
	// Reserve and Commit); a request has one response.
	ErrResponded = errors.New("ipc: response already sent")
	// ErrNotReserved: ResponseWriter.Commit without a Reserve before it.
	ErrNotReserved = errors.New("ipc: no reservation to commit")
	// ErrNoEventLoop: Conn.Process on a server without Config.EventLoop,
	// whose connections serve themselves.
	ErrNoEventLoop = errors.New("ipc: Process needs Config.EventLoop")
	// ErrConcurrentProcess: Conn.Process called while another call of it
	// on the same connection runs.
	ErrConcurrentProcess = errors.New("ipc: concurrent Process calls")
)
