//go:build linux

package ipc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

func TestCall(t *testing.T) {
	_, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, &ClientOptions{MaxMessage: -1}) // bodies up to the ring's (large_test.go goes beyond)
	ctx := testCtx(t)
	for _, id := range []uint16{msgEcho, msgEchoZC} {
		for _, n := range []int{0, 1, 64, 1000, cl.MaxRequest() - 8} {
			t.Run(fmt.Sprintf("id%d/%dB", id, n), func(t *testing.T) {
				req := bytes.Repeat([]byte{byte(n)}, n)
				got, err := cl.Call(ctx, id, req)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, req) {
					t.Fatalf("response of %d bytes differs from the request", len(got))
				}
				buf := make([]byte, n)
				m, err := cl.CallInto(ctx, id, req, buf)
				if err != nil || m != n || !bytes.Equal(buf, req) {
					t.Fatalf("CallInto = %d, %v", m, err)
				}
			})
		}
	}
	if cred := cl.ServerCred(); cred.PID != int32(os.Getpid()) || cred.UID != uint32(os.Geteuid()) {
		t.Errorf("ServerCred = %+v", cred)
	}
}

func TestCallErrors(t *testing.T) {
	_, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, nil)
	ctx := testCtx(t)

	_, err := cl.Call(ctx, 999, nil)
	if !errors.Is(err, ErrUnknownMessage) {
		t.Errorf("unknown id: %v, want ErrUnknownMessage", err)
	}
	_, err = cl.Call(ctx, msgFail, nil)
	var he *HandlerError
	if !errors.Is(err, ErrHandler) || !errors.As(err, &he) || he.Code != 42 || he.Msg != "boom" {
		t.Errorf("handler failure: %v", err)
	}
	_, err = cl.Call(ctx, msgEcho, make([]byte, cl.MaxRequest()+1))
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized request: %v, want ErrTooLarge", err)
	}
	n, err := cl.CallInto(ctx, msgEcho, make([]byte, 10), make([]byte, 5))
	if !errors.Is(err, ErrShortBuffer) || n != 10 {
		t.Errorf("short buffer: %d, %v", n, err)
	}
	// The connection survives all of these.
	if got, err := cl.Call(ctx, msgEcho, []byte("still")); err != nil || string(got) != "still" {
		t.Fatalf("after errors: %q, %v", got, err)
	}
}

func TestUnknownService(t *testing.T) {
	_, addr := startServer(t, nil, echoService())
	_, err := Dial(testCtx(t), addr, testService+1, nil)
	if !errors.Is(err, ErrUnknownService) || !errors.Is(err, ErrRejected) {
		t.Fatalf("Dial unknown service: %v", err)
	}
}

func TestOnConnectReject(t *testing.T) {
	svc := echoService()
	svc.OnConnect = func(c *Conn) error { return RejectCode(17) }
	var disconnects atomic.Int32
	svc.OnDisconnect = func(*Conn, error) { disconnects.Add(1) }
	srv, addr := startServer(t, nil, svc)
	_, err := Dial(testCtx(t), addr, testService, nil)
	var re *RejectError
	if !errors.Is(err, ErrRejected) || !errors.As(err, &re) || re.Code != 17 {
		t.Fatalf("Dial: %v, want a rejection with code 17", err)
	}
	srv.Close()
	if n := disconnects.Load(); n != 0 {
		t.Errorf("OnDisconnect ran %d times for a rejected connection", n)
	}
}

func TestPrivateData(t *testing.T) {
	svc := echoService()
	var n atomic.Int32
	svc.OnConnect = func(c *Conn) error {
		c.SetPrivate(fmt.Sprintf("conn-%d", n.Add(1)))
		return nil
	}
	_, addr := startServer(t, nil, svc)
	ctx := testCtx(t)
	c1 := dial(t, addr, nil)
	c2 := dial(t, addr, nil)
	seen := map[string]bool{}
	for _, cl := range []*Client{c1, c2, c1} {
		got, err := cl.Call(ctx, msgPrivate, nil)
		if err != nil {
			t.Fatal(err)
		}
		seen[string(got)] = true
	}
	if len(seen) != 2 || !seen["conn-1"] || !seen["conn-2"] {
		t.Fatalf("private data seen: %v", seen)
	}
}

func TestVersionMismatch(t *testing.T) {
	_, addr := startServer(t, nil, echoService())
	// Speak version 2 by hand and read the reject.
	ctx := testCtx(t)
	uc := rawDial(t, addr)
	h := hello{version: Version + 1, service: testService}
	var hb [helloSize]byte
	h.encode(hb[:])
	if _, err := uc.Write(hb[:]); err != nil {
		t.Fatal(err)
	}
	var rb [replySize]byte
	if _, err := readFull(uc, rb[:]); err != nil {
		t.Fatal(err)
	}
	r, err := decodeReply(rb[:])
	if err != nil || r.status != statusBadVersion || r.version != Version {
		t.Fatalf("reply %+v, %v", r, err)
	}
	_ = ctx
}

func TestZeroCopyCall(t *testing.T) {
	_, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, nil)
	ctx := testCtx(t)
	for i := range 100 {
		p, err := cl.Reserve(ctx, msgEcho, 8)
		if err != nil {
			t.Fatal(err)
		}
		copy(p.Bytes(), fmt.Sprintf("%08d", i))
		resp, err := p.Send(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(resp.Data); got != fmt.Sprintf("%08d", i) {
			t.Fatalf("response %q", got)
		}
		if err := resp.Release(); err != nil {
			t.Fatal(err)
		}
	}
	p, err := cl.Reserve(ctx, msgEcho, 8)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Abort(); err != nil {
		t.Fatal(err)
	}
	if got, err := cl.Call(ctx, msgEcho, []byte("x")); err != nil || string(got) != "x" {
		t.Fatalf("after Abort: %q, %v", got, err)
	}
	_ = context.Background
}

func TestHelloValidation(t *testing.T) {
	_, addr := startServer(t, &Config{MaxRingSize: 8192}, echoService())
	ctx := testCtx(t)
	// Sizes are clamped to the server's limits (the client's own limit
	// raised so that it may ask).
	cl, err := Dial(ctx, addr, testService, &ClientOptions{RequestRingSize: 1 << 30, ResponseRingSize: 1024, MaxRingSize: 1 << 30, MaxMessage: -1})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cl.MaxRequest(), 8192/2-16-reqHdrSize; got != want {
		t.Errorf("MaxRequest %d, want %d (clamped to 8192)", got, want)
	}
	cl.Close()
	// A size that is not a power of two is rounded up to one.
	uc := rawDial(t, addr)
	h := hello{version: Version, service: testService, sizes: [3]uint64{5000, 0, 0}}
	var hb [helloSize]byte
	h.encode(hb[:])
	uc.Write(hb[:])
	var rb [replySize]byte
	if _, err := readFull(uc, rb[:]); err != nil {
		t.Fatal(err)
	}
	if r, _ := decodeReply(rb[:]); r.status != statusOK || r.sizes[0] != 8192 {
		t.Errorf("size 5000: status %d, size %d, want 0 and 8192", r.status, r.sizes[0])
	}
	// So is garbage.
	uc = rawDial(t, addr)
	uc.Write(make([]byte, helloSize))
	if _, err := readFull(uc, rb[:]); err != nil {
		t.Fatal(err)
	}
	if r, err := decodeReply(rb[:]); err != nil || r.status != statusBadHello {
		t.Errorf("garbage hello: status %d, %v", r.status, err)
	}
}

func TestListenPath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sock")
	l, err := Listen(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v", fi.Mode(), err)
	}
	// A live server's socket is not taken over.
	if _, err := Listen(path, 0); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Listen on a live socket: %v", err)
	}
	// A stale one is: leave the file behind.
	l.SetUnlinkOnClose(false)
	l.Close()
	l, err = Listen(path, 0o660)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if fi, _ := os.Lstat(path); fi.Mode().Perm() != 0o660 {
		t.Errorf("mode %v", fi.Mode())
	}
	l.Close()
	// Anything else is never removed.
	if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path, 0); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "data" {
		t.Fatal("regular file was touched")
	}
}

func TestPayloadChecksumFeature(t *testing.T) {
	_, addr := startServer(t, nil, echoService())
	cl := dial(t, addr, &ClientOptions{Features: FeaturePayloadChecksum | 1<<7})
	if cl.Features() != FeaturePayloadChecksum|defaultFeatures|FeatureLarge|FeatureProgress {
		t.Fatalf("granted %#x", cl.Features())
	}
	if got, err := cl.Call(testCtx(t), msgEcho, []byte("sum")); err != nil || string(got) != "sum" {
		t.Fatalf("call: %q, %v", got, err)
	}
}
