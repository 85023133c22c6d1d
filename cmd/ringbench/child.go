//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/ringipc/ringipc/ring"
	"golang.org/x/sys/unix"
)

// Re-exec plumbing. Every side of a measurement except the parent's runs
// in a copy of this executable, started with its role and parameters in
// the environment and its shared memory or socket as fd 3. It talks to the
// parent over its stdin and stdout, one line per message:
//
//	parent -> child (stdin)      child -> parent (stdout, JSON)
//	                             {"ev":"ready"}          attached, running
//	mark                         {"ev":"mark","cpu_ns":N} its CPU time now
//	                             {"ev":"done","sent":N,"err":"..."}
//	                                                     its loop has ended
//	exit                         (exits: 0, or 1 if its loop failed)
//
// Marks are answered in order, and the child exits only on "exit", so
// every mark sent before "exit" is answered. Its stderr is the parent's.
// A child dies with the parent: by Pdeathsig, or when its stdin reaches EOF
// before "exit".
const (
	envRole   = "RINGBENCH_CHILD"
	envParams = "RINGBENCH_PARAMS"
)

// childParams is what the parent tells a child, as JSON in envParams.
type childParams struct {
	Size     int           `json:"size"`      // frame bytes
	RingSize int           `json:"ring_size"` // ring data area bytes
	Spin     time.Duration `json:"spin"`      // ring.Options.Spin
	ID       int           `json:"id"`        // producer or client number, from 0
	Files    int           `json:"files"`     // descriptors from fd 3 on
	Rate     int           `json:"rate"`      // a sender's messages or calls per second; 0: unpaced
	Clients  int           `json:"clients"`   // fanin: client processes the server serves
	Addr     string        `json:"addr"`      // fanin: the ipc server's address
	ZeroCopy bool          `json:"zerocopy"`  // hand frames off in place (-zerocopy)
}

// A childFunc is one role's side of a measurement. It calls cc.ready once
// attached, runs until the parent ends the run, and returns the frames it
// sent. The end of the run (a closed ring or socket) is not an error.
type childFunc func(cc *childCtx) (sent uint64, err error)

var childRoles = map[string]childFunc{}

func registerChild(role string, fn childFunc) {
	if _, dup := childRoles[role]; dup {
		panic("ringbench: child role registered twice: " + role)
	}
	childRoles[role] = fn
}

type childCtx struct {
	p     childParams
	files []*os.File
	out   *eventWriter
	// h carries the run's phase as the parent's marks tell it, for roles
	// that measure a window themselves (fanin clients): the first mark
	// starts the window, the second ends it.
	h *harness
	// A role that measures sets these before it returns: its messages
	// in the window and their latencies, sent with "done".
	window uint64
	lat    *histogram
}

func (cc *childCtx) ready() { cc.out.send(event{Ev: "ready"}) }

func (cc *childCtx) ringOptions() *ring.Options { return &ring.Options{Spin: cc.p.Spin} }

// event is one line from a child.
type event struct {
	Ev    string `json:"ev"`
	CPUNs int64  `json:"cpu_ns"`
	Sent  uint64 `json:"sent"`
	Err   string `json:"err,omitempty"`
	// Roles that measure a window (see childCtx) add it to "done".
	Window uint64    `json:"window,omitempty"`
	Lat    *histWire `json:"lat,omitempty"`
}

type eventWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (w *eventWriter) send(e event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.enc.Encode(e); err != nil {
		// The parent is gone or broken; nobody will read our results.
		os.Exit(3)
	}
}

// childMain runs the role named by envRole and returns the exit status.
func childMain(role string) int {
	fn := childRoles[role]
	if fn == nil {
		fmt.Fprintf(os.Stderr, "ringbench child: unknown role %q\n", role)
		return 2
	}
	var p childParams
	if err := json.Unmarshal([]byte(os.Getenv(envParams)), &p); err != nil {
		fmt.Fprintf(os.Stderr, "ringbench child %s: parameters: %v\n", role, err)
		return 2
	}
	files := make([]*os.File, p.Files)
	for i := range files {
		files[i] = os.NewFile(uintptr(3+i), fmt.Sprintf("fd%d", 3+i))
	}
	out := &eventWriter{enc: json.NewEncoder(os.Stdout)}
	exit := make(chan struct{})
	cc := &childCtx{p: p, files: files, out: out, h: newHarness(&runConfig{})}
	go serveControl(os.Stdin, out, cc.h, exit)

	sent, err := fn(cc)
	e := event{Ev: "done", Sent: sent, Window: cc.window}
	if cc.lat != nil {
		e.Lat = cc.lat.wire()
	}
	if err != nil {
		e.Err = err.Error()
	}
	out.send(e)
	<-exit
	if err != nil {
		return 1
	}
	return 0
}

// serveControl answers the parent's commands until "exit", and moves h's
// phase on at each mark, after sampling the CPU time. EOF before "exit"
// means the parent died; the child follows.
func serveControl(r io.Reader, out *eventWriter, h *harness, exit chan<- struct{}) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		switch sc.Text() {
		case "mark":
			out.send(event{Ev: "mark", CPUNs: int64(cpuTime())})
			if p := h.phase.Load(); p < phaseDone {
				h.phase.Store(p + 1)
			}
		case "exit":
			close(exit)
			return
		}
	}
	os.Exit(3)
}

// cpuTime returns the user plus system CPU time of this process, every
// thread included.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// child is the parent's view of one child process.
type child struct {
	role string
	cmd  *exec.Cmd

	ctlMu sync.Mutex
	ctl   *os.File // the child's stdin

	ready  chan struct{} // closed on "ready"
	done   chan struct{} // closed on "done"
	exited chan struct{} // closed when Wait has returned
	eof    chan struct{} // closed when every line from the child is read

	mu      sync.Mutex
	marks   []time.Duration // CPU time at each mark
	sent    uint64          // frames the child's loop wrote
	window  uint64          // messages in the window, if it measured them
	lat     *histogram      // their latencies, if it measured them
	waitErr error           // set before exited is closed
}

// spawn starts a child in role with parameters p and files as fd 3 on.
// The caller keeps ownership of files and may close them once spawn
// returns: the child has its own copies.
func (h *harness) spawn(role string, p childParams, files ...*os.File) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("spawn %s: %w", role, err)
	}
	p.Files = len(files)
	pj, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("spawn %s: %w", role, err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("spawn %s: %w", role, err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return fmt.Errorf("spawn %s: %w", role, err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envRole+"="+role, envParams+"="+string(pj))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, os.Stderr
	cmd.ExtraFiles = files
	cmd.SysProcAttr = childSysProcAttr()
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return fmt.Errorf("spawn %s: %w", role, err)
	}
	c := &child{
		role:   role,
		cmd:    cmd,
		ctl:    inW,
		ready:  make(chan struct{}),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
		eof:    make(chan struct{}),
	}
	h.children = append(h.children, c)
	go c.readEvents(outR, h)
	go func() {
		err := cmd.Wait()
		c.mu.Lock()
		c.waitErr = err
		c.mu.Unlock()
		close(c.exited)
		if !h.stopping.Load() {
			h.abort(fmt.Errorf("%s (pid %d) exited during the run: %v", role, cmd.Process.Pid, exitText(err)))
		}
	}()
	return nil
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// command sends one line to the child. A failure means the child is gone,
// which its Wait reports.
func (c *child) command(line string) {
	c.ctlMu.Lock()
	defer c.ctlMu.Unlock()
	c.ctl.WriteString(line + "\n") //nolint:errcheck
}

func (c *child) readEvents(r *os.File, h *harness) {
	defer close(c.eof)
	defer r.Close()
	dec := json.NewDecoder(r)
	readyDone, doneDone := false, false
	for {
		var e event
		if err := dec.Decode(&e); err != nil {
			return
		}
		switch e.Ev {
		case "ready":
			if !readyDone {
				readyDone = true
				close(c.ready)
			}
		case "mark":
			c.mu.Lock()
			c.marks = append(c.marks, time.Duration(e.CPUNs))
			c.mu.Unlock()
		case "done":
			if doneDone {
				continue
			}
			doneDone = true
			var lat *histogram
			var latErr error
			if e.Lat != nil {
				lat, latErr = e.Lat.histogram()
			}
			c.mu.Lock()
			c.sent, c.window, c.lat = e.Sent, e.Window, lat
			c.mu.Unlock()
			close(c.done)
			switch {
			case e.Err != "":
				h.abort(fmt.Errorf("%s: %s", c.role, e.Err))
			case latErr != nil:
				h.abort(fmt.Errorf("%s: %v", c.role, latErr))
			case !h.ending.Load():
				// Only the parent ends a run.
				h.abort(fmt.Errorf("%s stopped after %d frames, before the run ended", c.role, e.Sent))
			}
		}
	}
}
