// Package benchreport writes ringbench's report: PNG plots of its results
// and an index.html page that shows them with the machine, the command and
// the table.
//
// It is a package of its own so that only the report depends on the
// plotting library (gonum.org/v1/plot): the measuring code of ringbench
// neither imports it nor pays for it. It knows nothing of how a result was
// measured; ringbench hands it plain rows.
package benchreport

import (
	"fmt"
	"html/template"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// A Point is one step of a latency distribution: Fraction of the samples
// took at most Nanos.
type Point struct {
	Nanos    float64
	Fraction float64
}

// A Row is one result of ringbench.
type Row struct {
	Scenario  string
	Transport string // "ring", "ipc", "uds", "futex", "c"
	Size      int    // payload bytes per message
	Rate      int    // each sender's messages or calls per second; 0: unpaced
	// Params names the other parameters that tell results of one
	// scenario apart (producers, goroutines, clients), "" if none do.
	Params      string
	MsgsPerSec  float64
	BytesPerSec float64
	CPUPerMsgNs float64
	// Latency is the distribution, ascending, or nil when the result has
	// none; Samples is how many it counts.
	Latency []Point
	Samples uint64
}

// A Page is one run of ringbench.
type Page struct {
	Command  string    // the command line, as typed
	Started  time.Time // when the run started
	Machine  string    // the machine, one line
	Settings string    // window, ring size, wait policy, one line
	Table    string    // the text table ringbench prints
	Rows     []Row
}

// A figure is one plot of the page.
type figure struct {
	File    string
	Caption string
}

type section struct {
	Title string
	About string
	Figs  []figure
}

// Write writes the report into dir, which it creates if need be: one PNG
// per figure and index.html. It returns the files it wrote, index.html
// last.
func Write(dir string, p *Page) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	var sections []section
	add := func(title, about string, figs []figure, err error) error {
		if err != nil {
			return err
		}
		for _, f := range figs {
			files = append(files, filepath.Join(dir, f.File))
		}
		if len(figs) > 0 {
			sections = append(sections, section{title, about, figs})
		}
		return nil
	}
	figs, err := latencyFigures(dir, p.Rows)
	if err := add("Latency", "Each plot is one set of parameters, one line per transport: "+
		"the latency under which a given percentile of the timed messages fell (log scale), "+
		"from the run's histograms (buckets under 0.8% wide).", figs, err); err != nil {
		return files, err
	}
	figs, err = sweepFigures(dir, p.Rows, bySize)
	if err := add("Against message size", "Throughput (MB/s, one way) and CPU per message "+
		"(user+sys of every process of the measurement over its window) for each size run.", figs, err); err != nil {
		return files, err
	}
	figs, err = sweepFigures(dir, p.Rows, byRate)
	if err := add("Against rate", "Messages or calls completed per second and CPU per message "+
		"for each paced rate run (unpaced results, rate max, are in the table only).", figs, err); err != nil {
		return files, err
	}
	index := filepath.Join(dir, "index.html")
	f, err := os.Create(index)
	if err != nil {
		return files, err
	}
	var names []string
	for _, r := range p.Rows {
		if !slices.Contains(names, r.Scenario) {
			names = append(names, r.Scenario)
		}
	}
	err = pageTemplate.Execute(f, struct {
		*Page
		Scenarios string
		Sections  []section
		Date      string
	}{p, strings.Join(names, ", "), sections, p.Started.UTC().Format("2006-01-02 15:04 MST")})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return files, fmt.Errorf("benchreport: %s: %w", index, err)
	}
	return append(files, index), nil
}

var pageTemplate = template.Must(template.New("index").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ringbench {{.Date}}</title>
<style>
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; }
pre { font-size: 80%; overflow-x: auto; background: #f6f6f6; padding: 1em; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
</style>
</head>
<body>
<h1>ringbench {{.Date}}</h1>
<p>Machine: {{.Machine}}</p>
<p>Settings: {{.Settings}}</p>
<p>Command:</p>
<pre>{{.Command}}</pre>
<p>Scenarios run: {{.Scenarios}}.</p>
<p>The transports of a figure were measured one after the other in this run,
on the same machine; other work on the machine skews them (the load average
at the start is in the table's header).</p>
{{range .Sections}}<h2>{{.Title}}</h2>
<p>{{.About}}</p>
{{range .Figs}}<figure><img src="{{.File}}" alt="{{.Caption}}"><figcaption>{{.Caption}}</figcaption></figure>
{{end}}{{end}}<h2>Results</h2>
<pre>{{.Table}}</pre>
</body>
</html>
`))
