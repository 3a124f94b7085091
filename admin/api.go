package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/telemetry"
)

// The JSON APIs over the trace store and hop statistics.
//
// Wire conventions, the same on every endpoint:
//   - durations and latencies are seconds as JSON numbers (float64), so
//     0.25 is 250 ms; query parameters take Go duration syntax ("250ms");
//   - times are RFC 3339 with nanoseconds, trace and span IDs lowercase hex;
//   - errors are {"error": "..."} with a 4xx or 5xx status; a source that is
//     not configured answers 503 {"error": "telemetry disabled"}.

func (s *Server) mountAPI() {
	s.mux.HandleFunc("GET /api/hops", s.apiHops)
	s.mux.HandleFunc("GET /api/traces", s.apiTraces)
	s.mux.HandleFunc("GET /api/traces/{id}", s.apiTrace)
	s.mux.HandleFunc("GET /api/bottlenecks", s.apiBottlenecks)
}

type apiError struct {
	Error string `json:"error"`
}

var errDisabled = apiError{"telemetry disabled"}

func badRequest(w http.ResponseWriter, format string, args ...any) {
	writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf(format, args...)})
}

// windowJSON is one window of a hop's statistics.
type windowJSON struct {
	Count      int64   `json:"count"`
	Rate       float64 `json:"rate"`        // requests per second
	ErrorRatio float64 `json:"error_ratio"` // 0..1
	P50        float64 `json:"p50"`         // seconds
	P95        float64 `json:"p95"`
	P99        float64 `json:"p99"`
}

// hopJSON is a row of /api/hops: the hop, its 1m statistics flat (what a
// simple table or script reads) and both windows under "windows".
type hopJSON struct {
	telemetry.HopKey
	windowJSON
	Windows map[string]windowJSON `json:"windows"`
}

func toWindowJSON(w telemetry.WindowStats) windowJSON {
	return windowJSON{Count: w.Count, Rate: w.Rate, ErrorRatio: w.ErrorRatio, P50: w.P50, P95: w.P95, P99: w.P99}
}

// GET /api/hops
func (s *Server) apiHops(w http.ResponseWriter, _ *http.Request) {
	if s.opts.Hops == nil {
		writeJSON(w, http.StatusServiceUnavailable, errDisabled)
		return
	}
	snap := s.opts.Hops.Snapshot(s.opts.Now())
	rows := make([]hopJSON, 0, len(snap))
	for _, h := range snap {
		w1, w5 := toWindowJSON(h.Window1m), toWindowJSON(h.Window5m)
		rows = append(rows, hopJSON{
			HopKey:     h.HopKey,
			windowJSON: w1,
			Windows:    map[string]windowJSON{"1m": w1, "5m": w5},
		})
	}
	writeJSON(w, http.StatusOK, struct {
		Hops []hopJSON `json:"hops"`
	}{rows})
}

type summaryJSON struct {
	TraceID      trace.TraceID     `json:"trace_id"`
	Root         telemetry.HopKey  `json:"root"`
	Start        time.Time         `json:"start"`
	Duration     float64           `json:"duration"` // seconds
	Spans        int               `json:"spans"`
	DroppedSpans int               `json:"dropped_spans,omitempty"`
	Error        bool              `json:"error"`
	Outcome      telemetry.Outcome `json:"outcome"`
}

func toSummaryJSON(t telemetry.TraceSummary) summaryJSON {
	return summaryJSON{
		TraceID: t.TraceID, Root: t.Root, Start: t.Start, Duration: t.Duration.Seconds(),
		Spans: t.Spans, DroppedSpans: t.DroppedSpans, Error: t.Error, Outcome: t.Outcome,
	}
}

// GET /api/traces?route=&min_duration=&error=&limit=&slow=&window=
//
// slow=true keeps the turns /api/bottlenecks would call slow over the same
// window (default 5m): the dashboard's slow trace list, judged on exact
// durations rather than on a sketch's percentile.
func (s *Server) apiTraces(w http.ResponseWriter, r *http.Request) {
	if s.opts.Traces == nil {
		writeJSON(w, http.StatusServiceUnavailable, errDisabled)
		return
	}
	qs := r.URL.Query()
	q := telemetry.TraceQuery{Route: qs.Get("route")}
	var err error
	if q.MinDuration, err = durationParam(qs.Get("min_duration")); err != nil {
		badRequest(w, "min_duration: %v", err)
		return
	}
	if v := qs.Get("error"); v != "" {
		if q.ErrorOnly, err = strconv.ParseBool(v); err != nil {
			badRequest(w, "error: %q is not a boolean (true or false)", v)
			return
		}
	}
	if v := qs.Get("limit"); v != "" {
		if q.Limit, err = strconv.Atoi(v); err != nil || q.Limit < 1 || q.Limit > 1000 {
			badRequest(w, "limit: %q is not a whole number from 1 to 1000", v)
			return
		}
	}
	if v := qs.Get("slow"); v != "" {
		if q.Slow, err = strconv.ParseBool(v); err != nil {
			badRequest(w, "slow: %q is not a boolean (true or false)", v)
			return
		}
	}
	if q.Window, err = durationParam(qs.Get("window")); err != nil {
		badRequest(w, "window: %v", err)
		return
	}
	q.Now = s.opts.Now()
	list := s.opts.Traces.Traces(q)
	out := make([]summaryJSON, 0, len(list))
	for _, t := range list {
		out = append(out, toSummaryJSON(t))
	}
	writeJSON(w, http.StatusOK, struct {
		Traces []summaryJSON `json:"traces"`
	}{out})
}

type eventJSON struct {
	Name  string            `json:"name"`
	Time  time.Time         `json:"time"`
	Attrs map[string]string `json:"attrs,omitempty"`
}

type spanJSON struct {
	SpanID   trace.SpanID `json:"span_id"`
	ParentID string       `json:"parent_id,omitempty"` // absent: no parent, or one outside the proxy's view
	// Stitched: the span's propagated parent is a service's own span that
	// hopwatch did not see, so parent and parent_id are the hopwatch
	// client span that carried the request into that service (the caller),
	// and stitched_from is the propagated parent.
	Stitched     bool               `json:"stitched,omitempty"`
	StitchedFrom string             `json:"stitched_from,omitempty"`
	Kind         telemetry.SpanKind `json:"kind"`
	telemetry.HopKey
	// Service and Name: kind "service", a span a service sent to the OTLP
	// receiver (telemetry.receive.otlp), not a hop.
	Service  string            `json:"service,omitempty"`
	Name     string            `json:"name,omitempty"`
	Method   string            `json:"method,omitempty"`
	Endpoint string            `json:"endpoint,omitempty"`
	Attempt  int               `json:"attempt,omitempty"`
	Start    time.Time         `json:"start"`
	Offset   float64           `json:"offset"`    // seconds from the trace's start
	Duration float64           `json:"duration"`  // seconds
	SelfTime float64           `json:"self_time"` // seconds; server spans only
	Code     string            `json:"code,omitempty"`
	Outcome  telemetry.Outcome `json:"outcome"`
	Events   []eventJSON       `json:"events,omitempty"`
	// The conversation turn the span belongs to (see telemetry.SpanTurn):
	// the session.id, hopwatch.turn.index and hopwatch.turn.outcome of
	// the exported span.
	SessionID   string `json:"session_id,omitempty"`
	TurnIndex   int    `json:"turn_index,omitempty"`
	TurnOutcome string `json:"turn_outcome,omitempty"`
	// FinishReason: genai hops (gen_ai.response.finish_reasons).
	FinishReason string `json:"finish_reason,omitempty"`
	Depth        int    `json:"depth"`
	Parent       int    `json:"parent"`   // index in spans, -1 for a root
	Children     []int  `json:"children"` // indexes in spans
}

// GET /api/traces/{id}
func (s *Server) apiTrace(w http.ResponseWriter, r *http.Request) {
	if s.opts.Traces == nil {
		writeJSON(w, http.StatusServiceUnavailable, errDisabled)
		return
	}
	raw := r.PathValue("id")
	id, err := trace.TraceIDFromHex(strings.ToLower(raw))
	if err != nil {
		badRequest(w, "trace id %q: want 32 hex digits, not all zero", raw)
		return
	}
	d, ok := s.opts.Traces.Trace(id)
	if !ok {
		writeJSON(w, http.StatusNotFound, apiError{fmt.Sprintf("trace %s not found (unknown, or evicted from the store)", id)})
		return
	}
	spans := make([]spanJSON, 0, len(d.Spans))
	for _, n := range d.Spans {
		sj := spanJSON{
			SpanID: n.SpanID, Kind: n.Kind, HopKey: n.HopKey, Service: n.Service, Name: n.Name,
			Method: n.Method, Endpoint: n.Endpoint, Attempt: n.Attempt,
			Start: n.Start, Offset: n.Start.Sub(d.Summary.Start).Seconds(),
			Duration: n.Duration.Seconds(), SelfTime: n.SelfTime.Seconds(),
			Code: n.Code, Outcome: n.Outcome, FinishReason: n.FinishReason,
			Depth: n.Depth, Parent: n.Parent, Children: n.Children,
		}
		if t := n.Turn; t != nil {
			sj.SessionID, sj.TurnIndex, sj.TurnOutcome = t.SessionID, t.Index, t.Outcome
		}
		if n.Parent >= 0 {
			sj.ParentID = d.Spans[n.Parent].SpanID.String()
		}
		if n.Stitched {
			sj.Stitched, sj.StitchedFrom = true, n.ParentID.String()
		}
		if sj.Children == nil {
			sj.Children = []int{}
		}
		for _, e := range n.Events {
			sj.Events = append(sj.Events, eventJSON(e))
		}
		spans = append(spans, sj)
	}
	writeJSON(w, http.StatusOK, struct {
		Summary summaryJSON `json:"summary"`
		Spans   []spanJSON  `json:"spans"`
	}{toSummaryJSON(d.Summary), spans})
}

type bottleneckHopJSON struct {
	telemetry.HopKey
	Count           int             `json:"count"`
	Share           float64         `json:"share"`     // mean of self time / trace duration, 0..1
	MeanSelf        float64         `json:"mean_self"` // seconds
	ExampleTraceIDs []trace.TraceID `json:"example_trace_ids"`
}

// slowRuleJSON says how the turns of one root route were judged slow.
type slowRuleJSON struct {
	Route string `json:"route"`
	// Rule is "bimodal" (the slow mode of clearly bimodal turns), "p95"
	// (at least the exact p95 less 5 %) or "min_duration".
	Rule      string  `json:"rule"`
	Threshold float64 `json:"threshold"`     // seconds: turns at least this long are slow by rule
	P95       float64 `json:"p95,omitempty"` // seconds: exact p95 of the route's turns
	SLO       float64 `json:"slo,omitempty"` // seconds: turns over it are slow too
	Turns     int     `json:"turns"`
	Slow      int     `json:"slow_turns"`
}

type bottlenecksJSON struct {
	Window     float64 `json:"window"` // seconds
	Traces     int     `json:"traces"`
	SlowTraces int     `json:"slow_traces"`
	Threshold  string  `json:"threshold"`
	// Thresholds: per root route, seconds from which its turns were slow
	// (Rules has the whole rule).
	Thresholds map[string]float64  `json:"thresholds,omitempty"`
	Rules      []slowRuleJSON      `json:"rules"`
	Hops       []bottleneckHopJSON `json:"hops"`
}

// GET /api/bottlenecks?window=5m&min_duration=
//
// Without min_duration the turns of each root route are judged against the
// exact durations of that route's turns in the window, read from the trace
// store (telemetry/slow.go): the slow mode when they are clearly bimodal,
// at least their p95 less 5 % otherwise, and every turn over the route's
// turn SLO. "rules" reports what was used per route.
func (s *Server) apiBottlenecks(w http.ResponseWriter, r *http.Request) {
	if s.opts.Traces == nil {
		writeJSON(w, http.StatusServiceUnavailable, errDisabled)
		return
	}
	qs := r.URL.Query()
	window, err := durationParam(qs.Get("window"))
	if err != nil {
		badRequest(w, "window: %v", err)
		return
	}
	minDur, err := durationParam(qs.Get("min_duration"))
	if err != nil {
		badRequest(w, "min_duration: %v", err)
		return
	}
	rep := s.opts.Traces.Bottlenecks(telemetry.BottleneckQuery{Window: window, MinDuration: minDur, Now: s.opts.Now()})
	out := bottlenecksJSON{
		Window: rep.Window.Seconds(), Traces: rep.Traces, SlowTraces: rep.SlowTraces,
		Threshold: rep.Threshold, Hops: make([]bottleneckHopJSON, 0, len(rep.Hops)),
		Rules: make([]slowRuleJSON, 0, len(rep.Rules)),
	}
	if len(rep.Thresholds) > 0 {
		out.Thresholds = make(map[string]float64, len(rep.Thresholds))
		for route, t := range rep.Thresholds {
			out.Thresholds[route] = t.Seconds()
		}
	}
	for _, r := range rep.Rules {
		out.Rules = append(out.Rules, slowRuleJSON{
			Route: r.Route, Rule: r.Rule, Threshold: r.Threshold.Seconds(),
			P95: r.P95.Seconds(), SLO: r.SLO.Seconds(), Turns: r.Turns, Slow: r.Slow,
		})
	}
	for _, h := range rep.Hops {
		out.Hops = append(out.Hops, bottleneckHopJSON{
			HopKey: h.HopKey, Count: h.Count, Share: h.Share,
			MeanSelf: h.MeanSelf.Seconds(), ExampleTraceIDs: h.ExampleTraceIDs,
		})
	}
	writeJSON(w, http.StatusOK, out)
}

// durationParam parses an optional, non-negative Go duration ("" is 0).
func durationParam(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (Go syntax, like 250ms or 2s)", v)
	}
	if d < 0 {
		return 0, errors.New("must not be negative")
	}
	return d, nil
}
