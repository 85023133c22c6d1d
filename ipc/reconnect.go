//go:build linux

package ipc

// Reconnecting: an optional layer over Dial that keeps one service
// connected, redialing with a bounded backoff when the connection ends,
// and tells the application each step. The plain Client is unchanged:
// a Reconnector only dials Clients and watches their Done channels.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// Reconnector defaults (ReconnectOptions).
const (
	// DefaultMinBackoff is the first wait: after a failed attempt, or
	// after a connection that lasted MaxBackoff ends.
	DefaultMinBackoff = 10 * time.Millisecond
	// DefaultMaxBackoff bounds the wait between attempts, which doubles
	// with each failure.
	DefaultMaxBackoff = 5 * time.Second
	// DefaultBackoffJitter is the fraction of each wait taken off at
	// random, so that the clients of a restarted server do not all
	// redial at once.
	DefaultBackoffJitter = 0.2
	// DefaultDialTimeout bounds one attempt: the connect, the handshake
	// and OnConnect.
	DefaultDialTimeout = 5 * time.Second
)

// ReconnectOptions tune a Reconnector. The zero value takes the defaults.
type ReconnectOptions struct {
	// MinBackoff and MaxBackoff bound the wait before each attempt: it
	// starts at MinBackoff (after the first failed attempt, or after a
	// connection that lasted at least MaxBackoff ends), doubles with each
	// further failure, and never exceeds MaxBackoff. A connection that
	// ends sooner counts as a failure, so a server that accepts and drops
	// its clients at once is redialed ever more slowly. 0 means
	// DefaultMinBackoff, DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Jitter is the fraction (0..1) of each wait taken off at random;
	// 0 means DefaultBackoffJitter, a negative value none.
	Jitter float64
	// DialTimeout bounds one attempt, OnConnect included; 0 means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// OnConnect, if set, runs on every new connection before the
	// Reconnector hands it out or reports it, and after it has
	// subscribed again the topics of Reconnector.Subscribe: the place
	// to restore what the server keeps per connection (a session, a
	// snapshot of what the topics describe) with calls on cl. An error
	// closes cl and counts as a failed attempt. ctx ends with the
	// attempt's DialTimeout or with Close.
	OnConnect func(ctx context.Context, cl *Client) error
	// OnEvent, if set, is told of every connection, end and failed
	// attempt, one at a time and in order, on the Reconnector's
	// goroutine: the next attempt waits for it to return, so it must
	// not block for long, and it must not call Close.
	OnEvent func(Event)

	// timer and now, set only by tests, replace time.NewTimer for the
	// backoff waits and time.Now for how long a connection lasted.
	timer func(time.Duration) (<-chan time.Time, func() bool)
	now   func() time.Time
}

// EventKind says what happened to a Reconnector's connection.
type EventKind int

const (
	// EventConnected: the first connection is up (Event.Client).
	EventConnected EventKind = iota + 1
	// EventDisconnected: the connection ended; Event.Err is its
	// Client.Err, which says whether the server shut down
	// (ErrServerShutdown), closed (ErrServerClosed, ErrClosedByServer),
	// dropped a slow consumer, or died (ErrPeerDied).
	EventDisconnected
	// EventReconnected: a new connection is up after an end
	// (Event.Client).
	EventReconnected
	// EventDialFailed: an attempt failed (Event.Err); the next one
	// comes after Event.Delay.
	EventDialFailed
)

func (k EventKind) String() string {
	switch k {
	case EventConnected:
		return "connected"
	case EventDisconnected:
		return "disconnected"
	case EventReconnected:
		return "reconnected"
	case EventDialFailed:
		return "dial failed"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one step of a Reconnector (ReconnectOptions.OnEvent).
type Event struct {
	Kind EventKind
	// Err: why the connection ended (EventDisconnected) or the attempt
	// failed (EventDialFailed).
	Err error
	// Client: the new connection (EventConnected, EventReconnected).
	Client *Client
	// Attempt: failed attempts in a row (EventDialFailed).
	Attempt int
	// Delay: the wait before the next attempt (EventDisconnected,
	// EventDialFailed).
	Delay time.Duration
}

// Reconnector keeps a connection to one service: it dials in the
// background, redials when the connection ends (waiting MinBackoff, then
// doubling up to MaxBackoff while attempts fail), runs OnConnect on each
// new connection and reports every step to OnEvent.
//
// Nothing is retried behind the caller's back. A call in flight when the
// connection ends fails as a Client's does, with ErrDisconnected and the
// server's close reason: its request may or may not have been handled,
// which only the application can judge (a call that began just as the
// connection ended may fail so without having sent anything: the error
// errs on the side of "maybe handled"). A call made while no connection
// is up fails at once with ErrReconnecting, and nothing was sent; Wait
// lets a caller whose context allows it wait for the next connection
// instead. Requests are never re-sent on a new connection.
//
// Dispatch messages: with ClientOptions.OnDispatch every connection
// delivers to the same callback; Recv reads whichever connection is up
// and waits across the gaps. Messages the server sends while no
// connection is up are not sent at all, and those a connection had
// received but not delivered when it ended are lost with it: OnConnect
// is where an application resynchronises.
//
// Topics: Subscribe registers a topic, which the Reconnector subscribes
// again on every new connection before OnConnect runs and before it
// reports the connection; a TopicSubscription's Recv reports the end of
// each subscription once (ErrDisconnected with the reason), then reads
// the next.
//
// A Reconnector is safe for concurrent use. Its Clients are ordinary
// ones; the application must not Close them (Close the Reconnector).
type Reconnector struct {
	address string
	service uint16
	opts    ClientOptions
	ro      ReconnectOptions

	ctx    context.Context // ends at Close: a dial, OnConnect or a backoff wait stops
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns

	// mu guards the state the callers read: cl is the connection up (nil
	// while there is none), gen counts the connections made, why is the
	// reason there is none, change is closed (and replaced) whenever
	// that state or a topic's changes, closed is set by Close. topics
	// are the TopicSubscriptions to renew (reconnect_topic.go), whose
	// own state mu guards too.
	mu     sync.Mutex
	cl     *Client
	gen    uint64
	why    error
	change chan struct{}
	closed bool
	topics map[*TopicSubscription]struct{}
}

// NewReconnector starts keeping a connection to service at address
// (see Dial); opts (nil: defaults) are used for every dial. It returns at
// once: the first connection is reported as EventConnected, and Wait
// returns it. Close stops it.
func NewReconnector(address string, service uint16, opts *ClientOptions, ropts *ReconnectOptions) (*Reconnector, error) {
	var o ClientOptions
	if opts != nil {
		o = *opts
	}
	var ro ReconnectOptions
	if ropts != nil {
		ro = *ropts
	}
	if ro.MinBackoff == 0 {
		ro.MinBackoff = DefaultMinBackoff
	}
	if ro.MaxBackoff == 0 {
		ro.MaxBackoff = max(DefaultMaxBackoff, ro.MinBackoff)
	}
	if ro.Jitter == 0 {
		ro.Jitter = DefaultBackoffJitter
	}
	ro.Jitter = max(ro.Jitter, 0)
	if ro.DialTimeout == 0 {
		ro.DialTimeout = DefaultDialTimeout
	}
	if ro.MinBackoff < 0 || ro.MaxBackoff < ro.MinBackoff || ro.Jitter > 1 || ro.DialTimeout < 0 {
		return nil, fmt.Errorf("ipc: reconnector: %w: backoff %v..%v, jitter %v, dial timeout %v",
			os.ErrInvalid, ro.MinBackoff, ro.MaxBackoff, ro.Jitter, ro.DialTimeout)
	}
	if ro.now == nil {
		ro.now = time.Now
	}
	if ro.timer == nil {
		ro.timer = func(d time.Duration) (<-chan time.Time, func() bool) {
			t := time.NewTimer(d)
			return t.C, t.Stop
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Reconnector{
		address: address,
		service: service,
		opts:    o,
		ro:      ro,
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
		why:     errors.New("not connected yet"),
		change:  make(chan struct{}),
		topics:  make(map[*TopicSubscription]struct{}),
	}
	go r.run()
	return r, nil
}

// current returns the connection up (nil if none: ended, or not yet
// replaced), a channel closed when that changes, and the error of a
// call that finds none. The error names why there is no connection in its
// text only: it must not match ErrDisconnected (or the close reasons),
// which say that a request may have been handled.
func (r *Reconnector) current() (*Client, <-chan struct{}, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, nil, fmt.Errorf("ipc: reconnector: %w", ErrClosed)
	}
	cl := r.cl
	if cl != nil {
		select {
		case <-cl.Done():
			// Ended; run has not noticed yet.
			return nil, r.change, fmt.Errorf("%w: %v", ErrReconnecting, cl.Err())
		default:
			return cl, r.change, nil
		}
	}
	return nil, r.change, fmt.Errorf("%w: %v", ErrReconnecting, r.why)
}

// Client returns the connection up now, or an error matching
// ErrReconnecting (and why there is none) while there is none, or
// ErrClosed after Close. The Client may end at any moment; its calls
// then fail with ErrDisconnected.
func (r *Reconnector) Client() (*Client, error) {
	cl, _, err := r.current()
	return cl, err
}

// Wait returns the connection up, waiting for one until ctx ends (the
// error then matches ErrReconnecting and ctx's error) or Close
// (ErrClosed).
func (r *Reconnector) Wait(ctx context.Context) (*Client, error) {
	for {
		cl, change, err := r.current()
		if cl != nil || change == nil {
			return cl, err
		}
		select {
		case <-change:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
	}
}

// Call calls the connection up (Client.Call). While there is none it
// fails at once with ErrReconnecting, having sent nothing; a call in
// flight when the connection ends fails with ErrDisconnected and the
// server's close reason, and is not sent again.
func (r *Reconnector) Call(ctx context.Context, id uint16, req []byte) ([]byte, error) {
	cl, err := r.Client()
	if err != nil {
		return nil, err
	}
	return cl.Call(ctx, id, req)
}

// Recv returns the next dispatch message of the connection up, waiting
// for one, across connection ends and redials, until ctx ends or Close.
// The application learns of the gaps from OnEvent; messages lost in
// them are not reported here.
func (r *Reconnector) Recv(ctx context.Context) (Message, error) {
	for {
		cl, err := r.Wait(ctx)
		if err != nil {
			return Message{}, err
		}
		m, err := cl.Recv(ctx)
		if err == nil || !errors.Is(err, ErrDisconnected) || ctx.Err() != nil {
			return m, err
		}
	}
}

// Close stops redialing and closes the connection up, if any (see
// Client.Close), and the topic subscriptions; it waits for the
// Reconnector's goroutine, so it must not be called from OnEvent or
// OnConnect. Calls, Waits and Recvs after it fail with ErrClosed. It
// returns what closing the connection and subscriptions failed with.
func (r *Reconnector) Close() error {
	r.cancel() // first: run, finding it ended, reports nothing more
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		<-r.done
		return nil
	}
	r.closed = true
	cl := r.cl
	r.cl = nil
	var subs []*Subscription
	for ts := range r.topics {
		if ts.sub != nil {
			subs = append(subs, ts.sub)
		}
		ts.sub = nil
	}
	clear(r.topics)
	r.changed()
	r.mu.Unlock()
	<-r.done
	var errs []error
	if cl != nil {
		errs = append(errs, cl.Close())
	}
	for _, s := range subs {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
