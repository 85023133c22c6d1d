// Command ringbench measures the ring, and the ipc package built on it,
// against a Unix domain socket of the same shape, between real processes,
// and prints a table, or JSON lines, that state the machine it ran on.
//
// Usage:
//
//	ringbench [-scenario spsc,pingpong,mpsc,call,pipeline,dispatch|all]
//	          [-size 64,4KiB] [-duration 1.5s] [-producers 2,8]
//	          [-goroutines 16] [-spin 50us] [-ring-size 1MiB]
//	          [-transport ring,ipc,uds] [-json]
//
// The default suite, every scenario, takes about 25 seconds.
//
// Every scenario runs for each size (and, for mpsc, each producer count;
// for pipeline, each goroutine count) over each transport it has, ring
// or ipc first, so that the table can show the ring/uds or ipc/uds ratio
// under each pair of rows. spsc, pingpong and mpsc measure the bare ring;
// call, pipeline and dispatch the ipc package (an ipc server in a child,
// its client in the parent). Each measurement starts fresh processes:
// ringbench re-executes itself for every side but the parent's, handing
// over the shared memory (a memfd), the socket or the ipc listener as
// fd 3.
//
// # Method
//
// A measurement warms up for a tenth of -duration (50 ms to 500 ms), then
// counts the messages the parent receives during -duration. The window is
// cut by the parent's clock and seen by every loop at its next message.
// The uds variant of each scenario runs the very same loop over a
// socketpair, written the way a naive user writes it: one write(2) per
// message, a bufio.Reader and io.ReadFull per message on the other side.
// cpu_sec sums the user and system time of every process over the window,
// each process sampling its own getrusage at the window's edges. No loop
// allocates per message (the ipc server's Conn.Dispatch may, inside the
// package, when it queues messages for a full ring).
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
//	scenario, transport ("ring", "ipc" or "uds"), size (payload bytes),
//	producers, goroutines (calling goroutines: -goroutines for pipeline,
//	else 1), duration_sec, msgs (pingpong: round trips; call, pipeline:
//	calls), msgs_per_sec, bytes_per_sec (msgs_per_sec * size),
//	p50_ns, p99_ns, p999_ns (round-trip percentiles: pingpong, call,
//	pipeline; 0 where not measured), cpu_sec, cpu_per_msg_ns,
//	ring_size (ipc: of each of a connection's rings) and spin_ns (0 for
//	uds), cpu_model, cores, go_version, goos, goarch, load_avg_1m.
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
