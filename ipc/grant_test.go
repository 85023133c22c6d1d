//go:build linux

package ipc

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
	"golang.org/x/sys/unix"
)

// A client takes the features a server grants only if it asked for them
// and the rings agree (docs/ipc.md §3.2): a ring whose payload checksum
// flag is not the granted feature bit would make the two sides disagree
// on every record's checksum.
func TestClientChecksGrantedFeatures(t *testing.T) {
	cases := []struct {
		name          string
		asked, grants uint32
		ringSums      bool
		ok            bool
	}{
		{"granted as asked", FeaturePayloadChecksum, FeaturePayloadChecksum, true, true},
		{"none asked, none granted", 0, 0, false, true},
		{"asked, not granted", FeaturePayloadChecksum, 0, false, true},
		{"granted without asking", 0, FeaturePayloadChecksum, true, false},
		{"unknown bit granted", FeaturePayloadChecksum, FeaturePayloadChecksum | 1<<9, true, false},
		{"granted, rings without checksums", FeaturePayloadChecksum, FeaturePayloadChecksum, false, false},
		{"not granted, rings with checksums", FeaturePayloadChecksum, 0, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := handshakeWithReply(t, tc.asked, tc.grants, tc.ringSums)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want ErrProtocol", err)
			}
		})
	}
}

// handshakeWithReply runs the client's handshake against a reply granting
// grants, over a well-formed segment whose rings have payload checksums
// if ringSums.
func handshakeWithReply(t *testing.T, asked, grants uint32, ringSums bool) error {
	sizes := [3]uint64{4096, 4096, 4096}
	offs, total := layout(sizes, ringBytes)
	seg, err := shmseg.CreateMemfd("ringipc-grant", segmentGeometry(sizes, offs), int(total))
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	pay := seg.Payload()
	for i := range 3 {
		if err := ring.Init(pay[offs[i]:], ring.Geometry{DataSize: int(sizes[i]), PayloadChecksum: ringSums}); err != nil {
			t.Fatal(err)
		}
	}
	r := reply{version: Version, features: grants, sizes: sizes, offs: offs, payload: uint64(len(pay)),
		maxReq: uint32(ring.MaxPayload(int(sizes[0])) - reqHdrSize), maxDisp: uint32(ring.MaxPayload(int(sizes[2])))}
	var rb [replySize]byte
	r.encode(rb[:])
	uc, peer := fuzzSocketPair(t)
	defer unix.Close(peer)
	if err := unix.Sendmsg(peer, rb[:], unix.UnixRights(int(seg.File().Fd())), nil, 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang guard
	defer cancel()
	cl, err := handshake(ctx, uc, testService, [3]uint64{}, &ClientOptions{Features: asked})
	if err != nil {
		uc.Close()
		return err
	}
	cl.Close()
	return nil
}

// RingSizeLimit bounds a server's configuration: anything larger would
// not fit the reply's 32-bit limits.
func TestRingSizeLimit(t *testing.T) {
	if _, err := NewServer(&Config{MaxRingSize: RingSizeLimit}); err != nil {
		t.Fatalf("MaxRingSize = RingSizeLimit: %v", err)
	}
	// Twice the limit, where an int holds it.
	if over := uint64(RingSizeLimit) * 2; over <= math.MaxInt {
		if _, err := NewServer(&Config{MaxRingSize: int(over)}); err == nil {
			t.Fatal("MaxRingSize above RingSizeLimit accepted")
		}
	}
	if max := ring.MaxPayload(RingSizeLimit); uint64(max) > 1<<32-1 {
		t.Fatalf("a ring of RingSizeLimit bytes takes %d-byte payloads, more than a record's 32-bit length", max)
	}
}
