package telemetry

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Hop statistics keep, per hop, the last five minutes of traffic in 5 s
// slots. Each slot holds a count, an error count and a latency histogram
// with logarithmic buckets, so memory is fixed per hop (about 40 KiB) and
// the percentiles of /api/hops are approximate with a known bound.
//
// Buckets: bucket j holds latencies in [2^(j/8), 2^((j+1)/8)) nanoseconds,
// eight per doubling, the layout of Prometheus native histograms with
// schema 3. A percentile is reported as the geometric middle of the bucket
// holding the exact nearest-rank sample, 2^((j+½)/8), so for latencies
// between 92.7 µs and 63.0 s the reported value is within a factor of
// 2^(1/16) of the exact one: a relative error of at most 4.43 %.
// Below that range the value reported is 92.7 µs (absolute error under
// 100 µs); above it, 63 s (a lower bound).
const (
	slotWidth      = 5 * time.Second
	statsSlots     = 60 // 5 minutes
	window1mSlots  = 12
	bucketsPerOct  = 8
	minBucket      = 132 // floor(8·log2(100 µs in ns)): starts at 92.7 µs
	maxBucket      = 286 // floor(8·log2(60 s in ns)): ends at 63.0 s
	histBuckets    = maxBucket - minBucket + 1 + 2
	underflowIndex = 0
	overflowIndex  = histBuckets - 1

	// QuantileRelativeError is the documented bound on the relative error
	// of the percentiles Stats reports, for latencies within its range.
	QuantileRelativeError = 0.0443 // 2^(1/16) - 1
)

// subBounds[k] is 2^(k/8): where sub-bucket k starts within an octave.
var subBounds = func() (b [bucketsPerOct]float64) {
	for k := range b {
		b[k] = math.Exp2(float64(k) / bucketsPerOct)
	}
	return b
}()

// bucketValue[i] is the value reported for histogram index i, in seconds.
var bucketValue = func() (v [histBuckets]float64) {
	v[underflowIndex] = math.Exp2(float64(minBucket)/bucketsPerOct) / 1e9
	for i := 1; i < overflowIndex; i++ {
		j := i - 1 + minBucket
		v[i] = math.Exp2((float64(j)+0.5)/bucketsPerOct) / 1e9
	}
	v[overflowIndex] = math.Exp2(float64(maxBucket+1)/bucketsPerOct) / 1e9
	return v
}()

// bucketOf returns the histogram index of d without a logarithm: the
// exponent comes from the float's representation and the sub-bucket from
// at most seven comparisons.
func bucketOf(d time.Duration) int {
	if d <= 0 {
		return underflowIndex
	}
	frac, exp := math.Frexp(float64(d)) // d = frac·2^exp, frac in [0.5, 1)
	m := frac * 2                       // d = m·2^(exp-1), m in [1, 2)
	sub := bucketsPerOct - 1
	for sub > 0 && m < subBounds[sub] {
		sub--
	}
	j := (exp-1)*bucketsPerOct + sub
	switch {
	case j < minBucket:
		return underflowIndex
	case j > maxBucket:
		return overflowIndex
	}
	return j - minBucket + 1
}

// Stats keeps per-hop request rate, error ratio and latency percentiles over
// the last one and five minutes. Observe is on the request path: it reads
// no clock (the time is passed in) and does not allocate once a hop is
// known.
type Stats struct {
	// hops is replaced, never changed, when a hop is first seen: hop keys
	// are bounded label values, so copying is rare and reads need no lock.
	hops atomic.Pointer[map[HopKey]*hopSeries]
	mu   sync.Mutex // serializes adding hops
}

type hopSeries struct {
	mu    sync.Mutex // guards slots and first
	slots [statsSlots]slot
	// first is when the hop was first seen: a rate over a window that
	// began before it divides by the time the hop existed, so a new hop
	// shows its real rate from the first minute on.
	first time.Time
}

// slot is one 5 s interval of one hop.
type slot struct {
	epoch  int64 // which interval: Unix time / 5 s; math.MinInt64 when unused
	count  uint64
	errors uint64
	hist   [histBuckets]uint32
}

// NewStats returns empty hop statistics.
func NewStats() *Stats {
	s := &Stats{}
	m := map[HopKey]*hopSeries{}
	s.hops.Store(&m)
	return s
}

// Observe records one finished hop that took d and ended with o at time at.
// Safe for concurrent use. An observation older than the five minutes kept
// is ignored.
func (s *Stats) Observe(k HopKey, d time.Duration, o Outcome, at time.Time) {
	h := (*s.hops.Load())[k]
	if h == nil {
		h = s.add(k, at)
	}
	epoch := slotEpoch(at)
	b := bucketOf(d)
	isErr := o.IsError()

	h.mu.Lock()
	if at.Before(h.first) {
		h.first = at
	}
	sl := &h.slots[slotIndex(epoch)]
	if sl.epoch != epoch {
		if epoch < sl.epoch {
			// The slot already holds a later interval: this observation
			// is more than five minutes behind the newest one.
			h.mu.Unlock()
			return
		}
		sl.epoch, sl.count, sl.errors = epoch, 0, 0
		clear(sl.hist[:])
	}
	sl.count++
	if isErr {
		sl.errors++
	}
	sl.hist[b]++
	h.mu.Unlock()
}

func (s *Stats) add(k HopKey, at time.Time) *hopSeries {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.hops.Load()
	if h := old[k]; h != nil {
		return h
	}
	h := &hopSeries{first: at}
	for i := range h.slots {
		h.slots[i].epoch = math.MinInt64
	}
	m := make(map[HopKey]*hopSeries, len(old)+1)
	for key, v := range old {
		m[key] = v
	}
	m[k] = h
	s.hops.Store(&m)
	return h
}

func slotEpoch(t time.Time) int64 {
	ns := t.UnixNano()
	e := ns / int64(slotWidth)
	if ns < 0 && ns%int64(slotWidth) != 0 {
		e-- // floor, so times before 1970 (tests with zero times) still work
	}
	return e
}

func slotIndex(epoch int64) int {
	i := int(epoch % statsSlots)
	if i < 0 {
		i += statsSlots
	}
	return i
}

// HopStats are one hop's statistics.
type HopStats struct {
	HopKey
	Window1m WindowStats
	Window5m WindowStats
}

// WindowStats summarize a hop over a window ending now.
//
// A window of n slots covers the current, partial 5 s slot and the n-1
// before it, so "1m" spans 55 to 60 s; Rate divides by the span actually
// covered, which keeps it unbiased at any moment within a slot.
type WindowStats struct {
	Count int64
	// Rate is requests per second over the window.
	Rate float64
	// ErrorRatio is the share of requests whose Outcome.IsError.
	ErrorRatio float64
	// P50, P95 and P99 are latencies in seconds, within
	// QuantileRelativeError of the exact nearest-rank percentile; 0 when
	// Count is 0.
	P50, P95, P99 float64
}

// Snapshot returns every hop with traffic in the five minutes up to now,
// sorted by caller, route and upstream.
func (s *Stats) Snapshot(now time.Time) []HopStats {
	m := *s.hops.Load()
	out := make([]HopStats, 0, len(m))
	nowEpoch := slotEpoch(now)
	var agg histogram
	for k, h := range m {
		hs := HopStats{HopKey: k}
		agg.reset()
		h.collect(nowEpoch, window1mSlots, &agg)
		h.mu.Lock()
		first := h.first
		h.mu.Unlock()
		hs.Window1m = agg.window(now, nowEpoch, window1mSlots, first)
		agg.reset()
		h.collect(nowEpoch, statsSlots, &agg)
		hs.Window5m = agg.window(now, nowEpoch, statsSlots, first)
		if hs.Window5m.Count == 0 {
			continue
		}
		out = append(out, hs)
	}
	slices.SortFunc(out, func(a, b HopStats) int {
		return cmp.Or(
			cmp.Compare(a.Caller, b.Caller),
			cmp.Compare(a.Route, b.Route),
			cmp.Compare(a.Upstream, b.Upstream),
		)
	})
	return out
}

// Quantile returns the q-quantile (0 < q ≤ 1) of the latency of every hop
// on route, whatever its caller and upstream, over the window up to now
// (rounded up to whole 5 s slots, at most five minutes). ok is false when
// the route had no traffic in the window.
func (s *Stats) Quantile(route string, q float64, window time.Duration, now time.Time) (time.Duration, bool) {
	n := statsSlots
	if window > 0 {
		n = int(min((window+slotWidth-1)/slotWidth, statsSlots))
	}
	nowEpoch := slotEpoch(now)
	var agg histogram
	for k, h := range *s.hops.Load() {
		if k.Route == route {
			h.collect(nowEpoch, n, &agg)
		}
	}
	if agg.count == 0 {
		return 0, false
	}
	return time.Duration(agg.quantile(q) * 1e9), true
}

// collect adds the n slots up to nowEpoch into agg. Slots from after
// nowEpoch (observations timed ahead of now) are left out.
func (h *hopSeries) collect(nowEpoch int64, n int, agg *histogram) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.slots {
		sl := &h.slots[i]
		if sl.epoch > nowEpoch || sl.epoch <= nowEpoch-int64(n) || sl.count == 0 {
			continue
		}
		agg.count += sl.count
		agg.errors += sl.errors
		for b, c := range sl.hist {
			agg.hist[b] += uint64(c)
		}
	}
}

// histogram aggregates slots.
type histogram struct {
	count, errors uint64
	hist          [histBuckets]uint64
}

func (a *histogram) reset() { *a = histogram{} }

// window turns the aggregate of the n slots up to now into WindowStats.
func (a *histogram) window(now time.Time, nowEpoch int64, n int, first time.Time) WindowStats {
	if a.count == 0 {
		return WindowStats{}
	}
	start := time.Unix(0, (nowEpoch-int64(n)+1)*int64(slotWidth))
	if first.After(start) {
		start = first
	}
	// At least one second, so the very first request is not a huge rate.
	span := max(now.Sub(start).Seconds(), 1)
	return WindowStats{
		Count:      int64(a.count),
		Rate:       float64(a.count) / span,
		ErrorRatio: float64(a.errors) / float64(a.count),
		P50:        a.quantile(0.50),
		P95:        a.quantile(0.95),
		P99:        a.quantile(0.99),
	}
}

// quantile returns the reported value, in seconds, of the bucket holding
// the nearest-rank q-quantile: the ⌈q·count⌉-th smallest observation.
func (a *histogram) quantile(q float64) float64 {
	if a.count == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(a.count)))
	rank = min(max(rank, 1), a.count)
	var seen uint64
	for i, c := range a.hist {
		seen += c
		if seen >= rank {
			return bucketValue[i]
		}
	}
	return bucketValue[overflowIndex]
}
