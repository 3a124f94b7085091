package telemetry

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// Hop spans for OTLP are not OpenTelemetry SDK spans. A hop and each of
// its attempts record what their exported span needs in a hopSpan (ids,
// parent, times, the names and codes the attributes are made of, events,
// the link of an untrusted incoming context), taken from a pool; at its
// end the span goes, through the turn holder (turnhold.go), to a bounded
// queue, and a background exporter turns batches of them into OTLP
// protobuf and uploads them with the OTLP exporters' own client. The
// attributes are built there, off the request path, in the SDK's form:
// a backend receives what it received when these were SDK spans (the
// golden files in testdata/otlp were recorded from the SDK's pipeline).

// instrumentationScope names hopwatch's spans in OTLP, as the SDK
// tracer's name did.
const instrumentationScope = "github.com/hopwatch/hopwatch"

// Export batching, as the SDK's batch span processor did it: a batch
// leaves when it has maxExportBatch spans or exportEvery after the last
// one left; an export call is bounded by exportCallTimeout beyond the
// client's own (configured) timeout.
const (
	maxExportBatch    = 512
	exportEvery       = 5 * time.Second
	exportCallTimeout = 30 * time.Second
)

// maxExportedEvents bounds the events of one exported span, as the SDK's
// default span limits did: past it the oldest go, counted in the span's
// dropped_events_count.
const maxExportedEvents = 128

// hopSpan is one hop span (server: the hop; client: an attempt) in
// compact form. It is owned by one goroutine at a time: the request's
// until it ends, then the turn holder's, then the exporter's, which puts
// it back in the pool.
type hopSpan struct {
	r      *Route // route names and static attributes, fixed per generation
	client bool   // an attempt's client span, else the hop's server span

	traceID trace.TraceID
	spanID  trace.SpanID
	parent  trace.SpanID // zero: a root
	flags   trace.TraceFlags
	state   trace.TraceState
	// remoteParent: parent came from a (trusted) incoming request.
	remoteParent bool
	// link is an untrusted caller's context (server spans; invalid: none).
	link trace.SpanContext

	caller, method string
	endpoint       string // client spans
	attempt        int    // client spans
	session        string // session id known at the start ("": none)
	start, end     time.Time
	code           string
	outcome        Outcome
	genai          *GenAIUsage // genai hops: the gen_ai.* attributes

	events        []exportEvent
	droppedEvents int

	// turn are the turn's attributes (turnAttrs): with turnMerge they
	// replace the span's own keys of the same name (the entry hop's own
	// span, marked as the SDK's SetAttributes did), without it every turn
	// key of the span's own gives way to them (spans the turn holder held).
	turn      []attribute.KeyValue
	turnMerge bool
}

type exportEvent struct {
	name  string
	time  time.Time
	attrs []attribute.KeyValue
}

var hopSpanPool = sync.Pool{New: func() any { return new(hopSpan) }}

func getHopSpan() *hopSpan { return hopSpanPool.Get().(*hopSpan) }

// putHopSpan clears s (keeping its events' array) and pools it.
func putHopSpan(s *hopSpan) {
	events := s.events
	clear(events)
	*s = hopSpan{events: events[:0]}
	if cap(events) > 8 {
		s.events = nil // a span with unusually many events does not pin them
	}
	hopSpanPool.Put(s)
}

// addEvent appends an event, dropping the oldest past maxExportedEvents.
func (s *hopSpan) addEvent(name string, at time.Time, attrs []attribute.KeyValue) {
	if len(s.events) >= maxExportedEvents {
		copy(s.events, s.events[1:])
		s.events = s.events[:len(s.events)-1]
		s.droppedEvents++
	}
	s.events = append(s.events, exportEvent{name: name, time: at, attrs: attrs})
}

// spanExporter is the bounded queue and the goroutine that empties it.
// At most limit spans are queued or in an export call at once; past that
// a span is dropped and counted in hopwatch_spans_dropped_total, so a dead
// collector is visible rather than quietly losing traces, and a request
// never waits for it. The goroutine is woken once per full batch (or by
// its timer), not once per span: a wake-up per span would cost every
// request a scheduler round trip.
type spanExporter struct {
	client otlptrace.Client

	mu      sync.Mutex // guards pending
	pending []*hopSpan
	full    chan struct{} // a batch is pending (capacity 1)

	inflight atomic.Int64
	limit    int64
	batch    int
	timeout  time.Duration
	m        *metrics
	log      *slog.Logger
	lastLog  atomic.Int64
	resource *resourcepb.Resource
	scope    *commonpb.InstrumentationScope

	stopped  atomic.Bool
	flushReq chan chan struct{}
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	// stopClient stops the client once (a second Shutdown must not).
	stopClient sync.Once
	stopErr    error

	conv converter // the exporter goroutine's
}

func newSpanExporter(client otlptrace.Client, o *OTLP, serviceName string, m *metrics, log *slog.Logger) *spanExporter {
	limit := o.QueueSize
	if limit <= 0 {
		limit = DefaultQueueSize
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultOTLPTimeout
	}
	e := &spanExporter{
		client: client, full: make(chan struct{}, 1), limit: int64(limit), batch: min(maxExportBatch, limit),
		timeout: timeout, m: m, log: log,
		resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{
			Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: serviceName}},
		}}},
		scope:    &commonpb.InstrumentationScope{Name: instrumentationScope},
		flushReq: make(chan chan struct{}),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go e.run()
	return e
}

// add queues an ended span for export, or drops it (counted) when limit
// spans are queued or being exported already. Unsampled spans are never
// made; after Shutdown nothing is exported.
func (e *spanExporter) add(s *hopSpan) {
	if e.stopped.Load() {
		putHopSpan(s)
		return
	}
	if e.inflight.Add(1) > e.limit {
		e.inflight.Add(-1)
		e.m.spansDropped.Inc()
		putHopSpan(s)
		return
	}
	e.mu.Lock()
	e.pending = append(e.pending, s)
	n := len(e.pending)
	e.mu.Unlock()
	if n == e.batch {
		select {
		case e.full <- struct{}{}:
		default: // the goroutine is told already
		}
	}
}

func (e *spanExporter) run() {
	defer close(e.done)
	var spare []*hopSpan // the pending slice of the previous round, reused
	timer := time.NewTimer(exportEvery)
	defer timer.Stop()
	for {
		var flushed chan struct{}
		stop := false
		select {
		case <-e.full:
		case <-timer.C:
		case flushed = <-e.flushReq:
		case <-e.stop:
			stop = true
		}
		spare = e.drain(spare)
		timer.Reset(exportEvery)
		if flushed != nil {
			close(flushed)
		}
		if stop {
			return
		}
	}
}

// drain exports what is pending, in batches, until nothing is; it
// returns the emptied slice for reuse.
func (e *spanExporter) drain(spare []*hopSpan) []*hopSpan {
	for {
		e.mu.Lock()
		batch := e.pending
		e.pending = spare[:0]
		e.mu.Unlock()
		if len(batch) == 0 {
			return batch
		}
		for rest := batch; len(rest) > 0; {
			k := min(len(rest), e.batch)
			e.export(rest[:k])
			rest = rest[k:]
		}
		spare = batch[:0]
	}
}

// export converts and uploads batch, then gives its spans back to the
// pool and their places in the queue's bound. Failures are counted and
// logged at most once per exportLogEvery, so a dead collector cannot
// flood the log.
func (e *spanExporter) export(batch []*hopSpan) {
	if len(batch) == 0 {
		return
	}
	rs := e.conv.resourceSpans(e.resource, e.scope, batch)
	ctx, cancel := context.WithTimeout(context.Background(), exportCallTimeout)
	err := e.client.UploadTraces(ctx, rs)
	cancel()
	n := len(batch)
	for i, s := range batch {
		putHopSpan(s)
		batch[i] = nil
	}
	e.conv.reset()
	e.inflight.Add(-int64(n))
	if err != nil {
		e.m.exportFailures.Inc()
		now := time.Now().UnixNano()
		if last := e.lastLog.Load(); now-last >= int64(exportLogEvery) && e.lastLog.CompareAndSwap(last, now) {
			e.log.Warn("span export failed; spans are lost until the collector is back (see hopwatch_span_export_failures_total)",
				"spans", n, "err", err)
		}
		return
	}
	e.m.spansExported.Add(float64(n))
}

// flush exports what is queued now, until ctx ends.
func (e *spanExporter) flush(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case e.flushReq <- done:
	case <-e.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// shutdown exports what is queued and stops the client, until ctx ends;
// spans that end later are not exported.
func (e *spanExporter) shutdown(ctx context.Context) error {
	e.stopOnce.Do(func() {
		e.stopped.Store(true)
		close(e.stop)
	})
	select {
	case <-e.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	e.stopClient.Do(func() { e.stopErr = e.client.Stop(ctx) })
	return e.stopErr
}

// exportLogEvery rate-limits export failure logs.
const exportLogEvery = 30 * time.Second

// converter turns hop spans into OTLP protobuf. Its messages are reused
// from batch to batch (the client has marshalled a batch when its upload
// returns), so a steady stream of spans converts without allocating.
type converter struct {
	spans  []tracepb.Span
	spanPs []*tracepb.Span
	kvs    []commonpb.KeyValue
	kvPs   []*commonpb.KeyValue
	vals   []commonpb.AnyValue
	strs   []commonpb.AnyValue_StringValue
	ints   []commonpb.AnyValue_IntValue
	status []tracepb.Status
	events []tracepb.Span_Event
	evPs   []*tracepb.Span_Event
	links  []tracepb.Span_Link
	linkPs []*tracepb.Span_Link
	ids    []byte // trace and span ids, back to back
	attrs  []attribute.KeyValue
	rs     [1]*tracepb.ResourceSpans
	ss     tracepb.ScopeSpans
	rspans tracepb.ResourceSpans
}

// next returns the next element of *pool, growing it. A grown pool's
// earlier elements stay where they were, in the old array, for the
// pointers already handed out.
func next[T any](pool *[]T) *T {
	if len(*pool) == cap(*pool) {
		*pool = make([]T, 0, max(64, 2*cap(*pool)))
	}
	*pool = (*pool)[:len(*pool)+1]
	return &(*pool)[len(*pool)-1]
}

func (c *converter) reset() {
	c.spans, c.kvs, c.vals, c.strs, c.ints = c.spans[:0], c.kvs[:0], c.vals[:0], c.strs[:0], c.ints[:0]
	c.status, c.events, c.links, c.ids = c.status[:0], c.events[:0], c.links[:0], c.ids[:0]
	clear(c.spanPs)
	clear(c.kvPs)
	clear(c.evPs)
	clear(c.linkPs)
	c.spanPs, c.kvPs, c.evPs, c.linkPs = c.spanPs[:0], c.kvPs[:0], c.evPs[:0], c.linkPs[:0]
}

// resourceSpans converts batch: one resource (service.name), one scope.
func (c *converter) resourceSpans(res *resourcepb.Resource, scope *commonpb.InstrumentationScope, batch []*hopSpan) []*tracepb.ResourceSpans {
	for _, s := range batch {
		c.spanPs = append(c.spanPs, c.span(s))
	}
	c.ss.Scope, c.ss.Spans = scope, c.spanPs
	c.rspans.Resource, c.rspans.ScopeSpans = res, []*tracepb.ScopeSpans{&c.ss}
	c.rs[0] = &c.rspans
	return c.rs[:]
}

func (c *converter) id(b []byte) []byte {
	if len(c.ids)+len(b) > cap(c.ids) {
		c.ids = make([]byte, 0, max(4096, 2*cap(c.ids))) // earlier ids stay in the old array
	}
	c.ids = append(c.ids, b...)
	return c.ids[len(c.ids)-len(b) : len(c.ids) : len(c.ids)]
}

// Span flags (OTLP trace.proto, SpanFlags): whether the parent (or a
// link's context) is remote is known, and whether it is.
const (
	flagHasIsRemote = uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
	flagIsRemote    = uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK)
)

func (c *converter) span(s *hopSpan) *tracepb.Span {
	p := next(&c.spans)
	*p = tracepb.Span{}
	p.TraceId = c.id(s.traceID[:])
	p.SpanId = c.id(s.spanID[:])
	p.TraceState = s.state.String()
	if s.parent.IsValid() {
		p.ParentSpanId = c.id(s.parent[:])
	}
	p.Flags = uint32(s.flags) | flagHasIsRemote
	if s.remoteParent {
		p.Flags |= flagIsRemote
	}
	p.Name = spanName(s.r, s.method)
	p.Kind = tracepb.Span_SPAN_KIND_SERVER
	if s.client {
		p.Kind = tracepb.Span_SPAN_KIND_CLIENT
	}
	p.StartTimeUnixNano = unixNano(s.start)
	p.EndTimeUnixNano = unixNano(s.end)
	c.attrs = s.appendAttrs(c.attrs[:0])
	p.Attributes = c.keyValues(c.attrs)
	if len(s.events) > 0 {
		first := len(c.evPs)
		for i := range s.events {
			ev := next(&c.events)
			*ev = tracepb.Span_Event{Name: s.events[i].name, TimeUnixNano: unixNano(s.events[i].time)}
			ev.Attributes = c.keyValues(s.events[i].attrs)
			c.evPs = append(c.evPs, ev)
		}
		p.Events = c.evPs[first:len(c.evPs):len(c.evPs)]
		p.DroppedEventsCount = uint32(s.droppedEvents)
	}
	if s.link.IsValid() {
		l := next(&c.links)
		tid, sid := s.link.TraceID(), s.link.SpanID()
		*l = tracepb.Span_Link{TraceId: c.id(tid[:]), SpanId: c.id(sid[:]), Flags: uint32(s.link.TraceFlags()) | flagHasIsRemote}
		if s.link.IsRemote() {
			l.Flags |= flagIsRemote
		}
		c.linkPs = append(c.linkPs, l)
		p.Links = c.linkPs[len(c.linkPs)-1 : len(c.linkPs) : len(c.linkPs)]
	}
	st := next(&c.status)
	*st = tracepb.Status{}
	if s.outcome.IsError() {
		st.Code, st.Message = tracepb.Status_STATUS_CODE_ERROR, string(s.outcome)+" "+s.code
	}
	p.Status = st
	return p
}

func unixNano(t time.Time) uint64 { return uint64(max(0, t.UnixNano())) }

func (c *converter) keyValues(attrs []attribute.KeyValue) []*commonpb.KeyValue {
	if len(attrs) == 0 {
		return nil
	}
	first := len(c.kvPs)
	for _, a := range attrs {
		kv := next(&c.kvs)
		kv.Key, kv.Value = string(a.Key), c.value(a.Value)
		c.kvPs = append(c.kvPs, kv)
	}
	return c.kvPs[first:len(c.kvPs):len(c.kvPs)]
}

// value converts as the OTLP exporter does (strings and integers, what
// hop spans carry, from the pools; the rest allocated).
func (c *converter) value(v attribute.Value) *commonpb.AnyValue {
	av := next(&c.vals)
	switch v.Type() {
	case attribute.STRING:
		sv := next(&c.strs)
		sv.StringValue = v.AsString()
		av.Value = sv
	case attribute.INT64:
		iv := next(&c.ints)
		iv.IntValue = v.AsInt64()
		av.Value = iv
	case attribute.BOOL:
		av.Value = &commonpb.AnyValue_BoolValue{BoolValue: v.AsBool()}
	case attribute.FLOAT64:
		av.Value = &commonpb.AnyValue_DoubleValue{DoubleValue: v.AsFloat64()}
	case attribute.STRINGSLICE:
		ss := v.AsStringSlice()
		vals := make([]*commonpb.AnyValue, len(ss))
		for i, s := range ss {
			vals[i] = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
		}
		av.Value = &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: vals}}
	case attribute.INT64SLICE:
		is := v.AsInt64Slice()
		vals := make([]*commonpb.AnyValue, len(is))
		for i, n := range is {
			vals[i] = &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: n}}
		}
		av.Value = &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: vals}}
	default:
		av.Value = &commonpb.AnyValue_StringValue{StringValue: v.String()}
	}
	return av
}

// appendAttrs appends the span's attributes, as its SDK span had them:
// the route's static ones, caller, attempt and server address (client
// spans), method, gen_ai.*, session and turn, outcome and status code.
func (s *hopSpan) appendAttrs(a []attribute.KeyValue) []attribute.KeyValue {
	a = append(a, s.r.static...)
	a = append(a, attribute.String("hopwatch.caller", s.caller))
	if s.client {
		host, port := splitHostPort(s.endpoint)
		a = append(a, attribute.Int("hopwatch.attempt", s.attempt), attribute.String("server.address", host))
		if n, err := strconv.Atoi(port); err == nil {
			a = append(a, attribute.Int("server.port", n))
		}
	}
	a = s.r.appendMethodAttrs(a, s.method)
	if s.genai != nil {
		a = s.genai.appendAttrs(a)
	}
	a = s.appendTurnAttrs(a)
	a = append(a, attribute.String("hopwatch.outcome", string(s.outcome)))
	if c, ok := grpcCodeNumber[s.code]; ok {
		a = append(a, attribute.Int("rpc.grpc.status_code", c))
	} else if n, ok := httpStatusNumber(s.code); ok {
		a = append(a, attribute.Int("http.response.status_code", n))
	}
	return a
}

// appendTurnAttrs appends the session and turn attributes (see
// hopSpan.turn), each key once.
func (s *hopSpan) appendTurnAttrs(a []attribute.KeyValue) []attribute.KeyValue {
	if s.turn == nil || s.turnMerge {
		if s.session != "" && !hasKey(s.turn, attrSessionID) {
			a = appendSessionAttrs(a, s.session)
		}
	}
	return append(a, s.turn...)
}

func hasKey(attrs []attribute.KeyValue, k attribute.Key) bool {
	for _, a := range attrs {
		if a.Key == k {
			return true
		}
	}
	return false
}
