//go:build linux

package ipc

// The Reconnector's goroutine (run): dial, report, watch the connection,
// wait out the backoff, redial; and the state it publishes to callers
// (setUp, setDown). The API is in reconnect.go.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// run is the Reconnector's goroutine: dial, watch, report, wait, redial.
func (r *Reconnector) run() {
	defer close(r.done)
	var delay time.Duration // the un-jittered wait of the last backoff
	failures := 0
	connected := false
	for {
		cl, err := r.attempt()
		if err != nil {
			if r.ctx.Err() != nil {
				return
			}
			failures++
			delay = nextBackoff(delay, r.ro.MinBackoff, r.ro.MaxBackoff)
			wait := r.jitter(delay)
			r.setDown(nil, err)
			r.emit(Event{Kind: EventDialFailed, Err: err, Attempt: failures, Delay: wait})
			if !r.sleep(wait) {
				return
			}
			continue
		}
		kind := EventConnected
		if connected {
			kind = EventReconnected
		}
		connected = true
		failures = 0
		up := r.ro.now()
		r.emit(Event{Kind: kind, Client: cl})
		select {
		case <-cl.Done():
		case <-r.ctx.Done():
			return // Close closes cl
		}
		if r.ctx.Err() != nil {
			return // both: Close came, nothing more to report
		}
		why := cl.Err()
		if r.ro.now().Sub(up) >= r.ro.MaxBackoff {
			delay = 0 // a connection that lasted: start over
		}
		delay = nextBackoff(delay, r.ro.MinBackoff, r.ro.MaxBackoff)
		wait := r.jitter(delay)
		r.setDown(cl, why)
		r.emit(Event{Kind: EventDisconnected, Err: why, Delay: wait})
		if !r.sleep(wait) {
			return
		}
	}
}

// attempt dials once, subscribes the registered topics, runs OnConnect
// and publishes the connection (setUpLocked), within DialTimeout. On
// error it leaves nothing open.
func (r *Reconnector) attempt() (*Client, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.ro.DialTimeout)
	defer cancel()
	cl, err := Dial(ctx, r.address, r.service, &r.opts)
	if err != nil {
		return nil, err
	}
	subs := make(map[*TopicSubscription]*Subscription)
	err = r.subscribeMissing(ctx, cl, subs, false)
	if err == nil && r.ro.OnConnect != nil {
		if err = r.ro.OnConnect(ctx, cl); err != nil {
			err = fmt.Errorf("ipc: reconnector: OnConnect: %w", err)
		}
	}
	if err == nil {
		// Topics registered while OnConnect ran are subscribed too,
		// before the connection is published.
		err = r.subscribeMissing(ctx, cl, subs, true)
	}
	if err != nil {
		for _, s := range subs {
			s.Close()
		}
		cl.Close()
		return nil, err
	}
	return cl, nil
}

// nextBackoff doubles the last wait, within [lo, hi].
func nextBackoff(last, lo, hi time.Duration) time.Duration {
	if last > hi/2 {
		return hi
	}
	return min(max(2*last, lo), hi)
}

// jitter takes up to the Jitter fraction off d at random.
func (r *Reconnector) jitter(d time.Duration) time.Duration {
	if r.ro.Jitter <= 0 || d <= 0 {
		return d
	}
	return d - time.Duration(rand.Float64()*r.ro.Jitter*float64(d))
}

// sleep waits d, or until Close; it reports whether the wait ran out.
func (r *Reconnector) sleep(d time.Duration) bool {
	c, stop := r.ro.timer(d)
	select {
	case <-c:
		return true
	case <-r.ctx.Done():
		stop()
		return false
	}
}

func (r *Reconnector) emit(e Event) {
	if r.ro.OnEvent != nil && r.ctx.Err() == nil {
		r.ro.OnEvent(e)
	}
}

// setUpLocked publishes cl as the connection up, a new generation, with
// subs as its topics' subscriptions, unless Close came first; mu held.
// It returns the subscriptions subs replaced, for the caller to close
// once it has let go of mu.
func (r *Reconnector) setUpLocked(cl *Client, subs map[*TopicSubscription]*Subscription) (old []*Subscription, ok bool) {
	if r.closed {
		return nil, false
	}
	r.gen++
	r.cl, r.why = cl, nil
	for ts, s := range subs {
		if ts.sub != nil {
			old = append(old, ts.sub)
		}
		ts.sub, ts.gen = s, r.gen
	}
	r.changed()
	return old, true
}

// changed wakes everyone waiting for the state under mu to change; mu
// held.
func (r *Reconnector) changed() {
	close(r.change)
	r.change = make(chan struct{})
}

// setDown records that no connection is up, and why; old is the one
// that ended (nil after a failed attempt).
func (r *Reconnector) setDown(old *Client, why error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.why = why
	if old != nil && r.cl == old {
		r.cl = nil
		r.changed()
	}
}
