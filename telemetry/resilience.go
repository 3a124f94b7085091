package telemetry

import (
	"cmp"
	"slices"

	"go.opentelemetry.io/otel/attribute"

	"github.com/hopwatch/hopwatch/fallback"
)

// The resilience code (fallback/, wired by proxy/) reports through these
// hooks: it registers no metrics of its own.

// BreakerChanged records a breaker transition of upstream. The state's
// number is the gauge's value (0 closed, 1 half-open, 2 open) and its name
// the transition's label: fallback.State is the one breaker-state type.
func (t *Telemetry) BreakerChanged(upstream string, to fallback.State) {
	if t == nil || to < fallback.StateClosed || to > fallback.StateOpen {
		return
	}
	t.m.breakerState.WithLabelValues(upstream).Set(float64(to))
	t.m.breakerTransitions.WithLabelValues(upstream, to.String()).Inc()
}

// BreakerInit exports a breaker's initial (closed) state so the series
// exists before the first transition.
func (t *Telemetry) BreakerInit(upstream string) {
	if t == nil {
		return
	}
	t.m.breakerState.WithLabelValues(upstream).Set(float64(fallback.StateClosed))
}

// Fallback counts an answer served from a fallback source.
func (r *Route) Fallback(reason, source string) {
	if r == nil {
		return
	}
	r.t.m.fallbacks.WithLabelValues(r.info.Name, reason, source).Inc()
	k := FallbackCount{Route: r.info.Name, Reason: reason, Source: source}
	r.t.fbMu.Lock()
	if r.t.fbCounts == nil {
		r.t.fbCounts = map[FallbackCount]int64{}
	}
	r.t.fbCounts[k]++
	r.t.fbMu.Unlock()
}

// FallbackCount is how often a route answered from a fallback source for a
// reason, since start.
type FallbackCount struct {
	Route  string `json:"route"`
	Reason string `json:"reason"`
	Source string `json:"source"`
	Count  int64  `json:"count"`
}

// FallbackCounts lists the fallback answers since start, for the admin API.
func (t *Telemetry) FallbackCounts() []FallbackCount {
	if t == nil {
		return nil
	}
	t.fbMu.Lock()
	defer t.fbMu.Unlock()
	out := make([]FallbackCount, 0, len(t.fbCounts))
	for k, n := range t.fbCounts {
		k.Count = n
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b FallbackCount) int {
		return cmp.Or(cmp.Compare(a.Route, b.Route), cmp.Compare(a.Reason, b.Reason), cmp.Compare(a.Source, b.Source))
	})
	return out
}

// Retry counts a retry decision ("attempted" or "budget_exhausted").
func (r *Route) Retry(result string) {
	if r == nil {
		return
	}
	r.t.m.retries.WithLabelValues(r.info.Name, r.info.Upstream, result).Inc()
}

// BackgroundInflight exports how many of the route's calls run on after a
// fallback answer.
func (r *Route) BackgroundInflight(n int) {
	if r == nil {
		return
	}
	r.t.m.bgInflight.WithLabelValues(r.info.Name).Set(float64(n))
}

// BackgroundDone counts a finished (or refused) background call.
func (r *Route) BackgroundDone(result string) {
	if r == nil {
		return
	}
	r.t.m.bgTotal.WithLabelValues(r.info.Name, result).Inc()
}

// Override sets the outcome End will record whatever the status says: a
// fallback answer looks like a success to the client but is not one for
// the hop, and a breaker or bulkhead rejection is not an upstream error.
func (h *Hop) Override(o Outcome) {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.override = o
	h.mu.Unlock()
}

// Retried adds a retry event to the hop span.
func (h *Hop) Retried(attempt int, reason string) {
	h.Event("retry", attribute.Int("hopwatch.attempt", attempt), attribute.String("reason", reason))
}

// FellBack adds a fallback event to the hop span and overrides its outcome.
func (h *Hop) FellBack(reason, source string) {
	h.Event("fallback", attribute.String("reason", reason), attribute.String("source", source))
	h.Override(OutcomeFallback)
}

// Rejected adds a rejection event (breaker open, bulkhead full) and
// overrides the outcome.
func (h *Hop) Rejected(reason string) {
	h.Event("rejected", attribute.String("reason", reason))
	h.Override(OutcomeRejected)
}
