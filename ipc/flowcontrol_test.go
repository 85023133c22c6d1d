//go:build linux

package ipc

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// TestFlowControlDuringTeardown: FlowControl reads the control block in
// the shared segment, which teardown unmaps. A read that has passed its
// check when the server dies must still find the segment mapped: the
// hook, between that check and the read, makes the server hang up and
// lets teardown run until it has to wait for the reader (or, were it not
// made to, until it has unmapped the segment and finished: the read would
// then fault).
func TestFlowControlDuringTeardown(t *testing.T) {
	f := newFakeServer(t, [3]uint64{4096, 4096, 4096}, nil)
	cl, err := f.dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	const dropped = 12345
	atomic.StoreUint64(word64(f.ctl, ctlDropped), dropped)
	hooked := false
	cl.testHookFlowControl = func() {
		hooked = true
		f.conn.Close() // the server dies
		for {
			select {
			case <-cl.torn:
				return
			default:
			}
			// A writer waiting for ctlMu makes TryRLock fail.
			if !cl.ctlMu.TryRLock() {
				return
			}
			cl.ctlMu.RUnlock()
			runtime.Gosched()
		}
	}
	fc := cl.FlowControl()
	if !hooked {
		t.Fatal("the hook did not run")
	}
	if fc.Dropped != dropped {
		t.Errorf("FlowControl during teardown: %+v, want Dropped %d", fc, dropped)
	}
	<-cl.torn
	if fc := cl.FlowControl(); fc != (FlowControl{}) {
		t.Errorf("FlowControl after teardown: %+v, want the zero value", fc)
	}
	if !errors.Is(cl.Err(), ErrDisconnected) {
		t.Errorf("connection ended with %v", cl.Err())
	}
}

// TestFlowControlPolledWhileServerDies: goroutines poll FlowControl
// while a real server process is killed, until the teardown has ended.
func TestFlowControlPolledWhileServerDies(t *testing.T) {
	rounds := 5
	if soak() {
		rounds = 100
	}
	for range rounds {
		addr := abstractAddr()
		srv := startChild(t, "server", addr, nil)
		srv.expect(t, "ready")
		cl := dial(t, addr, nil)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for {
					cl.FlowControl()
					select {
					case <-cl.torn:
						return
					default:
					}
				}
			})
		}
		srv.kill(t)
		<-cl.Done()
		wg.Wait()
		if !errors.Is(cl.Err(), ErrDisconnected) {
			t.Errorf("connection ended with %v", cl.Err())
		}
	}
}
