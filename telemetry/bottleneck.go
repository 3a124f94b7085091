package telemetry

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Which hop made the slow turns slow?
//
// For each slow trace the bottleneck is the hop (server span) with the
// largest self time: its duration minus the time covered by the hops it
// called. Self time stands in for the hop's share of the critical path.
//
// That is exact for the call shape a bot turn usually has: the gateway (or
// dialog manager) calls NLU, then the knowledge base, then inference, one
// after another. With sequential children the critical path of the turn is
// the root's own time plus every child hop in full, recursively, so the
// self times partition the turn's duration and the largest one is the
// largest contribution to it. Making the KB slow grows the KB hop's self
// time and nothing else's.
//
// It is only an approximation when a hop calls children in parallel. The
// union of overlapping children is subtracted once, which is right for the
// parent, but each parallel child keeps its whole self time although only
// the longest branch is on the critical path: a child that finished while
// a slower sibling was still running is charged time that did not delay
// the turn. The largest self time still points at a hop on the critical
// path whenever the slowest branch is also the one with the most own time,
// which is the common case (a fan-out to replicas, or to one slow API
// among fast ones); a full critical-path walk would need the upstreams' own
// spans, which the proxy does not see.
//
// Spans of one hop's retries are client spans and stay inside the hop, so
// a hop slowed by retries is charged for them.

// BottleneckQuery selects the traces to analyse.
type BottleneckQuery struct {
	// Window: traces whose root started within this long before Now
	// (default 5m).
	Window time.Duration
	// MinDuration: when set, a trace at least this long is slow; otherwise
	// a trace is slow when it takes at least the p95 of its root route.
	MinDuration time.Duration
	// Now ends the window (default: the time of the call).
	Now time.Time
}

// BottleneckReport says which hops took the largest share of the slow
// traces.
type BottleneckReport struct {
	Window time.Duration
	// Traces is how many traces started within the window; SlowTraces how
	// many of those were slow.
	Traces     int
	SlowTraces int
	// Threshold describes what made a trace slow.
	Threshold string
	// Thresholds are the per-root-route p95 values used, when MinDuration
	// was not set.
	Thresholds map[string]time.Duration
	// Hops are the hops that were the largest in at least one slow trace,
	// most often first.
	Hops []BottleneckHop
}

// BottleneckHop is one hop that was the bottleneck of some slow traces.
type BottleneckHop struct {
	HopKey
	// Count is the number of slow traces where this hop had the largest
	// self time.
	Count int
	// Share is the mean, over those traces, of self time / trace duration.
	Share float64
	// MeanSelf is the mean self time over those traces.
	MeanSelf time.Duration
	// ExampleTraceIDs are up to five of those traces, slowest first.
	ExampleTraceIDs []trace.TraceID
}

const (
	defaultBottleneckWindow = 5 * time.Minute
	bottleneckExamples      = 5
)

// Bottlenecks analyses the slow traces in the window. p95 returns a root
// route's p95 latency (false when unknown); it is not used when
// q.MinDuration is set and may then be nil.
func (s *Store) Bottlenecks(q BottleneckQuery, p95 func(route string) (time.Duration, bool)) BottleneckReport {
	if q.Window <= 0 {
		q.Window = defaultBottleneckWindow
	}
	if q.Now.IsZero() {
		q.Now = time.Now()
	}
	rep := BottleneckReport{Window: q.Window}
	if q.MinDuration > 0 {
		rep.Threshold = fmt.Sprintf("at least %v long (min_duration)", q.MinDuration)
	} else {
		rep.Threshold = "at least the p95 of the root route (traces of routes without a p95 are skipped)"
		rep.Thresholds = map[string]time.Duration{}
	}

	// Pass 1, a scan under the mutex: the summaries of the traces in the
	// window, except the turns the client canceled.
	type candidate struct {
		id    trace.TraceID
		route string
		dur   time.Duration
	}
	from := q.Now.Add(-q.Window)
	var cands []candidate
	s.scan(func(e *traceEntry) {
		sum := e.summary()
		// A turn the client abandoned lasted as long as the user's
		// patience, not as long as the hops took: it says nothing about
		// which hop is slow (its hops were cut short).
		if sum.Spans > 0 && sum.Outcome != OutcomeCanceled && !sum.Start.Before(from) && !sum.Start.After(q.Now) {
			cands = append(cands, candidate{sum.TraceID, sum.Root.Route, sum.Duration})
		}
	})
	rep.Traces = len(cands)

	// Thresholds, outside the lock: p95 may take locks of its own.
	noP95 := map[string]bool{}
	slow := cands[:0]
	for _, c := range cands {
		threshold := q.MinDuration
		if threshold <= 0 {
			t, ok := rep.Thresholds[c.route]
			if !ok && !noP95[c.route] && p95 != nil {
				t, ok = p95(c.route)
				if ok {
					rep.Thresholds[c.route] = t
				} else {
					noP95[c.route] = true
				}
			}
			if !ok {
				continue
			}
			threshold = t
		}
		if c.dur >= threshold && c.dur > 0 {
			slow = append(slow, c)
		}
	}
	rep.SlowTraces = len(slow)

	// Pass 2: copy the slow traces' spans under the lock, analyse them
	// outside it. A trace evicted in between is skipped.
	type found struct {
		key  HopKey
		self time.Duration
		dur  time.Duration
		id   trace.TraceID
	}
	var results []found
	var buf []Span
	for _, c := range slow {
		buf = buf[:0]
		s.mu.Lock()
		if i, ok := s.index[c.id]; ok {
			buf = append(buf, s.ring[i].spans...)
		}
		s.mu.Unlock()
		if len(buf) == 0 {
			continue
		}
		t := buildTree(buf)
		best := -1
		for i := range buf {
			if buf[i].Kind != KindServer {
				continue
			}
			if best < 0 || t.self[i] > t.self[best] ||
				t.self[i] == t.self[best] && buf[i].Start.Before(buf[best].Start) {
				best = i
			}
		}
		if best < 0 {
			continue
		}
		results = append(results, found{buf[best].HopKey, t.self[best], c.dur, c.id})
	}

	// Aggregate per hop.
	type agg struct {
		hop      BottleneckHop
		shareSum float64
		selfSum  time.Duration
		examples []found
	}
	byHop := map[HopKey]*agg{}
	for _, r := range results {
		a := byHop[r.key]
		if a == nil {
			a = &agg{hop: BottleneckHop{HopKey: r.key}}
			byHop[r.key] = a
		}
		a.hop.Count++
		a.shareSum += float64(r.self) / float64(r.dur)
		a.selfSum += r.self
		a.examples = append(a.examples, r)
	}
	for _, a := range byHop {
		a.hop.Share = a.shareSum / float64(a.hop.Count)
		a.hop.MeanSelf = a.selfSum / time.Duration(a.hop.Count)
		slices.SortStableFunc(a.examples, func(x, y found) int { return cmp.Compare(y.dur, x.dur) })
		for _, ex := range a.examples[:min(len(a.examples), bottleneckExamples)] {
			a.hop.ExampleTraceIDs = append(a.hop.ExampleTraceIDs, ex.id)
		}
		rep.Hops = append(rep.Hops, a.hop)
	}
	slices.SortFunc(rep.Hops, func(x, y BottleneckHop) int {
		return cmp.Or(
			cmp.Compare(y.Count, x.Count),
			cmp.Compare(y.MeanSelf, x.MeanSelf),
			cmp.Compare(x.Caller, y.Caller),
			cmp.Compare(x.Route, y.Route),
			cmp.Compare(x.Upstream, y.Upstream),
		)
	})
	return rep
}
