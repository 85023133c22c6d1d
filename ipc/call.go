//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/ringipc/ringipc/ring"
)

// Calls. Sending is short: under sendMu a caller reserves its request,
// registers its waiter under a fresh correlation id (taking the reader
// role in the same hold of mu if it is free), fills and commits.
//
// Receiving is the reader role: one goroutine at a time reads the
// response ring, takes each response's waiter out of Client.waiters,
// fills in its result and signals it. Whoever holds the role is recorded
// in Client.reading (under mu), and the role moves only under mu:
//
//   - A caller that finds the role free as it registers takes it and reads
//     until its own response comes, so a lone call costs no goroutine
//     switch. It then hands the role to the background reader if other
//     calls (or orphans) are still outstanding, or frees it.
//   - The background reader holds the role while anything is outstanding
//     and frees it when the ring is empty and nothing is (a decision taken
//     under mu, so a caller that registers later finds the role free).
//   - A zero-copy response travels with the role: its caller holds the
//     role (the record is the ring's next one) until Response.Release,
//     which hands it on in the same way.
//
// Any other caller waits for its waiter's signal, listening to nothing
// else but its context: the connection's end reaches it through kill,
// which fails every registered waiter (failWaiters). So a pipelined call
// costs at most one park and one wake, each on a channel no one else
// uses, and the reader matches a run of responses under one hold of mu.
//
// Before it parks, such a caller lets the other goroutines of its P run
// a few times (signalTurns), looking at its signal word between turns: a
// pipelining caller's answer often comes while the others send theirs,
// and then the reader's signal is one atomic swap, which wakes no
// goroutine and so asks the runtime for no second thread (docs/design.md
// 2.6.1). Only a caller that parked is woken through its channel
// (waiter.sig says which).
//
// A reader with nothing to read while callers it woke have not run yet
// (Client.woken) yields its P to them: each will send its next call as
// soon as it runs, and polling in their way sends the calls out one by
// one.

// waiterPool recycles waiters of every Client: a waiter is returned only
// once no signal for it is pending, so it carries nothing over.
var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan struct{}, 1)} }}

func getWaiter() *waiter { return waiterPool.Get().(*waiter) }

func putWaiter(w *waiter) {
	w.waiterState = waiterState{}
	w.sig.Store(sigNone)
	w.gen.Add(1)
	waiterPool.Put(w)
}

// Call sends req as message id and returns a copy of the response body.
func (cl *Client) Call(ctx context.Context, id uint16, req []byte) ([]byte, error) {
	w := getWaiter()
	err := cl.roundTrip(ctx, id, req, w)
	out := w.out
	putWaiter(w)
	if err != nil {
		return nil, err // out may hold what progress notes gave before it
	}
	return out, nil
}

// CallInto is Call that copies the response body into buf and returns its
// length; it allocates nothing. If buf is too small the response is
// discarded and the error is ErrShortBuffer, with n the size needed.
// After any error buf may hold part of an answer: a large one is copied
// as the server writes it (FeatureProgress).
func (cl *Client) CallInto(ctx context.Context, id uint16, req, buf []byte) (n int, err error) {
	w := getWaiter()
	w.into, w.buf = true, buf
	err = cl.roundTrip(ctx, id, req, w)
	n = w.n
	putWaiter(w)
	return n, err
}

func (cl *Client) roundTrip(ctx context.Context, id uint16, req []byte, w *waiter) error {
	if len(req) > cl.maxReq {
		return cl.reqTooLarge(len(req))
	}
	if len(req) > cl.ringReq {
		if err := cl.sendLarge(ctx, id, req, w); err != nil {
			return err
		}
		return cl.wait(ctx, w)
	}
	typ, hdr, dl := cl.requestHeader(ctx, id, len(req))
	r, err := cl.reserve(ctx, typ, hdr+len(req), w, true)
	if err != nil {
		return err
	}
	if hdr != reqHdrSize {
		binary.LittleEndian.PutUint64(r.Bytes()[reqHdrSize:], uint64(dl))
	}
	copy(r.Bytes()[hdr:], req)
	if err := cl.commit(r, w); err != nil {
		return err
	}
	return cl.wait(ctx, w)
}

// reserve claims the room of a request record of type typ and size
// bytes (headers included) and registers w under a fresh correlation id,
// which it writes at the record's start; with takeRole, the caller takes
// the reader role too if it is free (w.reader), under the same lock. It
// returns with sendMu held.
func (cl *Client) reserve(ctx context.Context, typ uint32, size int, w *waiter, takeRole bool) (ring.Reservation, error) {
	r, err := cl.reserveRoom(ctx, typ, size)
	if err != nil {
		return r, err
	}
	seq := cl.nextCorr
	cl.nextCorr++
	cl.mu.Lock()
	if cl.dead {
		cl.mu.Unlock()
		r.Abort() //nolint:errcheck // the only outstanding reservation
		cl.sendMu.Unlock()
		return r, cl.deadErr()
	}
	corr := cl.waiters.add(w, seq)
	w.pending = true
	if takeRole && !cl.reading {
		cl.reading = true
		w.reader = true
	}
	cl.mu.Unlock()
	binary.LittleEndian.PutUint64(r.Bytes(), corr)
	return r, nil
}

// commit publishes a request reserve returned and lets go of sendMu.
func (cl *Client) commit(r ring.Reservation, w *waiter) error {
	return cl.commitN(r, w, len(r.Bytes()))
}

// commitN is commit of the first n bytes of the record (header included).
func (cl *Client) commitN(r ring.Reservation, w *waiter, n int) error {
	err := r.CommitN(n)
	cl.sendMu.Unlock()
	if err != nil {
		cl.unregister(w)
		if w.reader {
			w.reader = false
			cl.releaseRole()
		}
		return cl.ringErr(err)
	}
	return nil
}

// unregister takes w back out of waiters after its request failed to go
// out; if kill took it first, it consumes kill's signal.
func (cl *Client) unregister(w *waiter) {
	cl.mu.Lock()
	pending := w.pending
	if pending {
		cl.removeWaiter(w)
	}
	cl.mu.Unlock()
	if !pending {
		cl.received(w, false)
	}
}

// removeWaiter takes w out of waiters; mu held.
func (cl *Client) removeWaiter(w *waiter) {
	cl.waiters.take(w.corr)
	w.pending = false
}

// reserveRoom claims room for a size-byte request record and returns
// with sendMu held; on error it is not held.
func (cl *Client) reserveRoom(ctx context.Context, typ uint32, size int) (ring.Reservation, error) {
	r, err := cl.tryReserveRoom(typ, size)
	if err == nil {
		return r, nil
	}
	switch {
	case err != ring.ErrFull:
		return r, cl.ringErr(err)
	case cl.nonBlocking:
		return r, ErrTryAgain
	}
	return cl.waitRoom(ctx, typ, size)
}

// tryReserveRoom is reserveRoom without waiting.
func (cl *Client) tryReserveRoom(typ uint32, size int) (ring.Reservation, error) {
	cl.sendMu.Lock()
	if cl.sendGone {
		cl.sendMu.Unlock()
		return ring.Reservation{}, cl.deadErr()
	}
	if cl.cancelsQueued.Load() != 0 {
		cl.flushCancels()
	}
	r, err := cl.reqP.TryReserve(typ, size)
	if err != nil {
		cl.sendMu.Unlock()
	}
	return r, err
}

// waitRoom is reserveRoom's waiting part. One caller at a time waits for
// room, the holder of spaceLock, so that one wake-up token (the server's,
// for the request ring's producer word) serves one sleeper; others wait
// for spaceLock, honouring their contexts.
func (cl *Client) waitRoom(ctx context.Context, typ uint32, size int) (ring.Reservation, error) {
	if err := cl.lock(ctx, cl.spaceLock); err != nil {
		return ring.Reservation{}, err
	}
	defer func() { <-cl.spaceLock }()
	var r ring.Reservation
	var err error
	werr := cl.reqP.Waiter().Wait(ctx, func() bool {
		r, err = cl.tryReserveRoom(typ, size)
		return err != ring.ErrFull
	})
	if werr != nil {
		return r, cl.ringErr(werr)
	}
	return r, cl.ringErr(err)
}

// wait waits for w's response: as the reader if w.reader, else
// parked until the reader (or kill) signals.
func (cl *Client) wait(ctx context.Context, w *waiter) error {
	for {
		if !w.reader {
			if cl.signalledSoon(w) {
				return w.err
			}
			if !w.sig.CompareAndSwap(sigNone, sigParked) {
				cl.took(w) // given since the last look
				return w.err
			}
			done := ctx.Done()
			if done == nil {
				cl.received(w, true)
				return w.err
			}
			select {
			case <-w.ch:
				cl.took(w)
				return w.err
			case <-done:
				return cl.abandon(ctx.Err(), w, true)
			}
		}
		mine, err := cl.read(ctx, w)
		if mine {
			// Our own response: the role stays with a zero-copy view
			// until Release.
			if !w.zc || w.err != nil {
				cl.releaseRole()
			}
			return w.err
		}
		w.reader = false
		if err != nil {
			// Abandon while still the reader: nobody else can have taken
			// our response yet, so the call ends with err (its deadline)
			// rather than with a response another reader finds for it
			// right after the role is handed on.
			err = cl.abandon(err, w, false)
			cl.releaseRole()
			return err
		}
		// The role went to a zero-copy caller with its record: wait for
		// ours like anyone else.
	}
}

// signalTurns is how many times a caller that is not the reader yields
// its P before it parks to wait for its signal. ringbench pipeline (16
// goroutines, 64 B, the AMD guest's slower phase, two sweeps): 1.42-1.47 M
// calls/s parking at once; 1.58-1.62 M after 4 turns, 1.55-1.63 M after
// 8, 1.59-1.65 M after 16, 1.51-1.59 M after 32.
const signalTurns = 8

// signalledSoon gives the P to the goroutines queued behind the caller
// up to signalTurns times, and reports whether w's signal came meanwhile
// (taking it). With nothing else to run, a turn costs a trip through the
// scheduler and no sleep; the turns are bounded, so a caller whose answer
// is slow then parks as before.
func (cl *Client) signalledSoon(w *waiter) bool {
	for range signalTurns {
		runtime.Gosched()
		if w.sig.Load() == sigGiven {
			cl.took(w)
			return true
		}
	}
	return false
}

// takeRoleIfFree makes w's caller the reader if the role is free and w
// is still unanswered.
func (cl *Client) takeRoleIfFree(w *waiter) {
	cl.mu.Lock()
	if w.pending && !cl.reading {
		cl.reading = true
		w.reader = true
	}
	cl.mu.Unlock()
}

// read is the reader role's loop. It consumes responses, handing each to
// its waiter, until it finds own's (mine, with the role still held), or
// until it hands the role to a zero-copy caller with its record (neither
// mine nor an error), or fails (err; the role is still held). With own
// nil (the background reader) it returns, the role freed, once nothing
// is outstanding.
func (cl *Client) read(ctx context.Context, own *waiter) (mine bool, err error) {
	// Responses that come in a run are matched under one hold of mu, and
	// their callers signalled together after it: one lock per run, not
	// per response. Large bodies are copied outside mu.
	var b readBatch
	defer b.flush(cl)
	// Looked at before every record, not only when the ring is empty: a
	// server that keeps the ring full (of orphans, or of other callers'
	// responses) must not hold the reader past its deadline.
	done := ctx.Done()
	for {
		select {
		case <-done:
			b.flush(cl)
			return false, ctx.Err()
		default:
		}
		rec, err := cl.respC.TryPeek()
		if err == ring.ErrEmpty {
			b.flush(cl)
			if own == nil && cl.idle() {
				return false, nil
			}
			if cl.woken.Load() > 0 {
				// Callers we (or an earlier reader) made runnable have
				// not run yet, and each will send its next request as
				// soon as it does: with nothing to read yet, let them
				// have this P rather than poll in their way. Else the
				// calls go out one by one.
				runtime.Gosched()
			}
			rec, err = cl.waitResponse(ctx)
		}
		if err != nil {
			b.flush(cl)
			if errors.Is(err, ring.ErrClosed) || errors.Is(err, ring.ErrCorrupt) {
				// No response can come any more: end the connection,
				// which fails every call.
				cl.kill(cl.withCloseReason(fmt.Errorf("%w: response ring: %w", ErrDisconnected, err), false))
			}
			return false, cl.ringErr(err)
		}
		if len(rec.Data) < respHdrSize {
			b.flush(cl)
			err := fmt.Errorf("%w: response record of %d bytes", ErrProtocol, len(rec.Data))
			cl.kill(err)
			return false, err
		}
		status, body := rec.Type, rec.Data[respHdrSize:]
		large := status&typeLarge != 0 && cl.large
		var tooBig error             // a large body above the client's limit: that call fails
		var desc [largeDescSize]byte // a large body's descriptor, as read
		var flags uint64             // a progress note's
		if large {
			status &^= typeLarge
			if status == respProgress && len(body) == largeDescSize+noteFlagsSize {
				flags = binary.LittleEndian.Uint64(body[largeDescSize:])
				body = body[:largeDescSize]
			}
			var err error
			body, desc, err = cl.largeBody(ctx, cl.respIn, body)
			if err != nil {
				if !errors.Is(err, ErrTooLarge) {
					// The record stays for the next reader (a context
					// that ended), or the connection has ended.
					b.flush(cl)
					return false, err
				}
				tooBig = err
			}
		}
		c := binary.LittleEndian.Uint64(rec.Data)
		if status == respProgress {
			total := binary.LittleEndian.Uint64(rec.Data[8:])
			if err := cl.progress(&b, own, c, total, large, tooBig, desc, body, flags); err != nil {
				b.flush(cl)
				return false, err
			}
			continue
		}
		b.lock(cl)
		if status == respStreamPart {
			w, err := cl.streamPart(c)
			if err != nil {
				b.flush(cl)
				cl.kill(err)
				return false, err
			}
			if w != nil {
				// A Stream's part: like a zero-copy response, the record
				// stays in the ring for the caller and the role goes
				// with it.
				if tooBig != nil {
					// A part above the client's limit ends the stream
					// (the server sends parts of one call in order, and
					// a hole would go unnoticed).
					b.flush(cl)
					cl.kill(fmt.Errorf("%w: %w", ErrProtocol, tooBig))
					return false, tooBig
				}
				w.view, w.part, w.handed, w.large = body, true, true, large
				b.flush(cl)
				if w == own {
					return true, nil
				}
				cl.signal(w)
				return false, nil
			}
			if err := cl.releaseResp(large); err != nil {
				b.flush(cl)
				return false, cl.ringErr(err)
			}
			continue
		}
		w := cl.waiters.take(c)
		switch {
		case w != nil:
			w.pending = false
		case cl.orphans > 0:
			cl.orphans--
		case !cl.dead:
			// The server answers each request exactly once, and every
			// response no call waits for is an abandoned call's, counted
			// in orphans. One beyond them answers nothing we sent: a
			// server that sends such responses could keep this reader
			// busy forever.
			b.flush(cl)
			err := fmt.Errorf("%w: response for correlation id %#x, which no call awaits", ErrProtocol, c)
			cl.kill(err)
			return false, err
		}
		if w == nil || w.discard {
			// An abandoned call's response, or the end of a stream its
			// caller stopped reading, whose waiter is ours to free.
			if w != nil {
				putWaiter(w)
			}
			if err := cl.releaseResp(large); err != nil {
				b.flush(cl)
				return false, cl.ringErr(err)
			}
			continue
		}
		if len(body) > bigResponse {
			b.unlock(cl)
		}
		if w.have > 0 && (!large || desc != w.noted) {
			w.have = 0 // not the body its notes described: copy it all
		}
		if tooBig != nil {
			w.err = tooBig
		} else {
			cl.fill(w, status, rec.Data, body)
		}
		w.large = large
		if w.zc && w.err == nil {
			// The record stays in the ring for the caller's view, and
			// the role goes with it.
			b.flush(cl)
			if w == own {
				return true, nil
			}
			cl.signal(w)
			return false, nil
		}
		if err := cl.releaseResp(large); err != nil {
			b.flush(cl)
			return false, cl.ringErr(err)
		}
		if w == own {
			return true, nil // the deferred flush signals the others
		}
		b.add(cl, w)
	}
}

// streamPart judges a stream part for correlation id c; mu held. It
// returns the Stream call to hand it to, or nil if the part is to be
// dropped: one for a plain call (which then fails with ErrStreamed), for
// a stream its caller stopped reading, or for an abandoned call (while
// orphans are expected: parts do not count against them, the final
// response does). A part the client never asked for (no FeatureStream)
// or for no call at all is a protocol violation.
func (cl *Client) streamPart(c uint64) (*waiter, error) {
	if cl.features&FeatureStream == 0 {
		return nil, fmt.Errorf("%w: stream part (response status %d) without FeatureStream", ErrProtocol, respStreamPart)
	}
	w := cl.waiters.get(c)
	switch {
	case w != nil && w.stream && !w.discard:
		return w, nil
	case w != nil:
		if !w.stream {
			w.streamed = true
		}
	case cl.orphans == 0 && !cl.dead:
		return nil, fmt.Errorf("%w: stream part for correlation id %#x, which no call awaits", ErrProtocol, c)
	}
	return nil, nil
}

// waitResponse waits for the next response record; the reader role
// calls it only while calls are outstanding, so an answer is due. It
// sleeps blocked in the kernel (ring.Waiter.WaitReply: the server's
// commit wakes it with one FUTEX_WAKE, no token, no netpoller, no
// goroutine hand-off), after polling as ring.Waiter.WaitReply decides:
// through the server's wake-up (ring.ReplySpin) if the last request
// woke it and the machine has a CPU to spare. A reader with nothing outstanding never gets here: it frees
// the role, and the connection's idle goroutines all park in the
// netpoller.
func (cl *Client) waitResponse(ctx context.Context) (ring.Record, error) {
	var rec ring.Record
	var err error
	werr := cl.respC.Waiter().WaitReply(ctx, func() bool {
		rec, err = cl.respC.TryPeek()
		return err != ring.ErrEmpty
	}, cl.reqP.ConsumerWasAsleep())
	if werr != nil {
		return ring.Record{}, werr
	}
	return rec, err
}

// bigResponse is the body size above which the reader copies a response
// out without holding mu, which callers need to register.
const bigResponse = 1024

// readBatch is a run of responses the reader matched: whether it holds
// mu, and the callers to signal once it lets go.
type readBatch struct {
	locked bool
	n      int
	ws     [16]*waiter
}

func (b *readBatch) lock(cl *Client) {
	if !b.locked {
		cl.mu.Lock()
		b.locked = true
	}
}

func (b *readBatch) unlock(cl *Client) {
	if b.locked {
		cl.mu.Unlock()
		b.locked = false
	}
}

// add queues w's signal, flushing first if the batch is full.
func (b *readBatch) add(cl *Client, w *waiter) {
	if b.n == len(b.ws) {
		b.flush(cl)
	}
	b.ws[b.n] = w
	b.n++
}

// flush lets go of mu and signals the queued callers.
func (b *readBatch) flush(cl *Client) {
	b.unlock(cl)
	for i := range b.n {
		cl.signal(b.ws[i])
		b.ws[i] = nil
	}
	b.n = 0
}

// signal tells w's caller that its result is in, or that it holds the
// reader role with its zero-copy response.
func (cl *Client) signal(w *waiter) {
	cl.woken.Add(1)
	if w.sig.Swap(sigGiven) == sigParked {
		w.ch <- struct{}{}
	}
}

// took consumes a given signal.
func (cl *Client) took(w *waiter) {
	w.sig.Store(sigNone)
	cl.woken.Add(-1)
}

// received waits for signal. parked says whether the caller parked
// already, and so is owed the channel's token whatever sig says now.
func (cl *Client) received(w *waiter, parked bool) {
	if parked || w.sig.CompareAndSwap(sigNone, sigParked) {
		<-w.ch
	}
	cl.took(w)
}

// A waiter's signal states (waiter.sig). The caller moves sigNone to
// sigParked (compare-and-swap) only as it parks, the signaller anything
// to sigGiven (swap), sending on ch if it found sigParked, and the
// caller sigGiven back to sigNone once it has the signal (took). So a
// signal either finds the caller not parked and is a swap it will see,
// or finds it parked and is a token it receives: none is lost, and none
// is left in ch for the waiter's next call.
const (
	sigNone   uint32 = iota // no signal, and the caller is not parked
	sigGiven                // signalled: the result is in
	sigParked               // the caller waits on ch
)

// idle frees the background reader's role if nothing is outstanding.
func (cl *Client) idle() bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.waiters.len() != 0 || cl.orphans != 0 {
		return false
	}
	cl.freeRole()
	return true
}

// releaseRole lets go of the reader role: to the background reader if
// responses are still expected, else free. Once the connection has ended
// (dead), whoever lets go drains the response ring instead: responses
// the server committed before the end still reach their callers, and the
// rest fail.
func (cl *Client) releaseRole() {
	cl.mu.Lock()
	outstanding := cl.waiters.len() != 0 || cl.orphans != 0
	switch {
	case outstanding && cl.dead:
		cl.mu.Unlock()
		cl.drainAndFail()
		return
	case outstanding:
		cl.readerWake <- struct{}{}
	default:
		cl.freeRole()
	}
	cl.mu.Unlock()
}

// drainAndFail, by the holder of the reader role once the connection has
// ended (its rings are closed, so reading cannot block), hands out every
// response still in the ring, fails the calls left and frees the role.
func (cl *Client) drainAndFail() {
	cl.read(context.Background(), nil) //nolint:errcheck // ends at the closed ring's end
	cl.mu.Lock()
	cl.failAll()
	cl.freeRole()
	cl.mu.Unlock()
}

// freeRole marks the reader role free; mu held.
func (cl *Client) freeRole() {
	cl.reading = false
	if cl.dead {
		select {
		case cl.roleFreed <- struct{}{}:
		default:
		}
	}
}

// backgroundReader reads responses whenever the role is handed to it,
// until nothing is outstanding, and ends with the connection.
func (cl *Client) backgroundReader() {
	defer cl.wg.Done()
	for {
		select {
		case <-cl.readerWake:
		case <-cl.done:
			return
		}
		if _, err := cl.read(cl.ctx, nil); err != nil {
			// Every cause of a read error ends the connection.
			cl.drainAndFail()
			return
		}
	}
}

// takeRoleForGood waits until the reader role is free and keeps it, for
// teardown, which then unmaps the response ring.
func (cl *Client) takeRoleForGood() {
	for {
		cl.mu.Lock()
		if !cl.reading {
			cl.reading = true
			cl.mu.Unlock()
			return
		}
		cl.mu.Unlock()
		<-cl.roleFreed
	}
}

// failWaiters is kill's (done is closed, the rings too): from now on no
// call registers. With no reader, it fails every call in flight; else the
// reader does, once it has drained the response ring (releaseRole).
func (cl *Client) failWaiters() {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.dead = true
	if !cl.reading {
		cl.failAll()
		cl.freeRole() // wakes a teardown that waits already
	}
}

// failAll fails every call in flight; mu held, dead.
func (cl *Client) failAll() {
	if cl.waiters.len() == 0 {
		return
	}
	err := cl.deadErr()
	cl.waiters.takeAll(func(w *waiter) {
		if w.discard {
			putWaiter(w) // a stream nobody reads any more
			return
		}
		w.pending = false
		w.err = err
		cl.signal(w)
	})
}

// releaseResp releases the response record read last; a large one is
// handed back at once (the server may wait to reuse its segment).
func (cl *Client) releaseResp(large bool) error {
	if large {
		return releaseLarge(cl.respC)
	}
	return cl.respC.Release()
}

// fill stores a response in its waiter: its status, its record's
// payload (for the code) and its body (in the ring or a body segment).
func (cl *Client) fill(w *waiter, status uint32, data, body []byte) {
	if w.streamed {
		w.err = errStreamed
		return
	}
	switch status {
	case respOK:
		switch {
		case w.zc:
			w.view = body
		case w.into:
			w.n = len(body)
			if len(w.buf) < len(body) {
				w.err = ErrShortBuffer
			} else {
				copyRest(w.buf, body, w.have)
			}
		case w.have > 0:
			copyRest(w.out, body, w.have)
		default:
			w.out = append([]byte(nil), body...)
		}
	case respUnknownMessage:
		w.err = errUnknownMessage
	case respHandlerError:
		w.err = &HandlerError{Code: int32(binary.LittleEndian.Uint32(data[8:])), Msg: string(body)}
	case respTooLarge:
		// The code says how large the handler's response was (0 from a
		// server that does not say).
		raise := raiseRespRing
		if cl.large {
			raise = raiseLarge
		}
		w.err = tooLarge("call: response", int(binary.LittleEndian.Uint32(data[8:])), cl.srvResp, raise)
	case respPanic:
		w.err = errHandlerPanic
	case respCancelled:
		if cl.cancelOn {
			w.err = errCallCancelled
			break
		}
		w.err = fmt.Errorf("%w: response status %d", ErrProtocol, status)
	default:
		w.err = fmt.Errorf("%w: response status %d", ErrProtocol, status)
	}
}

// abandon gives up waiting. If the reader already took our response, it
// is about to signal: take the response after all.
//
// The response of an abandoned call still comes and takes room in the
// response ring, and the server blocks once that ring is full: so an
// abandoned call counts as an orphan, which keeps the background reader
// reading until it has arrived.
func (cl *Client) abandon(why error, w *waiter, parked bool) error {
	cl.mu.Lock()
	// A Stream's part handed over (handed) is on its way to the caller
	// with the reader role: take it, as a response already taken.
	pending := w.pending && !w.handed
	corr := w.corr
	if pending {
		cl.removeWaiter(w)
		cl.orphans++
		if !cl.reading && !cl.dead {
			cl.reading = true
			cl.readerWake <- struct{}{}
		}
	}
	cl.mu.Unlock()
	if pending {
		if cl.cancelOn {
			cl.sendCancel(corr)
		}
		return why
	}
	cl.received(w, parked)
	return w.err
}

// waiter is one call in flight. Whoever takes it out of Client.waiters
// (the reader that found its response, or kill) fills in the result and
// then signals it (Client.signal), unless it is the caller itself; until
// then the caller does not touch the result fields, afterwards only the
// caller does. The swap of sig that signals orders the result's stores
// before the caller's load that sees sigGiven (or its receive from ch).
// A waiter has at most one signal outstanding: the next (a Stream's next
// part, a handed-back role) follows something the caller does after it
// took the last.
type waiter struct {
	ch  chan struct{} // buffered 1; a token only for a parked caller
	sig atomic.Uint32 // sigNone, sigGiven or sigParked
	// gen counts the waiter's trips back to the pool (putWaiter). A
	// PendingCall or Response keeps the gen it was made with, so a copy
	// that outlived its call finds a different one and cannot act on
	// the waiter's next call. Atomic: a stale handle may look at it
	// while the waiter serves another goroutine.
	gen atomic.Uint64
	waiterState
}

// waiterState is what putWaiter clears.
type waiterState struct {
	pending bool   // in Client.waiters; guarded by Client.mu
	corr    uint64 // its correlation id while pending; guarded by Client.mu
	reader  bool   // the caller holds the reader role
	into    bool   // CallInto: copy into buf
	zc      bool   // zero copy: hand over the reader role with the record
	large   bool   // the response's body is in the response body segment
	stage   zcStage
	// Streamed responses (stream.go). stream: a Client.Stream call;
	// part: view is a part, not the final body; handed (guarded by
	// Client.mu): the reader gave the caller a part and the role;
	// discard (guarded by Client.mu): the caller stopped reading the
	// stream, and the reader drops the rest and frees the waiter;
	// streamed: a plain call got parts, so it fails with ErrStreamed.
	stream   bool
	part     bool
	handed   bool
	discard  bool
	streamed bool
	buf      []byte
	out      []byte
	n        int
	// have bytes of the large body noted (its descriptor, length the
	// whole body's) are already in buf (CallInto) or out (Call), copied
	// from progress notes by the caller's own reader (progress.go).
	// unnoted: its notes named two bodies, and it takes no more.
	have    int
	noted   [largeDescSize]byte
	unnoted bool
	err     error
	view    []byte
}
