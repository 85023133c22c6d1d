package benchreport

import (
	"cmp"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// The size of every PNG: 7 by 4.5 inches at the library's 96 dpi.
const (
	figWidth  = 7 * vg.Inch
	figHeight = 4.5 * vg.Inch
)

// latencyFigures draws one percentile plot per scenario and set of
// parameters, a line per transport: ringipc next to the socket (and the
// futex or C rows) it was measured against.
func latencyFigures(dir string, rows []Row) ([]figure, error) {
	type key struct {
		scenario, params string
		size, rate       int
	}
	var keys []key
	groups := map[key][]Row{}
	for _, r := range rows {
		if len(r.Latency) == 0 {
			continue
		}
		k := key{r.Scenario, r.Params, r.Size, r.Rate}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	var figs []figure
	for _, k := range keys {
		p := plot.New()
		caption := k.scenario + ", " + SizeText(k.size) + ", rate " + RateText(k.rate)
		if k.params != "" {
			caption += ", " + k.params
		}
		p.Title.Text = caption
		p.X.Label.Text = "percentile"
		p.Y.Label.Text = "latency (µs)"
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.TickerFunc(logTicks)
		maxX := 0.0
		var lines []any
		for _, r := range groups[k] {
			xys := make(plotter.XYs, 0, len(r.Latency))
			for _, pt := range r.Latency {
				x := nines(pt.Fraction, r.Samples)
				maxX = max(maxX, x)
				xys = append(xys, plotter.XY{X: x, Y: max(pt.Nanos, 1) / 1e3})
			}
			lines = append(lines, fmt.Sprintf("%s (%d samples)", r.Transport, r.Samples), xys)
		}
		if err := plotutil.AddLines(p, lines...); err != nil {
			return figs, err
		}
		p.X.Tick.Marker = ninesTicks(maxX)
		p.X.Min = 0
		p.Legend.Top = true
		p.Legend.Left = true
		f := figure{File: slug("latency", caption) + ".png", Caption: caption}
		if err := p.Save(figWidth, figHeight, filepath.Join(dir, f.File)); err != nil {
			return figs, err
		}
		figs = append(figs, f)
	}
	return figs, nil
}

// nines maps a fraction of the samples to a percentile axis on which each
// further nine (90%, 99%, 99.9%) takes the same width: -log10(1-q). The
// last sample, q = 1, is drawn where one sample in n would be.
func nines(q float64, n uint64) float64 {
	limit := 1 - 1/float64(max(n, 2))
	return -math.Log10(1 - min(q, limit))
}

func ninesTicks(maxX float64) plot.Ticker {
	// 0% (the minimum) is left unlabelled: it would crowd 50%.
	ticks := plot.ConstantTicks{{Value: 0}, {Value: math.Log10(2), Label: "50%"}}
	for k := 1; float64(k) <= maxX+1e-9; k++ {
		label := strconv.FormatFloat(100-100*math.Pow(10, -float64(k)), 'f', -1, 64) + "%"
		ticks = append(ticks, plot.Tick{Value: float64(k), Label: label})
	}
	return ticks
}

// logTicks labels a log axis at 1, 2 and 5 times each power of ten in
// range, and at its ends when that leaves fewer than two labels: the
// library's own log ticks label powers of ten only, none at all on a
// range such as 20 to 40 µs.
func logTicks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	if lo <= 0 || hi <= lo {
		return []plot.Tick{{Value: hi, Label: num(hi)}}
	}
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v >= lo && v <= hi {
				ticks = append(ticks, plot.Tick{Value: v, Label: num(v)})
			}
		}
	}
	if len(ticks) < 2 {
		for _, v := range []float64{lo, hi} {
			if !slices.ContainsFunc(ticks, func(t plot.Tick) bool { return t.Value == v }) {
				ticks = append(ticks, plot.Tick{Value: v, Label: num(v)})
			}
		}
		slices.SortFunc(ticks, func(a, b plot.Tick) int { return cmp.Compare(a.Value, b.Value) })
	}
	return ticks
}

// num labels a tick: three significant digits, with k or M for
// thousands and millions rather than an exponent.
func num(v float64) string {
	suffix := ""
	switch {
	case v >= 1e6:
		v, suffix = v/1e6, "M"
	case v >= 1e3:
		v, suffix = v/1e3, "k"
	}
	r, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'g', 3, 64), 64)
	return strconv.FormatFloat(r, 'f', -1, 64) + suffix
}

// headroom raises the top of a log y axis that spans lo to hi so that a
// legend of n lines in the top corner stays clear of the data.
func headroom(p *plot.Plot, lo, hi float64, n int) {
	if lo <= 0 || hi <= 0 {
		return
	}
	if hi/lo < 2 {
		lo, hi = lo/1.5, hi*1.5
	}
	f := min(float64(n*17+10)/float64(figHeight.Dots(96)-90), 0.6)
	p.Y.Min = lo
	p.Y.Max = math.Exp(math.Log(hi) + f/(1-f)*(math.Log(hi)-math.Log(lo)))
}

// A sweep is an axis that a run may vary: message size or rate.
type sweep struct {
	name   string                  // file name part
	label  string                  // x axis
	x      func(Row) float64       // the row's place on it; 0: not on it
	fixed  func(Row) string        // the other dimension: one figure per value
	series func(Row) string        // what tells the lines of one figure apart
	ticks  func(float64) string    // label of a value
	ys     []sweepY                // the plots drawn against it
	keep   func(xs []float64) bool // whether the run swept it
}

type sweepY struct {
	name, label string
	y           func(Row) float64
}

var (
	cpuY        = sweepY{"cpu", "CPU per message (ns)", func(r Row) float64 { return r.CPUPerMsgNs }}
	throughputY = sweepY{"throughput", "throughput (MB/s)", func(r Row) float64 { return r.BytesPerSec / 1e6 }}
	msgsY       = sweepY{"throughput", "messages per second", func(r Row) float64 { return r.MsgsPerSec }}

	bySize = sweep{
		name: "size", label: "message size (bytes)",
		x:      func(r Row) float64 { return float64(r.Size) },
		fixed:  func(r Row) string { return "rate " + RateText(r.Rate) },
		series: func(r Row) string { return join(r.Transport, r.Params) },
		ticks:  func(v float64) string { return SizeText(int(v)) },
		ys:     []sweepY{throughputY, cpuY},
		keep:   func(xs []float64) bool { return len(xs) >= 2 },
	}
	byRate = sweep{
		name: "rate", label: "rate (per second, each sender)",
		x:      func(r Row) float64 { return float64(r.Rate) },
		fixed:  func(r Row) string { return SizeText(r.Size) },
		series: func(r Row) string { return join(r.Transport, r.Params) },
		ticks:  func(v float64) string { return RateText(int(v)) },
		ys:     []sweepY{msgsY, cpuY},
		keep:   func(xs []float64) bool { return len(xs) >= 2 },
	}
)

// sweepFigures draws, for each scenario that the run swept along s and
// each value of the other dimension, one plot per quantity in s.ys
// against s, a line per transport (and count of producers, goroutines or
// clients).
func sweepFigures(dir string, rows []Row, s sweep) ([]figure, error) {
	type key struct{ scenario, fixed string }
	var keys []key
	groups := map[key][]Row{}
	for _, r := range rows {
		if s.x(r) <= 0 {
			continue
		}
		k := key{r.Scenario, s.fixed(r)}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	var figs []figure
	for _, k := range keys {
		var xs []float64
		var names []string
		series := map[string]map[float64]Row{}
		for _, r := range groups[k] {
			x := s.x(r)
			if !slices.Contains(xs, x) {
				xs = append(xs, x)
			}
			name := s.series(r)
			if series[name] == nil {
				series[name] = map[float64]Row{}
				names = append(names, name)
			}
			series[name][x] = r
		}
		if !s.keep(xs) {
			continue
		}
		slices.Sort(xs)
		for _, y := range s.ys {
			p := plot.New()
			p.Title.Text = k.scenario + ", " + k.fixed + ": " + strings.SplitN(y.label, " (", 2)[0] + " against " + s.name
			p.X.Label.Text = s.label
			p.Y.Label.Text = y.label
			p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
			ticks := plot.ConstantTicks{}
			for _, x := range xs {
				ticks = append(ticks, plot.Tick{Value: x, Label: s.ticks(x)})
			}
			p.X.Tick.Marker = ticks
			p.Y.Tick.Marker = plot.TickerFunc(logTicks)
			var lines []any
			lo, hi := math.Inf(1), 0.0
			for _, name := range names {
				var xys plotter.XYs
				for _, x := range xs {
					if r, ok := series[name][x]; ok && y.y(r) > 0 {
						xys = append(xys, plotter.XY{X: x, Y: y.y(r)})
						lo, hi = min(lo, y.y(r)), max(hi, y.y(r))
					}
				}
				if len(xys) > 0 {
					lines = append(lines, name, xys)
				}
			}
			if len(lines) == 0 {
				continue
			}
			if err := plotutil.AddLinePoints(p, lines...); err != nil {
				return figs, err
			}
			p.Legend.Top = true
			headroom(p, lo, hi, len(lines)/2)
			f := figure{File: slug(s.name, k.scenario, k.fixed, y.name) + ".png", Caption: p.Title.Text}
			if err := p.Save(figWidth, figHeight, filepath.Join(dir, f.File)); err != nil {
				return figs, err
			}
			figs = append(figs, f)
		}
	}
	return figs, nil
}

// slug makes a file name of parts: letters, digits and dashes.
func slug(parts ...string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.Join(parts, "-") {
		if r < 128 && (unicode.IsLetter(r) || unicode.IsDigit(r)) {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(r)
			dash = false
		} else {
			dash = true
		}
	}
	return b.String()
}

func join(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, ", ")
}

// RateText shows a rate per second, "max" for unpaced.
func RateText(r int) string {
	switch {
	case r == 0:
		return "max"
	case r >= 1e6 && r%1e5 == 0:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(r)/1e6), ".0") + "M"
	case r >= 1e3 && r%100 == 0:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(r)/1e3), ".0") + "k"
	}
	return strconv.Itoa(r)
}

// SizeText shows a byte count, in binary units when it is a whole number
// of them.
func SizeText(n int) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
