//go:build linux

package ipc

import (
	"encoding/binary"
	"runtime"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/ringipc/ringipc/ring"
)

// TestHostileServerScribblesWaitWord: a server that rewrites the client's
// response wait word with a value of its own while a call waits (docs/
// ipc.md §6, "A hostile peer") neither hangs the call nor makes it spin
// on the word: each scribble over a kernel sleeper's value 2 costs the
// client one re-check at the end of its slice, and after a few it sleeps
// on the socket, where the server's answer still reaches it.
func TestHostileServerScribblesWaitWord(t *testing.T) {
	f := newFakeServer(t, [3]uint64{4096, 4096, 4096}, nil)
	cl, err := f.dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	pay := f.seg.Payload()
	word := (*uint32)(unsafe.Pointer(&pay[f.rep.offs[1]+ring.ConsumerWaitOffset]))

	type result struct {
		body []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		b, err := cl.Call(testCtx(t), msgEcho, []byte("ping"))
		done <- result{b, err}
	}()
	rec, err := f.reqC.Peek(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	corr := binary.LittleEndian.Uint64(rec.Data)
	if err := f.reqC.Release(); err != nil {
		t.Fatal(err)
	}
	// Each time the client announces itself (2: in FUTEX_WAIT, 1: on the
	// socket), overwrite the announcement without waking it, until it
	// has given the kernel up for the socket. How many kernel rounds it
	// makes first is not ours to count: a loaded machine can hide a
	// round from us (the client re-announces 2 before we looked), and a
	// client with no kernel sleeper to spare (GOMAXPROCS 1, or another
	// goroutine of the process holds the place) goes to the socket at
	// once. The compare-and-swap overwrites only the announcement seen,
	// never one the client made since.
	ctx := testCtx(t)
	for {
		v := atomic.LoadUint32(word)
		if v != ring.WordWaker && v != ring.WordFutex {
			if ctx.Err() != nil {
				t.Fatal("the client never slept on the socket")
			}
			runtime.Gosched()
			continue
		}
		if atomic.CompareAndSwapUint32(word, v, 7) && v == ring.WordWaker {
			break
		}
	}
	// The answer's wake-up finds the foreign value and sends the token.
	if err := f.writeResponse(corr, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || string(r.body) != "pong" {
		t.Fatalf("call: %q, %v", r.body, r.err)
	}
}
