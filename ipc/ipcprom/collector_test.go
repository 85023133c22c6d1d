//go:build linux

package ipcprom_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/ringipc/ringipc/ipc"
	"github.com/ringipc/ringipc/ipc/ipcprom"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	echoID, refusingID = 7, 8
	msgEcho, msgFail   = 1, 2
)

// serve starts a server with Timing on, an echo service and one that
// refuses every connection, and returns it and its address.
func serve(t *testing.T) (*ipc.Server, string) {
	t.Helper()
	srv, err := ipc.NewServer(&ipc.Config{Timing: true})
	if err != nil {
		t.Fatal(err)
	}
	echo := &ipc.Service{ID: echoID, Name: "echo", Handlers: map[uint16]ipc.Handler{
		msgEcho: ipc.HandlerFunc(func(w *ipc.ResponseWriter, r *ipc.Request) { w.Respond(r.Data) }), //nolint:errcheck // a failure ends the connection
		msgFail: ipc.HandlerFunc(func(w *ipc.ResponseWriter, _ *ipc.Request) { w.Fail(1, "no") }),   //nolint:errcheck // likewise
	}}
	refusing := &ipc.Service{ID: refusingID, Name: "refusing", OnConnect: func(*ipc.Conn) error { return errors.New("no") }}
	for _, s := range []*ipc.Service{echo, refusing} {
		if err := srv.Register(s); err != nil {
			t.Fatal(err)
		}
	}
	var b [8]byte
	rand.Read(b[:])
	addr := "@ringipc-prom-test-" + hex.EncodeToString(b[:])
	l, err := ipc.Listen(addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l) //nolint:errcheck // ends with ErrServerClosed
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return srv, addr
}

// A scrape holds every metric, with Prometheus names that pass the
// linter, and the values of what the test did.
func TestCollector(t *testing.T) {
	srv, addr := serve(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := ipc.Dial(ctx, addr, refusingID, nil); err == nil {
		t.Fatal("the refusing service accepted a connection")
	}
	cl, err := ipc.Dial(ctx, addr, echoID, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const calls = 3
	for range calls {
		if _, err := cl.Call(ctx, msgEcho, []byte("12345")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.Call(ctx, msgFail, nil); !errors.Is(err, ipc.ErrHandler) {
		t.Fatalf("failing call: %v", err)
	}

	// A call is timed once its handler has returned, after the response
	// that ended the call was published: wait for the last one.
	for {
		if ss := srv.ServiceStats(); len(ss) > 0 && ss[0].Handler.Count == calls+1 && ss[0].Queue.Count == calls+1 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the last call was never timed")
		case <-time.After(time.Millisecond):
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(ipcprom.NewCollector(srv))
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) != 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	const want = `
# HELP ringipc_calls_total Requests received.
# TYPE ringipc_calls_total counter
ringipc_calls_total{service="echo",service_id="7"} 4
ringipc_calls_total{service="refusing",service_id="8"} 0
# HELP ringipc_call_errors_total Responses with an error status.
# TYPE ringipc_call_errors_total counter
ringipc_call_errors_total{service="echo",service_id="7"} 1
ringipc_call_errors_total{service="refusing",service_id="8"} 0
# HELP ringipc_received_bytes_total Request body bytes.
# TYPE ringipc_received_bytes_total counter
ringipc_received_bytes_total{service="echo",service_id="7"} 15
ringipc_received_bytes_total{service="refusing",service_id="8"} 0
# HELP ringipc_connections_open Connections established and not yet ended.
# TYPE ringipc_connections_open gauge
ringipc_connections_open 1
# HELP ringipc_connections_total Connections established.
# TYPE ringipc_connections_total counter
ringipc_connections_total 1
# HELP ringipc_handshakes_rejected_total Connections refused, for any reason.
# TYPE ringipc_handshakes_rejected_total counter
ringipc_handshakes_rejected_total 1
# HELP ringipc_service_connections_rejected_total Handshakes for the service refused.
# TYPE ringipc_service_connections_rejected_total counter
ringipc_service_connections_rejected_total{service="echo",service_id="7"} 0
ringipc_service_connections_rejected_total{service="refusing",service_id="8"} 1
# HELP ringipc_service_connections_open Connections to the service now.
# TYPE ringipc_service_connections_open gauge
ringipc_service_connections_open{service="echo",service_id="7"} 1
ringipc_service_connections_open{service="refusing",service_id="8"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"ringipc_calls_total", "ringipc_call_errors_total", "ringipc_received_bytes_total",
		"ringipc_connections_open", "ringipc_connections_total", "ringipc_handshakes_rejected_total",
		"ringipc_service_connections_rejected_total", "ringipc_service_connections_open"); err != nil {
		t.Error(err)
	}

	// The histograms hold one observation per call, in cumulative
	// buckets ending with +Inf; durations are not asserted.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, mf := range mfs {
		name := mf.GetName()
		if name != "ringipc_handler_duration_seconds" && name != "ringipc_queue_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[1].GetValue() != "7" {
				continue
			}
			seen++
			h := m.GetHistogram()
			bs := h.GetBucket()
			if h.GetSampleCount() != calls+1 || len(bs) != ipc.HistogramBuckets-1 {
				t.Errorf("%s: %d samples in %d buckets, want %d in %d", name, h.GetSampleCount(), len(bs), calls+1, ipc.HistogramBuckets-1)
			}
			for i := 1; i < len(bs); i++ {
				if bs[i].GetCumulativeCount() < bs[i-1].GetCumulativeCount() || bs[i].GetUpperBound() <= bs[i-1].GetUpperBound() {
					t.Errorf("%s: bucket %d (%v) does not follow bucket %d (%v)", name, i, bs[i], i-1, bs[i-1])
				}
			}
		}
	}
	if seen != 2 {
		t.Errorf("%d histograms of the echo service, want 2", seen)
	}
	if n := testutil.CollectAndCount(ipcprom.NewCollector(srv)); n == 0 {
		t.Error("the collector collected nothing")
	}
}
