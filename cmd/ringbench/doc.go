// Command ringbench measures the ring, and the ipc package built on it,
// against a Unix domain socket of the same shape, between real processes,
// and prints a table, or JSON lines, that state the machine it ran on.
//
// Usage:
//
//	ringbench [-scenario spsc,pingpong,mpsc,call,pipeline,dispatch,fanin,broadcast|all]
//	          [-size 64,4KiB] [-rate 0,1000,10000] [-duration 1.5s]
//	          [-producers 2,8] [-goroutines 16] [-clients 32]
//	          [-subscribers 1,8,32]
//	          [-spin 50us] [-ring-size 1MiB]
//	          [-transport ring,ipc,uds,futex,c] [-json] [-quiet]
//	          [-zerocopy] [-report DIR]
//
// The default suite takes about 45 seconds: call runs at its three
// default rates (as fast as it can, 1,000/s and 10,000/s) and fanin with
// 32 clients at 1,000/s each. broadcast is not in it (with 1, 8 and 32
// subscriber processes it takes about 10 seconds more): ask for it with
// -scenario broadcast or all.
//
// broadcast is publish/subscribe: the parent publishes as fast as it can
// (or at -rate) to -subscribers child processes. Over ipc it is a topic (one broadcast
// ring the subscribers map read-only, of ipc's default size for topics,
// 8 MiB, unless -ring-size is given; the publisher never waits, and a
// subscriber that cannot keep up loses messages, so its rate is what it
// received); over uds, one socket per subscriber and each message written
// to every one. The row's msgs/s is the publisher's, the line under it
// the subscribers' (mean and slowest). Paced, its latencies are those of
// every message at every subscriber, from the message's slot.
//
// Every scenario runs for each size and rate (and, for mpsc, each
// producer count; for pipeline, each goroutine count; for fanin, each
// client count) over each transport it has, ring or ipc first, so that
// the table can show the ring/uds or ipc/uds ratio under each pair of
// rows, and the ipc/futex ratio under call's futex row. spsc, pingpong
// and mpsc measure the bare ring; call, pipeline, dispatch and fanin the
// ipc package (an ipc server in a child, its clients in the parent or, for
// fanin, in -clients child processes). Each measurement starts fresh
// processes: ringbench re-executes itself for every side but the
// parent's, handing over the shared memory (a memfd), the socket or the
// ipc listener as fd 3.
//
// # Regimes
//
// Unpaced (-rate 0), every sender sends as fast as it can: the best case
// of a shared-memory transport, both sides awake. Paced (-rate R), each
// sender follows an absolute schedule of R messages or calls per second,
// the life of a cluster daemon: sparse calls, a peer asleep between them,
// so the cost of waking up dominates. fanin (-clients N) is dozens of
// processes on few CPUs: N client processes calling one server, each at
// -rate, where spinning steals the CPU others need. Without -rate, call
// runs at 0, 1,000 and 10,000/s, fanin at 1,000/s, the rest unpaced;
// -rate applies its list to every selected scenario.
//
// The senders are: the parent's calling goroutines (call, pipeline; their
// slots spread over a period), the parent's pinging loop (pingpong), the
// producer children (spsc, mpsc), the server's stream (dispatch) and the
// client children (fanin). A paced sender sleeps until its slot in one
// clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) system call, which costs
// no CPU while it waits, and one system call and one wake-up per message,
// alike on every row and counted in cpu_per_msg_ns (on the development
// VM, 20 to 45 µs of CPU per message for the pause alone) (time.Sleep is not used: Go's timers wake through
// epoll_wait, whose one-millisecond granularity would turn 10,000/s into
// bursts). A late sender sends at once and keeps its schedule. A call or
// ping is timed from its actual send, every one when paced. A paced
// stream's frame carries its slot's CLOCK_MONOTONIC instant (from byte 8,
// after the checks; mpsc from byte 16), and the receiver times it from
// there to its receipt, so a late sender's lateness shows; paced spsc and
// dispatch frames need 16 bytes, mpsc frames 24.
//
// The futex transport (call only) is the floor of a sleeping call: a raw
// futex ping-pong between the same two processes over a request word and
// a response word in a shared memfd, each side sleeping in FUTEX_WAIT at
// once, without spinning, and woken by FUTEX_WAKE.
//
// The c transport (call only, present when the machine has cc and
// ringbench runs from a source tree) is the C client of clients/c calling
// the ipc row's server: what a C daemon gets from a Go service.
//
// # Method
//
// A measurement warms up for a tenth of -duration (50 ms to 500 ms), then
// counts the messages the parent receives during -duration. The window is
// cut by the parent's clock and seen by every loop at its next message;
// it ends no sooner than a parent loop's first message in it, so a
// machine that stalls the loops for longer than -duration stretches the
// window (and its elapsed time) rather than leaving it empty.
// The uds variant of each scenario runs the very same loop over a
// socketpair, written the way a naive user writes it: one write(2) per
// message, a bufio.Reader and io.ReadFull per message on the other side.
// cpu_sec sums the user and system time of every process over the window,
// each process sampling its own getrusage at the window's edges. fanin's
// clients measure their own calls between the parent's two CPU marks and
// send their counts and histograms to the parent, which merges them. No loop
// allocates per message (the ipc server's Conn.Dispatch may, inside the
// package, when it queues messages for a full ring).
//
// # Progress and report
//
// While it runs, ringbench says on stderr which measurement of how many
// runs and about how long the suite has left (measured so far, start-up
// included), unless -json or -quiet is given; stdout carries the same
// table either way.
//
// -report DIR also writes a report that needs nothing but a browser:
// DIR/index.html shows the machine, the command line, the table and PNG
// plots drawn with gonum.org/v1/plot. For each scenario and set of
// parameters that measured latencies, a percentile plot (latency against
// 50%, 90%, 99%... from the run's histograms) has a line per transport,
// ringipc next to the Unix socket (and futex or c) it was measured
// against; when the run swept sizes (-size a,b) or paced rates (-rate
// a,b), plots of throughput and CPU per message against them. Only the
// report's code, in internal/benchreport, imports the plotting library.
// -json output does not change with -report.
//
// # Zero copy
//
// -zerocopy separates the cost of handing a message over from the cost of
// copying it: spsc, call and dispatch over ring and ipc then hand each
// frame off in place (ring: Producer.Reserve/Commit and
// Consumer.Peek/Release; ipc: Client.Reserve, PendingCall.Send and
// Response.Release against a handler that answers with
// ResponseWriter.Reserve/Commit; dispatch: Conn.ReserveDispatch, taken in
// place by ClientOptions.OnDispatch as always) and write and
// read only its first 16 bytes, the sequence number or tag and a paced
// frame's stamp. Those rows show "-zc" after the transport (JSON
// zerocopy: true); the uds rows, and the scenarios without a zero-copy
// form, copy as before. spsc sizes above the ring's largest record need
// -ring-size (1 MiB frames take a 4 MiB ring); a call or dispatch
// message beyond its ring is zero-copy through the connection's body
// segment (ipc.FeatureLarge).
//
// # Caveats
//
// The figures are only as good as the machine is quiet: with two cores,
// two spinning sides already occupy all of it, and any other load turns
// spinning into waiting (the table header shows the load average at the
// start). Run one benchmark at a time.
//
// # JSON
//
// With -json, stdout carries one JSON object per result and nothing else.
// Scripts read these names; they may gain company but never change:
//
//	scenario, transport ("ring", "ipc", "uds", "futex" or "c"), size (payload bytes),
//	producers, goroutines (calling goroutines: -goroutines for pipeline,
//	else 1), duration_sec, msgs (pingpong: round trips; call, pipeline:
//	calls), msgs_per_sec, bytes_per_sec (msgs_per_sec * size),
//	p50_ns, p99_ns, p999_ns (round-trip percentiles: pingpong, call,
//	pipeline, fanin; paced spsc, mpsc, dispatch: from each frame's slot
//	to its receipt; 0 where not measured), lat_samples (messages timed:
//	every one when paced, else a random 1 in 8 for call, pipeline and
//	fanin), cpu_sec, cpu_per_msg_ns, ring_size (ipc: of each of a
//	connection's rings; broadcast: of the topic's ring) and spin_ns (the polling budget, 0 for uds and
//	futex), wait (the wait policy: adaptive, spin or sleep; "" for uds
//	and futex), rate (each
//	sender's messages or calls per second; 0 unpaced), clients (client
//	processes calling a server: fanin's -clients, 1 for call, pipeline
//	and dispatch, 0 for the ring scenarios; broadcast: subscriber
//	processes), zerocopy (the frames were handed off in place,
//	-zerocopy), cpu_model, cores, go_version, goos, goarch, load_avg_1m,
//	asym_fences (streaming ring producers publish without a full barrier
//	per record, docs/design.md 2.6.6; false where membarrier(2) is
//	missing or refused);
//	broadcast only: sub_msgs_per_sec and sub_msgs_per_sec_min (messages
//	each subscriber received per second: the mean over subscribers, and
//	the slowest's; msgs_per_sec is the publisher's) and
//	pub_cpu_per_msg_ns (the publisher process's own CPU per message).
//
// # Adding a scenario
//
// A scenario is one file: an init function that registers a scenario (its
// runFunc per transport) and its child roles, the parent's side written
// against frameWriter and frameReader (or, for calls, a caller run by
// runCalls), and the children's sides. ipclink.go starts the ipc server
// child and dials it. Like ipc, ringbench is Linux-only: every file but
// this one and main_other.go carries a linux build constraint, and a new
// scenario's file needs one too (TestLinuxOnly checks).
package main
