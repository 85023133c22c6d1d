//go:build linux

package ipc

// Topics of a Reconnector: each subscription is its own socket
// (Subscribe), so the server's end ends them too, and the Reconnector
// subscribes every topic the application asked for again on each new
// connection, before OnConnect runs and before it reports the
// connection.

import (
	"context"
	"errors"
	"fmt"
)

// TopicSubscription is a topic subscription a Reconnector renews on every
// new connection (Reconnector.Subscribe). Recv reads whichever
// subscription is current. Its methods are safe for concurrent use; one
// Recv runs at a time, as on a Subscription.
type TopicSubscription struct {
	r     *Reconnector
	topic uint32
	opts  SubscribeOptions

	// Guarded by r.mu: sub is the current subscription (nil before the
	// first), made on connection gen (Reconnector.gen); seen is the gen
	// of the subscription Recv last read, told the gen whose end Recv
	// has reported (0: none); closed is set by Close.
	sub    *Subscription
	gen    uint64
	seen   uint64
	told   uint64
	closed bool
}

// Subscribe subscribes to topic on the server (see the package function
// Subscribe; opts may be nil) now if a connection is up, and again on
// every new connection, before OnConnect runs: so OnConnect can fetch a
// snapshot of what the topic describes knowing that no later message
// will be missed. While no connection is up (or if subscribing now fails
// for any reason but a refusal) it only registers the topic; the next
// connection subscribes it. A refusal (*RejectError: an unknown topic,
// OnSubscribe, a limit) is returned, and leaves nothing registered. ctx
// bounds the subscription made now.
func (r *Reconnector) Subscribe(ctx context.Context, topic uint32, opts *SubscribeOptions) (*TopicSubscription, error) {
	ts := &TopicSubscription{r: r, topic: topic}
	if opts != nil {
		ts.opts = *opts
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, fmt.Errorf("ipc: reconnector: %w", ErrClosed)
	}
	r.topics[ts] = struct{}{}
	cl, gen := r.cl, r.gen
	r.mu.Unlock()
	if cl == nil {
		return ts, nil
	}
	sub, err := Subscribe(ctx, r.address, topic, &ts.opts)
	var rej *RejectError
	if errors.As(err, &rej) {
		ts.Close()
		return nil, err
	}
	if err != nil {
		// Not a refusal: the server is going away, and the next
		// connection subscribes the topic.
		return ts, nil
	}
	r.mu.Lock()
	keep := ts.sub == nil && r.gen == gen && !ts.closed && !r.closed
	if keep {
		ts.sub, ts.gen = sub, gen
		r.changed()
	}
	r.mu.Unlock()
	if !keep {
		// A new connection came meanwhile, and run subscribed the
		// topic on it (or Close came).
		sub.Close()
	}
	return ts, nil
}

// Topic returns the topic subscribed to.
func (ts *TopicSubscription) Topic() uint32 { return ts.topic }

// Recv returns the next message of the current subscription, waiting
// for one until ctx ends (an error that also matches ErrReconnecting
// while no subscription is up) or Close. When Recv moves on from a
// subscription it read, it first returns one error saying that the
// messages published until the next subscription are lost:
// ErrDisconnected, with the reason if the subscription ended (the server
// shut down, closed the topic, or died), or without one if a new
// connection replaced it. The next Recv waits for the next subscription
// and reads it. (If only the topic was closed and the server stays up,
// no new connection comes: the application decides from that error
// whether to go on waiting.) ErrOverrun is returned as by a
// Subscription, which goes on.
func (ts *TopicSubscription) Recv(ctx context.Context) (Message, error) {
	r := ts.r
	for {
		r.mu.Lock()
		if ts.closed || r.closed {
			r.mu.Unlock()
			return Message{}, fmt.Errorf("ipc: topic %d: %w", ts.topic, ErrClosed)
		}
		sub, gen, change := ts.sub, ts.gen, r.change
		switch {
		case sub == nil || gen == ts.told:
			r.mu.Unlock()
			select {
			case <-change:
				continue
			case <-ctx.Done():
				return Message{}, fmt.Errorf("%w (%w: topic %d: no subscription up)", ctx.Err(), ErrReconnecting, ts.topic)
			}
		case ts.seen != 0 && ts.seen != gen && ts.seen != ts.told:
			// Replaced while it was live: its unread messages, and
			// what was published until the new one, are gone.
			ts.told = ts.seen
			r.mu.Unlock()
			return Message{}, fmt.Errorf("%w: topic %d: subscribed again on a new connection; what was published in between is lost", ErrDisconnected, ts.topic)
		}
		ts.seen = gen
		r.mu.Unlock()
		m, err := sub.Recv(ctx)
		switch {
		case err == nil || ctx.Err() != nil:
			return m, err
		case errors.Is(err, ErrClosed):
			// Replaced by a new connection's (the next turn says so),
			// or Close.
			continue
		case errors.Is(err, ErrDisconnected):
			r.mu.Lock()
			ts.told = gen
			r.mu.Unlock()
		}
		return m, err
	}
}

// Close ends the subscription and stops renewing it. Idempotent.
func (ts *TopicSubscription) Close() error {
	r := ts.r
	r.mu.Lock()
	delete(r.topics, ts)
	sub := ts.sub
	ts.sub, ts.closed = nil, true
	r.changed()
	r.mu.Unlock()
	if sub != nil {
		return sub.Close()
	}
	return nil
}

// subscribeMissing subscribes, for a new connection, every registered
// topic that subs has none for yet, adding them to subs. With install it
// goes on until none is missing, then publishes the connection and subs
// (setUpLocked) under the same hold of mu, so that no topic registered
// meanwhile is left without a subscription; it fails if Close came
// first. The caller closes what subs holds on error.
func (r *Reconnector) subscribeMissing(ctx context.Context, cl *Client, subs map[*TopicSubscription]*Subscription, install bool) error {
	for {
		r.mu.Lock()
		var missing []*TopicSubscription
		for ts := range r.topics {
			if subs[ts] == nil {
				missing = append(missing, ts)
			}
		}
		if len(missing) == 0 && install {
			old, ok := r.setUpLocked(cl, subs)
			r.mu.Unlock()
			for _, s := range old {
				s.Close()
			}
			if !ok {
				return fmt.Errorf("ipc: reconnector: %w", ErrClosed)
			}
			return nil
		}
		r.mu.Unlock()
		if len(missing) == 0 {
			return nil
		}
		for _, ts := range missing {
			sub, err := Subscribe(ctx, r.address, ts.topic, &ts.opts)
			if err != nil {
				return fmt.Errorf("ipc: reconnector: subscribe to topic %d: %w", ts.topic, err)
			}
			subs[ts] = sub
		}
	}
}
