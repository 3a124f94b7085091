package telemetry

import (
	"bytes"
	"cmp"
	"slices"
	"time"
)

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
	idx := newAttemptIndex(spans)
	for i := range spans {
		if parent[i] >= 0 || !stitchable(&spans[i]) {
			continue
		}
		if c := idx.target(spans, parent, i); c >= 0 {
			parent[i], stitched[i] = c, true
		}
	}
}

// attemptIndex finds stitch targets without scanning every span for every
// orphan: a trace at the span cap (a client keeping one trace for a whole
// session) has hundreds of both, and its summary is computed under the
// store's mutex. The client spans are sorted by upstream, then in
// preference order (start, then the longer first, then the higher span
// ID, so that walking back from a hop's start meets the latest-starting,
// shortest, lowest-ID one first, see tighter); maxEnd[k] is the latest end
// among the group's spans up to k, which stops the walk as soon as no
// earlier attempt can still be running at the hop's start.
type attemptIndex struct {
	clients []int       // span indexes
	maxEnd  []time.Time // per position, within its upstream's group
}

func newAttemptIndex(spans []Span) attemptIndex {
	var idx attemptIndex
	for i := range spans {
		if spans[i].Kind == KindClient {
			idx.clients = append(idx.clients, i)
		}
	}
	slices.SortFunc(idx.clients, func(a, b int) int {
		x, y := &spans[a], &spans[b]
		if c := cmp.Compare(x.Upstream, y.Upstream); c != 0 {
			return c
		}
		if c := x.Start.Compare(y.Start); c != 0 {
			return c
		}
		if c := cmp.Compare(y.Duration, x.Duration); c != 0 {
			return c
		}
		return bytes.Compare(y.SpanID[:], x.SpanID[:])
	})
	idx.maxEnd = make([]time.Time, len(idx.clients))
	for k, i := range idx.clients {
		end := spans[i].End()
		if k > 0 && spans[idx.clients[k-1]].Upstream == spans[i].Upstream && idx.maxEnd[k-1].After(end) {
			end = idx.maxEnd[k-1]
		}
		idx.maxEnd[k] = end
	}
	return idx
}

// target returns the client span that carried the request into the
// caller of span h: upstream named like h's caller, same trace, started at
// or before h and not ended before it; the latest to start (the shortest,
// then the lowest span ID, on a tie, so the choice does not depend on the
// order the spans arrived in), passing over any that is h's own
// descendant (a stitch there would close a cycle). -1 when there is none.
func (idx attemptIndex) target(spans []Span, parent []int, h int) int {
	hop := &spans[h]
	caller := stitchCaller(hop)
	lo, _ := slices.BinarySearchFunc(idx.clients, caller, func(i int, up string) int { return cmp.Compare(spans[i].Upstream, up) })
	// One past the last attempt to caller that started at or before h.
	hi, _ := slices.BinarySearchFunc(idx.clients[lo:], caller, func(i int, up string) int {
		if c := cmp.Compare(spans[i].Upstream, up); c != 0 {
			return c
		}
		if spans[i].Start.After(hop.Start) {
			return 1
		}
		return -1
	})
	for k := lo + hi - 1; k >= lo && !idx.maxEnd[k].Before(hop.Start); k-- {
		c := idx.clients[k]
		if c != h && !spans[c].End().Before(hop.Start) && !descends(parent, c, h) {
			return c
		}
	}
	return -1
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
