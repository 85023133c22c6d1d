//go:build linux

package ipc

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringipc/ringipc/ring"
)

// A client that sleeps often makes thousands of calls while other
// connections come and go, under every wait policy of both sides (with
// WaitSleep every wait sleeps). Each sleeping wait goes through the
// announce / re-check / token (or futex) protocol on both sides, so a
// lost wake-up hangs a call, which its deadline turns into a failure.
// This caught the race-detector build's release-only atomic stores
// reordering past the re-check (see ring's publishWord): about one run in
// two failed.
func TestNoLostWakeupUnderChurn(t *testing.T) {
	for _, pol := range []struct {
		name string
		wait ring.WaitPolicy
		spin time.Duration
		n    int
	}{
		{"sleep", ring.WaitSleep, 0, 20000},
		{"adaptive", ring.WaitAdaptive, 0, 10000},
		{"spin", ring.WaitSpin, time.Microsecond, 10000},
	} {
		t.Run(pol.name, func(t *testing.T) {
			n := pol.n
			if testing.Short() {
				n /= 4
			}
			testNoLostWakeupUnderChurn(t, &Config{Wait: pol.wait, Spin: pol.spin},
				&ClientOptions{Wait: pol.wait, Spin: pol.spin}, n)
		})
	}
}

func testNoLostWakeupUnderChurn(t *testing.T, cfg *Config, opts *ClientOptions, n int) {
	_, addr := startServer(t, cfg, echoService())
	cl := dial(t, addr, opts)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				c2, err := Dial(context.Background(), addr, testService, opts)
				if err != nil {
					t.Error(err)
					return
				}
				// Bounded, so that a lost wake-up fails the test (the
				// main loop's deadline) instead of hanging this call.
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				c2.Call(ctx, msgEcho, []byte("y")) //nolint:errcheck // noise
				cancel()
				c2.Close()
			}
		})
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := cl.Call(ctx, msgEcho, []byte("x"))
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
}

// A server that is behind on a busy machine sends its answers last
// (sockWaker.behind): the connection's loop yields its P, then writes
// the token with a system call the runtime sees. Forced on, with every
// wait sleeping so that every answer is a token, no answer is lost.
func TestNoLostWakeupAnswersLast(t *testing.T) {
	var taken atomic.Int64
	old := answerLast
	answerLast = func(w *sockWaker) bool {
		if w.behind == nil {
			return false // a client's waker: never
		}
		taken.Add(1)
		return true
	}
	t.Cleanup(func() { answerLast = old }) // runs after the server's cleanup
	n := 5000
	if testing.Short() {
		n /= 4
	}
	testNoLostWakeupUnderChurn(t, &Config{Wait: ring.WaitSleep}, &ClientOptions{Wait: ring.WaitSleep}, n)
	if taken.Load() == 0 {
		t.Fatal("no answer went last")
	}
}
