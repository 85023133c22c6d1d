//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"github.com/ringipc/ringipc/cmd/ringbench/internal/benchreport"
	"io"
	"slices"
	"strings"
	"time"
)

// result is one measurement as printed with -json. The JSON names are a
// public interface, read by scripts: add fields, never rename or remove
// one. Figures that a scenario does not measure are 0.
type result struct {
	Scenario    string  `json:"scenario"`
	Transport   string  `json:"transport"`  // "ring", "ipc" or "uds"
	Size        int     `json:"size"`       // payload bytes per message
	Producers   int     `json:"producers"`  // producer processes (1 but for mpsc)
	Goroutines  int     `json:"goroutines"` // calling goroutines (-goroutines for pipeline, else 1)
	DurationSec float64 `json:"duration_sec"`
	Msgs        uint64  `json:"msgs"` // messages in the window (pingpong: round trips; call, pipeline: calls)
	MsgsPerSec  float64 `json:"msgs_per_sec"`
	BytesPerSec float64 `json:"bytes_per_sec"` // msgs_per_sec * size
	P50Ns       int64   `json:"p50_ns"`        // round-trip percentiles (pingpong, call, pipeline, fanin); paced spsc, mpsc, dispatch: slot to receipt
	P99Ns       int64   `json:"p99_ns"`
	P999Ns      int64   `json:"p999_ns"`
	LatSamples  uint64  `json:"lat_samples"` // messages timed for the percentiles (call, pipeline, fanin: a random 1 in 8; every one when paced)
	CPUSec      float64 `json:"cpu_sec"`     // user+sys of all processes over the window
	CPUPerMsgNs float64 `json:"cpu_per_msg_ns"`
	RingSize    int     `json:"ring_size"` // data area bytes of a ring (ipc: of each of the three; 0 for uds)
	SpinNs      int64   `json:"spin_ns"`   // polling budget in effect (0 for uds)
	Wait        string  `json:"wait"`      // ring.WaitPolicy in effect: adaptive, spin or sleep ("" for uds, futex)
	Rate        int     `json:"rate"`      // each sender's messages or calls per second (-rate); 0: unpaced
	Clients     int     `json:"clients"`   // client processes calling a server: fanin's -clients; 1 for call, pipeline, dispatch; 0 for spsc, pingpong, mpsc; broadcast: subscriber processes
	ZeroCopy    bool    `json:"zerocopy"`  // frames handed off in place, only their first 16 bytes written and read (-zerocopy: spsc, call, dispatch over ring and ipc)
	// Broadcast only: messages each subscriber received per second in
	// its window, the mean over subscribers and the slowest's.
	SubMsgsPerSec    float64 `json:"sub_msgs_per_sec,omitempty"`
	SubMsgsPerSecMin float64 `json:"sub_msgs_per_sec_min,omitempty"`
	// Broadcast only: the publisher process's own CPU per message
	// published, which does not grow with the subscribers when
	// publishing costs the same for any number of them.
	PubCPUPerMsgNs float64 `json:"pub_cpu_per_msg_ns,omitempty"`
	machine
}

func newResult(sc *scenario, transport string, rc *runConfig, m measurement, mach machine) result {
	r := result{
		Scenario:    sc.name,
		Transport:   transport,
		Size:        rc.size,
		Producers:   rc.producers,
		Goroutines:  max(rc.goroutines, 1),
		DurationSec: m.elapsed.Seconds(),
		Msgs:        m.msgs,
		CPUSec:      m.cpu.Seconds(),
		Rate:        rc.rate,
		Clients:     rc.clients,
		ZeroCopy:    rc.zerocopy,
		machine:     mach,
	}
	if r.Clients == 0 && sc.rpc {
		r.Clients = 1 // the parent
	}
	if s := m.elapsed.Seconds(); s > 0 {
		r.MsgsPerSec = float64(m.msgs) / s
		r.BytesPerSec = r.MsgsPerSec * float64(rc.size)
	}
	if s := m.elapsed.Seconds(); s > 0 && len(m.subs) > 0 {
		var sum uint64
		low := m.subs[0]
		for _, n := range m.subs {
			sum += n
			low = min(low, n)
		}
		r.SubMsgsPerSec = float64(sum) / float64(len(m.subs)) / s
		r.SubMsgsPerSecMin = float64(low) / s
		if m.msgs > 0 {
			r.PubCPUPerMsgNs = float64(m.parentCPU.Nanoseconds()) / float64(m.msgs)
		}
	}
	if m.msgs > 0 {
		r.CPUPerMsgNs = float64(m.cpu.Nanoseconds()) / float64(m.msgs)
	}
	if m.lat != nil {
		r.P50Ns, r.P99Ns, r.P999Ns = m.lat.quantile(0.50), m.lat.quantile(0.99), m.lat.quantile(0.999)
		r.LatSamples = m.lat.total
	}
	switch transport {
	case "ring":
		r.RingSize = rc.ringSize
		r.SpinNs = effectiveSpin(rc.spin).Nanoseconds()
		r.Wait = waitPolicy(rc.spin)
	case "ipc", "c":
		r.RingSize = rc.ringSize
		r.SpinNs = effectiveIPCSpin(rc.spin).Nanoseconds()
		r.Wait = waitPolicy(rc.spin)
	}
	if m.ringSize != 0 {
		r.RingSize = m.ringSize
	}
	return r
}

// reporter prints results as they come: JSON lines, or a table whose rows
// come in groups, one per set of parameters: under the uds row, the ring
// (or ipc) row divided by it; under the futex row, the ipc row divided by
// it.
type reporter struct {
	w     io.Writer
	cfg   *config
	mach  machine
	start time.Time
	group []result // the rows of the current group, for the ratio lines
}

func newReporter(w io.Writer, cfg *config, mach machine, start time.Time) *reporter {
	return &reporter{w: w, cfg: cfg, mach: mach, start: start}
}

const (
	tableHead = "%-9s %7s %4s %4s %4s %5s  %-9s %10s %9s %9s %9s %9s %7s %10s\n"
	tableRow  = "%-9s %7d %4d %4d %4d %5s  %-9s %10s %9.1f %9s %9s %9s %7.2f %10.1f\n"
)

func (r *reporter) begin() {
	if r.cfg.json {
		return
	}
	m := r.mach
	kernel := ""
	if m.kernel != "" {
		kernel = ", kernel " + m.kernel
	}
	fmt.Fprintf(r.w, "ringbench %s\n", r.start.UTC().Format("2006-01-02 15:04 MST"))
	fences := "asymmetric fences (membarrier)"
	if !m.AsymFences {
		fences = "no asymmetric fences: a full barrier per record"
	}
	fmt.Fprintf(r.w, "machine:  %s, %d cores, %s/%s%s, %s; load average %.2f at start; %s\n",
		m.CPUModel, m.Cores, m.GOOS, m.GOARCH, kernel, m.GoVersion, m.LoadAvg1m, fences)
	wait := waitPolicy(r.cfg.spin)
	if b := effectiveSpin(r.cfg.spin); b > 0 {
		wait += ", polling up to " + b.String()
	}
	if r.cfg.spin == 0 {
		wait += " (the default)"
	}
	fmt.Fprintf(r.w, "settings: %v per result after %v warm-up; ring data area %s, wait %s (ring and ipc)\n\n",
		r.cfg.duration, r.cfg.warmup, benchreport.SizeText(r.cfg.ringSize), wait)
	fmt.Fprintf(r.w, tableHead, "scenario", "size", "prod", "gor", "cli", "rate", "transport", "msgs/s", "MB/s", "p50 ns", "p99 ns", "p999 ns", "cpu s", "cpu/msg ns")
}

func (r *reporter) add(sc *scenario, transport string, rc *runConfig, m measurement) {
	res := newResult(sc, transport, rc, m, r.mach)
	if r.cfg.json {
		b, err := json.Marshal(res)
		if err != nil {
			panic(err) // a struct of numbers and strings always marshals
		}
		r.w.Write(append(b, '\n')) //nolint:errcheck
		return
	}
	lat := func(v int64) string {
		if m.lat == nil {
			return "-"
		}
		return fmt.Sprint(v)
	}
	fmt.Fprintf(r.w, tableRow, res.Scenario, res.Size, res.Producers, res.Goroutines, res.Clients, benchreport.RateText(res.Rate),
		transportText(res), si(res.MsgsPerSec), res.BytesPerSec/1e6, lat(res.P50Ns), lat(res.P99Ns), lat(res.P999Ns),
		res.CPUSec, res.CPUPerMsgNs)
	if res.SubMsgsPerSec > 0 {
		fmt.Fprintf(r.w, "%-37s %-9s %10s %9.1f   (per subscriber: mean; slowest %s; publisher CPU %.1f ns/msg)\n", "", "per sub",
			si(res.SubMsgsPerSec), res.SubMsgsPerSec*float64(res.Size)/1e6, si(res.SubMsgsPerSecMin), res.PubCPUPerMsgNs)
	}
	if len(r.group) > 0 && !sameGroup(r.group[0], res) {
		r.group = r.group[:0]
	}
	var over []string // the transports whose row to divide by this one
	switch res.Transport {
	case "uds":
		over = []string{"ring", "ipc"}
	case "futex", "c":
		over = []string{"ipc"}
	}
	for _, p := range r.group {
		if !slices.Contains(over, p.Transport) {
			continue
		}
		ratio := func(a, b float64) string {
			if a == 0 || b == 0 {
				return "-"
			}
			return ratioText(a / b)
		}
		latRatio := func(a, b int64) string {
			if m.lat == nil {
				return "-"
			}
			return ratio(float64(a), float64(b))
		}
		fmt.Fprintf(r.w, tableHead, "", "", "", "", "", "", transportText(p)+"/"+transportText(res),
			ratio(p.MsgsPerSec, res.MsgsPerSec), ratio(p.BytesPerSec, res.BytesPerSec),
			latRatio(p.P50Ns, res.P50Ns), latRatio(p.P99Ns, res.P99Ns), latRatio(p.P999Ns, res.P999Ns),
			ratio(p.CPUSec, res.CPUSec), ratio(p.CPUPerMsgNs, res.CPUPerMsgNs))
	}
	r.group = append(r.group, res)
}

// transportText is a row's transport in the table: "-zc" marks a
// zero-copy row (-zerocopy).
func transportText(r result) string {
	if r.ZeroCopy {
		return r.Transport + "-zc"
	}
	return r.Transport
}

// sameGroup reports whether two rows measure the same parameters over
// different transports.
func sameGroup(a, b result) bool {
	return a.Scenario == b.Scenario && a.Size == b.Size && a.Producers == b.Producers &&
		a.Goroutines == b.Goroutines && a.Clients == b.Clients && a.Rate == b.Rate
}

func (r *reporter) end() {
	if r.cfg.json {
		return
	}
	var b strings.Builder
	b.WriteString("\n")
	b.WriteString("msgs/s   messages received per second in the window (call, pipeline, fanin: calls completed);\n")
	b.WriteString("         MB/s = msgs/s x size (10^6 bytes), one way\n")
	b.WriteString("prod     producer processes (mpsc); gor: calling goroutines of the parent (pipeline);\n")
	b.WriteString("         cli: client processes calling a server (fanin; 1 for call, pipeline, dispatch)\n")
	b.WriteString(wrap("rate     ", "each sender's messages or calls per second, on an absolute schedule (max: back to back). "+
		"A paced sender sleeps until its slot with one clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) "+
		"system call: no CPU while it waits, but each wake-up (tens of µs of CPU on a VM) is in cpu/msg, alike on every row "+
		"(no spinning; Go's time.Sleep would wake up to 1 ms late); "+
		"a late sender sends at once and keeps the schedule; a call is timed from its actual send, "+
		"a paced stream's frame from its slot. "+
		"Paced rows stand for the life of a cluster daemon: sparse calls to a peer that sleeps between "+
		"them, where waking up is the cost; fanin stands for dozens of processes on few CPUs", 96))
	b.WriteString("p50..    round-trip time, nanoseconds (pingpong, call, pipeline, fanin; log-linear histogram,\n")
	b.WriteString("         < 0.4% error; pipeline, fanin: every goroutine's or client's calls in one histogram);\n")
	b.WriteString("         paced spsc, mpsc, dispatch: from each frame's slot (stamped in it) to its receipt\n")
	b.WriteString("cpu s    user+sys CPU of every process of the measurement over the window (each samples\n")
	b.WriteString("         its own getrusage at the window's edges); cpu/msg ns = cpu s / messages\n")
	b.WriteString("ring/uds each column of the ring (or ipc) row divided by the uds row's; ipc/futex: by the\n")
	b.WriteString("         futex row's, the floor of a sleeping call\n")
	b.WriteString("ring     ringipc ring in a shared memfd; a frame is copied in (Producer.Write) and out\n")
	b.WriteString("         (Consumer.ReadInto); a waiting side polls while polling pays, then sleeps on a futex\n")
	b.WriteString(wrap("ipc      ", "the ipc package: the parent is the client, a child the server, connected over an abstract "+
		"Unix socket; requests, responses and dispatch messages cross the connection's three rings (each of "+
		"the ring data area's size) in a sealed memfd; a waiting side polls while polling pays, then sleeps: "+
		"a caller with a call outstanding and the server's loop in FUTEX_WAIT for a few ms (woken by one FUTEX_WAKE), "+
		"every other wait on the socket until the other sends a one-byte wake token", 96))
	if r.cfg.zerocopy {
		b.WriteString(wrap("-zc      ", "-zerocopy: the frame is handed off in place and only its first 16 bytes (sequence number "+
			"or tag, and a paced frame's stamp) are written and read, so the row is the hand-off cost without the fill or the "+
			"copy. ring-zc: Producer.Reserve/Commit, Consumer.Peek/Release; ipc-zc: call with Client.Reserve, PendingCall.Send, "+
			"Response.Release and a handler answering with ResponseWriter.Reserve/Commit, dispatch with Conn.ReserveDispatch "+
			"received by OnDispatch (which is in place anyway). The uds rows still copy: a socket cannot do otherwise", 96))
	}
	if r.cfg.uses("futex") {
		b.WriteString(wrap("futex    ", "the floor of a call that sleeps (call only): a raw futex ping-pong between "+
			"the same two processes, a request word and a response word in a shared memfd, each side "+
			"sleeping at once in FUTEX_WAIT (no spinning) and woken by FUTEX_WAKE from the other, the "+
			"body copied in and back; the same pacing as the other rows", 96))
	}
	if r.cfg.uses("c") {
		b.WriteString(wrap("c        ", cLegend, 96))
	}
	fmt.Fprintf(&b, "uds      AF_UNIX SOCK_STREAM socketpair used as a naive user would: one write(2) per\n")
	fmt.Fprintf(&b, "         message of exactly size bytes (a %d-byte frame per write), no batching; the\n", r.cfg.sizes[0])
	fmt.Fprintf(&b, "         reader uses a %s bufio.Reader and one io.ReadFull per message (call and\n", benchreport.SizeText(udsReadBuffer))
	fmt.Fprintf(&b, "         pipeline frames carry a %d-byte header: length and correlation id)\n", rpcHeader)
	for _, sc := range r.cfg.scenarios {
		b.WriteString(wrap(fmt.Sprintf("%-8s ", sc.name), sc.about, 96))
	}
	io.WriteString(r.w, b.String()) //nolint:errcheck
}

// ratioText shows a ratio with about three significant digits.
func ratioText(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0fx", v)
	case v >= 0.1:
		return fmt.Sprintf("%.2fx", v)
	}
	return fmt.Sprintf("%.2gx", v)
}

// si formats a rate with a k/M/G suffix.
// The thresholds are where the smaller unit's rounding would print 1000:
// a paced row at 999.7 msgs/s reads 1.0 k like its neighbour at 1000.2.
func si(v float64) string {
	switch {
	case v >= 999.995e6:
		return fmt.Sprintf("%.2f G", v/1e9)
	case v >= 999.95e3:
		return fmt.Sprintf("%.2f M", v/1e6)
	case v >= 999.5:
		return fmt.Sprintf("%.1f k", v/1e3)
	}
	return fmt.Sprintf("%.0f  ", v)
}

// wrap prints text after prefix in lines of at most width bytes, broken
// at spaces, the continuation lines indented as far as the prefix.
func wrap(prefix, text string, width int) string {
	var b strings.Builder
	b.WriteString(prefix)
	indent := strings.Repeat(" ", len(prefix))
	line := len(prefix)
	for i, w := range strings.Fields(text) {
		switch {
		case i == 0:
		case line+1+len(w) > width:
			b.WriteString("\n" + indent)
			line = len(indent)
		default:
			b.WriteByte(' ')
			line++
		}
		b.WriteString(w)
		line += len(w)
	}
	b.WriteByte('\n')
	return b.String()
}
