//go:build linux

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// The "c" transport of call: the C client of clients/c calls the same
// echo server child as the ipc row, one call at a time, so that a user
// sees what a C caller gets. It exists when the machine has a C compiler
// (cc) and ringbench runs from a source tree holding clients/c: the first
// c row compiles clients/c/bench/call.c with the library into a memfd.
//
// The C program measures itself, as fanin's clients do: the Go child
// role "c-call" execs it in place (keeping its stdin, stdout and death
// signal), and it speaks the child protocol of child.go, answering the
// parent's marks with its own CPU time and reporting its window's calls
// and their latencies (hist.go's buckets, whose parameters it is passed)
// with "done".

// cLegend is the c row's line in the table's legend.
const cLegend = "the C client of clients/c (call only; present when cc is): a C program calls the ipc row's " +
	"server child with ripc_call, one call at a time, spinning then sleeping in poll(2) on the socket; " +
	"ipc/c divides the ipc row by it"

func init() {
	if _, err := exec.LookPath("cc"); err == nil && cSourceDir() != "" {
		transports = append(transports, "c")
	}
	registerChild("c-call", cCallChild)
}

// cSourceDir finds clients/c: next to this file's package in the tree it
// was built from, else above the working directory. "" if neither.
func cSourceDir() string {
	var dirs []string
	if _, file, _, ok := runtime.Caller(0); ok {
		dirs = append(dirs, filepath.Join(filepath.Dir(file), "..", "..", "clients", "c"))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			dirs = append(dirs, filepath.Join(d, "clients", "c"))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "bench", "call.c")); err == nil {
			return d
		}
	}
	return ""
}

var cBuild struct {
	once sync.Once
	f    *os.File // a memfd holding the executable
	err  error
}

// cCaller compiles the C caller once per ringbench process. The binary
// lives in a memfd, so that nothing is left on disk.
func cCaller() (*os.File, error) {
	cBuild.once.Do(func() {
		dir := cSourceDir()
		cc, err := exec.LookPath("cc")
		if dir == "" || err != nil {
			cBuild.err = fmt.Errorf("the c transport needs cc and clients/c")
			return
		}
		tmp, err := os.MkdirTemp("", "ringbench-c-")
		if err != nil {
			cBuild.err = err
			return
		}
		defer os.RemoveAll(tmp)
		out := filepath.Join(tmp, "call")
		args := []string{"-std=c11", "-O2", "-o", out,
			filepath.Join(dir, "bench", "call.c"), filepath.Join(dir, "ringipc.c"), filepath.Join(dir, "xxh64.c")}
		if msg, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
			cBuild.err = fmt.Errorf("compile the C caller: %v\n%s", err, msg)
			return
		}
		bin, err := os.ReadFile(out)
		if err != nil {
			cBuild.err = err
			return
		}
		fd, err := unix.MemfdCreate("ringbench-c-call", unix.MFD_CLOEXEC)
		if err != nil {
			cBuild.err = fmt.Errorf("memfd: %w", err)
			return
		}
		f := os.NewFile(uintptr(fd), "ringbench-c-call")
		if _, err := f.Write(bin); err != nil {
			f.Close()
			cBuild.err = err
			return
		}
		cBuild.f = f
	})
	return cBuild.f, cBuild.err
}

// callC runs the ipc server child and the C caller child, and lets the
// harness cut the window as for fanin.
func callC(rc *runConfig) (measurement, error) {
	bin, err := cCaller()
	if err != nil {
		return measurement{}, err
	}
	h := newHarness(rc)
	defer h.cleanup()
	addr, err := spawnIPCServer(h)
	if err != nil {
		return measurement{}, err
	}
	p := rc.childParams(0)
	p.Addr = addr
	if err := h.spawn("c-call", p, bin); err != nil {
		return measurement{}, err
	}
	return runFanin(h)
}

// cCallChild becomes the C caller (fd 3), which takes over this process's
// stdin and stdout, and so the child protocol.
func cCallChild(cc *childCtx) (uint64, error) {
	spin := cc.p.Spin
	if spin == 0 {
		spin = effectiveIPCSpin(0)
	}
	args := []string{"ringbench-c-call", cc.p.Addr, strconv.Itoa(cc.p.Size), strconv.Itoa(cc.p.Rate),
		strconv.FormatInt(spin.Nanoseconds(), 10), strconv.Itoa(cc.p.RingSize),
		strconv.Itoa(histSubBits), strconv.FormatInt(histMax, 10)}
	err := unix.Exec("/proc/self/fd/3", args, os.Environ())
	return 0, fmt.Errorf("exec the C caller: %w", err)
}
