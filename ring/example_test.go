package ring_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"slices"
	"sync"

	"github.com/ringipc/ringipc/ring"
)

// newHeapRing lays out a ring in Go heap memory. Any 8-byte aligned memory
// will do (Init checks): between processes it would be a shared mapping,
// such as a shmseg.Segment's payload.
func newHeapRing(g ring.Geometry) []byte {
	size, err := ring.Size(g)
	if err != nil {
		log.Fatal(err)
	}
	mem := make([]byte, size) // Go aligns a byte slice this large to 8 bytes
	if err := ring.Init(mem, g); err != nil {
		log.Fatal(err)
	}
	return mem
}

// One producer and one consumer over heap memory: a record written in
// place (Reserve, Commit), one copied in (Write), both read in place (Peek,
// Release) until the producer's Close ends the stream.
func Example() {
	mem := newHeapRing(ring.Geometry{DataSize: 4096})
	p, err := ring.NewProducer(mem, nil)
	if err != nil {
		log.Fatal(err)
	}
	c, err := ring.NewConsumer(mem, nil)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	// Zero copy: the reservation's bytes are inside the ring.
	r, err := p.Reserve(ctx, 1, len("hello"))
	if err != nil {
		log.Fatal(err)
	}
	copy(r.Bytes(), "hello")
	if err := r.Commit(); err != nil {
		log.Fatal(err)
	}
	if err := p.Write(ctx, 2, []byte("world")); err != nil {
		log.Fatal(err)
	}
	if err := p.Close(); err != nil { // end of stream
		log.Fatal(err)
	}

	for {
		rec, err := c.Peek(ctx) // rec.Data is a view, valid until Release
		if errors.Is(err, ring.ErrClosed) {
			break // everything committed before Close was delivered
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("type %d: %s\n", rec.Type, rec.Data)
		if err := c.Release(); err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// type 1: hello
	// type 2: world
}

// Three producers on one multi-producer ring, goroutines here but usually
// processes, each with its own handle and producer slot. Each producer's
// records arrive in its order; producers interleave. A producer's Close
// frees its slot and leaves the ring open for the others.
func Example_multiProducer() {
	mem := newHeapRing(ring.Geometry{DataSize: 1 << 16, Producers: 4})
	c, err := ring.NewConsumer(mem, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	const producers, records = 3, 2
	var wg sync.WaitGroup
	for id := range producers {
		wg.Go(func() {
			p, err := ring.NewProducer(mem, nil) // takes a free slot
			if err != nil {
				log.Fatal(err)
			}
			defer p.Close()
			for i := range records {
				msg := fmt.Sprintf("producer %d, record %d", id, i)
				if err := p.Write(ctx, uint32(id), []byte(msg)); err != nil {
					log.Fatal(err)
				}
			}
		})
	}

	var got []string
	for range producers * records {
		_, data, err := c.Read(ctx) // a copy, released at once
		if err != nil {
			log.Fatal(err)
		}
		got = append(got, string(data))
	}
	wg.Wait()
	slices.Sort(got) // the interleaving differs from run to run
	for _, s := range got {
		fmt.Println(s)
	}
	// Output:
	// producer 0, record 0
	// producer 0, record 1
	// producer 1, record 0
	// producer 1, record 1
	// producer 2, record 0
	// producer 2, record 1
}
