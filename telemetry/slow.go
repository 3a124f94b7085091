package telemetry

import (
	"maps"
	"math"
	"slices"
	"time"
)

// Which turns are slow?
//
// The bottleneck analysis (and the "slow" filter of the trace list) judges
// the turns of each root route against the turns of the same route in the
// same window, read exactly from the trace store, never against a sketch:
// a sketch's quantile is the middle of a histogram bucket, and when the
// slow turns sit close together (a dependency timing out at a fixed
// deadline, a fixed retry backoff, a cold cache) that middle can land above
// every one of them, so that a quarter of the turns are slow and none is
// found (issue 9). The rules, per root route:
//
//  1. Bimodal: when the sorted turn durations split clearly into a fast and
//     a slow mode, every turn of the slow mode is slow, whatever its share
//     (1 % or 90 %). See bimodalSplit for what "clearly" means.
//  2. Otherwise the exact p95: the nearest-rank 95th percentile of the
//     route's turn durations, less a tolerance of 5 % (timing jitter: turns
//     within 5 % of the p95 belong to the same tail). The p95 is itself a
//     turn's duration, so at least one turn is always slow.
//  3. In addition, whichever rule applies, every turn longer than the
//     route's turn SLO (conversation.turn_slo, see Telemetry.SetTurnSLOs)
//     is slow.
//
// A min_duration given by the caller replaces all three.

// Slow-turn rule names, as reported by /api/bottlenecks.
const (
	RuleMinDuration = "min_duration"
	RuleBimodal     = "bimodal"
	RuleP95         = "p95"
)

const (
	// slowQuantile and slowTolerance: rule 2.
	slowQuantile  = 0.95
	slowTolerance = 0.05
	// bimodalMinRatio: the slow mode's fastest turn is at least 1.5 times
	// the fast mode's slowest one.
	bimodalMinRatio = 1.5
	// bimodalGapFactor: the gap between the modes is at least twice as
	// wide (as a ratio, on a log scale) as any gap between neighbouring
	// turns of the slow mode, and as any of the bimodalLowerGaps gaps just
	// below it.
	bimodalGapFactor = 2.0
	bimodalLowerGaps = 3
	// bimodalSmallMode: a slow mode of at most this share of the turns
	// need not be tight (see bimodalSplit).
	bimodalSmallMode = 0.05
)

// SlowRule is how the turns of one root route were judged.
type SlowRule struct {
	Route string
	// Rule is RuleBimodal, RuleP95 or RuleMinDuration.
	Rule string
	// Threshold: turns at least this long are slow by Rule.
	Threshold time.Duration
	// P95 is the exact nearest-rank p95 of the route's turns (0 under
	// RuleMinDuration).
	P95 time.Duration
	// SLO: turns longer than this are slow too; 0 when the route has none.
	SLO time.Duration
	// Turns counts the route's turns in the window, Slow the slow ones.
	Turns, Slow int
}

// IsSlow reports whether a turn of the rule's route that took d is slow.
func (r *SlowRule) IsSlow(d time.Duration) bool {
	return d > 0 && (d >= r.Threshold || r.SLO > 0 && d > r.SLO)
}

// judgeTurns returns the rule of each root route, given the durations of
// its turns (which it sorts in place), the routes' turn SLOs (may be nil)
// and the caller's min_duration (0: none).
func judgeTurns(durs map[string][]time.Duration, slos map[string]time.Duration, minDur time.Duration) map[string]*SlowRule {
	rules := make(map[string]*SlowRule, len(durs))
	for route, d := range durs {
		r := &SlowRule{Route: route, Turns: len(d)}
		rules[route] = r
		if minDur > 0 {
			r.Rule, r.Threshold = RuleMinDuration, minDur
		} else {
			r.SLO = slos[route]
			slices.Sort(d)
			r.P95 = exactQuantile(d, slowQuantile)
			if i, ok := bimodalSplit(d); ok {
				r.Rule, r.Threshold = RuleBimodal, d[i]
			} else {
				r.Rule, r.Threshold = RuleP95, r.P95-time.Duration(float64(r.P95)*slowTolerance)
			}
		}
		for _, v := range d {
			if r.IsSlow(v) {
				r.Slow++
			}
		}
	}
	return rules
}

// exactQuantile is the nearest-rank q-quantile of sorted: its ⌈q·n⌉-th
// smallest value (0 for none).
func exactQuantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// bimodalSplit looks for a clear slow mode in sorted (ascending, positive)
// durations and returns the index of its fastest turn.
//
// Gaps are measured between neighbouring turns as ln(d[i]/d[i-1]), so they
// compare alike at 50 ms and at 5 s. A split before index i is clear when
//
//   - the gap is at least ln(bimodalMinRatio): the slow mode starts at 1.5×
//     the end of the fast one;
//   - the gap is at least bimodalGapFactor times every gap above it: the
//     slow mode is tight compared with its distance from the rest (a
//     spread-out tail, such as exponential latencies, has gaps that grow
//     towards the top and fails this). A slow mode of at most 5 % of the
//     turns is exempt: two slow turns at 300 ms and 1.1 s over fast ones
//     below 100 ms are both slow, and turns that few are all above the
//     p95 anyway, so exempting them can only narrow what rule 2 would
//     call slow, never widen it;
//   - the gap is at least bimodalGapFactor times each of the
//     bimodalLowerGaps gaps just below it: the split is not one rung of a
//     spread-out ladder (two slow turns at 300 ms and 900 ms over 20 ms
//     fast ones are one slow mode, not a slow mode of one turn).
//
// The highest clear split wins, so that a mode faster than the bulk of the
// turns (answers rejected in a millisecond, cache hits) never turns the
// bulk into "the slow mode" when a slower mode exists above it.
func bimodalSplit(sorted []time.Duration) (int, bool) {
	minGap := math.Log(bimodalMinRatio)
	gap := func(i int) float64 {
		if sorted[i-1] <= 0 {
			return math.Inf(1)
		}
		return math.Log(float64(sorted[i]) / float64(sorted[i-1]))
	}
	upperMax := 0.0 // the widest gap above the split being tried
	small := max(1, int(bimodalSmallMode*float64(len(sorted))))
	for i := len(sorted) - 1; i >= 1; i-- {
		g := gap(i)
		if g >= minGap && (g >= bimodalGapFactor*upperMax || len(sorted)-i <= small) {
			clear := true
			for j := i - 1; j >= max(1, i-bimodalLowerGaps); j-- {
				if g < bimodalGapFactor*gap(j) {
					clear = false
					break
				}
			}
			if clear {
				return i, true
			}
		}
		upperMax = max(upperMax, g)
	}
	return 0, false
}

// turnSLOs returns a copy of slos without non-positive entries, nil when
// none is left.
func turnSLOs(slos map[string]time.Duration) map[string]time.Duration {
	m := maps.Clone(slos)
	maps.DeleteFunc(m, func(_ string, d time.Duration) bool { return d <= 0 })
	if len(m) == 0 {
		return nil
	}
	return m
}
