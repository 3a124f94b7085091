package telemetry

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// newPropagator builds the configured formats. Fields() of the result are
// the headers the proxy rewrites on every upstream request.
func newPropagator(names []string) propagation.TextMapPropagator {
	var ps []propagation.TextMapPropagator
	for _, n := range names {
		switch n {
		case "tracecontext":
			ps = append(ps, propagation.TraceContext{})
		case "baggage":
			ps = append(ps, propagation.Baggage{})
		case "b3":
			// Both encodings on the way out: services that only speak B3
			// continue the trace whichever form they read.
			ps = append(ps, b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader|b3.B3SingleHeader)))
		}
	}
	return propagation.NewCompositeTextMapPropagator(ps...)
}

// knownPropagators are every format the proxy can speak, configured or not.
var knownPropagators = newPropagator([]string{"tracecontext", "baggage", "b3"})

// dropFields lists the headers removed from upstream requests before the
// proxy injects its context: the configured propagators' when the caller
// is trusted, all known ones otherwise (an untrusted caller's trace state,
// B3 headers and baggage must not reach the upstream as if the proxy sent
// them, even in a format the proxy does not itself propagate).
func dropFields(configured propagation.TextMapPropagator, trust bool) []string {
	if trust {
		return configured.Fields()
	}
	var out []string
	seen := map[string]bool{}
	// The B3 propagator does not list X-B3-ParentSpanId, which B3 callers
	// may send.
	all := append(configured.Fields(), knownPropagators.Fields()...)
	for _, f := range append(all, "x-b3-parentspanid") {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	return out
}

// newTracerProvider builds the SDK provider: sampling per the config, and,
// when OTLP is configured (or exp is given instead), a batch processor
// behind a bound that drops (and counts) instead of queueing without
// limit, behind the turn holder (see turnhold.go), which it returns too
// (nil without an exporter).
func newTracerProvider(cfg Config, exp sdktrace.SpanExporter, m *metrics, log *slog.Logger, now func() time.Time) (*sdktrace.TracerProvider, *turnHolder, error) {
	name := cfg.ServiceName
	if name == "" {
		name = DefaultServiceName
	}
	res := resource.NewSchemaless(attribute.String("service.name", name))
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		// ParentBased: a trusted, sampled parent is honoured; new traces
		// (and, with trust_incoming false, every trace) use the ratio.
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.sampleRatio()))),
	}
	o := cfg.Tracing.OTLP
	if exp == nil && o != nil {
		var err error
		if exp, err = newExporter(o); err != nil {
			return nil, nil, err
		}
	}
	var holder *turnHolder
	if exp != nil {
		if o == nil {
			o = &OTLP{}
		}
		holder = newTurnHolder(newBoundedProcessor(exp, o, m, log), now, m.turnSpansUnmarked)
		opts = append(opts, sdktrace.WithSpanProcessor(holder))
	}
	return sdktrace.NewTracerProvider(opts...), holder, nil
}

func newExporter(o *OTLP) (sdktrace.SpanExporter, error) {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultOTLPTimeout
	}
	// New does not connect: a collector that is down does not hold up
	// start-up, and exports simply fail (and are counted) until it is back.
	ctx := context.Background()
	switch o.Protocol {
	case "http":
		return otlptracehttp.New(ctx,
			otlptracehttp.WithEndpoint(o.Endpoint),
			otlptracehttp.WithInsecure(),
			otlptracehttp.WithTimeout(timeout),
			otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}))
	default:
		return otlptracegrpc.New(ctx,
			otlptracegrpc.WithEndpoint(o.Endpoint),
			otlptracegrpc.WithInsecure(),
			otlptracegrpc.WithTimeout(timeout),
			otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}))
	}
}

// boundedProcessor puts a hard bound on spans between a request ending and
// its span leaving the process. The SDK's BatchSpanProcessor already never
// blocks OnEnd, but it drops silently; counting spans in flight (queued or
// in an export call) here lets the drops show up in
// hopwatch_spans_dropped_total, so a dead collector is visible rather than
// quietly losing traces.
type boundedProcessor struct {
	sdktrace.SpanProcessor
	inflight *atomic.Int64
	limit    int64
	m        *metrics
}

func newBoundedProcessor(exp sdktrace.SpanExporter, o *OTLP, m *metrics, log *slog.Logger) *boundedProcessor {
	limit := o.QueueSize
	if limit <= 0 {
		limit = DefaultQueueSize
	}
	inflight := new(atomic.Int64)
	counted := &countingExporter{SpanExporter: exp, inflight: inflight, m: m, log: log}
	return &boundedProcessor{
		SpanProcessor: sdktrace.NewBatchSpanProcessor(counted,
			sdktrace.WithMaxQueueSize(limit),
			sdktrace.WithMaxExportBatchSize(min(512, limit))),
		inflight: inflight,
		limit:    int64(limit),
		m:        m,
	}
}

func (p *boundedProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	if p.inflight.Add(1) > p.limit {
		p.inflight.Add(-1)
		p.m.spansDropped.Inc()
		return
	}
	p.SpanProcessor.OnEnd(s)
}

// countingExporter releases the processor's bound as batches leave.
type countingExporter struct {
	sdktrace.SpanExporter
	inflight *atomic.Int64
	m        *metrics
	log      *slog.Logger
	lastLog  atomic.Int64
}

// ExportSpans never returns an error: the SDK would hand it to the global
// otel error handler, which prints a line per failed batch to the standard
// logger. Failures are counted instead and logged here, at most once per
// exportLogEvery, so a dead collector cannot flood the log.
func (e *countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	e.inflight.Add(-int64(len(spans)))
	if err != nil {
		e.m.exportFailures.Inc()
		now := time.Now().UnixNano()
		if last := e.lastLog.Load(); now-last >= int64(exportLogEvery) && e.lastLog.CompareAndSwap(last, now) {
			e.log.Warn("span export failed; spans are lost until the collector is back (see hopwatch_span_export_failures_total)",
				"spans", len(spans), "err", err)
		}
		return nil
	}
	e.m.spansExported.Add(float64(len(spans)))
	return nil
}

// exportLogEvery rate-limits export failure logs.
const exportLogEvery = 30 * time.Second
