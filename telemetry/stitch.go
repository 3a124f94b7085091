package telemetry

import "bytes"

// Stitching: one tree per turn when the services run their own tracing.
//
// A service instrumented with OpenTelemetry (otelgrpc, otelhttp) starts a
// server span for each request hopwatch forwards to it, and a client span
// for each call it makes; the trace context of its next call through
// hopwatch names that client span as the parent. hopwatch never sees the
// service's spans (unless it receives them, see the OTLP receiver), so
// the next hop's server span has a parent that is not in the trace and
// would be a root of its own: the turn falls apart into one tree per
// service.
//
// The request that reached the service is known, though: it was carried
// by one of hopwatch's own client spans, whose upstream is the service,
// and the service's call came out while that request was being served.
// So a hop whose parent is unknown is attached to the hopwatch client span
// of the same trace whose upstream is the hop's caller and whose interval
// encloses the hop's start; when several do (concurrent turns in one trace,
// a retry overlapping a call still finishing in the background), the
// latest to start, which is the tightest fit. The link is marked as
// stitched: it is an inference, not a propagated parent. The time between
// the client span's start and the hop is then the calling service's own
// time, which is where it was spent.
//
// The caller is matched by name: it works when each service's upstream is
// named like the caller it announces (x-hop-caller, a fixed caller, its
// certificate identity), as in the demo configuration. A hop whose caller
// matches no enclosing client span stays a root, as before.

// linkParents resolves the parent of each span, by index into spans
// (-1: none): the span its ParentID names when that is in the trace,
// otherwise, for a hop, the client span it is stitched to (stitched[i] is
// then true). parent and stitched must have len(spans) elements. A
// stitch that would close a parent cycle is not made; cycles of the
// propagated parents themselves are left to the caller.
func linkParents(spans []Span, set spanSet, parent []int, stitched []bool) {
	orphans := false
	for i := range spans {
		p := set.find(spans[i].ParentID)
		if p == i {
			p = -1
		}
		parent[i] = p
		stitched[i] = false
		if p < 0 && stitchable(&spans[i]) {
			orphans = true
		}
	}
	if !orphans {
		return // the usual case: services run no SDK, or forward the context as received
	}
	for i := range spans {
		if parent[i] >= 0 || !stitchable(&spans[i]) {
			continue
		}
		c := stitchTarget(spans, i)
		if c < 0 || descends(parent, c, i) {
			continue
		}
		parent[i], stitched[i] = c, true
	}
}

// stitchable: a hop (or a service's own span) whose propagated parent is
// a span hopwatch did not see. A span without any parent started the
// trace; hopwatch's client spans always have their hop as parent.
func stitchable(sp *Span) bool {
	return sp.ParentID.IsValid() && stitchCaller(sp) != ""
}

// stitchCaller is the service a span was made in, to be matched with the
// upstream of hopwatch's client spans: a hop's caller, a service span's
// service.name.
func stitchCaller(sp *Span) string {
	switch sp.Kind {
	case KindServer:
		return sp.Caller
	case KindService:
		return sp.Service
	}
	return ""
}

// stitchTarget returns the client span that carried the request into the
// caller of hop h: upstream named like h's caller, same trace, started at
// or before h and not ended before it; the latest to start (the shortest,
// then the lowest span ID, on a tie, so the choice does not depend on the
// order the spans arrived in). -1 when there is none.
func stitchTarget(spans []Span, h int) int {
	hop := &spans[h]
	caller := stitchCaller(hop)
	best := -1
	for j := range spans {
		c := &spans[j]
		if j == h || c.Kind != KindClient || c.Upstream != caller ||
			c.Start.After(hop.Start) || c.End().Before(hop.Start) {
			continue
		}
		if best < 0 || tighter(c, &spans[best]) {
			best = j
		}
	}
	return best
}

func tighter(a, b *Span) bool {
	if c := a.Start.Compare(b.Start); c != 0 {
		return c > 0
	}
	if a.Duration != b.Duration {
		return a.Duration < b.Duration
	}
	return bytes.Compare(a.SpanID[:], b.SpanID[:]) < 0
}

// descends reports whether span c is h or one of h's descendants under the
// parents resolved so far. The walk is bounded by the number of spans, so
// a cycle among the propagated parents cannot hang it.
func descends(parent []int, c, h int) bool {
	for n := 0; c >= 0 && n <= len(parent); n++ {
		if c == h {
			return true
		}
		c = parent[c]
	}
	return false
}

// isTurnRoot reports whether hop i starts a tree of hops: no hopwatch span
// (hop or attempt) above it, only spans of the services themselves, if
// any. A hop under an attempt whose own hop has not ended yet is not a
// root: its turn's root is still to come.
func isTurnRoot(spans []Span, parent []int, i int) bool {
	p := parent[i]
	for n := 0; p >= 0; n++ {
		if k := spans[p].Kind; k == KindServer || k == KindClient || n > len(spans) {
			return false
		}
		p = parent[p]
	}
	return true
}

// stitchBuf holds linkParents' results for a small trace without
// allocating.
type stitchBuf struct {
	parent   [spanSetScanMax]int
	stitched [spanSetScanMax]bool
}

func (b *stitchBuf) slices(n int) ([]int, []bool) {
	if n <= spanSetScanMax {
		return b.parent[:n], b.stitched[:n]
	}
	return make([]int, n), make([]bool, n)
}
