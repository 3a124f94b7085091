package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
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

// newExportPipeline builds what carries hop spans out when OTLP is
// configured (or client is given instead): the export queue and its
// goroutine behind the turn holder (see turnhold.go). Both nil without an
// exporter.
func newExportPipeline(cfg Config, client otlptrace.Client, m *metrics, log *slog.Logger, now func() time.Time) (*spanExporter, *turnHolder, error) {
	o := cfg.Tracing.OTLP
	if client == nil && o == nil {
		return nil, nil, nil
	}
	if o == nil {
		o = &OTLP{}
	}
	sender, err := newSender(o, client, log)
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry: OTLP exporter: %w", err)
	}
	name := cfg.ServiceName
	if name == "" {
		name = DefaultServiceName
	}
	exp := newSpanExporter(sender, o, name, m, log)
	return exp, newTurnHolder(exp.add, now, m.turnSpansUnmarked), nil
}

// newSender is what uploads the exporter's requests: client when given,
// else hopwatch's own OTLP/gRPC or OTLP/HTTP sender for o, or the OTLP
// exporters' own client when the environment configures what only that
// client reads (sdkEnv). None connects: a collector that is down does
// not hold up start-up, and exports simply fail (and are counted) until
// it is back.
func newSender(o *OTLP, client otlptrace.Client, log *slog.Logger) (spanSender, error) {
	if client == nil {
		if v := sdkEnv(o.Protocol); v != "" {
			log.Info("OTLP export uses the OpenTelemetry exporter's client, which reads the environment", "variable", v)
			client = newClient(o)
		}
	}
	if client != nil {
		if err := client.Start(context.Background()); err != nil {
			return nil, err
		}
		return clientSender{client: client}, nil
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultOTLPTimeout
	}
	if o.Protocol == "http" {
		return newHTTPSender(o.Endpoint, timeout), nil
	}
	return newGRPCSender(o.Endpoint, timeout)
}

// newClient is the OTLP exporters' own client for o: the same transport,
// encoding and options as their SDK exporters.
func newClient(o *OTLP) otlptrace.Client {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultOTLPTimeout
	}
	switch o.Protocol {
	case "http":
		return otlptracehttp.NewClient(
			otlptracehttp.WithEndpoint(o.Endpoint),
			otlptracehttp.WithInsecure(),
			otlptracehttp.WithTimeout(timeout),
			otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}))
	default:
		return otlptracegrpc.NewClient(
			otlptracegrpc.WithEndpoint(o.Endpoint),
			otlptracegrpc.WithInsecure(),
			otlptracegrpc.WithTimeout(timeout),
			otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}))
	}
}
