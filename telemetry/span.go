package telemetry

import (
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Outcome classifies how a hop ended, from the client's point of view. It is
// the `outcome` label of the hop metrics and the hopwatch.outcome span
// attribute.
type Outcome string

// Outcomes (design section 5).
const (
	OutcomeOK       Outcome = "ok"
	OutcomeError    Outcome = "error"
	OutcomeTimeout  Outcome = "timeout"
	OutcomeFallback Outcome = "fallback"
	OutcomeRejected Outcome = "rejected" // breaker open or bulkhead full
	OutcomeCanceled Outcome = "canceled" // the client went away
)

// IsError reports whether the outcome counts against a hop's error ratio.
// A canceled call is the client's doing and a fallback answered the client.
func (o Outcome) IsError() bool {
	return o == OutcomeError || o == OutcomeTimeout || o == OutcomeRejected
}

// SpanKind says which side of the proxy a span describes.
type SpanKind string

const (
	// KindServer is the incoming request: one per hop.
	KindServer SpanKind = "server"
	// KindClient is one attempt to an upstream endpoint.
	KindClient SpanKind = "client"
	// KindService is a span a service made itself and sent to hopwatch's
	// OTLP receiver (see receive.go): shown in the waterfall, never a hop.
	KindService SpanKind = "service"
)

// HopKey identifies a hop: caller → route → upstream. All three are bounded
// label values (configured callers or "other", route and upstream names).
type HopKey struct {
	Caller   string `json:"caller"`
	Route    string `json:"route"`
	Upstream string `json:"upstream"`
}

// Span is the proxy's own compact record of one finished span, kept by the
// built-in trace store. It carries no request or response content: only
// names from the configuration, the method, codes and timings.
type Span struct {
	TraceID  trace.TraceID `json:"trace_id"`
	SpanID   trace.SpanID  `json:"span_id"`
	ParentID trace.SpanID  `json:"parent_id"` // zero: no parent, or a parent outside the proxy
	Kind     SpanKind      `json:"kind"`
	HopKey
	Method   string        `json:"method"`   // gRPC full method or HTTP method
	Endpoint string        `json:"endpoint"` // client spans: the endpoint address
	Attempt  int           `json:"attempt"`  // client spans: 1 for the first attempt
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"duration"`
	Code     string        `json:"code"` // HTTP status or gRPC code name
	Outcome  Outcome       `json:"outcome"`
	Events   []SpanEvent   `json:"events,omitempty"`
	// Turn is the conversation turn the span belongs to, set on every
	// span of the turn's trace within its entry hop when the turn is
	// classified (nil: none, or not yet). The spans of one turn share it.
	Turn *SpanTurn `json:"turn,omitempty"`
	// FinishReason is a genai hop's finish reason (Finish*: "length" when
	// any choice stopped at its token limit, else the first choice's);
	// "" on other hops. No text of the call is kept.
	FinishReason string `json:"finish_reason,omitempty"`
	// Service and Name are a service span's service.name and span name
	// (KindService only; hops are named by HopKey).
	Service string `json:"service,omitempty"`
	Name    string `json:"name,omitempty"`
}

// SpanTurn is what a turn's classification says about every hop span of
// the turn: the hopwatch.turn.* and session attributes of the exported
// spans.
type SpanTurn struct {
	// SessionID is as exported (keyed-hashed with hash_ids); "" for none.
	SessionID string `json:"session_id,omitempty"`
	// Index is the turn's index in its session, from 1; 0 without one.
	Index   int    `json:"index,omitempty"`
	Outcome string `json:"outcome,omitempty"`
}

// End is when the span ended.
func (s *Span) End() time.Time { return s.Start.Add(s.Duration) }

// SpanEvent is a resilience event on a hop span (breaker, retry, fallback).
type SpanEvent struct {
	Name  string            `json:"name"`
	Time  time.Time         `json:"time"`
	Attrs map[string]string `json:"attrs,omitempty"`
}
