//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/ringipc/ringipc/ipc"
	"golang.org/x/sys/unix"
)

// fanin: N client processes (-clients) call one echo server process, each
// one call at a time at -rate calls per second, with 64-byte echoes by
// default: dozens of processes on few CPUs, the way daemons talk to a
// cluster service. The parent only starts the processes and cuts the
// window: each client measures its own calls between the parent's two
// marks and reports their count and latencies with "done", and the row
// merges them. The ipc server is one ipc.Server serving every client; the
// uds server has one socket per client and one goroutine reading each.

func init() {
	register(&scenario{
		name:         "fanin",
		order:        70,
		minSize:      8,
		perClients:   true,
		rpc:          true,
		defaultRates: []int{1000},
		about: "N client processes (-clients, column cli) each call one echo server process at -rate, one call at a time; " +
			"msgs = calls of all clients, p50/p99/p999 = call time of every call (paced) or 1 in 8 (unpaced) " +
			"of all clients, cpu = every process, the server and all clients (ipc: one Server, each client a Client " +
			"calling CallInto; uds: one socket per client, the server reading each with its own goroutine)",
		runs: map[string]runFunc{"ipc": faninIPC, "uds": faninUDS},
	})
	registerChild("fanin-ipc", faninIPCChild)
	registerChild("fanin-uds", faninUDSChild)
	registerChild("fanin-uds-server", faninUDSServerChild)
}

func faninIPC(rc *runConfig) (measurement, error) {
	h := newHarness(rc)
	defer h.cleanup()
	addr, err := spawnIPCServer(h)
	if err != nil {
		return measurement{}, err
	}
	for i := range rc.clients {
		p := rc.childParams(i)
		p.Addr = addr
		if err := h.spawn("fanin-ipc", p); err != nil {
			return measurement{}, err
		}
	}
	return runFanin(h)
}

func faninUDS(rc *runConfig) (measurement, error) {
	h := newHarness(rc)
	defer h.cleanup()
	servers := make([]*os.File, 0, rc.clients)
	clients := make([]*os.File, 0, rc.clients)
	closeAll := func() {
		for _, f := range append(servers, clients...) {
			f.Close()
		}
	}
	defer closeAll()
	for range rc.clients {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return measurement{}, fmt.Errorf("socketpair: %w", err)
		}
		servers = append(servers, os.NewFile(uintptr(fds[0]), "fanin-server"))
		clients = append(clients, os.NewFile(uintptr(fds[1]), "fanin-client"))
	}
	if err := h.spawn("fanin-uds-server", rc.childParams(0), servers...); err != nil {
		return measurement{}, err
	}
	for i, f := range clients {
		if err := h.spawn("fanin-uds", rc.childParams(i), f); err != nil {
			return measurement{}, err
		}
	}
	// The children hold the sockets now: a child's death reads as EOF
	// on the other side.
	closeAll()
	servers, clients = nil, nil
	return runFanin(h)
}

// runFanin waits for every child, runs the window, and collects what the
// clients measured.
func runFanin(h *harness) (measurement, error) {
	if err := h.waitReady(); err != nil {
		return measurement{}, err
	}
	h.childMeters = true // the clients count the window
	h.startClock()
	if err := h.waitWindow(); err != nil {
		return measurement{}, err
	}
	return h.finish(nil)
}

// faninClient calls c at the run's rate until the parent's second mark,
// then closes it with stop and reports the window to the parent.
func faninClient(cc *childCtx, c caller, stop func()) (uint64, error) {
	lat := newHistogram()
	var m meter
	cc.ready()
	err := callLoop(cc.h, c, 0, payload(cc.p.Size), make([]byte, cc.p.Size), lat, &m, callPacer(cc.p.Rate, 0, 1))
	stop()
	if err == nil {
		cc.window, cc.lat = m.at[1]-m.at[0], lat
	}
	return m.n, err
}

func faninIPCChild(cc *childCtx) (uint64, error) {
	ctx, cancel := context.WithTimeout(bg, readyTimeout)
	defer cancel()
	cl, err := ipc.Dial(ctx, cc.p.Addr, benchService, &ipc.ClientOptions{
		RequestRingSize: cc.p.RingSize, ResponseRingSize: cc.p.RingSize, DispatchRingSize: cc.p.RingSize,
		MaxRingSize: maxIPCRing, Spin: cc.p.Spin,
	})
	if err != nil {
		return 0, fmt.Errorf("dial: %w", err)
	}
	if cl.MaxRequest() < cc.p.Size {
		cl.Close()
		return 0, fmt.Errorf("the server granted requests of up to %d bytes, want %d", cl.MaxRequest(), cc.p.Size)
	}
	return faninClient(cc, ipcCaller{cl}, func() { cl.Close() })
}

func faninUDSChild(cc *childCtx) (uint64, error) {
	conn, err := openSocket(cc.files[0])
	if err != nil {
		return 0, err
	}
	return faninClient(cc, newUDSCaller(conn, cc.p.Size), func() { conn.Close() })
}

// faninUDSServerChild echoes calls on every socket it was given, one
// goroutine each, until every client has closed its end.
func faninUDSServerChild(cc *childCtx) (uint64, error) {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		sent uint64
		errs []error
	)
	for i, f := range cc.files {
		conn, err := openSocket(f)
		if err != nil {
			return 0, fmt.Errorf("socket %d: %w", i, err)
		}
		wg.Go(func() {
			defer conn.Close()
			n, err := echoRPC(conn, cc.p.Size)
			mu.Lock()
			sent += n
			if err != nil {
				errs = append(errs, fmt.Errorf("client %d: %w", i, err))
			}
			mu.Unlock()
		})
	}
	cc.ready()
	wg.Wait()
	return sent, errors.Join(errs...)
}
