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
	// the slow-turn rules of slow.go apply, per root route.
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
	// Thresholds are, per root route, the duration from which its turns
	// were slow by its rule (Rules has the whole rule).
	Thresholds map[string]time.Duration
	// Rules say how each root route's turns were judged, by route name.
	Rules []SlowRule
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

// slowRuleText is BottleneckReport.Threshold without min_duration.
const slowRuleText = "per root route, from the exact durations of its turns in the window: " +
	"the slow mode when the turns are clearly bimodal, otherwise at least the p95 less 5 %; " +
	"and every turn over the route's turn SLO"

// SetTurnSLOs sets the turn SLO of each entry route (route name → SLO):
// turns of those routes that take longer are slow in the bottleneck
// analysis and the slow trace list, whatever the other rules say. nil or
// an absent route: no SLO. Safe to call while requests are served: the
// map is copied and swapped in whole.
func (s *Store) SetTurnSLOs(slos map[string]time.Duration) {
	m := turnSLOs(slos)
	s.slos.Store(&m)
}

func (s *Store) turnSLOs() map[string]time.Duration {
	if p := s.slos.Load(); p != nil {
		return *p
	}
	return nil
}

// turn is a trace in the window of a slow-turn judgement.
type turn struct {
	id    trace.TraceID
	route string
	dur   time.Duration
}

// judge collects the turns whose root started in [from, now] (except those
// the client canceled) and judges them per root route.
func (s *Store) judge(from, now time.Time, minDur time.Duration) ([]turn, map[string]*SlowRule) {
	var turns []turn
	s.scan(func(e *traceEntry) {
		sum := e.summary()
		// A turn the client abandoned lasted as long as the user's
		// patience, not as long as the hops took: it says nothing about
		// which hop is slow (its hops were cut short).
		if sum.Spans > 0 && sum.Duration > 0 && sum.Outcome != OutcomeCanceled && !sum.Start.Before(from) && !sum.Start.After(now) {
			turns = append(turns, turn{sum.TraceID, sum.Root.Route, sum.Duration})
		}
	})
	durs := map[string][]time.Duration{}
	for _, t := range turns {
		durs[t.route] = append(durs[t.route], t.dur)
	}
	return turns, judgeTurns(durs, s.turnSLOs(), minDur)
}

// Bottlenecks analyses the slow traces in the window.
func (s *Store) Bottlenecks(q BottleneckQuery) BottleneckReport {
	if q.Window <= 0 {
		q.Window = defaultBottleneckWindow
	}
	if q.Now.IsZero() {
		q.Now = time.Now()
	}
	rep := BottleneckReport{Window: q.Window, Thresholds: map[string]time.Duration{}}
	if q.MinDuration > 0 {
		rep.Threshold = fmt.Sprintf("at least %v long (min_duration)", q.MinDuration)
	} else {
		rep.Threshold = slowRuleText
	}
	slow := s.slowTurns(q, &rep)
	rep.Hops = aggregateBlame(s.blame(slow))
	return rep
}

// slowTurns is pass 1, a scan under the mutex: the turns in the window,
// their routes' rules (reported), and the turns the rules call slow.
func (s *Store) slowTurns(q BottleneckQuery, rep *BottleneckReport) []turn {
	turns, rules := s.judge(q.Now.Add(-q.Window), q.Now, q.MinDuration)
	rep.Traces = len(turns)
	for route, r := range rules {
		rep.Thresholds[route] = r.Threshold
		rep.Rules = append(rep.Rules, *r)
	}
	slices.SortFunc(rep.Rules, func(a, b SlowRule) int { return cmp.Compare(a.Route, b.Route) })
	slow := turns[:0]
	for _, c := range turns {
		if rules[c.route].IsSlow(c.dur) {
			slow = append(slow, c)
		}
	}
	rep.SlowTraces = len(slow)
	return slow
}

// blamed is the hop that took the most self time in one slow turn.
type blamed struct {
	key  HopKey
	self time.Duration
	dur  time.Duration
	id   trace.TraceID
}

// blame is pass 2: it copies each slow trace's spans under the lock and
// finds, outside it, the server span with the largest self time (the
// earliest on a tie). A trace evicted in between is skipped.
func (s *Store) blame(slow []turn) []blamed {
	var results []blamed
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
		if best >= 0 {
			results = append(results, blamed{buf[best].HopKey, t.self[best], c.dur, c.id})
		}
	}
	return results
}

// aggregateBlame sums the blame per hop: how many slow turns, the mean
// share of the turn and the mean self time, and the slowest examples; the
// hop blamed most often first.
func aggregateBlame(results []blamed) []BottleneckHop {
	type agg struct {
		hop      BottleneckHop
		shareSum float64
		selfSum  time.Duration
		examples []blamed
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
	var hops []BottleneckHop
	for _, a := range byHop {
		a.hop.Share = a.shareSum / float64(a.hop.Count)
		a.hop.MeanSelf = a.selfSum / time.Duration(a.hop.Count)
		slices.SortStableFunc(a.examples, func(x, y blamed) int { return cmp.Compare(y.dur, x.dur) })
		for _, ex := range a.examples[:min(len(a.examples), bottleneckExamples)] {
			a.hop.ExampleTraceIDs = append(a.hop.ExampleTraceIDs, ex.id)
		}
		hops = append(hops, a.hop)
	}
	slices.SortFunc(hops, func(x, y BottleneckHop) int {
		return cmp.Or(
			cmp.Compare(y.Count, x.Count),
			cmp.Compare(y.MeanSelf, x.MeanSelf),
			cmp.Compare(x.Caller, y.Caller),
			cmp.Compare(x.Route, y.Route),
			cmp.Compare(x.Upstream, y.Upstream),
		)
	})
	return hops
}
