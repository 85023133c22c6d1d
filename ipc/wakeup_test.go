//go:build linux

package ipc

import (
	"context"
	"sync"
	"testing"
	"time"
)

// A client that sleeps on every wait (Spin -1) makes thousands of calls
// while other connections come and go. Every call goes through the
// announce / re-check / token protocol on both sides, so a lost wake-up
// hangs a call, which its deadline turns into a failure. This caught the
// race-detector build's release-only atomic stores reordering past the
// re-check (see ring's publishWord): about one run in two failed.
func TestNoLostWakeupUnderChurn(t *testing.T) {
	_, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, &ClientOptions{Spin: -1})
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
				c2, err := Dial(context.Background(), addr, testService, nil)
				if err != nil {
					t.Error(err)
					return
				}
				c2.Call(context.Background(), msgEcho, []byte("y")) //nolint:errcheck // noise
				c2.Close()
			}
		})
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	n := 20000
	if testing.Short() {
		n = 5000
	}
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := cl.Call(ctx, msgEcho, []byte("x"))
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
}
