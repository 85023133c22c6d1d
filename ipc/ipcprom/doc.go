// Package ipcprom exports the counters of an ipc.Server to Prometheus.
//
// It is a package of its own so that only programs that want Prometheus
// link github.com/prometheus/client_golang; ipc itself has no
// dependency on it. A Collector reads Server.Stats and
// Server.ServiceStats at each scrape, so it adds nothing to the call
// path; the latency histograms are filled only when the server runs with
// ipc.Config.Timing.
//
// Metrics of the whole server:
//
//	ringipc_connections_open                   gauge    connections established and not yet ended
//	ringipc_connections_total                  counter  connections established
//	ringipc_handshakes_rejected_total          counter  connections refused, for any reason
//	ringipc_handshakes_limited_total           counter  connections refused for a limit (ipc.ErrLimit)
//	ringipc_handshake_timeouts_total           counter  clients dropped for not finishing the handshake in time
//	ringipc_accept_errors_total                counter  accepts that failed (EMFILE, ...) and were retried
//	ringipc_dispatch_queue_messages            gauge    dispatch messages queued in the server now
//	ringipc_dispatch_queue_bytes               gauge    bytes of those messages
//	ringipc_wake_tokens_received_total         counter  wake tokens read from clients
//	ringipc_wake_tokens_sent_total             counter  wake tokens written to clients
//
// Metrics of each registered service, labelled service_id (the decimal
// id) and service (its Name):
//
//	ringipc_service_connections_open           gauge    connections to the service now
//	ringipc_service_connections_rejected_total counter  handshakes for the service refused (limits, OnConnect)
//	ringipc_calls_total                        counter  requests received
//	ringipc_call_errors_total                  counter  responses with an error status
//	ringipc_handler_panics_total               counter  handler panics recovered
//	ringipc_received_bytes_total               counter  request body bytes
//	ringipc_sent_bytes_total                   counter  response and dispatch body bytes
//	ringipc_dispatches_total                   counter  dispatch messages written to the ring
//	ringipc_dispatches_dropped_total           counter  dispatch messages dropped (ipc.PolicyDrop)
//	ringipc_dispatches_lost_total              counter  dispatch messages still queued when their connection ended
//	ringipc_protocol_errors_total              counter  connections ended by a protocol violation
//	ringipc_slow_consumer_disconnects_total    counter  connections ended as slow consumers
//	ringipc_calls_cancelled_total              counter  requests answered "cancelled": skipped, or ended, by the client's cancel or deadline
//	ringipc_handler_duration_seconds           histogram time handlers ran (ipc.Config.Timing)
//	ringipc_queue_duration_seconds             histogram time from taking a request off the ring to its handler's start (ipc.Config.Timing)
//
// The histograms have the fixed buckets of ipc.Histogram (256 ns doubling
// up to about 2.1 s). ipc.Stats.Errors, the sum of the protocol errors
// and the slow consumers, is not exported: the two parts are.
package ipcprom
