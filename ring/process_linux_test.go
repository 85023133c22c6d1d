package ring

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringipc/ringipc/shmseg"
)

// Cross-process tests re-execute the test binary as a child whose role is
// named by RING_TEST_CHILD; the ring's segment arrives as descriptor 3.

func TestMain(m *testing.M) {
	if role := os.Getenv("RING_TEST_CHILD"); role != "" {
		if err := runChild(role); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func envInt(name string) int {
	v, _ := strconv.Atoi(os.Getenv(name))
	return v
}

// pattern supplies payload bytes: a record with sequence s carries
// pattern[s%251:][:n] after its 12-byte id and sequence, so checking it is
// one bytes.Equal rather than a loop the race detector instruments.
var pattern = func() []byte {
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}()

func putRecord(b []byte, id uint32, seq uint64) {
	binary.LittleEndian.PutUint32(b, id)
	binary.LittleEndian.PutUint64(b[4:], seq)
	copy(b[12:], pattern[seq%251:])
}

func checkRecord(b []byte) (id uint32, seq uint64, ok bool) {
	if len(b) < 12 {
		return 0, 0, false
	}
	id = binary.LittleEndian.Uint32(b)
	seq = binary.LittleEndian.Uint64(b[4:])
	return id, seq, bytes.Equal(b[12:], pattern[seq%251:][:len(b)-12])
}

// recordLen draws the payload size of a record: mostly small, sometimes
// up to the ring's limit. Both sides draw the same sequence.
func recordLen(rng *rand.Rand, maxP int) int {
	switch rng.IntN(100) {
	case 0:
		return 12 + rng.IntN(maxP-11)
	case 1, 2, 3, 4, 5:
		return 12 + rng.IntN(4096)
	default:
		return 12 + rng.IntN(128)
	}
}

func runChild(role string) error {
	seg, err := shmseg.OpenFile(os.NewFile(3, "segment"))
	if err != nil {
		return err
	}
	defer seg.Close()
	mem := seg.Payload()
	ctx := context.Background()
	if role == "bursts" {
		return runBurstsChild(ctx, mem)
	}
	p, err := NewProducer(mem, nil)
	if err != nil {
		return err
	}
	id := uint32(envInt("RING_TEST_ID"))
	n := envInt("RING_TEST_N")
	switch role {
	case "spsc":
		rng := rand.New(rand.NewPCG(uint64(envInt("RING_TEST_SEED")), 1))
		for i := 0; i < n; i++ {
			r, err := p.Reserve(ctx, uint32(i), recordLen(rng, p.MaxPayload()))
			if err != nil {
				return fmt.Errorf("record %d: %w", i, err)
			}
			putRecord(r.Bytes(), id, uint64(i))
			if err := r.Commit(); err != nil {
				return err
			}
		}
		return p.Close()
	case "mpsc":
		// Several goroutines share this process's handle; each has its
		// own id so the consumer can check per-producer order.
		gs := envInt("RING_TEST_GOROUTINES")
		var wg sync.WaitGroup
		errs := make([]error, gs)
		for g := 0; g < gs; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[g] = produce(ctx, p, id*100+uint32(g), n, uint64(id*100+uint32(g)))
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		return p.Close() // detaches: the other producers go on
	case "die-claimed", "die-intent":
		if err := produce(ctx, p, id, n, 9); err != nil {
			return err
		}
		park := func() {
			fmt.Println("parked")
			select {} // until SIGKILL
		}
		if role == "die-intent" {
			testHookClaimWindow = park
		}
		if _, err := p.Reserve(ctx, 0, 100); err != nil {
			return err
		}
		park()
	}
	return fmt.Errorf("unknown role %q", role)
}

func produce(ctx context.Context, p *Producer, id uint32, n int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 2))
	maxP := min(p.MaxPayload(), 8192)
	for i := 0; i < n; i++ {
		r, err := p.Reserve(ctx, id, recordLen(rng, maxP))
		if err != nil {
			return fmt.Errorf("producer %d record %d: %w", id, i, err)
		}
		putRecord(r.Bytes(), id, uint64(i))
		if err := r.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// newSharedRing makes a memfd segment holding a fresh ring.
func newSharedRing(t *testing.T, g Geometry) (*shmseg.Segment, []byte) {
	t.Helper()
	size, err := Size(g)
	if err != nil {
		t.Fatal(err)
	}
	seg, err := shmseg.CreateMemfd("ring-test", shmseg.Geometry{Kind: 1}, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { seg.Close() })
	mem := seg.Payload()
	if err := Init(mem, g); err != nil {
		t.Fatal(err)
	}
	return seg, mem
}

type child struct {
	cmd    *exec.Cmd
	stdout *bufio.Reader
}

func startChild(t *testing.T, seg *shmseg.Segment, role string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{"RING_TEST_CHILD=" + role}, env...)...)
	cmd.ExtraFiles = []*os.File{seg.File()}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdout: bufio.NewReader(out)}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return c
}

func (c *child) wait(t *testing.T) {
	t.Helper()
	io.Copy(io.Discard, c.stdout)
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child %v: %v", c.cmd.Env[len(c.cmd.Env)-1], err)
	}
}

func records(t *testing.T) int {
	if testing.Short() {
		return 100_000
	}
	return 1_000_000
}

// One million records of random sizes (1 B to half the ring) from a
// producer process, checked byte for byte and in order by the consumer.
func TestCrossProcessSPSC(t *testing.T) {
	n := records(t)
	seg, mem := newSharedRing(t, Geometry{DataSize: 1 << 16})
	ch := startChild(t, seg, "spsc", "RING_TEST_N="+strconv.Itoa(n), "RING_TEST_SEED=42", "RING_TEST_ID=7")
	c, err := NewConsumer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(42, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for i := 0; ; i++ {
		r, err := c.Peek(ctx)
		if errors.Is(err, ErrClosed) {
			if i != n {
				t.Fatalf("closed after %d records, want %d", i, n)
			}
			break
		}
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		id, seq, ok := checkRecord(r.Data)
		if want := recordLen(rng, MaxPayload(1<<16)); !ok || id != 7 || seq != uint64(i) || r.Type != uint32(i) || len(r.Data) != want {
			t.Fatalf("record %d: id %d seq %d type %d len %d (want %d) payload ok %v", i, id, seq, r.Type, len(r.Data), want, ok)
		}
		c.Release()
	}
	ch.wait(t)
}

// Producers in several processes, several goroutines each sharing one
// handle, plus goroutines of this process: every record arrives exactly
// once and in order per producer.
func TestCrossProcessMPSC(t *testing.T) {
	total := records(t)
	const procs, goroutinesPerProc, local = 3, 2, 2
	per := total / (procs*goroutinesPerProc + local)
	seg, mem := newSharedRing(t, Geometry{DataSize: 1 << 16, Producers: procs + local})
	var children []*child
	for i := 1; i <= procs; i++ {
		children = append(children, startChild(t, seg, "mpsc", "RING_TEST_N="+strconv.Itoa(per),
			"RING_TEST_ID="+strconv.Itoa(i), "RING_TEST_GOROUTINES="+strconv.Itoa(goroutinesPerProc)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	errc := make(chan error, local)
	for g := 0; g < local; g++ {
		p, err := NewProducer(mem, nil)
		if err != nil {
			t.Fatal(err)
		}
		go func() { errc <- produce(ctx, p, uint32(9000+g), per, uint64(9000+g)) }()
	}
	c, err := NewConsumer(mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	next := map[uint32]uint64{}
	want := per * (procs*goroutinesPerProc + local)
	for got := 0; got < want; got++ {
		r, err := c.Peek(ctx)
		if err != nil {
			t.Fatalf("after %d records: %v", got, err)
		}
		id, seq, ok := checkRecord(r.Data)
		if !ok || r.Type != id || seq != next[id] {
			t.Fatalf("record %d: producer %d seq %d (want %d), payload ok %v", got, id, seq, next[id], ok)
		}
		next[id]++
		c.Release()
	}
	for g := 0; g < local; g++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for _, ch := range children {
		ch.wait(t)
	}
	if _, err := c.TryPeek(); !errors.Is(err, ErrEmpty) {
		t.Fatalf("extra records: %v", err)
	}
	if len(next) != procs*goroutinesPerProc+local {
		t.Fatalf("heard from %d producers", len(next))
	}
}

// A producer process killed while it holds a claim (after the claim word,
// or inside the window between tail CAS and claim word) does not block the
// ring: the consumer skips its claim and every other record arrives.
func TestProducerKilledMidClaim(t *testing.T) {
	for _, role := range []string{"die-claimed", "die-intent"} {
		t.Run(role, func(t *testing.T) {
			const before, others = 50, 20000
			seg, mem := newSharedRing(t, Geometry{DataSize: 1 << 14, Producers: 2})
			dying := startChild(t, seg, role, "RING_TEST_N="+strconv.Itoa(before), "RING_TEST_ID=1")
			if line, err := dying.stdout.ReadString('\n'); err != nil || line != "parked\n" {
				t.Fatalf("dying child: %q %v", line, err)
			}
			p, err := NewProducer(mem, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- produce(ctx, p, 2, others, 2) }()
			c, err := NewConsumer(mem, nil)
			if err != nil {
				t.Fatal(err)
			}
			// Read what the dying producer committed; then the ring is
			// stuck on its claim until it dies.
			counts := map[uint32]int{}
			for counts[1] < before {
				r, err := c.Peek(ctx)
				if err != nil {
					t.Fatal(err)
				}
				id, _, _ := checkRecord(r.Data)
				counts[id]++
				c.Release()
			}
			if err := dying.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			for counts[2] < others {
				r, err := c.Peek(ctx)
				if err != nil {
					t.Fatalf("after %v: %v", counts, err)
				}
				id, seq, ok := checkRecord(r.Data)
				if !ok || id != 2 || seq != uint64(counts[2]) {
					t.Fatalf("record: producer %d seq %d ok %v after %v", id, seq, ok, counts)
				}
				counts[2]++
				c.Release()
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			// The dead producer's slot is free for a newcomer.
			if _, err := NewProducer(mem, nil); err != nil {
				t.Fatalf("attach after death: %v", err)
			}
		})
	}
}
