// Command ringpair is the README's example: two processes sharing a ring.
// The parent creates a sealed memfd segment, lays out a ring in it and
// starts itself again as the consumer, handing over the descriptor. The
// parent produces; the child prints what it reads.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"

	"github.com/ringipc/ringipc/ring"
	"github.com/ringipc/ringipc/shmseg"
)

func main() {
	if os.Getenv("RINGPAIR_CONSUMER") == "1" {
		consume()
		return
	}
	g := ring.Geometry{DataSize: 1 << 16}
	size, err := ring.Size(g)
	if err != nil {
		log.Fatal(err)
	}
	seg, err := shmseg.CreateMemfd("ringpair", shmseg.Geometry{Kind: 1}, size)
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close()
	if err := ring.Init(seg.Payload(), g); err != nil {
		log.Fatal(err)
	}
	p, err := ring.NewProducer(seg.Payload(), nil)
	if err != nil {
		log.Fatal(err)
	}

	child := exec.Command(os.Args[0])
	child.Env = append(os.Environ(), "RINGPAIR_CONSUMER=1")
	child.ExtraFiles = []*os.File{seg.File()} // descriptor 3 in the child
	child.Stdout, child.Stderr = os.Stdout, os.Stderr
	if err := child.Start(); err != nil {
		log.Fatal(err)
	}

	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		// Zero copy: reserve space in the ring, fill it, commit.
		r, err := p.Reserve(ctx, uint32(i), 32)
		if err != nil {
			log.Fatal(err)
		}
		n := copy(r.Bytes(), fmt.Sprintf("hello #%d", i))
		clear(r.Bytes()[n:])
		if err := r.Commit(); err != nil {
			log.Fatal(err)
		}
	}
	p.Close() // the consumer drains, then sees ErrClosed
	if err := child.Wait(); err != nil {
		log.Fatal(err)
	}
}

func consume() {
	seg, err := shmseg.OpenFile(os.NewFile(3, "ring"))
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close()
	c, err := ring.NewConsumer(seg.Payload(), nil)
	if err != nil {
		log.Fatal(err)
	}
	for {
		rec, err := c.Peek(context.Background()) // a view into the ring
		if errors.Is(err, ring.ErrClosed) {
			return
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("record type %d: %q\n", rec.Type, bytes.TrimRight(rec.Data, "\x00"))
		c.Release()
	}
}
