//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"sync"
	"testing"
)

// Message ids of the watch service (watchService).
const (
	msgWatch   = 30 // make the calling connection a watcher
	msgSet     = 31 // body: a change; fan it out to every watcher, answer with how many took it
	msgChanged = 32 // dispatch: the change
)

// watchService is issue 13's daemon: a setter's call fans its change out
// to every watcher with Dispatch, under the server's policy and with a
// context of its own (not the setter's Request.Context). ended receives
// each connection's end reason.
func watchService(ended chan<- error) *Service {
	var mu sync.Mutex
	watchers := map[*Conn]bool{}
	return &Service{
		ID: testService,
		OnDisconnect: func(c *Conn, err error) {
			mu.Lock()
			delete(watchers, c)
			mu.Unlock()
			ended <- err
		},
		Handlers: map[uint16]Handler{
			msgWatch: HandlerFunc(func(w *ResponseWriter, r *Request) {
				mu.Lock()
				watchers[r.Conn] = true
				mu.Unlock()
				w.Respond(nil)
			}),
			msgSet: HandlerFunc(func(w *ResponseWriter, r *Request) {
				mu.Lock()
				to := make([]*Conn, 0, len(watchers))
				for c := range watchers {
					to = append(to, c)
				}
				mu.Unlock()
				told := 0
				for _, c := range to {
					if err := c.Dispatch(context.Background(), msgChanged, r.Data); err == nil {
						told++
					}
				}
				w.Respond([]byte{byte(told)})
			}),
		},
	}
}

// TestSlowWatcherDoesNotStallOthers is the scenario under the
// default configuration: one watcher stops reading while a setter makes
// more changes than its ring and queue hold. The default policy must
// disconnect that watcher (a slow consumer) instead of making the
// setter's calls wait for it: every call completes, the healthy watcher
// gets every change in order, and what the stalled one had queued is
// counted lost. (Under PolicyBlock with context.Background the setter
// would hang here, as the daemon did.)
func TestSlowWatcherDoesNotStallOthers(t *testing.T) {
	ended := make(chan error, 4)
	srv, addr := startServer(t, nil, watchService(ended))
	if got := srv.cfg.DispatchPolicy; got != PolicyDisconnect || DefaultDispatchPolicy != PolicyDisconnect {
		t.Fatalf("default dispatch policy %v", got)
	}
	ctx := testCtx(t)
	// The stalled watcher never reads its small dispatch ring; the
	// healthy one reads only at the end, its ring holding every change.
	stalled := dial(t, addr, &ClientOptions{DispatchRingSize: MinRingSize})
	healthy := dial(t, addr, &ClientOptions{DispatchRingSize: 1 << 20})
	setter := dial(t, addr, nil)
	for _, w := range []*Client{stalled, healthy} {
		if _, err := w.Call(ctx, msgWatch, nil); err != nil {
			t.Fatal(err)
		}
	}
	// More changes than the stalled watcher's ring and queue hold.
	changes := MinRingSize/64 + DefaultDispatchQueue + 100
	body := make([]byte, 64)
	told := 0 // messages Dispatch accepted, over every watcher
	for i := range changes {
		binary.LittleEndian.PutUint64(body, uint64(i))
		resp, err := setter.Call(ctx, msgSet, body)
		if err != nil {
			t.Fatalf("set %d: %v", i, err)
		}
		told += int(resp[0])
	}
	if err := <-ended; !errors.Is(err, ErrSlowConsumer) {
		t.Fatalf("the stalled watcher's connection ended with %v, want ErrSlowConsumer", err)
	}
	<-stalled.Done()
	if !errors.Is(stalled.Err(), ErrDisconnected) {
		t.Errorf("stalled client: %v", stalled.Err())
	}
	for i := range changes {
		m, err := healthy.Recv(ctx)
		if err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		if got := binary.LittleEndian.Uint64(m.Data); m.ID != msgChanged || got != uint64(i) {
			t.Fatalf("change %d: id %d, seq %d", i, m.ID, got)
		}
	}
	st := srv.Stats()
	if st.SlowConsumers != 1 || st.ProtocolErrors != 0 {
		t.Errorf("slow consumers %d, protocol errors %d; want 1, 0", st.SlowConsumers, st.ProtocolErrors)
	}
	// The stalled watcher's queue was full when it was cut off: every
	// entry in it is lost, and counted.
	if st.LostDispatches != DefaultDispatchQueue {
		t.Errorf("%d dispatches counted lost, want the full queue, %d", st.LostDispatches, DefaultDispatchQueue)
	}
	// The healthy watcher got every change; the stalled one a ring's
	// worth, at most, before its queue filled. Every message Dispatch
	// accepted was written or counted lost.
	stalledWritten := st.Dispatches - uint64(changes)
	if st.Dispatches < uint64(changes) || stalledWritten == 0 || stalledWritten > MinRingSize/64 {
		t.Errorf("%d dispatches written for %d changes", st.Dispatches, changes)
	}
	if uint64(told) != st.Dispatches+st.LostDispatches {
		t.Errorf("Dispatch accepted %d messages; %d written + %d lost", told, st.Dispatches, st.LostDispatches)
	}
}

// TestDispatchWithResult: DispatchWith says whether each message went
// into the ring or the queue, and its per-message policy overrides the
// server's, both ways.
func TestDispatchWithResult(t *testing.T) {
	ended := make(chan error, 1)
	cl, c := dispatchSetup(t, PolicyDrop, func(_ *Conn, err error) { ended <- err })
	ctx := testCtx(t)
	var written, queued int
	for i := 0; ; i++ {
		res, err := c.DispatchWith(ctx, 9, seq(i), DispatchOptions{})
		if errors.Is(err, ErrDropped) {
			if res != DispatchNone {
				t.Errorf("dropped message reported %v", res)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case res == DispatchWritten && queued == 0:
			written++
		case res == DispatchQueued:
			queued++
		default:
			t.Fatalf("message %d: %v after %d written, %d queued", i, res, written, queued)
		}
	}
	if written == 0 || queued != 4 {
		t.Fatalf("%d written, %d queued; want some written, then the queue's 4", written, queued)
	}
	if st := c.Stats(); st.Dispatches != uint64(written) || st.QueueDepth != 4 {
		t.Errorf("stats: %d dispatches, %d queued; want %d, 4", st.Dispatches, st.QueueDepth, written)
	}

	// PolicyBlock for one message on a PolicyDrop server: it waits for
	// room (its context ends the wait: nothing sent) ...
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if res, err := c.DispatchWith(cctx, 9, seq(-1), DispatchOptions{Policy: PolicyBlock}); !errors.Is(err, context.Canceled) || res != DispatchNone {
		t.Fatalf("blocking dispatch with a cancelled context: %v, %v", res, err)
	}
	// ... and goes through once the client reads.
	blocked := make(chan error, 1)
	go func() {
		res, err := c.DispatchWith(ctx, 9, seq(written+queued), DispatchOptions{Policy: PolicyBlock})
		if err == nil && res == DispatchNone {
			err = errors.New("accepted message reported DispatchNone")
		}
		blocked <- err
	}()
	recvAll(t, cl, 0, written+queued+1)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	if _, err := c.DispatchWith(ctx, 9, nil, DispatchOptions{Policy: 99}); !errors.Is(err, os.ErrInvalid) {
		t.Errorf("unknown policy: %v", err)
	}

	// PolicyDisconnect for one message on the same server.
	waitUntil(t, func() bool { fc := cl.FlowControl(); return !fc.Active && fc.Queued == 0 }, "the dispatch queue to drain")
	for i := 0; ; i++ {
		_, err := c.DispatchWith(ctx, 9, seq(i), DispatchOptions{Policy: PolicyDisconnect})
		if errors.Is(err, ErrSlowConsumer) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := <-ended; !errors.Is(err, ErrSlowConsumer) {
		t.Errorf("connection ended with %v, want ErrSlowConsumer", err)
	}
}

// TestLostDispatchesAtClientClose: a client that leaves (not cut off as a
// slow consumer) while messages wait in the server's queue: each is
// counted lost, in the connection's Stats and in the server's once the
// connection is retired, and the written ones are counted sent.
func TestLostDispatchesAtClientClose(t *testing.T) {
	ended := make(chan error, 1)
	srv, addr := startServer(t, &Config{DispatchQueue: 4, DispatchPolicy: PolicyDrop}, func() *Service {
		svc := echoService()
		svc.OnDisconnect = func(_ *Conn, err error) { ended <- err }
		return svc
	}())
	cl := dial(t, addr, &ClientOptions{DispatchRingSize: MinRingSize})
	c := firstConn(t, srv)
	ctx := testCtx(t)
	var written, queued uint64
	for i := 0; ; i++ {
		res, err := c.DispatchWith(ctx, 9, seq(i), DispatchOptions{})
		if errors.Is(err, ErrDropped) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if res == DispatchQueued {
			queued++
		} else {
			written++
		}
	}
	cl.Close()
	if err := <-ended; errors.Is(err, ErrSlowConsumer) || !errors.Is(err, ErrDisconnected) {
		t.Fatalf("connection ended with %v, want the client's leaving", err)
	}
	if st := c.Stats(); st.LostDispatches != queued || st.Dispatches != written || st.SlowConsumers != 0 {
		t.Errorf("conn stats: %d lost, %d written, %d slow; want %d, %d, 0", st.LostDispatches, st.Dispatches, st.SlowConsumers, queued, written)
	}
	waitUntil(t, func() bool { return srv.Stats().Open == 0 }, "the connection to retire")
	if st := srv.Stats(); st.LostDispatches != queued || st.Dispatches != written || st.QueueDepth != 0 {
		t.Errorf("server stats: %d lost, %d written, %d queued now; want %d, %d, 0", st.LostDispatches, st.Dispatches, st.QueueDepth, queued, written)
	}
}
