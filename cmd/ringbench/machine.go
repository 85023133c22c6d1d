//go:build linux

package main

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/ringipc/ringipc/ring"
)

// machine says where a result was measured. Its JSON names are part of
// every result line and must not change.
type machine struct {
	CPUModel  string `json:"cpu_model"`
	Cores     int    `json:"cores"`
	GoVersion string `json:"go_version"`
	GOOS      string `json:"goos"`
	GOARCH    string `json:"goarch"`
	// LoadAvg1m is the one-minute load average when the suite started:
	// other work on the machine skews every figure.
	LoadAvg1m float64 `json:"load_avg_1m"`
	// AsymFences: this machine lets ring producers publish without a
	// full barrier per record while their consumers fence them
	// (ring.AsymmetricFences; false where membarrier(2) is missing or
	// refused, as in some containers).
	AsymFences bool   `json:"asym_fences"`
	kernel     string // header only
}

func detectMachine() machine {
	return machine{
		CPUModel:   cpuModel("/proc/cpuinfo"),
		Cores:      runtime.NumCPU(),
		GoVersion:  runtime.Version(),
		GOOS:       runtime.GOOS,
		GOARCH:     runtime.GOARCH,
		LoadAvg1m:  loadAvg(),
		AsymFences: ring.AsymmetricFences(),
		kernel:     kernelRelease(),
	}
}

func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// cpuModel returns the first processor's model from a cpuinfo file: the
// "model name" line on x86, or what other architectures put in its place.
func cpuModel(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	found := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if _, dup := found[k]; !dup && v != "" {
			found[k] = v
		}
	}
	for _, k := range []string{"model name", "Model", "Hardware", "cpu model", "cpu", "uarch"} {
		if v := found[k]; v != "" {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "unknown"
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
