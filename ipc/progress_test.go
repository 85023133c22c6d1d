//go:build linux

package ipc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// sizedService answers msgEcho with a body of the size its request names
// (8 bytes, little endian), a pattern seeded by the request's ninth byte,
// through Respond: the copying path that sends progress notes.
func sizedService() *Service {
	return &Service{ID: testService, Name: "sized", Handlers: map[uint16]Handler{
		msgEcho: HandlerFunc(func(w *ResponseWriter, r *Request) {
			w.Respond(pattern(int(binary.LittleEndian.Uint64(r.Data)), r.Data[8]))
		}),
	}}
}

func sizedReq(n int, seed byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(n))
	return append(b, seed)
}

// Large responses come right through Call and CallInto at every boundary
// of the notes (the smallest noted body, a piece more or less, bodies
// whose segment wraps), and the notes are used: ProgressBytes grows for
// every noted body and not for a smaller one.
func TestProgressBodies(t *testing.T) {
	_, addr := startServer(t, nil, sizedService())
	cl := dial(t, addr, nil)
	if cl.Features()&FeatureProgress == 0 {
		t.Fatalf("FeatureProgress not granted: %#x", cl.Features())
	}
	ctx := testCtx(t)
	sizes := []int{
		progressFrom - 1, progressFrom, progressFrom + 1,
		1 << 20, 1<<20 + progressPiece - 1, 1<<20 + progressPiece + 1,
		4<<20 + 5,
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 12 {
		sizes = append(sizes, progressFrom+rng.IntN(3<<20))
	}
	buf := make([]byte, 8<<20)
	for i, n := range sizes {
		seed := byte(i)
		want := pattern(n, seed)
		before := cl.Stats().ProgressBytes
		got, err := cl.Call(ctx, msgEcho, sizedReq(n, seed))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Call of %d bytes: %d bytes, %v; equal %v", n, len(got), err, bytes.Equal(got, want))
		}
		mid := cl.Stats().ProgressBytes
		m, err := cl.CallInto(ctx, msgEcho, sizedReq(n, seed+1), buf)
		if err != nil || m != n || !bytes.Equal(buf[:n], pattern(n, seed+1)) {
			t.Fatalf("CallInto of %d bytes: %d, %v", n, m, err)
		}
		after := cl.Stats().ProgressBytes
		if n < progressFrom {
			if after != before {
				t.Errorf("%d bytes: %d bytes copied from notes, want none below %d", n, after-before, progressFrom)
			}
			continue
		}
		if mid == before || after == mid {
			t.Errorf("%d bytes: Call copied %d bytes from notes, CallInto %d: want some", n, mid-before, after-mid)
		}
	}
	// A buffer too short takes nothing from the notes and fails.
	if _, err := cl.CallInto(ctx, msgEcho, sizedReq(2<<20, 9), make([]byte, 1<<20)); !errors.Is(err, ErrShortBuffer) {
		t.Fatalf("CallInto with a short buffer: %v, want ErrShortBuffer", err)
	}
	if got, err := cl.Call(ctx, msgEcho, sizedReq(2<<20, 10)); err != nil || !bytes.Equal(got, pattern(2<<20, 10)) {
		t.Fatalf("Call after it: %d bytes, %v", len(got), err)
	}
}

// A client that does not ask for FeatureProgress gets no notes: its large
// responses come whole, with nothing copied early.
func TestProgressNotAsked(t *testing.T) {
	askProgress = false
	t.Cleanup(func() { askProgress = true })
	_, addr := startServer(t, nil, sizedService())
	cl := dial(t, addr, nil)
	if cl.Features()&FeatureProgress != 0 || cl.Features()&FeatureLarge == 0 {
		t.Fatalf("granted %#x", cl.Features())
	}
	for i := range 4 {
		got, err := cl.Call(testCtx(t), msgEcho, sizedReq(2<<20, byte(i)))
		if err != nil || !bytes.Equal(got, pattern(2<<20, byte(i))) {
			t.Fatalf("call: %d bytes, %v", len(got), err)
		}
	}
	if n := cl.Stats().ProgressBytes; n != 0 {
		t.Errorf("%d bytes from notes without FeatureProgress", n)
	}
}

// A noted CallInto allocates nothing; a noted Call only its result.
func TestProgressAllocs(t *testing.T) {
	body := pattern(1<<20, 3)
	_, addr := startServer(t, nil, &Service{ID: testService, Name: "fixed", Handlers: map[uint16]Handler{
		msgEcho: HandlerFunc(func(w *ResponseWriter, r *Request) { w.Respond(body) }),
	}})
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	req := []byte("x")
	buf := make([]byte, 1<<20)
	into := func() {
		if n, err := cl.CallInto(ctx, msgEcho, req, buf); err != nil || n != 1<<20 {
			t.Fatal(n, err)
		}
	}
	call := func() {
		if _, err := cl.Call(ctx, msgEcho, req); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		into()
		call()
	}
	before := cl.Stats().ProgressBytes
	slack := 0.0
	if raceOn {
		slack = 2 // see TestLargeAllocs
	}
	// The server is in this process too, and allocates nothing either.
	if n := testing.AllocsPerRun(50, into); n > slack {
		t.Errorf("%.2f allocations per noted 1 MiB CallInto, want 0", n)
	}
	if n := testing.AllocsPerRun(50, call); n > 1+slack {
		t.Errorf("%.2f allocations per noted 1 MiB Call, want 1 (the result)", n)
	}
	if cl.Stats().ProgressBytes == before {
		t.Error("no bytes copied from notes")
	}
	if !bytes.Equal(buf, body) {
		t.Error("CallInto's answer differs")
	}
}

// sendBodies sends the client a response segment holding data, as the
// body token of generation gen does.
func (f *fakeServer) sendBodies(t *testing.T, data []byte) {
	t.Helper()
	size := int64(alignInt(len(data), pageSize))
	fd := rawBodySegment(t, size, 0)
	defer unix.Close(fd)
	if _, err := unix.Pwrite(fd, data, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, sealsOK); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.conn.WriteMsgUnix([]byte{tokRespBody}, unix.UnixRights(fd), nil); err != nil {
		t.Fatal(err)
	}
}

// writeNote commits a progress note for corr: written bytes of a
// total-byte body at page off of generation gen, and no flags word.
func (f *fakeServer) writeNote(corr, total, written uint64, gen, off uint32) error {
	return f.writeNoteWith(corr, total, written, gen, off, nil)
}

// writeNoteWith is writeNote with tail (the flags word, or anything) after
// the descriptor.
func (f *fakeServer) writeNoteWith(corr, total, written uint64, gen, off uint32, tail []byte) error {
	pl := make([]byte, respHdrSize+largeDescSize, respHdrSize+largeDescSize+len(tail))
	le := binary.LittleEndian
	le.PutUint64(pl, corr)
	le.PutUint64(pl[8:], total)
	le.PutUint64(pl[respHdrSize:], written)
	le.PutUint32(pl[respHdrSize+8:], gen)
	le.PutUint32(pl[respHdrSize+12:], off)
	return f.resp.TryWrite(respProgress|typeLarge, append(pl, tail...))
}

// dialNoted dials a fake server with 4 KiB rings that grants features and
// a 64 MiB MaxMessage, as a client whose own limit is 1 MiB, and sends it
// seg as the response body segment.
func dialNoted(t *testing.T, features uint32, seg []byte) (*fakeServer, *Client) {
	t.Helper()
	f := newFakeServer(t, [3]uint64{4096, 4096, 4096}, func(r *reply) { r.features = features })
	binary.LittleEndian.PutUint64(f.ctl[ctlMaxMessage:], 64<<20)
	cl, err := f.dial(&ClientOptions{MaxMessage: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	f.sendBodies(t, seg)
	return f, cl
}

// writeLargeAt is writeLargeResponse with the body at page off.
func (f *fakeServer) writeLargeAt(corr, n uint64, gen, off uint32) error {
	pl := make([]byte, respHdrSize+largeDescSize)
	le := binary.LittleEndian
	le.PutUint64(pl, corr)
	le.PutUint64(pl[respHdrSize:], n)
	le.PutUint32(pl[respHdrSize+8:], gen)
	le.PutUint32(pl[respHdrSize+12:], off)
	return f.resp.TryWrite(respOK|typeLarge, pl)
}

// nextCorr waits for the fake server's next request and returns its
// correlation id.
func (f *fakeServer) nextCorr(t *testing.T) uint64 {
	t.Helper()
	rec, err := f.reqC.Peek(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	corr := binary.LittleEndian.Uint64(rec.Data)
	f.reqC.Release()
	return corr
}

// A hostile server's notes: notes are hints, and what a call returns is
// always what its final response names, whatever the notes said before
// it (another place in the segment, another size, a size above the
// client's limit, more written than the total); a note on a connection
// that did not grant FeatureProgress, or for no call at all, ends the
// connection as a response would.
func TestHostileServerProgress(t *testing.T) {
	const page = 4096
	seg := append(pattern(8*page, 1), pattern(8*page, 2)...) // two bodies: pages 0-7 and 8-15
	body1, body2 := seg[:8*page], seg[8*page:]
	type call struct {
		b   []byte
		err error
	}
	start := func(t *testing.T, features uint32, into bool) (*fakeServer, *Client, chan call) {
		f, cl := dialNoted(t, features, seg)
		res := make(chan call, 1)
		go func() {
			if into {
				buf := make([]byte, 1<<20)
				n, err := cl.CallInto(testCtx(t), msgEcho, []byte("x"), buf)
				res <- call{buf[:n], err}
				return
			}
			b, err := cl.Call(testCtx(t), msgEcho, []byte("x"))
			res <- call{b, err}
		}()
		return f, cl, res
	}
	for _, into := range []bool{false, true} {
		name := map[bool]string{false: "Call", true: "CallInto"}[into]
		t.Run(name+"/notes of another body", func(t *testing.T) {
			f, _, res := start(t, FeatureLarge|FeatureProgress, into)
			corr := f.nextCorr(t)
			for _, err := range []error{
				f.writeNote(corr, 8*page, 2*page, 1, 8), // body 2, as if it were the answer
				f.writeNote(corr, 8*page, 5*page, 1, 8),
				f.writeNote(corr, 2<<20, page, 1, 0),  // a total above the limit
				f.writeNote(corr, page, 2*page, 1, 0), // more written than the total
				f.writeLargeAt(corr, 8*page-3, 1, 0),  // the answer: body 1, a little shorter
			} {
				if err != nil {
					t.Fatal(err)
				}
			}
			if r := <-res; r.err != nil || !bytes.Equal(r.b, body1[:8*page-3]) {
				t.Fatalf("%d bytes, %v; want body 1's first %d", len(r.b), r.err, 8*page-3)
			}
		})
		t.Run(name+"/notes of two bodies", func(t *testing.T) {
			// A server that changes its mind costs at most one body's
			// copy from notes: the notes after the change, whichever
			// body they name, give nothing.
			f, cl, res := start(t, FeatureLarge|FeatureProgress, into)
			corr := f.nextCorr(t)
			for _, err := range []error{
				f.writeNote(corr, 8*page, 5*page, 1, 8), // body 2
				f.writeNote(corr, 8*page, 6*page, 1, 0), // body 1, from its start
				f.writeNote(corr, 8*page, 7*page, 1, 8), // body 2 again
				f.writeNote(corr, 8*page, 7*page, 1, 0), // body 1 again
				f.writeLargeAt(corr, 8*page, 1, 0),      // the answer: body 1
			} {
				if err != nil {
					t.Fatal(err)
				}
			}
			if r := <-res; r.err != nil || !bytes.Equal(r.b, body1) {
				t.Fatalf("%d bytes, %v; want body 1", len(r.b), r.err)
			}
			if n := cl.Stats().ProgressBytes; n != 5*page {
				t.Errorf("%d bytes from notes, want %d: the first body's only", n, 5*page)
			}
		})
		t.Run(name+"/notes then the body they noted", func(t *testing.T) {
			f, cl, res := start(t, FeatureLarge|FeatureProgress, into)
			corr := f.nextCorr(t)
			for _, err := range []error{
				f.writeNote(corr, 8*page, 3*page, 1, 8),
				f.writeNote(corr, 8*page, 3*page, 1, 8), // nothing new
				f.writeNote(corr, 8*page, 7*page, 1, 8),
				f.writeLargeAt(corr, 8*page, 1, 8),
			} {
				if err != nil {
					t.Fatal(err)
				}
			}
			if r := <-res; r.err != nil || !bytes.Equal(r.b, body2) {
				t.Fatalf("%d bytes, %v; want body 2", len(r.b), r.err)
			}
			if n := cl.Stats().ProgressBytes; n != 7*page {
				t.Errorf("%d bytes from notes, want %d", n, 7*page)
			}
		})
	}
	t.Run("notes then an error", func(t *testing.T) {
		f, _, res := start(t, FeatureLarge|FeatureProgress, false)
		corr := f.nextCorr(t)
		if err := f.writeNote(corr, 8*page, 5*page, 1, 0); err != nil {
			t.Fatal(err)
		}
		pl := binary.LittleEndian.AppendUint64(nil, corr)
		pl = binary.LittleEndian.AppendUint32(pl, 7)
		pl = append(pl, 0, 0, 0, 0)
		pl = append(pl, "no"...)
		if err := f.resp.TryWrite(respHandlerError, pl); err != nil {
			t.Fatal(err)
		}
		var he *HandlerError
		if r := <-res; !errors.As(r.err, &he) || he.Code != 7 || r.b != nil {
			t.Fatalf("call: %d bytes, %v; want no bytes and the handler's error", len(r.b), r.err)
		}
	})
	// A note on a connection without the feature, or for no call: the
	// connection ends.
	for _, bad := range []struct {
		name     string
		features uint32
		corr     func(asked uint64) uint64
	}{
		{"note without FeatureProgress", FeatureLarge, func(asked uint64) uint64 { return asked }},
		{"note for no call", FeatureLarge | FeatureProgress, func(uint64) uint64 { return orphanCorr }},
	} {
		t.Run(bad.name, func(t *testing.T) {
			f, cl, res := start(t, bad.features, false)
			if err := f.writeNote(bad.corr(f.nextCorr(t)), 8*page, page, 1, 0); err != nil {
				t.Fatal(err)
			}
			if r := <-res; !errors.Is(r.err, ErrProtocol) && !errors.Is(r.err, ErrDisconnected) {
				t.Fatalf("call: %v, want the connection ended", r.err)
			}
			<-cl.Done()
			if !errors.Is(cl.Err(), ErrProtocol) {
				t.Errorf("connection ended with %v, want ErrProtocol", cl.Err())
			}
		})
	}
}

// streamCopy copies exactly as copy does, whatever the alignments and
// lengths, non-temporal middle or not.
func TestStreamCopy(t *testing.T) {
	src := pattern(1024, 5)
	for n := range 300 {
		for so := range 17 {
			for do := range 17 {
				dst := make([]byte, 1024)
				want := make([]byte, 1024)
				copy(want[do:do+n], src[so:so+n])
				if got := streamCopy(dst[do:do+n], src[so:so+n]); got != n {
					t.Fatalf("n %d: copied %d", n, got)
				}
				if !bytes.Equal(dst, want) {
					t.Fatalf("n %d, src +%d, dst +%d: differs", n, so, do)
				}
			}
		}
	}
}

// A caller that gives up halfway through a noted answer gets its
// context's error at once; the server's handler sees the cancel, the rest
// of the notes and the final response go to the abandoned call's account,
// and the next call is answered in full.
func TestProgressAbandoned(t *testing.T) {
	svc := sizedService()
	svc.Handlers[msgBlock] = HandlerFunc(func(w *ResponseWriter, r *Request) {
		notes := 0
		r.Conn.testHookNoted = func() {
			if notes++; notes == 1 {
				<-r.Context().Done() // the caller's cancel record
			}
		}
		w.Respond(pattern(2<<20, 4))
	})
	_, addr := startServer(t, nil, svc)
	cl := dial(t, addr, nil)
	ctx, cancel := context.WithCancel(testCtx(t))
	done := callUntilNoted(t, ctx, cl, msgBlock)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned call: %v, want context.Canceled", err)
	}
	for i := range 3 {
		got, err := cl.Call(testCtx(t), msgEcho, sizedReq(1<<20, byte(i)))
		if err != nil || !bytes.Equal(got, pattern(1<<20, byte(i))) {
			t.Fatalf("call %d after it: %d bytes, %v", i, len(got), err)
		}
	}
}

// pieceEnd cuts every noted body into pieces that cover it in order: a
// short first and last one, none above progressPiece.
func TestPieceEnd(t *testing.T) {
	for _, n := range []int{progressFrom, progressFrom + 1, 1 << 20, 1<<20 + 1, 1<<20 - 1, 3*progressPiece + 2*progressEdge, 64 << 20} {
		var pieces []int
		for off := 0; off < n; {
			end := pieceEnd(off, n)
			if end <= off || end > n || end-off > progressPiece {
				t.Fatalf("n %d: piece [%d, %d)", n, off, end)
			}
			pieces = append(pieces, end-off)
			off = end
		}
		if first, last := pieces[0], pieces[len(pieces)-1]; first != progressEdge || last > progressEdge {
			t.Errorf("n %d: first piece %d, last %d; want %d and at most that", n, first, last, progressEdge)
		}
	}
}

// callUntilNoted starts a Call of id on cl and returns once the caller has
// copied out a first noted byte of its answer, which the call's handler
// must then hold back; the call's error comes on the channel. It fails
// the test if the call ends first.
func callUntilNoted(t *testing.T, ctx context.Context, cl *Client, id uint16) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := cl.Call(ctx, id, []byte("x"))
		done <- err
	}()
	for cl.Stats().ProgressBytes == 0 {
		select {
		case err := <-done:
			t.Fatalf("call ended before any note: %v", err)
		default:
			runtime.Gosched()
		}
	}
	return done
}
