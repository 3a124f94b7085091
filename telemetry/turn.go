package telemetry

import (
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Turns: a request on an entry route is one user turn of a conversation.
// telemetry does not know what a session is; it tells a TurnObserver (the
// conversation tracker, adapted in cmd/proxy) when an entry hop starts and
// ends, with the hops of its trace, and writes what the observer returns
// onto the entry hop's span. The proxy never sees any of it.

// TurnObserver is told about turns. Its methods run on the request's
// goroutine and must be quick and safe for concurrent use.
type TurnObserver interface {
	// IsEntry reports whether requests on route are turns.
	IsEntry(route string) bool
	// Identify reads the session id from the incoming request: get
	// returns a header (HTTP) or metadata key (gRPC), given in lowercase.
	Identify(get func(key string) string) (id, source string)
	// TurnEnded classifies a finished turn.
	TurnEnded(Turn) TurnMark
}

// Turn is a finished entry hop and the hops of its trace.
type Turn struct {
	Route     string
	SessionID string
	Source    string
	TraceID   trace.TraceID
	Start     time.Time
	Duration  time.Duration
	// FirstByte is the time to the first response byte; 0 if none came.
	FirstByte time.Duration
	Code      string
	Outcome   Outcome
	// Hops are the server spans of the turn's trace that ran within the
	// entry hop (it included, first), with their self times.
	Hops []TurnHop
}

// TurnHop is one hop of a turn.
type TurnHop struct {
	HopKey
	Code    string
	Outcome Outcome
	Self    time.Duration
	// Depth counts hops from the entry hop (0).
	Depth int
}

// TurnMark is what the observer says about a turn, for its span: the
// session id as it may be exported (hashed if so configured; "" for
// none), the turn's index in its session (0: none) and its outcome.
type TurnMark struct {
	SessionID string
	Index     int
	Outcome   string
}

// turnHook boxes the observer for an atomic pointer.
type turnHook struct{ o TurnObserver }

// SetTurnObserver installs o (nil: none). Hops that started before keep
// the observer they started with.
func (t *Telemetry) SetTurnObserver(o TurnObserver) {
	if o == nil {
		t.turns.Store(nil)
		return
	}
	t.turns.Store(&turnHook{o})
}

// turnState is an entry hop's turn in progress.
type turnState struct {
	o         TurnObserver
	sessionID string
	source    string
}

// startTurn returns the turn state of a hop on r, nil when r is not an
// entry route (or no observer is set).
func (r *Route) startTurn(carrier propagation.TextMapCarrier) *turnState {
	hook := r.t.turns.Load()
	if hook == nil || !hook.o.IsEntry(r.info.Name) {
		return nil
	}
	id, src := hook.o.Identify(carrier.Get)
	return &turnState{o: hook.o, sessionID: id, source: src}
}

// endTurn reports the finished entry hop to the observer and marks its
// span. It runs before the hop's own span is stored, so the entry span is
// added to the trace's stored spans here.
func (h *Hop) endTurn(code string, outcome Outcome, d time.Duration) {
	ts := h.turn
	if ts == nil {
		return
	}
	entry := Span{
		TraceID: h.sc.TraceID(), SpanID: h.sc.SpanID(), ParentID: h.parent, Kind: KindServer,
		HopKey: HopKey{Caller: h.caller, Route: h.r.info.Name, Upstream: h.r.info.Upstream},
		Start:  h.start, Duration: d, Code: code, Outcome: outcome,
	}
	mark := ts.o.TurnEnded(Turn{
		Route: h.r.info.Name, SessionID: ts.sessionID, Source: ts.source,
		TraceID: entry.TraceID, Start: h.start, Duration: d, FirstByte: h.ttfb,
		Code: code, Outcome: outcome, Hops: h.r.t.turnHops(entry),
	})
	if h.span == nil {
		return
	}
	attrs := make([]attribute.KeyValue, 0, 4)
	if mark.SessionID != "" {
		attrs = append(attrs,
			attribute.String("session.id", mark.SessionID),
			attribute.String("gen_ai.conversation.id", mark.SessionID),
			attribute.Int("hopwatch.turn.index", mark.Index))
	}
	if mark.Outcome != "" {
		attrs = append(attrs, attribute.String("hopwatch.turn.outcome", mark.Outcome))
	}
	h.span.SetAttributes(attrs...)
}

// turnHops returns the server spans of entry's trace that ran within it,
// entry first, with self times and depths below entry. A client that
// reuses one trace for several turns does not mix them: spans outside the
// entry hop's time are left out.
//
// Each hop is placed under the innermost hop whose time encloses it, not
// by its parent id: between two proxy hops the trace passes through the
// service's own spans (an instrumented service starts one per request),
// which the proxy never sees, so parent ids rarely link proxy hops
// directly.
func (t *Telemetry) turnHops(entry Span) []TurnHop {
	spans := []Span{entry}
	if d, ok := t.Store.Trace(entry.TraceID); ok {
		from, to := entry.Start, entry.End()
		for i := range d.Spans {
			sp := d.Spans[i].Span
			if sp.Kind == KindServer && sp.SpanID != entry.SpanID && !sp.Start.Before(from) && !sp.End().After(to) {
				sp.Events = nil
				spans = append(spans, sp)
			}
		}
	}
	for i := 1; i < len(spans); i++ {
		parent := 0
		for j := 1; j < len(spans); j++ {
			if j != i && encloses(&spans[j], j, &spans[i], i) && spans[j].Start.After(spans[parent].Start) {
				parent = j
			}
		}
		spans[i].ParentID = spans[parent].SpanID
	}
	tr := buildTree(spans)
	hops := make([]TurnHop, len(spans))
	for i := range spans {
		hops[i] = TurnHop{HopKey: spans[i].HopKey, Code: spans[i].Code, Outcome: spans[i].Outcome,
			Self: tr.self[i], Depth: max(0, tr.depth[i]-tr.depth[0])}
	}
	return hops
}

// encloses reports whether span a (index ai) may be the parent of b: its
// time contains b's, and equal intervals go to the earlier index, so that
// no two spans choose each other.
func encloses(a *Span, ai int, b *Span, bi int) bool {
	if a.Start.After(b.Start) || a.End().Before(b.End()) {
		return false
	}
	return !a.Start.Equal(b.Start) || !a.End().Equal(b.End()) || ai < bi
}
