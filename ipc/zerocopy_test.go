//go:build linux

package ipc

import (
	"errors"
	"testing"
)

// TestZeroCopyExactlyOnce: a PendingCall ends with one Send or Abort, a
// Response with one Release. A second call, or one on a stale copy, must
// return ErrCallDone and leave the Client (and other calls, which may
// have the handle's pooled waiter by now) alone.
func TestZeroCopyExactlyOnce(t *testing.T) {
	_, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	reserve := func(body string) PendingCall {
		t.Helper()
		p, err := cl.Reserve(ctx, msgEcho, len(body))
		if err != nil {
			t.Fatal(err)
		}
		copy(p.Bytes(), body)
		return p
	}
	send := func(body string) (PendingCall, Response) {
		t.Helper()
		p := reserve(body)
		r, err := p.Send(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(r.Data) != body {
			t.Fatalf("response %q, want %q", r.Data, body)
		}
		return p, r
	}
	// healthy checks that the Client still works: a plain call.
	healthy := func(what string) {
		t.Helper()
		if got, err := cl.Call(ctx, msgEcho, []byte(what)); err != nil || string(got) != what {
			t.Fatalf("%s: then a call: %q, %v", what, got, err)
		}
	}
	done := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrCallDone) {
			t.Fatalf("%s: %v, want ErrCallDone", what, err)
		}
	}

	t.Run("Release twice", func(t *testing.T) {
		_, r := send("once")
		if err := r.Release(); err != nil {
			t.Fatal(err)
		}
		done("second Release", r.Release())
		healthy("after a second Release")
	})
	t.Run("stale Release, waiter reused", func(t *testing.T) {
		// The first Response's waiter goes back to the pool and, as a
		// rule, serves the next call: a stale Release must not end that
		// call's view. Try until the pool hands the same waiter back (it
		// may drop it, under the race detector on purpose).
		for try := 0; ; try++ {
			_, r1 := send("first")
			stale := r1
			if err := r1.Release(); err != nil {
				t.Fatal(err)
			}
			_, r2 := send("second")
			reused := r2.w == stale.w
			done("stale Release", stale.Release())
			if string(r2.Data) != "second" {
				t.Fatalf("the live response reads %q after a stale Release", r2.Data)
			}
			if err := r2.Release(); err != nil {
				t.Fatalf("live Release after a stale one: %v", err)
			}
			if reused {
				break
			}
			if try == 1000 {
				t.Fatal("the pool never handed the waiter back")
			}
		}
		healthy("after a stale Release")
	})
	t.Run("Abort twice", func(t *testing.T) {
		p := reserve("abort")
		if err := p.Abort(); err != nil {
			t.Fatal(err)
		}
		done("second Abort", p.Abort())
		if p.Bytes() != nil {
			t.Error("Bytes after Abort is not nil")
		}
		healthy("after a second Abort")
	})
	t.Run("Abort after Send", func(t *testing.T) {
		p, r := send("sent")
		done("Abort after Send", p.Abort())
		done("Send after Send", func() error { _, err := p.Send(ctx); return err }())
		if p.Bytes() != nil {
			t.Error("Bytes after Send is not nil")
		}
		if string(r.Data) != "sent" {
			t.Fatalf("response reads %q after Abort", r.Data)
		}
		if err := r.Release(); err != nil {
			t.Fatal(err)
		}
		done("Abort after Release", p.Abort())
		healthy("after Abort after Send")
	})
	t.Run("Send after Abort", func(t *testing.T) {
		p := reserve("x")
		if err := p.Abort(); err != nil {
			t.Fatal(err)
		}
		_, err := p.Send(ctx)
		done("Send after Abort", err)
		healthy("after Send after Abort")
	})
	t.Run("zero values", func(t *testing.T) {
		var p PendingCall
		var r Response
		done("Abort of a zero PendingCall", p.Abort())
		done("Release of a zero Response", r.Release())
		_, err := p.Send(ctx)
		done("Send of a zero PendingCall", err)
	})
}
