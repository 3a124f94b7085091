package main

import (
	"math"
	"slices"
	"time"
)

// sample is one target under one workload in one round.
type sample struct {
	CPUPerOp   float64 // proxy CPU µs per op; NaN when there is no proxy
	Throughput float64 // ops/s at saturation
	P50, P99   time.Duration
	Failed     int64 // over the saturation and the fixed-rate run
}

// summary is a cell of the report: medians over rounds, failures summed.
type summary struct {
	CPUPerOp   float64
	Throughput float64
	P50, P99   time.Duration
	Failed     int64
	Rounds     int
}

func median(v []float64) float64 {
	v = slices.DeleteFunc(slices.Clone(v), math.IsNaN)
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

func summarize(ss []sample) summary {
	var cpu, tput, p50, p99 []float64
	var s summary
	for _, x := range ss {
		cpu = append(cpu, x.CPUPerOp)
		tput = append(tput, x.Throughput)
		p50 = append(p50, float64(x.P50))
		p99 = append(p99, float64(x.P99))
		s.Failed += x.Failed
	}
	s.Rounds = len(ss)
	s.CPUPerOp, s.Throughput = median(cpu), median(tput)
	s.P50, s.P99 = time.Duration(median(p50)), time.Duration(median(p99))
	return s
}

// results collects every round; keys are target and workload names.
type results struct {
	samples map[string]map[string][]sample
	rss     map[string][]float64 // peak RSS per round, bytes
	spans   map[string]int64     // spans the OTLP sink received

	idleRSS    map[string][]float64 // resident with the idle connections open, per round, bytes
	idleFailed map[string]int64     // idle connections not opened or not kept

	streams map[string][]loadResult // concurrently open server streams, per round
}

func newResults() *results {
	return &results{samples: map[string]map[string][]sample{}, rss: map[string][]float64{}, spans: map[string]int64{},
		idleRSS: map[string][]float64{}, idleFailed: map[string]int64{}, streams: map[string][]loadResult{}}
}

func (r *results) add(target, workload string, s sample) {
	if r.samples[target] == nil {
		r.samples[target] = map[string][]sample{}
	}
	r.samples[target][workload] = append(r.samples[target][workload], s)
}

func (r *results) summary(target, workload string) (summary, bool) {
	ss, ok := r.samples[target][workload]
	if !ok {
		return summary{}, false
	}
	return summarize(ss), true
}

// ratio is a/b, NaN when either is unknown or b is zero.
func ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return math.NaN()
	}
	return a / b
}

// rotate returns the order of targets in round r: shifted by r, so that
// no target always runs first (on a cold machine) or last.
func rotate[T any](v []T, r int) []T {
	if len(v) == 0 {
		return nil
	}
	r %= len(v)
	return append(slices.Clone(v[r:]), v[:r]...)
}
