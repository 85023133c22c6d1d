//go:build linux

package ipcprom_test

import (
	"log"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ringipc/ringipc/ipc"
	"github.com/ringipc/ringipc/ipc/ipcprom"
)

// A daemon exports its ipc server's metrics on /metrics, here on the
// loopback interface only.
func Example() {
	srv, err := ipc.NewServer(&ipc.Config{Timing: true}) // Timing fills the latency histograms
	if err != nil {
		log.Fatal(err)
	}
	// ... Register services, then go srv.Serve(listener) ...

	reg := prometheus.NewRegistry()
	reg.MustRegister(ipcprom.NewCollector(srv))
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	log.Fatal(http.ListenAndServe("127.0.0.1:9464", nil))
}
