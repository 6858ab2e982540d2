package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// charts reads the JSON of a comparison run and writes the results table
// (Markdown, to w) and the PNG charts (into dir).
func charts(in, dir string, w io.Writer) error {
	b, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	var res compareResults
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	agg := aggregate(res)
	if len(agg) == 0 {
		return fmt.Errorf("%s: no target has a round without error", in)
	}
	writeTable(w, res, agg)
	for name, draw := range map[string]func([]targetAgg) (*plot.Plot, error){
		"compare-throughput.png":      throughputChart,
		"compare-reload-failures.png": failuresChart,
	} {
		p, err := draw(agg)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := p.Save(26*vg.Centimeter, 13*vg.Centimeter, filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return latencyChart(res, filepath.Join(dir, "compare-reload-latency.png"))
}

// targetAgg is one target over all its good rounds.
type targetAgg struct {
	info   targetInfo
	rounds []roundResult
	errs   []string

	keep, close     stat // req/s, conn/s
	keepR, closeR   stat // ratio to the floor in the same round
	p50, p99        stat // keep-alive, µs
	failKeep        stat // failed requests during the reloads, per round
	failClose       stat
	classes         failCounts // summed over the rounds
	closeWait       int
	reloads         int
	kill            stat // ms
	killFailed      int
	killProbes      int
	killNotReplaced int
	rssIdle, rssAft stat // KiB
	pssIdle, pssAft stat
	cpuIdle, cpuLd  stat
}

// stat is the median of some rounds and their spread.
type stat struct {
	med, lo, hi float64
	n           int
}

func newStat(v []float64) stat {
	if len(v) == 0 {
		return stat{med: math.NaN(), lo: math.NaN(), hi: math.NaN()}
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{med: med, lo: s[0], hi: s[len(s)-1], n: len(s)}
}

func aggregate(res compareResults) []targetAgg {
	floorRPS := map[int][2]float64{} // round → keep, close of the floor
	var floorName string
	for _, t := range res.Targets {
		if t.Floor {
			floorName = t.Short
		}
	}
	for _, r := range res.Rounds {
		if r.Target == floorName && r.Err == "" {
			floorRPS[r.Round] = [2]float64{r.KeepAlive.RPS, r.Close.RPS}
		}
	}
	var out []targetAgg
	for _, t := range res.Targets {
		a := targetAgg{info: t}
		var keep, cls, keepR, closeR, p50, p99, fk, fc, kill, rssI, rssA, pssI, pssA, cpuI, cpuL []float64
		for _, r := range res.Rounds {
			if r.Target != t.Short {
				continue
			}
			if r.Err != "" {
				a.errs = append(a.errs, fmt.Sprintf("round %d: %s", r.Round, r.Err))
				continue
			}
			a.rounds = append(a.rounds, r)
			keep = append(keep, r.KeepAlive.RPS)
			cls = append(cls, r.Close.RPS)
			if f, ok := floorRPS[r.Round]; ok && f[0] > 0 && f[1] > 0 {
				keepR = append(keepR, r.KeepAlive.RPS/f[0])
				closeR = append(closeR, r.Close.RPS/f[1])
			}
			p50 = append(p50, float64(r.KeepAlive.P50.Microseconds()))
			p99 = append(p99, float64(r.KeepAlive.P99.Microseconds()))
			if r.Reloads > 0 {
				fk = append(fk, float64(r.ReloadFailKeep.total()))
				fc = append(fc, float64(r.ReloadFailClose.total()))
				a.classes.add(r.ReloadFailKeep)
				a.classes.add(r.ReloadFailClose)
				a.closeWait += r.ReloadCloseWait
				a.reloads += r.Reloads
			}
			for _, k := range r.Kills {
				ms := float64(k.ToServing) / float64(time.Millisecond)
				if !k.Replaced {
					a.killNotReplaced++
					continue
				}
				kill = append(kill, ms)
				a.killFailed += k.FailedProbes
				a.killProbes += k.Probes
			}
			if r.CPUIdlePct >= 0 {
				rssI, rssA = append(rssI, float64(r.RSSIdleKiB)), append(rssA, float64(r.RSSAfterKiB))
				pssI, pssA = append(pssI, float64(r.PSSIdleKiB)), append(pssA, float64(r.PSSAfterKiB))
				cpuI, cpuL = append(cpuI, r.CPUIdlePct), append(cpuL, r.CPULoadPct)
			}
		}
		a.keep, a.close, a.keepR, a.closeR = newStat(keep), newStat(cls), newStat(keepR), newStat(closeR)
		a.p50, a.p99, a.failKeep, a.failClose, a.kill = newStat(p50), newStat(p99), newStat(fk), newStat(fc), newStat(kill)
		a.rssIdle, a.rssAft, a.pssIdle, a.pssAft = newStat(rssI), newStat(rssA), newStat(pssI), newStat(pssA)
		a.cpuIdle, a.cpuLd = newStat(cpuI), newStat(cpuL)
		if len(a.rounds) > 0 || len(a.errs) > 0 {
			out = append(out, a)
		}
	}
	return out
}

func num(v float64, format string) string {
	if math.IsNaN(v) {
		return "—"
	}
	return fmt.Sprintf(format, v)
}

// spread writes "median (lo–hi)".
func spread(s stat, format string) string {
	if s.n == 0 {
		return "—"
	}
	if s.n == 1 {
		return num(s.med, format)
	}
	return fmt.Sprintf("%s (%s–%s)", num(s.med, format), num(s.lo, format), num(s.hi, format))
}

func mib(s stat) string {
	if s.n == 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f", s.med/1024)
}

func writeTable(w io.Writer, res compareResults, agg []targetAgg) {
	fmt.Fprintf(w, "Run of %s UTC on %s.\n\n", res.Started.Format("2006-01-02 15:04"), res.Machine)
	var keys []string
	for k := range res.Versions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var vs []string
	for _, k := range keys {
		vs = append(vs, fmt.Sprintf("%s %s", k, res.Versions[k]))
	}
	fmt.Fprintf(w, "Versions: %s.\n\n", strings.Join(vs, "; "))
	keys = keys[:0]
	for k := range res.Config {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "- %s: %s\n", k, res.Config[k])
	}
	var loads []string
	for _, r := range res.Rounds {
		if r.Target == agg[0].info.Short {
			loads = append(loads, fmt.Sprintf("round %d: %s", r.Round, r.LoadAvg))
		}
	}
	fmt.Fprintf(w, "- load average at the start of each round: %s\n\n", strings.Join(loads, "; "))

	fmt.Fprintln(w, "Medians of the rounds, (min–max) over the rounds; ratios are taken against the floor in the same round.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | keep-alive req/s | × floor | close conn/s | × floor | p50 / p99 keep-alive (µs) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, a := range agg {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s / %s |\n", a.info.Name,
			spread(a.keep, "%.0f"), spread(a.keepR, "%.2f"), spread(a.close, "%.0f"), spread(a.closeR, "%.2f"),
			num(a.p50.med, "%.0f"), num(a.p99.med, "%.0f"))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | failed requests per round of reloads, keep-alive / close | all rounds, by class | CLOSE-WAIT at end | kill -9 → new worker serving, ms | failed probes / probes | supervisor RSS idle → after load, MiB | PSS idle → after, MiB | supervisor CPU idle / under load, % of one CPU |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, a := range agg {
		fails, classes, cw := "no reload", "—", "—"
		if a.reloads > 0 {
			fails = spread(a.failKeep, "%.0f") + " / " + spread(a.failClose, "%.0f")
			classes = a.classes.String()
			cw = fmt.Sprint(a.closeWait)
		}
		kill, probes := "not restarted", "—"
		if a.kill.n > 0 {
			kill = spread(a.kill, "%.1f")
			probes = fmt.Sprintf("%d / %d", a.killFailed, a.killProbes)
		}
		if a.killNotReplaced > 0 {
			kill += fmt.Sprintf(", %d kills with no replacement seen in 20 s", a.killNotReplaced)
		}
		mem, pss, cpu := "no supervisor", "—", "—"
		if a.rssIdle.n > 0 {
			mem = mib(a.rssIdle) + " → " + mib(a.rssAft)
			pss = mib(a.pssIdle) + " → " + mib(a.pssAft)
			cpu = num(a.cpuIdle.med, "%.1f") + " / " + num(a.cpuLd.med, "%.1f")
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", a.info.Name, fails, classes, cw, kill, probes, mem, pss, cpu)
	}
	for _, a := range agg {
		for _, e := range a.errs {
			fmt.Fprintf(w, "\n%s, %s", a.info.Name, e)
		}
	}
	fmt.Fprintln(w)
}

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
	color.RGBA{R: 0xe3, G: 0x77, B: 0xc2, A: 0xff},
}

// errPoints are bar tops with the spread of the rounds as error bars.
type errPoints struct {
	plotter.XYs
	plotter.YErrors
}

func throughputChart(agg []targetAgg) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Throughput, 2 workers (median of the rounds; bars: min–max)"
	p.Y.Label.Text = "requests/s (keep-alive), connections/s (close)"
	names := make([]string, len(agg))
	for i, a := range agg {
		names[i] = a.info.Short
	}
	w := vg.Points(14)
	for j, pick := range []func(targetAgg) stat{
		func(a targetAgg) stat { return a.keep },
		func(a targetAgg) stat { return a.close },
	} {
		vals := make(plotter.Values, len(agg))
		pts := errPoints{make(plotter.XYs, len(agg)), make(plotter.YErrors, len(agg))}
		for i, a := range agg {
			s := pick(a)
			if s.n == 0 {
				s = stat{}
			}
			vals[i] = s.med
			pts.XYs[i] = plotter.XY{X: float64(i) + (float64(j)-0.5)*0.28, Y: s.med}
			pts.YErrors[i] = struct{ Low, High float64 }{s.med - s.lo, s.hi - s.med}
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return nil, err
		}
		bars.Color = palette[j]
		bars.LineStyle.Width = 0
		bars.Offset = (vg.Length(j) - 0.5) * w
		eb, err := plotter.NewYErrorBars(pts)
		if err != nil {
			return nil, err
		}
		p.Add(bars, eb)
		p.Legend.Add([]string{"keep-alive req/s", "Connection: close conn/s"}[j], bars)
	}
	p.Legend.Top = true
	p.NominalX(names...)
	p.Add(plotter.NewGrid())
	return p, nil
}

func failuresChart(agg []targetAgg) (*plot.Plot, error) {
	p := plot.New()
	rounds := 0
	for _, a := range agg {
		rounds = max(rounds, len(a.rounds))
	}
	p.Title.Text = fmt.Sprintf("Failed requests during rolling reloads under load (all %d rounds), by class", rounds)
	p.Y.Label.Text = "failed requests (client never retries)"
	var names []string
	var rows []targetAgg
	for _, a := range agg {
		if a.reloads > 0 {
			names = append(names, a.info.Short)
			rows = append(rows, a)
		}
	}
	var below *plotter.BarChart
	for c := failClass(0); c < numFailClasses; c++ {
		vals := make(plotter.Values, len(rows))
		any := false
		for i, a := range rows {
			vals[i] = float64(a.classes[c])
			any = any || vals[i] > 0
		}
		if !any {
			continue
		}
		bars, err := plotter.NewBarChart(vals, vg.Points(22))
		if err != nil {
			return nil, err
		}
		bars.Color = palette[int(c)%len(palette)]
		bars.LineStyle.Width = 0
		if below != nil {
			bars.StackOn(below)
		}
		below = bars
		p.Add(bars)
		p.Legend.Add(c.String(), bars)
	}
	// Every row gets its total written over its bar, 0 included.
	var labels plotter.XYLabels
	var xys plotter.XYs
	for i, a := range rows {
		xys = append(xys, plotter.XY{X: float64(i), Y: float64(a.classes.total())})
		labels.Labels = append(labels.Labels, fmt.Sprint(a.classes.total()))
	}
	labels.XYs = xys
	l, err := plotter.NewLabels(labels)
	if err != nil {
		return nil, err
	}
	for i := range l.TextStyle {
		l.TextStyle[i].XAlign = draw.XCenter
		l.TextStyle[i].YAlign = draw.YBottom
	}
	p.Add(l)
	top := 0
	for _, a := range rows {
		top = max(top, a.classes.total())
	}
	p.Y.Min, p.Y.Max = 0, float64(max(top, 4))*1.35 // room for the legend
	p.Legend.Top = true
	p.Legend.Left = true
	p.NominalX(names...)
	p.Add(plotter.NewGrid())
	return p, nil
}

// latencyChart draws, one panel per target, the latency of every
// keep-alive request across the first reload of the first round.
func latencyChart(res compareResults, file string) error {
	var plots []*plot.Plot
	for _, short := range latencyTargets {
		for _, r := range res.Rounds {
			if r.Target != short || len(r.Latency) == 0 {
				continue
			}
			p := plot.New()
			p.Title.Text = fmt.Sprintf("%s: every keep-alive request across one reload of %s (dashed: reload asked, reload done)",
				short, (r.ReloadEnd - r.ReloadStart).Round(time.Millisecond))
			p.X.Label.Text = "ms from the start of the reload"
			p.Y.Label.Text = "latency, ms (log)"
			p.Y.Scale = plot.LogScale{}
			p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
			pts := make(plotter.XYs, len(r.Latency))
			for i, s := range r.Latency {
				pts[i] = plotter.XY{
					X: float64(s.At-r.ReloadStart) / float64(time.Millisecond),
					Y: max(float64(s.Latency)/float64(time.Millisecond), 0.01),
				}
			}
			sc, err := plotter.NewScatter(pts)
			if err != nil {
				return err
			}
			sc.GlyphStyle.Radius = vg.Points(0.8)
			sc.GlyphStyle.Color = palette[0]
			end := float64(r.ReloadEnd-r.ReloadStart) / float64(time.Millisecond)
			for _, x := range []float64{0, end} {
				ln, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0.01}, {X: x, Y: 5000}})
				if err != nil {
					return err
				}
				ln.Color = palette[3]
				ln.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
				p.Add(ln)
			}
			p.Add(sc, plotter.NewGrid())
			p.Y.Min, p.Y.Max = 0.01, 5000
			plots = append(plots, p)
			break
		}
	}
	if len(plots) == 0 {
		return nil
	}
	const w, rowH = 26 * vg.Centimeter, 7 * vg.Centimeter
	img := vgimg.New(w, rowH*vg.Length(len(plots)))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(plots), Cols: 1, PadY: vg.Millimeter * 2, PadX: vg.Millimeter, PadTop: vg.Millimeter, PadBottom: vg.Millimeter}
	grid := make([][]*plot.Plot, len(plots))
	for i, p := range plots {
		grid[i] = []*plot.Plot{p}
	}
	canvases := plot.Align(grid, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[i][0])
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
