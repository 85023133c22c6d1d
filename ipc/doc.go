// Package ipc is a request/response and dispatch IPC system over shared
// memory between processes of one Linux machine, in the lineage of
// corosync's coroipc: a server offers up to 65536 services of up to 65536
// message ids each; a client connects to one service and calls it.
//
// A connection starts on a Unix stream socket (a path, or an abstract
// "@name"). The client says hello (protocol version, service, ring sizes);
// the server reads the client's credentials from the kernel
// (SO_PEERCRED), asks Config.Authorize and the service's OnConnect, then
// creates one sealed memfd holding the connection's three rings (request,
// response, dispatch) and passes its descriptor back with SCM_RIGHTS. No
// file under /dev/shm is ever created, so a crash leaves nothing behind.
//
// From then on messages travel through the rings, and the socket carries
// only one-byte wake tokens: a side that waits polls while its recent
// waits were short and sleeps at once otherwise (ring.WaitAdaptive; see
// Config.Wait and ClientOptions.Wait for the fixed alternatives), then
// announces that it sleeps and parks on the socket; the other side sends
// a token only to a side that announced it. A busy stream therefore
// makes no system calls, and an idle connection is a few goroutines
// parked in Go's netpoller: no OS thread, no CPU. The netpoller watches
// the socket through an epoll instance of the connection's own that asks
// for input only, so that the peer reading a token does not wake this
// side (docs/design.md 2.6.4). End of file on the socket means the peer
// closed, exited or was killed: every blocked operation of the connection ends at once with
// ErrDisconnected, the server runs OnDisconnect, unmaps the segment and
// closes the descriptors. A server that ends a connection says why in
// shared memory first, so the client's error tells a graceful
// Server.Shutdown (ErrServerShutdown), a Server.Close (ErrServerClosed),
// a Conn.Close (ErrClosedByServer), a slow consumer or a protocol
// violation from a server that died (ErrPeerDied).
//
// A body larger than its ring (requests, responses, stream parts and
// dispatch messages alike) travels in a body segment of its connection
// and direction, a sealed memfd mapped once on both sides, up to
// Config.MaxMessage and ClientOptions.MaxMessage (64 MiB by default); the
// ring carries a descriptor in its place (FeatureLarge, docs/ipc.md
// §5.4). Every ErrTooLarge names the size, the limit and what raises it.
// A large body passed to ResponseWriter.Respond goes in pieces, each
// announced to the client by a progress note (FeatureProgress, §5.4.1),
// so that a calling goroutine copies the answer out while the server
// writes the rest of it.
//
// Calls from many goroutines of a Client are pipelined: every request
// carries a correlation id, and one reader (the lone caller itself, so
// that a single call costs no goroutine switch, or a background goroutine
// of the Client while several calls are in flight) matches responses to
// callers. Call copies the response, CallInto copies
// it into the caller's buffer without allocating, and Reserve/Send/Release
// avoid copies altogether. A server handler answers with
// ResponseWriter.Respond (a copy), Reserve and Commit (in place) or Fail
// (an error with a code). Written in place, a body need not have its
// final size at Reserve: PendingCall.SendN and ResponseWriter.CommitN
// send the first n bytes and give the rest of the space back;
// Conn.ReserveDispatch writes a dispatch message in place the same way. A handler
// may also answer in parts (ResponseWriter.Send, then its final
// response), which the client ranges over with Client.Stream, the
// response ring being the stream's flow control. Any goroutine may send a connection a dispatch
// message (Conn.Dispatch); when the client does not keep up, a queue
// bounded in messages and bytes (per connection and for the server) and a
// Policy apply, and the client can read that state (Client.FlowControl).
// The default policy disconnects a client whose ring and queue are full
// (a slow consumer, as NATS does), so Dispatch never waits for a client
// and one that stops reading cannot stall the server's other work;
// PolicyDrop and PolicyBlock are there per server or per message
// (Conn.DispatchWith, which also says whether a message went into the
// ring or the queue). Messages still queued when a connection ends are
// counted (Stats.LostDispatches).
//
// Reconnector is an optional layer over Dial for clients that must
// outlive restarts of their server: it redials with a bounded backoff,
// reports each end (with the server's reason) and each new connection,
// subscribes its topics again and runs OnConnect on every new
// connection, and re-sends nothing.
//
// By default the server runs two goroutines per connection. With
// Config.EventLoop it instead hands connections to the application's own
// poll loop, which polls Conn.Fd and calls Conn.Process; AcceptReady
// and ListenerFd do the same for the listener.
//
// Topics publish to any number of subscribers at the cost of one ring
// write (Server.AddTopic, Topic.Publish, Server.Publish): each topic is a
// broadcast ring that subscribers (Subscribe, then Subscription.Recv or
// a SubscribeOptions.OnMessage callback) map read-only and read at their
// own pace. The server never waits for a
// subscriber; one that falls a ring behind gets ErrOverrun, with the
// count of messages lost, and reads on. Concurrent publishers are put in
// one order that every subscriber sees.
//
// The wire protocol (handshake, segment layout, record headers, tokens,
// shutdown) is specified in docs/ipc.md.
//
// # Caveats
//
// Lifetimes. Request.Data is a view of the request ring, valid only until
// the handler returns; a slice from ResponseWriter.Reserve is valid until
// Commit or CommitN; a Response's Data is valid until Release; a part
// from Client.Stream until the loop body returns. None may be kept.
// A PendingCall ends with exactly one Send or Abort and a Response with
// exactly one Release: they are small values, and a second call on one
// (or on a copy) returns ErrCallDone and does nothing, even once the
// Client has reused what stood behind it for another call.
// While a Client holds an unreleased Response (or an unsent PendingCall),
// no other call of that Client can receive its response (or send, and a
// caller waiting to send then waits whatever its context says): release
// promptly, and never start another call from the goroutine that holds
// one. The same holds for the body of a loop over Client.Stream, which
// holds each part in place: a call on the same Client from inside it
// waits for the stream to end (the server handles the stream's request
// first), and the stream for the loop.
//
// Streams. ResponseWriter.Send reaches only clients that asked for
// FeatureStream (the Go client always does; the C client does not: Send
// fails with ErrNoStream). A client that stops reading a stream discards
// the rest as it arrives and, with FeatureCancel, cancels the call: the
// handler's Send then fails (context.Canceled) and its Request.Context
// ends; on an event-loop server the handler is not told while it runs.
//
// Trust. The peer maps the same memory and can rewrite it at any time.
// Every header word is read once and validated, and corruption ends the
// connection with ErrProtocol rather than a panic, but the bytes of a
// request can change while its handler reads them: copy before validating
// what matters. A client trusts a server only after
// ClientOptions.AuthorizeServer has judged its credentials (by default, a
// root client accepts only a root server), and accepts no ring larger
// than it asked for; see docs/ipc.md, Security and limits, for what each
// side bounds and when a path socket in a protected directory is the
// right address.
//
// Ordering. A connection's requests are handled one at a time, in order;
// a slow handler delays the calls queued behind it on the same connection
// (not other connections). Dispatch messages of one goroutine arrive in
// order.
//
// Abandoned calls. A call whose context ends stops waiting; its response
// is discarded when it arrives. The Client's background reader keeps
// reading until the responses of abandoned calls have come, so that they
// cannot fill the response ring and block the server.
//
// Cancellation and deadlines. The Go client asks for FeatureCancel: a
// call's deadline travels with its request, and a call abandoned after
// its request went out sends the server a cancel record (without
// waiting: see docs/ipc.md 5.1.1). The server skips a request whose
// cancel or deadline it sees before the handler starts (the call is
// answered "cancelled"), and ends a running handler's Request.Context
// with either, so that an abandoned slow handler does not hold up the
// calls queued behind it on the connection. Handlers that may run long
// should watch r.Context().Done().
//
// Panics. A handler that panics is recovered: its call fails with
// ErrHandlerPanic (unless the handler had already answered), the panic
// and its stack are logged (Config.Logger) and counted (Stats.Panics), and
// the connection goes on serving.
//
// Observability. Server.Stats sums the counters of every connection,
// live and past, with the connections open now; Server.ServiceStats
// breaks them down per service, with latency histograms of handlers and
// of queueing when Config.Timing is set. Counting costs a few atomic
// adds per call and no lock or allocation. Package ipcprom exports them
// all to Prometheus. On the other side, Client.Stats counts what no
// call's result tells: cancels sent and dropped, and dispatch messages
// too large for OnDispatch.
//
// External loop. In EventLoop mode nothing blocks inside Process except
// handlers: responses that do not fit are kept aside until the client
// makes room, and a handler must not use Dispatch with PolicyBlock on its
// own connection, since only Process can make room.
//
// Fan-out. A handler that dispatches to other connections (watchers,
// subscribers) must not pass its Request.Context: that context ends with
// the caller's call, and under PolicyBlock would cancel the message for
// everyone else. The package Example shows the safe pattern. One Process call
// reads a bounded amount of wake tokens and, if the loop is a Requeuer,
// handles at most Config.MaxTurnRequests requests, so that no client can
// hold the loop in one call.
//
// Concurrency. Server, Conn (except Process, which is the poll loop's)
// and Client are safe for concurrent use. Handlers of one connection run
// on one goroutine, one at a time; handlers of different connections run
// concurrently. Conn.Dispatch may be called from any goroutine, including
// handlers.
//
// Socket files. Listen creates a path socket with the umask's mode and
// then narrows it to the requested mode; in between a peer may connect if
// the umask is lax, and Authorize still judges it.
//
// Linux only. The package rests on SO_PEERCRED, sealed memfds, eventfds
// and futexes; every file but this one carries a linux build constraint,
// so on other systems ipc is an empty package that only documents itself.
// The ring, shmseg and futex packages build everywhere.
package ipc
