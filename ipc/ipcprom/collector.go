//go:build linux

package ipcprom

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringipc/ringipc/ipc"
)

// Collector is a prometheus.Collector of one ipc.Server. Register it
// with a prometheus.Registerer; it is safe for concurrent scrapes.
type Collector struct {
	srv *ipc.Server
}

// NewCollector returns a Collector of srv.
func NewCollector(srv *ipc.Server) *Collector { return &Collector{srv: srv} }

var svcLabels = []string{"service_id", "service"}

func desc(name, help string, labels []string) *prometheus.Desc {
	return prometheus.NewDesc("ringipc_"+name, help, labels, nil)
}

// A server metric: its description, kind and field of ipc.Stats.
type serverMetric struct {
	d     *prometheus.Desc
	t     prometheus.ValueType
	value func(*ipc.Stats) uint64
}

var serverMetrics = []serverMetric{
	{desc("connections_open", "Connections established and not yet ended.", nil), prometheus.GaugeValue, func(s *ipc.Stats) uint64 { return s.Open }},
	{desc("connections_total", "Connections established.", nil), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.Connections }},
	{desc("handshakes_rejected_total", "Connections refused, for any reason.", nil), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.Rejected }},
	{desc("handshakes_limited_total", "Connections refused for a limit.", nil), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.Limited }},
	{desc("handshake_timeouts_total", "Clients dropped for not finishing the handshake in time.", nil), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.HandshakeTimeouts }},
	{desc("accept_errors_total", "Accepts that failed and were retried.", nil), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.AcceptErrors }},
	{desc("dispatch_queue_messages", "Dispatch messages queued in the server now.", nil), prometheus.GaugeValue, func(s *ipc.Stats) uint64 { return s.QueueDepth }},
	{desc("dispatch_queue_bytes", "Bytes of the dispatch messages queued in the server now.", nil), prometheus.GaugeValue, func(s *ipc.Stats) uint64 { return s.QueueBytes }},
	{desc("wake_tokens_received_total", "Wake tokens read from clients.", nil), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.TokensIn }},
	{desc("wake_tokens_sent_total", "Wake tokens written to clients.", nil), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.TokensOut }},
}

var serviceMetrics = []serverMetric{
	{desc("service_connections_open", "Connections to the service now.", svcLabels), prometheus.GaugeValue, func(s *ipc.Stats) uint64 { return s.Open }},
	{desc("service_connections_rejected_total", "Handshakes for the service refused.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.Rejected }},
	{desc("calls_total", "Requests received.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.Calls }},
	{desc("call_errors_total", "Responses with an error status.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.ErrorResponses }},
	{desc("handler_panics_total", "Handler panics recovered.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.Panics }},
	{desc("received_bytes_total", "Request body bytes.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.BytesIn }},
	{desc("sent_bytes_total", "Response and dispatch body bytes.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.BytesOut }},
	{desc("dispatches_total", "Dispatch messages written to the ring.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.Dispatches }},
	{desc("dispatches_dropped_total", "Dispatch messages dropped by the drop policy.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.Dropped }},
	{desc("dispatches_lost_total", "Dispatch messages still queued when their connection ended.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.LostDispatches }},
	{desc("protocol_errors_total", "Connections ended by a protocol violation.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.ProtocolErrors }},
	{desc("slow_consumer_disconnects_total", "Connections ended as slow consumers.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.SlowConsumers }},
	{desc("calls_cancelled_total", "Requests answered cancelled: skipped, or ended, by the client's cancel or deadline.", svcLabels), prometheus.CounterValue, func(s *ipc.Stats) uint64 { return s.Cancelled }},
}

var (
	handlerDesc = desc("handler_duration_seconds", "Time handlers ran (recorded with ipc.Config.Timing).", svcLabels)
	queueDesc   = desc("queue_duration_seconds", "Time from taking a request off the ring to its handler's start (recorded with ipc.Config.Timing).", svcLabels)
)

// Describe sends the descriptions of every metric.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range serverMetrics {
		ch <- m.d
	}
	for _, m := range serviceMetrics {
		ch <- m.d
	}
	ch <- handlerDesc
	ch <- queueDesc
}

// Collect reads the server's counters and sends them as metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.srv.Stats()
	for _, m := range serverMetrics {
		ch <- prometheus.MustNewConstMetric(m.d, m.t, float64(m.value(&st)))
	}
	for _, ss := range c.srv.ServiceStats() {
		labels := []string{strconv.Itoa(int(ss.ID)), ss.Name}
		for _, m := range serviceMetrics {
			ch <- prometheus.MustNewConstMetric(m.d, m.t, float64(m.value(&ss.Stats)), labels...)
		}
		ch <- histogram(handlerDesc, &ss.Handler, labels)
		ch <- histogram(queueDesc, &ss.Queue, labels)
	}
}

// histogram turns an ipc.Histogram (counts per bucket) into a Prometheus
// one (cumulative counts per upper bound, the last bucket being +Inf).
func histogram(d *prometheus.Desc, h *ipc.Histogram, labels []string) prometheus.Metric {
	buckets := make(map[float64]uint64, ipc.HistogramBuckets-1)
	var cum uint64
	for i := range ipc.HistogramBuckets - 1 {
		cum += h.Counts[i]
		buckets[ipc.BucketBound(i).Seconds()] = cum
	}
	// The fields were read one by one: keep the count no smaller than
	// the buckets so the histogram stays consistent.
	count := max(h.Count, cum+h.Counts[ipc.HistogramBuckets-1])
	return prometheus.MustNewConstHistogram(d, count, h.Sum.Seconds(), buckets, labels...)
}
