//go:build linux

package ipc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/ringipc/ringipc/ring"
)

// TestNearJudge: the verdict is the median of the last round trips, far
// until there are enough of them.
func TestNearJudge(t *testing.T) {
	const near, far = nearRoundTrip - 1, nearRoundTrip
	var j nearJudge
	for i := range nearSamples - 1 {
		if j.take(near); j.near {
			t.Fatalf("near after %d round trips, want far until %d", i+1, nearSamples)
		}
	}
	steps := []struct {
		rt   time.Duration
		want bool
	}{
		{near, true},  // 5 near
		{far, true},   // 4 near, 1 far
		{far, true},   // 3 near, 2 far
		{far, false},  // 2 near, 3 far
		{near, false}, // the oldest near goes: still 2 near, 3 far
		{near, false}, // and the next: 2 near, 3 far
		{near, true},  // the oldest far goes: 3 near, 2 far
	}
	for i, s := range steps {
		if j.take(s.rt); j.near != s.want {
			t.Fatalf("step %d (%v): near %v, want %v", i, s.rt, j.near, s.want)
		}
	}
	for range nearSamples {
		j.take(near)
	}
	if !j.near {
		t.Fatal("far after five near round trips in a row")
	}
	j.take(time.Hour) // one outlier does not decide
	if !j.near {
		t.Fatal("one slow round trip made it far")
	}
}

// TestJudgeNear: a note the client has released gives a round trip, one
// it has not (it sleeps, or reads far away) none, after a bounded watch.
func TestJudgeNear(t *testing.T) {
	g := ring.Geometry{DataSize: 4096}
	size, err := ring.Size(g)
	if err != nil {
		t.Fatal(err)
	}
	mem := make([]byte, size)
	if err := ring.Init(mem, g); err != nil {
		t.Fatal(err)
	}
	p, err := ring.NewProducer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := ring.NewConsumer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &Conn{respP: p}
	note := func() uint64 {
		r, err := p.TryReserve(respProgress|typeLarge, respHdrSize+largeDescSize+noteFlagsSize)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Commit(); err != nil {
			t.Fatal(err)
		}
		return r.End()
	}
	release := func() {
		if _, err := cons.TryPeek(); err != nil {
			t.Fatal(err)
		}
		if err := cons.Release(); err != nil {
			t.Fatal(err)
		}
		cons.Flush()
	}
	for i := range nearSamples {
		end := note()
		if c.judgeNear(end); c.nearJ.n != i {
			t.Fatalf("a note not released gave a round trip (%d taken)", c.nearJ.n)
		}
		release()
		if c.judgeNear(end); c.nearJ.n != i+1 {
			t.Fatalf("a released note gave no round trip (%d taken)", c.nearJ.n)
		}
	}
}

// TestProgressNearFar: noted bodies arrive whole with either stores, and
// the client takes the server's verdict from the notes for its own large
// requests.
func TestProgressNearFar(t *testing.T) {
	_, addr := startServer(t, nil, sizedService())
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	buf := make([]byte, 4<<20)
	defer nearTest.Store(0)
	for _, near := range []int32{1, -1, 1} {
		nearTest.Store(near)
		for i, n := range []int{progressFrom, 1 << 20, 3<<20 + 7} {
			seed := byte(i) + byte(near)
			m, err := cl.CallInto(ctx, msgEcho, sizedReq(n, seed), buf)
			if err != nil || m != n || !bytes.Equal(buf[:n], pattern(n, seed)) {
				t.Fatalf("near %d: CallInto of %d bytes: %d, %v", near, n, m, err)
			}
			if cl.near.Load() != (near > 0) {
				t.Fatalf("near %d: the client's verdict is %v after a %d-byte call", near, cl.near.Load(), n)
			}
		}
	}
}

// TestProgressNoteFlags: the client takes notes with or without their
// flags word, follows the near flag, and a note of any other size ends the
// connection.
func TestProgressNoteFlags(t *testing.T) {
	const page = 4096
	body := pattern(8*page, 1)
	for _, tc := range []struct {
		name  string
		extra []byte // after the descriptor
		near  bool
		bad   bool
	}{
		{"no flags", nil, false, false},
		{"far", make([]byte, 8), false, false},
		{"near", binary.LittleEndian.AppendUint64(nil, noteNear|1<<40), true, false},
		{"short flags", make([]byte, 4), false, true},
		{"long flags", make([]byte, 16), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, cl := dialNoted(t, FeatureLarge|FeatureProgress, body)
			res := make(chan error, 1)
			got := make([]byte, 8*page)
			go func() {
				_, err := cl.CallInto(testCtx(t), msgEcho, []byte("x"), got)
				res <- err
			}()
			corr := f.nextCorr(t)
			if err := f.writeNoteWith(corr, 8*page, 4*page, 1, 0, tc.extra); err != nil {
				t.Fatal(err)
			}
			if tc.bad {
				if err := <-res; !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrDisconnected) || !errors.Is(cl.Err(), ErrProtocol) {
					t.Fatalf("a note with %d bytes of flags: %v, want ErrProtocol", len(tc.extra), err)
				}
				return
			}
			if err := f.writeLargeAt(corr, 8*page, 1, 0); err != nil {
				t.Fatal(err)
			}
			if err := <-res; err != nil || !bytes.Equal(got, body) {
				t.Fatalf("%v; body equal %v", err, bytes.Equal(got, body))
			}
			if cl.near.Load() != tc.near {
				t.Errorf("near %v, want %v", cl.near.Load(), tc.near)
			}
		})
	}
}
