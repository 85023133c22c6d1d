//go:build linux

package ipc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

const testTopic = 7

// runTopicChild runs the topic roles of cross-process tests.
func runTopicChild(role, addr string) (int, bool) {
	ctx := context.Background()
	switch role {
	case "topic-sub": // subscribe, then receive until killed
		sub, err := Subscribe(ctx, addr, testTopic, &SubscribeOptions{Wait: 3 /* ring.WaitSleep */})
		if err != nil {
			fmt.Println("subscribe:", err)
			return exitFailed, true
		}
		fmt.Println("ready")
		for {
			if _, err := sub.Recv(ctx); err != nil && !errors.Is(err, ErrOverrun) {
				fmt.Println("recv:", err)
				return exitFailed, true
			}
		}
	case "topic-slow-sub": // receive slowly, check every message, report what was read and lost
		sub, err := Subscribe(ctx, addr, testTopic, &SubscribeOptions{Spin: -1})
		if err != nil {
			fmt.Println("subscribe:", err)
			return exitFailed, true
		}
		fmt.Println("ready")
		var read, lost, overruns, inexact uint64
		next, known := uint64(0), true
		buf := make([]byte, 0, 256)
		for {
			m, err := sub.RecvInto(ctx, buf)
			var oe *OverrunError
			switch {
			case errors.As(err, &oe):
				lost += oe.Records
				next += oe.Records
				overruns++
				if !oe.Known { // lapped again while it resynchronised
					known = false
					inexact++
				}
				continue
			case errors.Is(err, ErrClosedByServer):
				fmt.Println("ok", read, lost, overruns, inexact)
				return 0, true
			case err != nil:
				fmt.Println("recv:", err)
				return exitFailed, true
			}
			seq, ok := slowCheck(m.Data)
			if !ok || (known && seq != next) || seq < next {
				fmt.Printf("torn or out of order: message %d (intact %v), want %d\n", seq, ok, next)
				return exitFailed, true
			}
			next, known = seq+1, true
			read++
			for range 200 { // fall behind: a few µs per message
				buf = append(buf[:0], m.Data...)
			}
		}
	case "topic-pub": // serve a topic, publish 100 messages to the first subscriber, hang
		srv, err := NewServer(nil)
		if err != nil {
			fmt.Println(err)
			return exitFailed, true
		}
		top, err := srv.AddTopic(TopicConfig{ID: testTopic})
		if err != nil {
			fmt.Println(err)
			return exitFailed, true
		}
		l, err := Listen(addr, 0)
		if err != nil {
			fmt.Println(err)
			return exitFailed, true
		}
		go srv.Serve(l)
		fmt.Println("ready")
		for top.Subscribers() == 0 {
			waitABit()
		}
		for i := range 100 {
			top.Publish(1, []byte(strconv.Itoa(i)))
		}
		fmt.Println("published")
		select {}
	}
	return 0, false
}

// slowFill and slowCheck: a 200-byte body whose every word is its
// sequence number, so that a copy mixing two messages shows.
func slowFill(b []byte, seq uint64) []byte {
	b = b[:200]
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], seq)
	}
	return b
}

func slowCheck(b []byte) (uint64, bool) {
	if len(b) != 200 {
		return 0, false
	}
	seq := binary.LittleEndian.Uint64(b)
	for i := 0; i < len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:]) != seq {
			return seq, false
		}
	}
	return seq, true
}

func waitABit() {
	ctx, cancel := context.WithTimeout(context.Background(), 1e6)
	defer cancel()
	<-ctx.Done()
}

func startTopicServer(t *testing.T, cfg *Config, tcs ...TopicConfig) (*Server, string, []*Topic) {
	t.Helper()
	srv, addr := startServer(t, cfg)
	var ts []*Topic
	for _, tc := range tcs {
		top, err := srv.AddTopic(tc)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, top)
	}
	return srv, addr, ts
}

func subscribe(t *testing.T, addr string, topic uint32, opts *SubscribeOptions) *Subscription {
	t.Helper()
	sub, err := Subscribe(testCtx(t), addr, topic, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	return sub
}

func TestTopicPublishSubscribe(t *testing.T) {
	_, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic})
	top := ts[0]
	subs := []*Subscription{subscribe(t, addr, testTopic, nil), subscribe(t, addr, testTopic, &SubscribeOptions{Spin: -1})}
	waitUntil(t, func() bool { return top.Subscribers() == 2 }, "two subscribers")
	const n = 500
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, len(subs))
	for _, sub := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				m, err := sub.Recv(ctx)
				if err != nil {
					errs <- err
					return
				}
				if m.ID != uint16(i%7) || string(m.Data) != strconv.Itoa(i) {
					errs <- fmt.Errorf("message %d: id %d %q", i, m.ID, m.Data)
					return
				}
			}
			_, err := sub.Recv(ctx)
			errs <- err
		}()
	}
	for i := range n {
		if err := top.Publish(uint16(i%7), []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := top.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for range subs {
		if err := <-errs; !errors.Is(err, ErrDisconnected) || !errors.Is(err, ErrClosedByServer) {
			t.Fatalf("after the topic closed: %v", err)
		}
	}
	if err := top.Publish(1, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after close: %v", err)
	}
	if st := top.Stats(); st.Published != n || st.Subscribers != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Concurrent publishers are serialised into one order that every
// subscriber sees.
func TestTopicOrderAcrossPublishers(t *testing.T) {
	srv, addr, _ := startTopicServer(t, nil, TopicConfig{ID: testTopic, RingSize: 1 << 20})
	subs := []*Subscription{subscribe(t, addr, testTopic, nil), subscribe(t, addr, testTopic, nil), subscribe(t, addr, testTopic, nil)}
	waitUntil(t, func() bool { return srv.Topic(testTopic).Subscribers() == 3 }, "three subscribers")
	const pubs, each = 4, 2000 // 8,000 records of 32 bytes: no lap
	var wg sync.WaitGroup
	for p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [8]byte
			for i := range each {
				binary.LittleEndian.PutUint32(b[:], uint32(p))
				binary.LittleEndian.PutUint32(b[4:], uint32(i))
				if err := srv.Publish(testTopic, 1, b[:]); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	ctx := testCtx(t)
	var first [][8]byte
	for si, sub := range subs {
		next := make([]uint32, pubs)
		for k := range pubs * each {
			m, err := sub.Recv(ctx)
			if err != nil {
				t.Fatalf("subscriber %d, message %d: %v", si, k, err)
			}
			p, i := binary.LittleEndian.Uint32(m.Data), binary.LittleEndian.Uint32(m.Data[4:])
			if p >= pubs || i != next[p] {
				t.Fatalf("subscriber %d: publisher %d's message %d, want %d", si, p, i, next[p])
			}
			next[p]++
			var b [8]byte
			copy(b[:], m.Data)
			if si == 0 {
				first = append(first, b)
			} else if first[k] != b {
				t.Fatalf("subscriber %d's message %d differs from subscriber 0's: not one order", si, k)
			}
		}
	}
	if err := srv.Publish(99, 1, nil); !errors.Is(err, ErrUnknownTopic) {
		t.Fatalf("unknown topic: %v", err)
	}
}

// A subscriber that does not read while the server publishes more than
// the ring holds learns it was overrun and by how many messages, then
// reads on; a subscriber that keeps up is not affected.
func TestTopicSlowSubscriberLapped(t *testing.T) {
	_, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic, RingSize: MinRingSize})
	top := ts[0]
	slow := subscribe(t, addr, testTopic, nil)
	fast := subscribe(t, addr, testTopic, nil)
	waitUntil(t, func() bool { return top.Subscribers() == 2 }, "two subscribers")
	ctx := testCtx(t)
	const n = 1000 // 64-byte records: 15 laps of 4 KiB
	body := make([]byte, 48)
	buf := make([]byte, 0, 64)
	for i := range n {
		binary.LittleEndian.PutUint64(body, uint64(i))
		copy(body[8:], body[:8])
		if err := top.Publish(1, body); err != nil {
			t.Fatal(err)
		}
		m, err := fast.RecvInto(ctx, buf)
		if err != nil || binary.LittleEndian.Uint64(m.Data) != uint64(i) {
			t.Fatalf("fast subscriber, message %d: %v", i, err)
		}
	}
	_, err := slow.Recv(ctx)
	var oe *OverrunError
	if !errors.Is(err, ErrOverrun) || !errors.As(err, &oe) || !oe.Known || oe.Records == 0 {
		t.Fatalf("lapped subscriber: %v", err)
	}
	got := uint64(0)
	for next := oe.Records; ; next++ {
		m, err := slow.TryRecv()
		if err == ErrTryAgain {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if v := binary.LittleEndian.Uint64(m.Data); v != next || binary.LittleEndian.Uint64(m.Data[8:]) != v {
			t.Fatalf("after the overrun: message %d, want %d", v, next)
		}
		got++
	}
	if got+oe.Records != n {
		t.Fatalf("received %d + lost %d, published %d", got, oe.Records, n)
	}
	if st := slow.Stats(); st.Overruns != 1 || st.Lost != oe.Records {
		t.Fatalf("stats %+v", st)
	}
	if st := fast.Stats(); st.Overruns != 0 {
		t.Fatalf("fast subscriber overrun: %+v", st)
	}
}

// A subscriber process that reads slower than the server publishes, into
// a small ring, is lapped again and again while it copies messages the
// server is overwriting: every message it gets is intact and in order,
// and what it read plus what it was told it lost is what was published.
func TestTopicSlowSubscriberProcess(t *testing.T) {
	_, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic, RingSize: MinRingSize})
	top := ts[0]
	c := startChild(t, "topic-slow-sub", addr, nil)
	c.expect(t, "ready")
	waitUntil(t, func() bool { return top.Subscribers() == 1 }, "subscribed")
	const n = 300_000 // tens of ms of publishing: many laps while the child reads
	body := make([]byte, 200)
	for i := range uint64(n) {
		if err := top.Publish(1, slowFill(body, i)); err != nil {
			t.Fatal(err)
		}
	}
	top.Close()
	if !c.lines.Scan() {
		t.Fatalf("child ended: %v", c.lines.Err())
	}
	var read, lost, overruns, inexact uint64
	if _, err := fmt.Sscanf(c.lines.Text(), "ok %d %d %d %d", &read, &lost, &overruns, &inexact); err != nil {
		t.Fatalf("child: %q", c.lines.Text())
	}
	// An overrun whose count is unknown (the writer lapped the reader
	// again while it resynchronised) leaves the sum short; the child
	// then checked the order only.
	if (inexact == 0 && read+lost != n) || read+lost > n || overruns == 0 || read == 0 {
		t.Fatalf("read %d + lost %d of %d published, %d overruns (%d uncounted)", read, lost, n, overruns, inexact)
	}
	t.Logf("read %d, lost %d in %d overruns (%d uncounted)", read, lost, overruns, inexact)
}

// A subscriber process killed while it sleeps in Recv leaves: the server
// forgets it and gives back its admission; publishing and the other
// subscribers go on.
func TestTopicSubscriberKilled(t *testing.T) {
	srv, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic})
	top := ts[0]
	local := subscribe(t, addr, testTopic, nil)
	c := startChild(t, "topic-sub", addr, nil)
	c.expect(t, "ready")
	waitUntil(t, func() bool { return top.Subscribers() == 2 }, "the child subscribed")
	// Kill it asleep in Recv: announced, woken once, announced again.
	waitUntil(t, func() bool { return top.w.Armed() }, "the child asleep")
	top.Publish(1, []byte("x"))
	waitUntil(t, func() bool { return top.Stats().Wakes > 0 && top.w.Armed() }, "the child woken and asleep again")
	c.kill(t)
	waitUntil(t, func() bool { return top.Subscribers() == 1 }, "the killed subscriber forgotten")
	waitUntil(t, func() bool { srv.mu.Lock(); defer srv.mu.Unlock(); return srv.nconns == 1 }, "its admission given back")
	ctx := testCtx(t)
	for i := range 10 {
		if err := top.Publish(2, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := local.Recv(ctx); err != nil || m.ID != 1 {
		t.Fatalf("first message: %v", err)
	}
	for i := range 10 {
		if m, err := local.Recv(ctx); err != nil || m.Data[0] != byte(i) {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

// A publisher (server) process that dies leaves its subscribers every
// message it published, then ErrDisconnected with ErrPeerDied, even for
// a subscriber asleep in Recv.
func TestTopicPublisherCrash(t *testing.T) {
	addr := abstractAddr()
	c := startChild(t, "topic-pub", addr, nil)
	c.expect(t, "ready")
	sub := subscribe(t, addr, testTopic, &SubscribeOptions{Spin: -1})
	c.expect(t, "published")
	ctx := testCtx(t)
	for i := range 100 {
		m, err := sub.Recv(ctx)
		if err != nil || string(m.Data) != strconv.Itoa(i) {
			t.Fatalf("message %d: %q, %v", i, m.Data, err)
		}
	}
	errc := make(chan error, 1)
	go func() { _, err := sub.Recv(ctx); errc <- err }()
	c.kill(t)
	if err := <-errc; !errors.Is(err, ErrDisconnected) || !errors.Is(err, ErrPeerDied) {
		t.Fatalf("after the publisher died: %v", err)
	}
	if _, err := sub.Recv(ctx); !errors.Is(err, ErrPeerDied) {
		t.Fatalf("again: %v", err)
	}
	<-sub.Done()
	if err := sub.Err(); !errors.Is(err, ErrDisconnected) || !errors.Is(err, ErrPeerDied) {
		t.Fatalf("Err after the publisher died: %v", err)
	}
}

// The server's Close ends subscriptions gracefully: what was published
// is received, then ErrClosedByServer.
func TestTopicServerClose(t *testing.T) {
	srv, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic})
	sub := subscribe(t, addr, testTopic, nil)
	waitUntil(t, func() bool { return ts[0].Subscribers() == 1 }, "subscribed")
	ts[0].Publish(3, []byte("last"))
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if m, err := sub.Recv(ctx); err != nil || string(m.Data) != "last" {
		t.Fatalf("after close: %q %v", m.Data, err)
	}
	if _, err := sub.Recv(ctx); !errors.Is(err, ErrClosedByServer) {
		t.Fatalf("drained: %v", err)
	}
	<-sub.Done()
	if err := sub.Err(); !errors.Is(err, ErrDisconnected) || !errors.Is(err, ErrClosedByServer) {
		t.Fatalf("Err after the server closed: %v", err)
	}
	if srv.Topic(testTopic) != nil {
		t.Fatal("topic still listed")
	}
	if _, err := srv.AddTopic(TopicConfig{ID: 1}); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("AddTopic after close: %v", err)
	}
}

// A subscription's Close ends a Recv in progress, and subscribing again
// on a new connection works (what a reconnecting client does).
func TestTopicCloseAndResubscribe(t *testing.T) {
	_, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic})
	top := ts[0]
	for round := range 3 {
		sub, err := Subscribe(testCtx(t), addr, testTopic, &SubscribeOptions{Spin: -1})
		if err != nil {
			t.Fatal(err)
		}
		if sub.Err() != nil {
			t.Fatalf("Err of a live subscription: %v", sub.Err())
		}
		waitUntil(t, func() bool { return top.Subscribers() == 1 }, "subscribed")
		top.Publish(uint16(round), nil)
		if m, err := sub.Recv(testCtx(t)); err != nil || m.ID != uint16(round) {
			t.Fatalf("round %d: %v", round, err)
		}
		errc := make(chan error, 1)
		go func() { _, err := sub.Recv(context.Background()); errc <- err }()
		if round == 1 {
			waitUntil(t, func() bool { return top.w.Armed() }, "the receive asleep")
		}
		sub.Close()
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Fatalf("recv during close: %v", err)
		}
		if _, err := sub.Recv(context.Background()); !errors.Is(err, ErrClosed) {
			t.Fatalf("recv after close: %v", err)
		}
		if err := sub.Err(); !errors.Is(err, ErrClosed) {
			t.Fatalf("Err after close: %v", err)
		}
		sub.Close()
		waitUntil(t, func() bool { return top.Subscribers() == 0 }, "unsubscribed")
	}
	// A context ends a sleeping Recv.
	sub := subscribe(t, addr, testTopic, &SubscribeOptions{Spin: -1})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := sub.Recv(ctx); errc <- err }()
	waitUntil(t, func() bool { return sub.sleeping.Load() }, "the receive asleep")
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled recv: %v", err)
	}
	// The next receives sleep and wake as before (the watcher is reset,
	// and so is the socket's write deadline it used).
	for i := range 3 {
		go func() {
			waitUntil(t, func() bool { return sub.sleeping.Load() }, "the next receive asleep")
			top.Publish(1, []byte{byte(i)})
		}()
		if m, err := sub.Recv(testCtx(t)); err != nil || m.Data[0] != byte(i) {
			t.Fatalf("receive %d after a cancelled one: %v", i, err)
		}
	}
}

func TestTopicAdmission(t *testing.T) {
	deny := errors.New("not you")
	_, addr, ts := startTopicServer(t, nil,
		TopicConfig{ID: 1, MaxSubscribers: 1},
		TopicConfig{ID: 2, OnSubscribe: func(Cred) error { return fmt.Errorf("%w: %w", deny, RejectCode(42)) }},
		TopicConfig{ID: 3},
	)
	ctx := testCtx(t)
	if _, err := Subscribe(ctx, addr, 99, nil); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("unknown topic: %v", err)
	}
	var rej *RejectError
	if _, err := Subscribe(ctx, addr, 2, nil); !errors.As(err, &rej) || rej.Status != statusRejected || rej.Code != 42 {
		t.Fatalf("OnSubscribe refusal: %v", err)
	}
	subscribe(t, addr, 1, nil)
	if _, err := Subscribe(ctx, addr, 1, nil); !errors.Is(err, ErrLimit) || !errors.As(err, &rej) || rej.Code != LimitSubscribers {
		t.Fatalf("full topic: %v", err)
	}
	if st := ts[0].Stats(); st.Refused != 1 || st.Subscribers != 1 {
		t.Fatalf("stats %+v", st)
	}
	if _, err := Subscribe(ctx, addr, 3, &SubscribeOptions{MaxRingSize: MinRingSize}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ring above the subscriber's limit: %v", err)
	}

	// Config.Authorize applies to subscribers as to every connection.
	_, addr2, _ := startTopicServer(t, &Config{Authorize: func(Cred) error { return deny }}, TopicConfig{ID: 1})
	if _, err := Subscribe(ctx, addr2, 1, nil); !errors.As(err, &rej) || rej.Status != statusUnauthorized {
		t.Fatalf("unauthorized: %v", err)
	}
}

// rawSubscribe sends a subscription hello as given and returns the
// reply and the descriptor that came with it (-1 if none).
func rawSubscribe(t *testing.T, addr string, h hello, tweak func(b []byte)) (reply, int) {
	t.Helper()
	uc := rawDial(t, addr)
	var hb [helloSize]byte
	h.encode(hb[:])
	if tweak != nil {
		tweak(hb[:])
	}
	if _, err := uc.Write(hb[:]); err != nil {
		t.Fatal(err)
	}
	r, fds, err := readReply(testCtx(t), uc, nil)
	var rej *RejectError
	if errors.As(err, &rej) {
		return reply{status: rej.Status, detail: rej.Code}, -1
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]) })
	return r, fds[0]
}

func TestTopicHelloChecks(t *testing.T) {
	_, addr, _ := startTopicServer(t, nil, TopicConfig{ID: testTopic})
	h := hello{version: Version, features: FeatureTopic, topic: testTopic}
	if r, fd := rawSubscribe(t, addr, h, nil); r.status != statusOK || fd < 0 || r.features&FeatureTopic == 0 {
		t.Fatalf("good hello: %+v", r)
	}
	if r, _ := rawSubscribe(t, addr, h, func(b []byte) { b[44] = 1 }); r.status != statusBadHello {
		t.Fatalf("reserved bytes: %+v", r)
	}
	hs := h
	hs.sizes[1] = MinRingSize
	if r, _ := rawSubscribe(t, addr, hs, nil); r.status != statusBadHello {
		t.Fatalf("ring sizes in a subscription: %+v", r)
	}
	hs = h
	hs.service = testService
	if r, _ := rawSubscribe(t, addr, hs, nil); r.status != statusBadHello {
		t.Fatalf("service in a subscription: %+v", r)
	}
}

// A subscriber cannot write the topic's ring: the descriptor is
// read-only and the memfd is sealed against new writable mappings and
// writes, so the kernel refuses every way to write it.
func TestTopicSegmentNotWritable(t *testing.T) {
	_, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic})
	r, fd := rawSubscribe(t, addr, hello{version: Version, features: FeatureTopic, topic: testTopic}, nil)
	if r.status != statusOK {
		t.Fatalf("subscribe: %+v", r)
	}
	size := int(r.payload)
	if _, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); !errors.Is(err, unix.EACCES) {
		t.Fatalf("writable shared mapping of the descriptor: %v, want EACCES", err)
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil || fl&unix.O_ACCMODE != unix.O_RDONLY {
		t.Fatalf("descriptor flags %#x, %v", fl, err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE); !errors.Is(err, unix.EACCES) {
		t.Fatalf("mprotect to writable: %v, want EACCES", err)
	}
	if _, err := unix.Write(fd, []byte("x")); err == nil {
		t.Fatal("write(2) on the descriptor succeeded")
	}
	// Reopening it read-write through /proc works for a memfd; the seal
	// still refuses writable mappings and writes.
	rw, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		defer unix.Close(rw)
		if _, err := unix.Mmap(rw, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); !errors.Is(err, unix.EPERM) {
			t.Fatalf("writable mapping of a reopened descriptor: %v, want EPERM", err)
		}
		if _, err := unix.Pwrite(rw, []byte("x"), 4096); !errors.Is(err, unix.EPERM) {
			t.Fatalf("write through a reopened descriptor: %v, want EPERM", err)
		}
		if err := unix.Ftruncate(rw, 0); !errors.Is(err, unix.EPERM) {
			t.Fatalf("truncate: %v, want EPERM", err)
		}
	} else if !errors.Is(err, os.ErrPermission) {
		t.Fatalf("reopen: %v", err)
	}
	// The read-only mapping sees what the server publishes.
	ts[0].Publish(1, []byte("seen"))
	if string(mem[384+16:384+20]) != "seen" {
		t.Fatalf("read-only mapping: %q", mem[384+16:384+20])
	}
}

func TestTopicRecvAllocs(t *testing.T) {
	_, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic})
	sub := subscribe(t, addr, testTopic, nil)
	waitUntil(t, func() bool { return ts[0].Subscribers() == 1 }, "subscribed")
	body := make([]byte, 64)
	buf := make([]byte, 0, 64)
	ctx := context.Background()
	if n := testing.AllocsPerRun(1000, func() {
		if err := ts[0].Publish(1, body); err != nil {
			t.Fatal(err)
		}
		if _, err := sub.RecvInto(ctx, buf); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per publish and receive", n)
	}
}

// A receive whose context can end and that sleeps for each message
// allocates nothing either (its context is watched by the subscription's
// one watcher, not by a callback per sleep).
func TestTopicRecvContextAllocs(t *testing.T) {
	if raceOn {
		t.Skip("the race detector allocates")
	}
	_, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic})
	sub := subscribe(t, addr, testTopic, nil)
	waitUntil(t, func() bool { return ts[0].Subscribers() == 1 }, "subscribed")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body := make([]byte, 64)
	buf := make([]byte, 0, 64)
	pub := make(chan struct{})
	defer close(pub)
	go func() {
		for range pub {
			// Publish once the receive sleeps (or, bounded, anyway).
			for i := 0; i < 100_000 && !sub.sleeping.Load(); i++ {
				runtime.Gosched() // allocates nothing, unlike a timer
			}
			ts[0].Publish(1, body)
		}
	}()
	if n := testing.AllocsPerRun(200, func() {
		pub <- struct{}{}
		if _, err := sub.RecvInto(ctx, buf); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per sleeping receive with a cancellable context", n)
	}
}

var _ net.Conn = (*net.UnixConn)(nil)

// BenchmarkTopicRecv: a subscriber's cost per message, with the messages
// already in the ring (no publisher racing it).
func BenchmarkTopicRecv(b *testing.B) {
	srv, err := NewServer(nil)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	top, _ := srv.AddTopic(TopicConfig{ID: 1, RingSize: 1 << 22})
	addr := abstractAddr()
	l, _ := Listen(addr, 0)
	go srv.Serve(l)
	sub, err := Subscribe(context.Background(), addr, 1, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	body := make([]byte, 64)
	buf := make([]byte, 0, 64)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for range 1000 {
			top.Publish(1, body)
		}
		b.StartTimer()
		for range 1000 {
			if _, err := sub.RecvInto(ctx, buf); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkTopicPublish: the publisher's cost per message.
func BenchmarkTopicPublish(b *testing.B) {
	srv, err := NewServer(nil)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	top, _ := srv.AddTopic(TopicConfig{ID: 1})
	body := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		top.Publish(1, body)
	}
}

func TestTopicConfigChecks(t *testing.T) {
	srv, _ := startServer(t, nil)
	top, err := srv.AddTopic(TopicConfig{ID: 1, RingSize: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if top.MaxBody() != 8192/4-16 || top.RingSize() != 8192 || top.ID() != 1 {
		t.Fatalf("ring of 5000 bytes rounds up to 8192: ring %d, max body %d", top.RingSize(), top.MaxBody())
	}
	if err := top.Publish(1, make([]byte, top.MaxBody()+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("body above MaxBody: %v", err)
	}
	if err := top.Publish(1, make([]byte, top.MaxBody())); err != nil {
		t.Fatalf("body of MaxBody: %v", err)
	}
	if _, err := srv.AddTopic(TopicConfig{ID: 1}); !errors.Is(err, os.ErrExist) {
		t.Fatalf("topic id in use: %v", err)
	}
	def, err := srv.AddTopic(TopicConfig{ID: 3})
	if err != nil {
		t.Fatal(err)
	}
	if def.RingSize() != DefaultTopicRingSize {
		t.Fatalf("default topic ring %d bytes, want %d", def.RingSize(), DefaultTopicRingSize)
	}
	for _, bad := range []TopicConfig{{ID: 2, RingSize: -1}, {ID: 2, MaxSubscribers: -1}, {ID: 2, RingSize: int(min(uint64(math.MaxInt), 1<<62))}} {
		if _, err := srv.AddTopic(bad); !errors.Is(err, os.ErrInvalid) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	if err := top.Close(); err != nil {
		t.Fatal(err)
	}
	if srv.Topic(1) != nil {
		t.Fatal("closed topic still listed")
	}
	if _, err := srv.AddTopic(TopicConfig{ID: 1, RingSize: MinRingSize}); err != nil {
		t.Fatalf("the id of a closed topic: %v", err)
	}
}

// Receives on one subscription take turns: one waiting for the lock
// ends with its context, the next gets it when the holder returns, and
// Close waits for the holder.
func TestTopicConcurrentReceives(t *testing.T) {
	_, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic})
	top := ts[0]
	sub := subscribe(t, addr, testTopic, &SubscribeOptions{Spin: -1})
	first := make(chan error, 1)
	go func() {
		m, err := sub.Recv(context.Background())
		if err == nil && string(m.Data) != "a" {
			err = fmt.Errorf("got %q", m.Data)
		}
		first <- err
	}()
	waitUntil(t, func() bool { return top.w.Armed() }, "the first receive asleep, holding the lock")
	ctx, cancel := context.WithTimeout(context.Background(), 5e6)
	defer cancel()
	if _, err := sub.Recv(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("receive waiting for the lock: %v", err)
	}
	second := make(chan error, 1)
	go func() {
		m, err := sub.Recv(testCtx(t))
		if err == nil && string(m.Data) != "b" {
			err = fmt.Errorf("got %q", m.Data)
		}
		second <- err
	}()
	top.Publish(1, []byte("a"))
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	top.Publish(1, []byte("b"))
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	third := make(chan error, 1)
	go func() { _, err := sub.Recv(context.Background()); third <- err }()
	sub.Close()
	if err := <-third; !errors.Is(err, ErrClosed) {
		t.Fatalf("receive during Close: %v", err)
	}
}

// SubscribeOptions.OnMessage receives every message in order on the
// subscription's goroutine, Recv is then unavailable, the messages
// published before the server closed the topic are all delivered, and
// the goroutine then ends with Err saying why.
func TestTopicOnMessage(t *testing.T) {
	srv, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic, RingSize: 1 << 20})
	got := make(chan uint64, 1000)
	sub := subscribe(t, addr, testTopic, &SubscribeOptions{OnMessage: func(id uint16, body []byte) {
		if id != 5 || len(body) != 8 {
			t.Errorf("message id %d with %d bytes", id, len(body))
			return
		}
		got <- binary.LittleEndian.Uint64(body)
	}})
	waitUntil(t, func() bool { return ts[0].Subscribers() == 1 }, "subscribed")
	if _, err := sub.Recv(testCtx(t)); !errors.Is(err, ErrOnMessage) {
		t.Fatalf("Recv with OnMessage: %v, want ErrOnMessage", err)
	}
	if _, err := sub.TryRecv(); !errors.Is(err, ErrOnMessage) {
		t.Fatalf("TryRecv with OnMessage: %v, want ErrOnMessage", err)
	}
	const n = 1000
	var b [8]byte
	for i := range n {
		binary.LittleEndian.PutUint64(b[:], uint64(i))
		if err := ts[0].Publish(5, b[:]); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if v := <-got; v != uint64(i) {
			t.Fatalf("message %d delivered as %d", i, v)
		}
	}
	<-sub.Delivered() // the goroutine ends once the ring is drained
	select {
	case <-sub.Done():
	default:
		t.Fatal("Delivered closed before Done")
	}
	if err := sub.Err(); !errors.Is(err, ErrClosedByServer) {
		t.Fatalf("Err: %v, want ErrClosedByServer", err)
	}
	if len(got) != 0 {
		t.Fatalf("%d messages more than published", len(got))
	}
}

// A subscriber whose OnMessage falls behind is lapped: OnOverrun is told
// how many messages it lost, and delivery goes on in order, so that what
// it received plus what it lost is what was published. Close may be
// called from OnMessage.
func TestTopicOnMessageLapped(t *testing.T) {
	_, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic, RingSize: MinRingSize})
	gate := make(chan struct{})
	var received, lost atomic.Uint64
	var last atomic.Int64
	last.Store(-1)
	subc := make(chan *Subscription, 1)
	closed := make(chan error, 1)
	const n = 1000 // 64-byte records: 15 laps of 4 KiB
	sub := subscribe(t, addr, testTopic, &SubscribeOptions{
		OnMessage: func(id uint16, body []byte) {
			<-gate // held on the first message until everything is published
			v := int64(binary.LittleEndian.Uint64(body))
			if v <= last.Load() {
				t.Errorf("message %d after %d", v, last.Load())
			}
			last.Store(v)
			if received.Add(1)+lost.Load() == n {
				closed <- (<-subc).Close() // from the callback: must not deadlock
			}
		},
		OnOverrun: func(err error) {
			var oe *OverrunError
			if !errors.Is(err, ErrOverrun) || !errors.As(err, &oe) || !oe.Known {
				t.Errorf("OnOverrun: %v", err)
				return
			}
			lost.Add(oe.Records)
		},
	})
	subc <- sub
	waitUntil(t, func() bool { return ts[0].Subscribers() == 1 }, "subscribed")
	body := make([]byte, 48)
	for i := range n {
		binary.LittleEndian.PutUint64(body, uint64(i))
		if err := ts[0].Publish(1, body); err != nil {
			t.Fatal(err)
		}
	}
	close(gate)
	if err := <-closed; err != nil {
		t.Fatalf("Close from OnMessage: %v", err)
	}
	if lost.Load() == 0 || received.Load()+lost.Load() != n {
		t.Fatalf("received %d + lost %d, published %d", received.Load(), lost.Load(), n)
	}
	if st := sub.Stats(); st.Overruns == 0 || st.Lost != lost.Load() {
		t.Fatalf("stats %+v, lost %d", st, lost.Load())
	}
}

// OnMessage delivery allocates nothing per message.
func TestTopicOnMessageAllocs(t *testing.T) {
	if raceOn {
		t.Skip("the race detector allocates")
	}
	_, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic, RingSize: 1 << 20})
	got := make(chan struct{}, 1)
	subscribe(t, addr, testTopic, &SubscribeOptions{OnMessage: func(uint16, []byte) { got <- struct{}{} }})
	waitUntil(t, func() bool { return ts[0].Subscribers() == 1 }, "subscribed")
	body := make([]byte, 64)
	if n := testing.AllocsPerRun(200, func() {
		if err := ts[0].Publish(1, body); err != nil {
			t.Fatal(err)
		}
		<-got
	}); n != 0 {
		t.Errorf("%.1f allocations per published and delivered message", n)
	}
}

// Receives that sleep with no context to watch (OnMessage's, Recv with
// context.Background) are woken by Close, and by the server's going
// away, rather than sleeping on.
func TestTopicCloseWakesSleepers(t *testing.T) {
	srv, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic})
	cb := subscribe(t, addr, testTopic, &SubscribeOptions{OnMessage: func(uint16, []byte) {}})
	rv := subscribe(t, addr, testTopic, nil)
	gone := subscribe(t, addr, testTopic, nil)
	waitUntil(t, func() bool { return ts[0].Subscribers() == 3 }, "subscribed")
	recvd := make(chan error, 2)
	go func() { _, err := rv.Recv(context.Background()); recvd <- err }()
	go func() { _, err := gone.Recv(context.Background()); recvd <- err }()
	waitUntil(t, func() bool { return rv.sleeping.Load() && gone.sleeping.Load() && cb.sleeping.Load() }, "three receives asleep")
	if err := cb.Close(); err != nil {
		t.Fatal(err)
	}
	<-cb.delivered
	if err := rv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-recvd; !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv ended by Close: %v, want ErrClosed", err)
	}
	srv.Close()
	if err := <-recvd; !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Recv ended by the server: %v, want ErrDisconnected", err)
	}
}

// OnMessage hands over messages taken in batches: short ones, ones
// longer than the delivery buffer and ones longer than the room left in
// it arrive intact and in order.
func TestTopicOnMessageSizes(t *testing.T) {
	_, addr, ts := startTopicServer(t, nil, TopicConfig{ID: testTopic, RingSize: 4 << 20})
	sizes := []int{8, 70000, 64, 100000, 9, 65536, 40000, 40000, 8, 130000, 16, 16}
	gate := make(chan struct{})
	got := make(chan error, len(sizes))
	next := 0
	subscribe(t, addr, testTopic, &SubscribeOptions{OnMessage: func(id uint16, body []byte) {
		if next == 0 {
			<-gate // the rest are published meanwhile: later batches mix sizes
		}
		i := next
		next++
		switch {
		case i >= len(sizes):
			got <- fmt.Errorf("message %d: more than published", i)
		case int(id) != i || len(body) != sizes[i]:
			got <- fmt.Errorf("message %d: id %d, %d bytes, want %d", i, id, len(body), sizes[i])
		case !bytes.Equal(body, bytes.Repeat([]byte{byte(i + 1)}, sizes[i])):
			got <- fmt.Errorf("message %d: body damaged", i)
		default:
			got <- nil
		}
	}})
	waitUntil(t, func() bool { return ts[0].Subscribers() == 1 }, "subscribed")
	for i, n := range sizes {
		if err := ts[0].Publish(uint16(i), bytes.Repeat([]byte{byte(i + 1)}, n)); err != nil {
			t.Fatal(err)
		}
	}
	close(gate)
	for range sizes {
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	}
}
