//go:build linux

package ipc

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
)

// TestWireConstants pins every number of the protocol as docs/ipc.md
// states it. Changing one breaks every client in the field: bump Version.
func TestWireConstants(t *testing.T) {
	pins := []struct {
		name      string
		got, want uint64
	}{
		{"Version", Version, 1},
		{"helloMagic", helloMagic, 0x4f4c454843504952},
		{"replyMagic", replyMagic, 0x594c505243504952},
		{"helloSize", helloSize, 48},
		{"replySize", replySize, 96},
		{"statusOK", statusOK, 0},
		{"statusBadVersion", statusBadVersion, 1},
		{"statusBadHello", statusBadHello, 2},
		{"statusUnknownService", statusUnknownService, 3},
		{"statusUnauthorized", statusUnauthorized, 4},
		{"statusRejected", statusRejected, 5},
		{"statusUnavailable", statusUnavailable, 6},
		{"FeaturePayloadChecksum", FeaturePayloadChecksum, 1},
		{"FeatureCancel", FeatureCancel, 1 << 3},
		{"reqCancel", reqCancel, 1 << 17},
		{"reqDeadline", reqDeadline, 1 << 18},
		{"reqDeadlineHdrSize", reqDeadlineHdrSize, 16},
		{"cancelRecordSize", cancelRecordSize, 8},
		{"respCancelled", respCancelled, 6},
		{"ctlClock", ctlClock, 64},
		{"FeatureCloseReason", FeatureCloseReason, 1 << 4},
		{"FeatureTopic", FeatureTopic, 1 << 5},
		{"tokTopicSleep", tokTopicSleep, 0x40},
		{"topicSleepSize", topicSleepSize, 9},
		{"LimitSubscribers", LimitSubscribers, 6},
		{"ring.BroadcastWakeOffset", ring.BroadcastWakeOffset, 136},
		{"FeatureStream", FeatureStream, 1 << 2},
		{"ctlCloseReason", ctlCloseReason, 24},
		{"closeNone", closeNone, 0},
		{"closeShutdown", closeShutdown, 1},
		{"closeServerClosed", closeServerClosed, 2},
		{"closeConn", closeConn, 3},
		{"closeSlowConsumer", closeSlowConsumer, 4},
		{"closeProtocol", closeProtocol, 5},
		{"segmentKind", segmentKind, 2},
		{"ctlSize", ctlSize, 128},
		{"ctlFlow", ctlFlow, 0},
		{"ctlQueued", ctlQueued, 4},
		{"ctlDropped", ctlDropped, 8},
		{"ctlFlowEvents", ctlFlowEvents, 16},
		{"ringAlign", ringAlign, 128},
		{"ring.ConsumerWaitOffset", ring.ConsumerWaitOffset, 384},
		{"ring.ProducerWaitOffset", ring.ProducerWaitOffset, 512},
		{"tokReqCons", tokReqCons, 0x01},
		{"tokReqProd", tokReqProd, 0x02},
		{"tokRespCons", tokRespCons, 0x11},
		{"tokRespProd", tokRespProd, 0x12},
		{"tokDispCons", tokDispCons, 0x21},
		{"tokDispProd", tokDispProd, 0x22},
		{"reqHdrSize", reqHdrSize, 8},
		{"respHdrSize", respHdrSize, 16},
		{"respOK", respOK, 0},
		{"respUnknownMessage", respUnknownMessage, 1},
		{"respHandlerError", respHandlerError, 2},
		{"respTooLarge", respTooLarge, 3},
		{"respPanic", respPanic, 4},
		{"respStreamPart", respStreamPart, 5},
		{"MinRingSize", MinRingSize, 4096},
		{"DefaultRingSize", DefaultRingSize, 65536},
		{"shmseg.HeaderSize", shmseg.HeaderSize, 4096},
		{"FeatureLarge", FeatureLarge, 2},
		{"typeLarge", typeLarge, 1 << 16},
		{"largeDescSize", largeDescSize, 16},
		{"tokReqBody", tokReqBody, 0x30},
		{"tokRespBody", tokRespBody, 0x31},
		{"tokDispBody", tokDispBody, 0x32},
		{"ctlMaxMessage", ctlMaxMessage, 32},
		{"DefaultMaxMessage", DefaultMaxMessage, 64 << 20},
	}
	for _, p := range pins {
		if p.got != p.want {
			t.Errorf("%s = %#x, docs/ipc.md says %#x", p.name, p.got, p.want)
		}
	}
	if string(le64(helloMagic)) != "RIPCHELO" || string(le64(replyMagic)) != "RIPCRPLY" {
		t.Error("magic bytes are not the documented ASCII")
	}
}

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// TestTopicHelloLayout pins a subscription hello's topic id (§11.1).
func TestTopicHelloLayout(t *testing.T) {
	h := hello{version: Version, features: FeatureTopic, topic: 0x0a0b0c0d}
	var b [helloSize]byte
	h.encode(b[:])
	if got := binary.LittleEndian.Uint32(b[40:]); got != 0x0a0b0c0d {
		t.Errorf("topic@40 = %#x", got)
	}
	if got := binary.LittleEndian.Uint32(b[44:]); got != 0 {
		t.Errorf("reserved@44 = %#x", got)
	}
	if got, err := decodeHello(b[:]); err != nil || got != h {
		t.Errorf("decode = %+v, %v", got, err)
	}
	// Without FeatureTopic, bytes 40..47 stay reserved.
	h.features = 0
	h.encode(b[:])
	binary.LittleEndian.PutUint32(b[40:], 1)
	if _, err := decodeHello(b[:]); !errors.Is(err, ErrProtocol) {
		t.Errorf("topic bytes without FeatureTopic: %v", err)
	}
}

// TestHelloLayout and TestReplyLayout pin every field offset.
func TestHelloLayout(t *testing.T) {
	h := hello{version: 0x0102, service: 0x0304, features: 0x05060708,
		sizes: [3]uint64{0x1111, 0x2222, 0x3333}}
	var b [helloSize]byte
	h.encode(b[:])
	le := binary.LittleEndian
	check := func(name string, got, want uint64) {
		if got != want {
			t.Errorf("hello %s = %#x, want %#x", name, got, want)
		}
	}
	check("magic@0", le.Uint64(b[0:]), helloMagic)
	check("version@8", uint64(le.Uint16(b[8:])), 0x0102)
	check("service@10", uint64(le.Uint16(b[10:])), 0x0304)
	check("features@12", uint64(le.Uint32(b[12:])), 0x05060708)
	check("req@16", le.Uint64(b[16:]), 0x1111)
	check("resp@24", le.Uint64(b[24:]), 0x2222)
	check("disp@32", le.Uint64(b[32:]), 0x3333)
	check("reserved@40", le.Uint64(b[40:]), 0)
	got, err := decodeHello(b[:])
	if err != nil || got != h {
		t.Errorf("decode = %+v, %v", got, err)
	}
}

func TestReplyLayout(t *testing.T) {
	r := reply{version: 1, status: 5, features: 1, detail: 17,
		sizes: [3]uint64{0x10, 0x20, 0x30}, offs: [3]uint64{0x40, 0x50, 0x60},
		ctlOff: 0, payload: 0x70, maxReq: 0x80, maxDisp: 0x90}
	var b [replySize]byte
	r.encode(b[:])
	le := binary.LittleEndian
	want := map[int]uint64{0: replyMagic, 24: 0x10, 32: 0x20, 40: 0x30, 48: 0x40, 56: 0x50, 64: 0x60, 72: 0, 80: 0x70}
	for off, v := range want {
		if got := le.Uint64(b[off:]); got != v {
			t.Errorf("reply u64 @%d = %#x, want %#x", off, got, v)
		}
	}
	want32 := map[int]uint32{12: 5, 16: 1, 20: 17, 88: 0x80, 92: 0x90}
	for off, v := range want32 {
		if got := le.Uint32(b[off:]); got != v {
			t.Errorf("reply u32 @%d = %#x, want %#x", off, got, v)
		}
	}
	if le.Uint16(b[8:]) != 1 || le.Uint16(b[10:]) != 0 {
		t.Error("reply version@8 / reserved@10")
	}
	got, err := decodeReply(b[:])
	if err != nil || got != r {
		t.Errorf("decode = %+v, %v", got, err)
	}
}

// TestSegmentLayout pins the payload layout for the default sizes.
func TestSegmentLayout(t *testing.T) {
	offs, total := layout([3]uint64{65536, 65536, 65536}, ringBytes)
	if want := [3]uint64{128, 128 + 640 + 65536, 128 + 2*(640+65536)}; offs != want {
		t.Errorf("offsets %v, want %v", offs, want)
	}
	if total != 128+3*(640+65536) {
		t.Errorf("total %d", total)
	}
	for _, o := range offs {
		if o%ringAlign != 0 {
			t.Errorf("offset %d not 128-aligned", o)
		}
	}
	if n := ringBytes(4096); n != 640+4096 {
		t.Errorf("ring of 4096 bytes occupies %d", n)
	}
}

// recWaker records Wake calls.
type recWaker struct{ woke []*uint32 }

func (w *recWaker) Sleep(context.Context, *uint32, time.Duration) error { return nil }
func (w *recWaker) Wake(word *uint32)                                   { w.woke = append(w.woke, word) }

// TestRingWordOffsets checks the ring's exported word offsets against what
// the ring does: a word armed at those offsets is the one it wakes.
func TestRingWordOffsets(t *testing.T) {
	mem := make([]byte, ringBytes(4096))
	if err := ring.Init(mem, ring.Geometry{DataSize: 4096}); err != nil {
		t.Fatal(err)
	}
	w := &recWaker{}
	p, _ := ring.NewProducer(mem, &ring.Options{Waker: w})
	c, _ := ring.NewConsumer(mem, &ring.Options{Waker: w})
	cons, prod := word32(mem, ring.ConsumerWaitOffset), word32(mem, ring.ProducerWaitOffset)
	*cons = 1
	if err := p.TryWrite(1, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if len(w.woke) != 1 || w.woke[0] != cons || *cons != 0 {
		t.Fatalf("commit woke %v, want the consumer word at %d", w.woke, ring.ConsumerWaitOffset)
	}
	*prod = 1
	if _, _, err := c.TryReadInto(make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	// The consumer may hand space back in batches, but always once it
	// finds the ring empty.
	if _, err := c.TryPeek(); err != ring.ErrEmpty {
		t.Fatalf("TryPeek on an empty ring: %v", err)
	}
	if len(w.woke) != 2 || w.woke[1] != prod || *prod != 0 {
		t.Fatalf("release woke %v, want the producer word at %d", w.woke, ring.ProducerWaitOffset)
	}
}

func TestDecodeRejects(t *testing.T) {
	var b [helloSize]byte
	if _, err := decodeHello(b[:]); err == nil {
		t.Error("zero hello accepted")
	}
	h := hello{version: Version}
	h.encode(b[:])
	b[40] = 1
	if _, err := decodeHello(b[:]); err == nil {
		t.Error("hello with reserved bytes set accepted")
	}
	if _, err := decodeHello(b[:10]); err == nil {
		t.Error("short hello accepted")
	}
	var rb [replySize]byte
	if _, err := decodeReply(rb[:]); err == nil {
		t.Error("zero reply accepted")
	}
}
