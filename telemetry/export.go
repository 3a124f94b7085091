package telemetry

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Hop spans for OTLP are not OpenTelemetry SDK spans. A hop and each of
// its attempts record what their exported span needs in a hopSpan (ids,
// parent, times, the names and codes the attributes are made of, events,
// the link of an untrusted incoming context), taken from a pool; at its
// end the span goes, through the turn holder (turnhold.go), to a bounded
// queue, and a background exporter writes batches of them as OTLP
// protobuf (otlpwire.go) and uploads the bytes (otlpsend.go). The
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
	sender spanSender

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

	stopped  atomic.Bool
	flushReq chan chan struct{}
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	// stopSender stops the sender once (a second Shutdown must not).
	stopSender sync.Once
	stopErr    error

	enc *wireEncoder // the exporter goroutine's
}

func newSpanExporter(sender spanSender, o *OTLP, serviceName string, m *metrics, log *slog.Logger) *spanExporter {
	limit := o.QueueSize
	if limit <= 0 {
		limit = DefaultQueueSize
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultOTLPTimeout
	}
	e := &spanExporter{
		sender: sender, full: make(chan struct{}, 1), limit: int64(limit), batch: min(maxExportBatch, limit),
		timeout: timeout, m: m, log: log,
		enc:      newWireEncoder(serviceName),
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

// export encodes and uploads batch, then gives its spans back to the
// pool and their places in the queue's bound. Failures are counted and
// logged at most once per exportLogEvery, so a dead collector cannot
// flood the log.
func (e *spanExporter) export(batch []*hopSpan) {
	if len(batch) == 0 {
		return
	}
	req := getWireBuf()
	req.b = e.enc.encode(req.b[:0], batch)
	n := len(batch)
	for i, s := range batch {
		putHopSpan(s)
		batch[i] = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), exportCallTimeout)
	err := e.sender.send(ctx, req)
	cancel()
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

// shutdown exports what is queued and stops the sender, until ctx ends;
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
	e.stopSender.Do(func() { e.stopErr = e.sender.stop(ctx) })
	return e.stopErr
}

// exportLogEvery rate-limits export failure logs.
const exportLogEvery = 30 * time.Second

// appendAttrs appends the span's attributes, as its SDK span had them:
// the route's static ones, caller, attempt and server address (client
// spans), method, gen_ai.*, session and turn, outcome and status code.
func (s *hopSpan) appendAttrs(a []attribute.KeyValue) []attribute.KeyValue {
	return s.appendOwnAttrs(append(a, s.r.static...))
}

// appendOwnAttrs appends the span's attributes after the route's static
// ones (which the wire encoder has encoded once per route).
func (s *hopSpan) appendOwnAttrs(a []attribute.KeyValue) []attribute.KeyValue {
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
