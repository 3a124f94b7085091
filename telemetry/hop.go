package telemetry

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func equalConfig(a, b Config) bool { return reflect.DeepEqual(a, b) }

// RouteInfo describes a route for telemetry: names that become labels and
// span attributes, fixed for a configuration generation.
type RouteInfo struct {
	Name     string
	Upstream string
	Listener string
	// GRPC is true on gRPC listeners (rpc.* attributes), false on HTTP
	// listeners (http.* attributes; gRPC over HTTP is still HTTP there).
	GRPC bool
	// HTTPRoute is the http.route attribute (the path prefix), if any.
	HTTPRoute string
	// GenAI is the route's genai API (GenAIAPIOpenAI), "" for none.
	GenAI string
}

// Route is the per-generation telemetry of one route: metric handles and
// static span attributes, computed once.
type Route struct {
	t       *Telemetry
	info    RouteInfo
	series  *routeSeries
	callers map[string]bool
	static  []attribute.KeyValue
	// staticWire is static as OTLP Span.attributes fields (otlpwire.go).
	staticWire []byte
	genai      *genaiRoute // nil unless info.GenAI is set
}

// Route prepares the telemetry of one route. callers is the configured,
// bounded caller list; any other caller is recorded as "other".
func (t *Telemetry) Route(info RouteInfo, callers []string) *Route {
	if t == nil {
		return nil
	}
	cs := make(map[string]bool, len(callers))
	for _, c := range callers {
		cs[c] = true
	}
	static := []attribute.KeyValue{
		attribute.String("hopwatch.route", info.Name),
		attribute.String("hopwatch.upstream", info.Upstream),
	}
	if info.GRPC {
		static = append(static, attribute.String("rpc.system", "grpc"))
	} else if info.HTTPRoute != "" {
		static = append(static, attribute.String("http.route", info.HTTPRoute))
	}
	rt := &Route{t: t, info: info, series: t.m.route(info.Name, info.Upstream), callers: cs, static: static}
	for _, a := range static {
		rt.staticWire = appendKeyValue(rt.staticWire, fieldSpanAttributes, a)
	}
	if info.GenAI != "" {
		rt.genai = &genaiRoute{t: t, route: info.Name, series: map[genaiKey]*genaiSeries{}}
	}
	return rt
}

// Caller bounds a caller name to the configured list.
func (r *Route) Caller(name string) string {
	if r == nil || r.callers[name] {
		return name
	}
	return "other"
}

// Hop is one request through the proxy, from arrival to the end of its
// response or stream. Methods are safe on a nil *Hop (telemetry disabled)
// and, except Event, must be called from the request's goroutine.
type Hop struct {
	r        *Route
	caller   string
	method   string
	start    time.Time
	sc       trace.SpanContext
	parent   trace.SpanID
	firstB   bool
	ttfb     time.Duration
	attempts int
	turn     *turnState // entry routes only: see turn.go
	// session is the session id of the hop's turn as known when it
	// started (exported, sampled hops only), for its client spans.
	session string
	// spanTurn is what the entry hop's turn said, for its stored span.
	spanTurn *SpanTurn
	ext      hopExt // genai.go, exchange.go, accesslog.go

	mu       sync.Mutex // guards events, override, attempts, ext.endpoint, xs: resilience code may set them from elsewhere
	events   []SpanEvent
	override Outcome
	// xs is the hop's span for the exporter (export.go), until End hands
	// it on; nil without an exporter or when the trace is not sampled.
	xs *hopSpan
}

// Start begins a hop for a request that matched r. carrier holds the
// incoming headers or metadata; method is the gRPC full method or the HTTP
// method (or, for gRPC over an HTTP listener, the URL path), bounded here
// by methodLabel before it names anything. The returned context carries
// the server span.
func (r *Route) Start(ctx context.Context, carrier propagation.TextMapCarrier, caller, method string) (context.Context, *Hop) {
	if r == nil {
		return ctx, nil
	}
	t := r.t
	method = methodLabel(method, r.info.GRPC)
	h := &Hop{r: r, caller: r.Caller(caller), method: method, start: t.now()}
	h.turn = r.startTurn(carrier)
	// Malformed trace headers extract to nothing, which starts a new trace:
	// they never fail the request.
	pctx := t.prop.Extract(ctx, carrier)
	if !t.trust {
		// An untrusted caller's baggage is dropped, not forwarded: it
		// would reach every upstream as if the proxy vouched for it
		// (W3C Baggage, section "Privacy and security considerations").
		// Inject removes the raw header too.
		pctx = baggage.ContextWithoutBaggage(pctx)
	}
	incoming := trace.SpanContextFromContext(pctx)
	trusted := t.trust && incoming.IsValid()
	if trusted {
		h.parent = incoming.SpanID()
	}
	r.series.inflight.Inc()
	// No SDK span, exporter or not: the span context is made here, with
	// the SDK's sampling rule, and what the exported span needs is
	// recorded in compact form (export.go).
	h.sc = t.spanContext(incoming, trusted)
	if t.exp != nil && h.sc.IsSampled() {
		xs := getHopSpan()
		xs.r, xs.traceID, xs.spanID, xs.parent = r, h.sc.TraceID(), h.sc.SpanID(), h.parent
		xs.flags, xs.state, xs.remoteParent = h.sc.TraceFlags(), h.sc.TraceState(), trusted && incoming.IsRemote()
		if !trusted && incoming.IsValid() {
			// Untrusted: our own trace, with the caller's context as a link.
			xs.link = incoming
		}
		xs.caller, xs.method, xs.start = h.caller, method, h.start
		h.xs = xs
		h.markSpan()
	}
	return trace.ContextWithSpanContext(pctx, h.sc), h
}

// spanContext makes a span context without the SDK: a child of a trusted
// parent (same trace, its sampling decision), or the root of a new trace
// sampled by ratio, as ParentBased(TraceIDRatioBased) would decide.
func (t *Telemetry) spanContext(parent trace.SpanContext, trusted bool) trace.SpanContext {
	cfg := trace.SpanContextConfig{SpanID: newSpanID()}
	if trusted {
		cfg.TraceID, cfg.TraceFlags, cfg.TraceState = parent.TraceID(), parent.TraceFlags(), parent.TraceState()
	} else {
		cfg.TraceID = newTraceID()
		if t.sampler.ShouldSample(sdktrace.SamplingParameters{TraceID: cfg.TraceID}).Decision == sdktrace.RecordAndSample {
			cfg.TraceFlags = trace.FlagsSampled
		}
	}
	return trace.NewSpanContext(cfg)
}

func newSpanID() trace.SpanID {
	var id trace.SpanID
	for !id.IsValid() {
		binary.BigEndian.PutUint64(id[:], rand.Uint64())
	}
	return id
}

func newTraceID() trace.TraceID {
	var id trace.TraceID
	for !id.IsValid() {
		binary.BigEndian.PutUint64(id[:8], rand.Uint64())
		binary.BigEndian.PutUint64(id[8:], rand.Uint64())
	}
	return id
}

// appendMethodAttrs appends the semantic-convention attributes of the
// method (a methodLabel), shared by server and client spans.
func (r *Route) appendMethodAttrs(a []attribute.KeyValue, method string) []attribute.KeyValue {
	if r.info.GRPC || strings.HasPrefix(method, "/") {
		svc, m := splitMethod(method)
		return append(a, attribute.String("rpc.service", svc), attribute.String("rpc.method", m))
	}
	return append(a, attribute.String("http.request.method", method))
}

// spanName is bounded because method is a methodLabel: a gRPC method of at
// most MaxMethodLabelLen bytes, "other", or an HTTP method and the route's
// name.
func spanName(r *Route, method string) string {
	if r.info.GRPC || strings.HasPrefix(method, "/") {
		return strings.TrimPrefix(method, "/")
	}
	return method + " " + r.info.Name
}

func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[:i], full[i+1:]
	}
	return full, ""
}

// TraceID is the hop's trace, for logs and response headers.
func (h *Hop) TraceID() trace.TraceID {
	if h == nil {
		return trace.TraceID{}
	}
	return h.sc.TraceID()
}

// FirstByte marks the first response byte (headers, or the first message of
// a stream); only the first call counts.
func (h *Hop) FirstByte() {
	if h == nil || h.firstB {
		return
	}
	h.firstB = true
	h.ttfb = h.r.t.now().Sub(h.start)
	h.r.series.firstB.Observe(h.ttfb.Seconds())
}

// Event records a resilience event (breaker trip, retry, fallback) on the
// hop's server span. Safe for concurrent use.
func (h *Hop) Event(name string, attrs ...attribute.KeyValue) {
	if h == nil {
		return
	}
	now := h.r.t.now()
	ev := SpanEvent{Name: name, Time: now}
	if len(attrs) > 0 {
		ev.Attrs = make(map[string]string, len(attrs))
		for _, a := range attrs {
			ev.Attrs[string(a.Key)] = a.Value.String()
		}
	}
	h.mu.Lock()
	if len(h.events) < MaxEventsPerSpan {
		h.events = append(h.events, ev)
	}
	if h.xs != nil {
		h.xs.addEvent(name, now, attrs)
	}
	h.mu.Unlock()
}

// MaxEventsPerSpan bounds the events the trace store keeps for one hop (a
// route configured with very many retries must not grow its spans without
// bound); the exported span still gets them all, within the limit the
// SDK's spans had (maxExportedEvents: the latest are kept).
const MaxEventsPerSpan = 32

// End closes the hop: span status and end, RED metrics with a trace
// exemplar, hop statistics and the trace store. code is the HTTP status or
// gRPC code name (bounded by codeLabel).
func (h *Hop) End(code string, outcome Outcome) {
	if h == nil {
		return
	}
	code = codeLabel(code)
	r, t := h.r, h.r.t
	end := t.now()
	d := end.Sub(h.start)
	h.mu.Lock()
	if h.override != "" && outcome != OutcomeCanceled {
		outcome = h.override
	}
	// Events that come later (resilience code elsewhere) no longer reach
	// the exported span, as they did not reach an ended SDK span.
	xs := h.xs
	h.xs = nil
	h.mu.Unlock()
	r.series.inflight.Dec()

	s := r.series.get(seriesKey{caller: h.caller, method: h.method, code: code, outcome: outcome})
	s.requests.Inc()
	s.observe(d, h.sc.TraceID(), h.sc.IsSampled(), end)

	usage := h.endGenAI(end)
	finish := usage.finishReason()
	h.endTurn(code, outcome, d, finish, xs)
	if xs != nil {
		xs.genai, xs.end, xs.code, xs.outcome = usage, end, code, outcome
		t.endSpan(xs)
	}

	key := HopKey{Caller: h.caller, Route: r.info.Name, Upstream: r.info.Upstream}
	t.Stats.Observe(key, d, outcome, end)
	h.mu.Lock()
	events := h.events
	h.mu.Unlock()
	t.Store.Add(Span{
		TraceID: h.sc.TraceID(), SpanID: h.sc.SpanID(), ParentID: h.parent,
		Kind: KindServer, HopKey: key, Method: h.method,
		Start: h.start, Duration: d, Code: code, Outcome: outcome, Events: events,
		Turn: h.spanTurn, FinishReason: finish,
	})
	h.logAccess(code, outcome, end, d, events, usage)
}

// Attempt is one try at an upstream endpoint: a client span.
type Attempt struct {
	h        *Hop
	n        int
	endpoint string
	start    time.Time
	sc       trace.SpanContext
	ctx      context.Context
	xs       *hopSpan // the client span for the exporter: see Hop.xs
}

// Attempt starts the client span of the next attempt at endpoint. Inject
// then writes its context into the outgoing headers or metadata.
func (h *Hop) Attempt(ctx context.Context, endpoint string) (context.Context, *Attempt) {
	if h == nil {
		return ctx, nil
	}
	// Under mu: after a fallback answer, attempts go on in the background
	// while End reads the count for the access log.
	h.mu.Lock()
	h.attempts++
	n := h.attempts
	h.ext.endpoint = endpoint
	h.mu.Unlock()
	a := &Attempt{h: h, n: n, endpoint: endpoint, start: h.r.t.now()}
	// A child of the hop's span: same trace, its sampling decision.
	a.sc = trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: h.sc.TraceID(), SpanID: newSpanID(), TraceFlags: h.sc.TraceFlags(), TraceState: h.sc.TraceState(),
	})
	a.ctx = trace.ContextWithSpanContext(ctx, a.sc)
	if h.r.t.exp != nil && a.sc.IsSampled() {
		xs := getHopSpan()
		xs.r, xs.client, xs.traceID, xs.spanID, xs.parent = h.r, true, a.sc.TraceID(), a.sc.SpanID(), h.sc.SpanID()
		xs.flags, xs.state = a.sc.TraceFlags(), a.sc.TraceState()
		xs.caller, xs.method, xs.endpoint, xs.attempt = h.caller, h.method, endpoint, n
		xs.session, xs.start = h.session, a.start
		a.xs = xs
	}
	return a.ctx, a
}

// Inject replaces the trace headers in carrier (the outgoing request's
// headers or metadata, already a copy of the incoming ones) with this
// attempt's context, so the upstream's spans parent on the proxy's client
// span. Stale incoming fields are removed first: a tracestate or B3 header
// of an untrusted caller must not travel on beside our traceparent. With
// trust_incoming false every propagation header the proxy knows is
// removed, configured or not (an untrusted caller's baggage is dropped,
// issue 8), before the proxy's own context is written.
func (a *Attempt) Inject(carrier propagation.TextMapCarrier, del func(key string)) {
	if a == nil {
		return
	}
	for _, f := range a.h.r.t.dropFields {
		del(f)
	}
	a.h.r.t.prop.Inject(a.ctx, carrier)
}

// End closes the attempt's client span.
func (a *Attempt) End(code string, outcome Outcome) {
	if a == nil {
		return
	}
	code = codeLabel(code)
	h := a.h
	end := h.r.t.now()
	if xs := a.xs; xs != nil {
		a.xs = nil
		xs.end, xs.code, xs.outcome = end, code, outcome
		h.r.t.endSpan(xs)
	}
	sc := a.sc
	h.r.t.Store.Add(Span{
		TraceID: sc.TraceID(), SpanID: sc.SpanID(), ParentID: h.sc.SpanID(),
		Kind: KindClient, HopKey: HopKey{Caller: h.caller, Route: h.r.info.Name, Upstream: h.r.info.Upstream},
		Method: h.method, Endpoint: a.endpoint, Attempt: a.n,
		Start: a.start, Duration: end.Sub(a.start), Code: code, Outcome: outcome,
	})
}

// endSpan hands an ended span on for export: through the turn holder,
// which keeps it while its trace's turn is open.
func (t *Telemetry) endSpan(s *hopSpan) {
	if t.holder != nil {
		t.holder.onEnd(s)
		return
	}
	t.exp.add(s)
}

func splitHostPort(addr string) (string, string) {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return strings.Trim(addr[:i], "[]"), addr[i+1:]
	}
	return addr, ""
}

func httpStatusNumber(code string) (int, bool) {
	if len(code) != 3 {
		return 0, false
	}
	n := 0
	for i := 0; i < 3; i++ {
		c := code[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
