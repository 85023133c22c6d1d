//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ringipc/ringipc/cmd/ringbench/internal/benchreport"
	"github.com/ringipc/ringipc/ipc"
	"github.com/ringipc/ringipc/ring"
)

func main() {
	if role := os.Getenv(envRole); role != "" {
		os.Exit(childMain(role))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// A scenario is one shape of traffic. Each lives in its own file, which
// registers it and its child roles from init; runs has one function per
// transport it supports.
type scenario struct {
	name           string
	order          int    // position in "all" and in the table
	about          string // one line for the table's legend
	minSize        int    // smallest frame: what the checks carry
	perProducers   bool   // run once per -producers value
	perGoroutine   bool   // run once per -goroutines value
	perClients     bool   // run once per -clients value
	perSubscribers bool   // run once per -subscribers value (runConfig.clients)
	rpc            bool   // a client calls a server (JSON clients >= 1)
	pacedMinSize   int    // smallest frame when paced: checks and the slot's stamp
	defaultRates   []int  // rates without -rate; nil: {0}
	zeroCopy       bool   // -zerocopy applies (over ring and ipc)
	runs           map[string]runFunc
}

// A runFunc runs one measurement from the parent's side.
type runFunc func(rc *runConfig) (measurement, error)

var scenarios []*scenario

func register(s *scenario) {
	for _, o := range scenarios {
		if o.name == s.name {
			panic("ringbench: scenario registered twice: " + s.name)
		}
	}
	scenarios = append(scenarios, s)
	slices.SortFunc(scenarios, func(a, b *scenario) int { return a.order - b.order })
}

func scenarioNames() []string {
	var names []string
	for _, s := range scenarios {
		names = append(names, s.name)
	}
	return names
}

// transports in the order they run: ring (or ipc) before uds, so that a
// uds row can be compared with the row above it. A scenario runs over ring
// or ipc, never both: the ring scenarios measure the bare ring, the ipc
// ones the request/response and dispatch layer built on it. futex, last,
// is the floor of a paced call: a bare futex ping-pong, next to the ipc
// row it bounds.
var transports = []string{"ring", "ipc", "uds", "futex"}

// runConfig is one measurement's parameters.
type runConfig struct {
	size       int
	producers  int
	goroutines int  // calling goroutines of the parent (pipeline; 1 otherwise)
	clients    int  // client processes (fanin), subscriber processes (broadcast); 0 otherwise
	rate       int  // each sender's messages or calls per second; 0: unpaced
	zerocopy   bool // hand frames off in place (-zerocopy, where the scenario and transport can)
	ringSize   int
	// topicRingSize is broadcast's topic ring: -ring-size if given, else
	// 0 (ipc.DefaultTopicRingSize, what a topic gets by default).
	topicRingSize int
	spin          time.Duration // ring.Options.Spin, ipc Config.Spin: 0 default, < 0 none
	duration      time.Duration
	warmup        time.Duration
}

func (rc *runConfig) ringOptions() *ring.Options { return &ring.Options{Spin: rc.spin} }

func (rc *runConfig) childParams(id int) childParams {
	return childParams{Size: rc.size, RingSize: rc.ringSize, Spin: rc.spin, ID: id, Rate: rc.rate, Clients: rc.clients, ZeroCopy: rc.zerocopy}
}

// effectiveSpin is the polling budget the ring uses for rc.spin: with
// -spin 0 that of the adaptive policy (ring.AdaptiveSpin), which polls
// only while polling pays.
func effectiveSpin(spin time.Duration) time.Duration {
	_, budget := ring.WaitDefault.Resolve(spin)
	return budget
}

// effectiveIPCSpin is the polling budget an ipc connection uses for spin:
// ipc passes Spin to its rings as it is.
func effectiveIPCSpin(spin time.Duration) time.Duration { return effectiveSpin(spin) }

// waitPolicy names the wait policy a spin setting stands for (JSON wait).
func waitPolicy(spin time.Duration) string {
	p, _ := ring.WaitDefault.Resolve(spin)
	return p.String()
}

// config is the whole suite, from the flags.
type config struct {
	scenarios     []*scenario
	sizes         []int
	producers     []int
	goroutines    []int
	clients       []int
	subs          []int // -subscribers
	rates         []int // -rate; nil: each scenario's defaultRates
	transports    []string
	duration      time.Duration
	warmup        time.Duration
	spin          time.Duration
	ringSize      int
	topicRingSize int  // broadcast's topic ring: -ring-size if given, else 0 (ipc's default)
	zerocopy      bool // -zerocopy
	json          bool
	quiet         bool   // no progress on stderr
	reportDir     string // -report: where to write the plots and page; "" for none
}

// warmupFor returns the warm-up before a window of d: a tenth of it,
// between 50 ms and 500 ms.
func warmupFor(d time.Duration) time.Duration {
	return min(max(d/10, 50*time.Millisecond), 500*time.Millisecond)
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("ringbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		scen  = fs.String("scenario", defaultScenarios, "comma-separated scenarios, or all ("+strings.Join(scenarioNames(), ", ")+")")
		sizes = fs.String("size", "64", "comma-separated payload `sizes` in bytes (suffixes KiB, MiB), or \"sweep\": "+sizeSweep)
		dur   = fs.Duration("duration", defaultDuration, "measured time of each result, after a warm-up of a tenth of it (50ms to 500ms)")
		js    = fs.Bool("json", false, "print one JSON object per result on stdout, and nothing else")
		prods = fs.String("producers", "2", "comma-separated `counts` of mpsc producer processes; each is run")
		gors  = fs.String("goroutines", "16", "comma-separated `counts` of pipeline goroutines calling on one connection; each is run")
		clis  = fs.String("clients", "32", "comma-separated `counts` of fanin client processes calling one server; each is run")
		subs  = fs.String("subscribers", "1,8,32", "comma-separated `counts` of broadcast subscriber processes; each is run")
		rates = fs.String("rate", "", "comma-separated `rates`: messages or calls per second of each sender, on an absolute schedule; 0 is as fast as it can; each is run (default: 0, 1000 and 10000 for call, 1000 for fanin, 0 for the rest)")
		spin  = fs.Duration("spin", 0, "polling budget before sleeping: 0 the default, adaptive (poll up to "+ring.AdaptiveSpin.String()+" while polling pays, else sleep at once); positive: poll that long on every wait; negative: sleep at once (broadcast subscribers: 0 sleeps at once too, see docs/design.md 2.9.5)")
		rsize = fs.String("ring-size", "1MiB", "ring data area in `bytes`, a power of two (ipc: each of a connection's three rings; broadcast: the topic's ring, whose default is ipc.DefaultTopicRingSize, "+benchreport.SizeText(ipc.DefaultTopicRingSize)+")")
		trans = fs.String("transport", strings.Join(transports, ","), "comma-separated transports: "+strings.Join(transports, ", "))
		quiet = fs.Bool("quiet", false, "print no progress on stderr (-json prints none either)")
		zc    = fs.Bool("zerocopy", false, "spsc, call and dispatch over ring and ipc hand each frame off in place (Reserve/Commit, Peek/Release and their ipc forms) and write and read only its first 16 bytes: the hand-off cost without the copy (uds rows still copy)")
		repo  = fs.String("report", "", "also write a report to `dir`: PNG plots and an index.html page with the machine, the command and the table")
	)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: ringbench [flags]\n\nMeasures the ring against a Unix domain socket between processes.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	cfg := &config{duration: *dur, spin: *spin, json: *js, quiet: *quiet, reportDir: *repo, zerocopy: *zc}
	if cfg.duration <= 0 {
		return nil, fmt.Errorf("-duration %v: must be positive", cfg.duration)
	}
	cfg.warmup = warmupFor(cfg.duration)

	for _, name := range splitList(*scen) {
		if name == "all" {
			cfg.scenarios = append(cfg.scenarios, scenarios...)
			continue
		}
		i := slices.IndexFunc(scenarios, func(s *scenario) bool { return s.name == name })
		if i < 0 {
			return nil, fmt.Errorf("-scenario: unknown %q (have %s)", name, strings.Join(scenarioNames(), ", "))
		}
		cfg.scenarios = append(cfg.scenarios, scenarios[i])
	}
	cfg.scenarios = uniqueInOrder(cfg.scenarios, func(a, b *scenario) int { return a.order - b.order })
	if len(cfg.scenarios) == 0 {
		return nil, errors.New("-scenario: none given")
	}

	want := splitList(*trans)
	for _, t := range want {
		if !slices.Contains(transports, t) {
			return nil, fmt.Errorf("-transport: unknown %q (have %s)", t, strings.Join(transports, ", "))
		}
	}
	for _, t := range transports {
		if slices.Contains(want, t) {
			cfg.transports = append(cfg.transports, t)
		}
	}
	if len(cfg.transports) == 0 {
		return nil, errors.New("-transport: none given")
	}

	rs, err := parseBytes(*rsize)
	if err != nil {
		return nil, fmt.Errorf("-ring-size: %w", err)
	}
	if _, err := ring.Size(ring.Geometry{DataSize: rs}); err != nil {
		return nil, fmt.Errorf("-ring-size %d: %w", rs, err)
	}
	if cfg.uses("ipc") && (rs < ipc.MinRingSize || rs > maxIPCRing) {
		return nil, fmt.Errorf("-ring-size %d: ipc rings take %d to %d bytes", rs, ipc.MinRingSize, maxIPCRing)
	}
	cfg.ringSize = rs
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "ring-size" {
			cfg.topicRingSize = rs
		}
	})

	if *sizes == "sweep" {
		*sizes = sizeSweep
	}
	for _, s := range splitList(*sizes) {
		n, err := parseBytes(s)
		if err != nil {
			return nil, fmt.Errorf("-size: %w", err)
		}
		for _, sc := range cfg.scenarios {
			if n < sc.minSize {
				return nil, fmt.Errorf("-size %d: %s frames carry %d bytes of checks", n, sc.name, sc.minSize)
			}
		}
		if cfg.uses("ring") && n > ring.MaxPayload(rs) {
			return nil, fmt.Errorf("-size %d: a ring of %d bytes takes records up to %d bytes (raise -ring-size)", n, rs, ring.MaxPayload(rs))
		}
		if cfg.uses("c") && n > maxIPCBody(rs) {
			return nil, fmt.Errorf("-size %d: the C client (transport c) does not ask for large bodies: its rings of %d bytes take up to %d bytes (raise -ring-size, or leave out c)", n, rs, maxIPCBody(rs))
		}
		if cfg.uses("ipc") && n > max(maxIPCBody(rs), ipc.DefaultMaxMessage) {
			// Beyond its ring a body travels in the connection's body
			// segment (ipc.FeatureLarge), up to MaxMessage.
			return nil, fmt.Errorf("-size %d: ipc bodies go up to %d bytes (ipc.DefaultMaxMessage) or what the rings of %d bytes carry", n, ipc.DefaultMaxMessage, rs)
		}
		cfg.sizes = append(cfg.sizes, n)
	}
	if len(cfg.sizes) == 0 {
		return nil, errors.New("-size: none given")
	}

	for _, s := range splitList(*prods) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > ring.MaxProducers {
			return nil, fmt.Errorf("-producers: %q is not a count in 1..%d", s, ring.MaxProducers)
		}
		cfg.producers = append(cfg.producers, n)
	}
	if len(cfg.producers) == 0 {
		return nil, errors.New("-producers: none given")
	}

	for _, s := range splitList(*gors) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxGoroutines {
			return nil, fmt.Errorf("-goroutines: %q is not a count in 1..%d", s, maxGoroutines)
		}
		cfg.goroutines = append(cfg.goroutines, n)
	}
	if len(cfg.goroutines) == 0 {
		return nil, errors.New("-goroutines: none given")
	}

	for _, s := range splitList(*clis) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxClients {
			return nil, fmt.Errorf("-clients: %q is not a count in 1..%d", s, maxClients)
		}
		cfg.clients = append(cfg.clients, n)
	}
	if len(cfg.clients) == 0 {
		return nil, errors.New("-clients: none given")
	}

	for _, s := range splitList(*subs) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxClients {
			return nil, fmt.Errorf("-subscribers: %q is not a count in 1..%d", s, maxClients)
		}
		cfg.subs = append(cfg.subs, n)
	}
	if len(cfg.subs) == 0 {
		return nil, errors.New("-subscribers: none given")
	}

	if strings.TrimSpace(*rates) != "" {
		cfg.rates = []int{} // given: not the defaults
		for _, s := range splitList(*rates) {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 || n > maxRate {
				return nil, fmt.Errorf("-rate: %q is not a rate in 0..%d per second", s, maxRate)
			}
			cfg.rates = append(cfg.rates, n)
		}
		if len(cfg.rates) == 0 {
			return nil, errors.New("-rate: none given")
		}
	}
	for _, sc := range cfg.scenarios {
		if !slices.ContainsFunc(cfg.ratesFor(sc), func(r int) bool { return r > 0 }) {
			continue
		}
		for _, n := range cfg.sizes {
			if n < sc.pacedMinSize {
				return nil, fmt.Errorf("-size %d: paced %s frames carry %d bytes of checks and stamps", n, sc.name, sc.pacedMinSize)
			}
		}
	}
	return cfg, nil
}

// Defaults of -scenario and -duration: the default suite (21 results)
// takes about 45 s.
const (
	defaultScenarios = "spsc,pingpong,mpsc,call,pipeline,dispatch,fanin"
	defaultDuration  = 1500 * time.Millisecond
)

// maxClients bounds -clients: each is a process.
const maxClients = 1024

// maxRate bounds -rate: a sender has at least 1 µs between slots.
const maxRate = 1_000_000

// ratesFor returns the rates sc runs at.
func (cfg *config) ratesFor(sc *scenario) []int {
	switch {
	case cfg.rates != nil:
		return cfg.rates
	case sc.defaultRates != nil:
		return sc.defaultRates
	}
	return []int{0}
}

// maxGoroutines bounds -goroutines, generously: a call's tag has 16 bits
// for its goroutine.
const maxGoroutines = 1 << 12

// sizeSweep is what -size sweep stands for: 64 B to 64 MiB, the ipc
// sizes beyond the rings (ipc.DefaultMaxMessage) included.
const sizeSweep = "64,1KiB,16KiB,64KiB,256KiB,1MiB,4MiB,16MiB,64MiB"

// uses reports whether some selected scenario runs over transport t.
func (cfg *config) uses(t string) bool {
	if !slices.Contains(cfg.transports, t) {
		return false
	}
	for _, sc := range cfg.scenarios {
		if sc.runs[t] != nil {
			return true
		}
	}
	return false
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func uniqueInOrder[T comparable](s []T, cmp func(a, b T) int) []T {
	s = slices.Clone(s)
	slices.SortStableFunc(s, cmp)
	return slices.Compact(s)
}

// parseBytes reads a byte count: digits with an optional binary suffix
// (KiB, MiB, GiB; K, M, G and k, m, g mean the same).
func parseBytes(s string) (int, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "iB"), "B")
	mult := 1
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	n, err := strconv.Atoi(t)
	// No byte count this tool takes exceeds a ring's largest data area, and
	// the bound keeps n*mult from overflowing an int.
	if err != nil || n <= 0 || n > ring.MaxDataSize/mult {
		return 0, fmt.Errorf("%q is not a positive byte count", s)
	}
	return n * mult, nil
}

// run runs the suite and returns the exit status: 0, 1 if a measurement
// failed or the report could not be written, 2 for bad flags.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ringbench: %v\n", err)
		return 2
	}
	if cfg.reportDir != "" {
		// Fail before measuring, not after.
		if err := os.MkdirAll(cfg.reportDir, 0o755); err != nil {
			fmt.Fprintf(stderr, "ringbench: -report: %v\n", err)
			return 2
		}
	}
	start, mach := time.Now(), detectMachine()
	rep := newReporter(stdout, cfg, mach, start)
	var book *reportBook
	if cfg.reportDir != "" {
		book = newReportBook(cfg, mach, start, args)
	}
	rep.begin()
	book.begin()
	jobs := cfg.jobs()
	prog := newProgress(stderr, cfg, len(jobs), start)
	status := 0
	for i, j := range jobs {
		prog.step(i, j)
		m, err := j.sc.runs[j.transport](j.rc)
		if err != nil {
			rc := j.rc
			fmt.Fprintf(stderr, "ringbench: %s over %s, %d bytes, rate %d/s, %d producer(s), %d goroutine(s), %d client(s): %v\n",
				j.sc.name, j.transport, rc.size, rc.rate, rc.producers, rc.goroutines, rc.clients, err)
			status = 1
			continue
		}
		rep.add(j.sc, j.transport, j.rc, m)
		book.add(j.sc, j.transport, j.rc, m)
	}
	rep.end()
	if err := book.write(stderr, cfg.quiet || cfg.json); err != nil {
		fmt.Fprintf(stderr, "ringbench: -report: %v\n", err)
		status = 1
	}
	return status
}

// A job is one measurement of the suite.
type job struct {
	sc        *scenario
	transport string
	rc        *runConfig
}

// jobs lists the suite's measurements in the order they run: for each
// scenario, size, rate, producer, goroutine and client count, each
// transport the scenario has.
func (cfg *config) jobs() []job {
	var out []job
	for _, sc := range cfg.scenarios {
		prods, gors, clis := []int{1}, []int{1}, []int{0}
		if sc.perClients {
			clis = cfg.clients
		}
		if sc.perSubscribers {
			clis = cfg.subs
		}
		if sc.perProducers {
			prods = cfg.producers
		}
		if sc.perGoroutine {
			gors = cfg.goroutines
		}
		for _, size := range cfg.sizes {
			for _, rate := range cfg.ratesFor(sc) {
				for _, np := range prods {
					for _, ng := range gors {
						for _, nc := range clis {
							for _, tr := range cfg.transports {
								if sc.runs[tr] == nil {
									continue
								}
								out = append(out, job{sc: sc, transport: tr, rc: &runConfig{
									size: size, producers: np, goroutines: ng, clients: nc, rate: rate,
									zerocopy: cfg.zerocopy && sc.zeroCopy && (tr == "ring" || tr == "ipc"),
									ringSize: cfg.ringSize, topicRingSize: cfg.topicRingSize, spin: cfg.spin, duration: cfg.duration, warmup: cfg.warmup,
								}})
							}
						}
					}
				}
			}
		}
	}
	return out
}
