package demo

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
)

// The demo's services trace themselves the way most real services do:
// otelgrpc stats handlers on their gRPC servers and clients, otelhttp on
// their HTTP handlers and transports, the W3C propagators, an OTLP
// exporter. Each service makes a server span for every call it gets and a
// client span for every call it makes, so the trace context its next call
// through hopwatch carries is its own client span, which hopwatch does not
// see unless it receives the services' spans: exactly the setup that
// hopwatch's trace store stitches into one tree per turn.
//
// Without an OTLP endpoint the spans are still made (new span IDs, as in
// production) but exported nowhere.

// tracing holds every service's provider and the propagator they share.
type tracing struct {
	prop     propagation.TextMapPropagator
	services map[string]*sdktrace.TracerProvider // by service name
}

// otlpTimeout bounds one export: a collector that has gone away must not
// hold up the demo's shutdown for long.
const otlpTimeout = 5 * time.Second

// newTracing makes a tracer provider per service, each with its own
// service.name and, when endpoint is set, its own OTLP/gRPC exporter to it.
func newTracing(endpoint string) (*tracing, error) {
	t := &tracing{
		// W3C Trace Context and Baggage: what hopwatch reads and passes on.
		prop:     propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		services: make(map[string]*sdktrace.TracerProvider, len(Services)),
	}
	for _, name := range Services {
		opts := []sdktrace.TracerProviderOption{
			sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", name))),
		}
		if endpoint != "" {
			exp, err := otlptracegrpc.New(context.Background(),
				otlptracegrpc.WithEndpoint(endpoint),
				otlptracegrpc.WithInsecure(),
				otlptracegrpc.WithTimeout(otlpTimeout))
			if err != nil {
				t.shutdown(context.Background())
				return nil, fmt.Errorf("demo: %s: otlp exporter: %w", name, err)
			}
			opts = append(opts, sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)))
		}
		t.services[name] = sdktrace.NewTracerProvider(opts...)
	}
	return t, nil
}

// shutdown flushes and stops every provider.
func (t *tracing) shutdown(ctx context.Context) error {
	var errs []error
	for name, tp := range t.services {
		if err := tp.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// exportTo adds an OTLP/gRPC exporter to endpoint to every service's
// provider, beside the one newTracing made, if any.
func (t *tracing) exportTo(endpoint string) error {
	for name, tp := range t.services {
		exp, err := otlptracegrpc.New(context.Background(),
			otlptracegrpc.WithEndpoint(endpoint),
			otlptracegrpc.WithInsecure(),
			otlptracegrpc.WithTimeout(otlpTimeout))
		if err != nil {
			return fmt.Errorf("demo: %s: otlp exporter: %w", name, err)
		}
		tp.RegisterSpanProcessor(sdktrace.NewBatchSpanProcessor(exp, sdktrace.WithBatchTimeout(time.Second)))
	}
	return nil
}

// grpcServer is the stats-handler option of a service's gRPC server.
func (t *tracing) grpcServer(service string) grpc.ServerOption {
	return grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(t.services[service]), otelgrpc.WithPropagators(t.prop)))
}

// grpcClient is the stats-handler option of a service's gRPC client.
func (t *tracing) grpcClient(service string) grpc.DialOption {
	return grpc.WithStatsHandler(otelgrpc.NewClientHandler(
		otelgrpc.WithTracerProvider(t.services[service]), otelgrpc.WithPropagators(t.prop)))
}

// httpHandler wraps a service's HTTP handler.
func (t *tracing) httpHandler(service string, h http.Handler) http.Handler {
	return otelhttp.NewHandler(h, service,
		otelhttp.WithTracerProvider(t.services[service]), otelhttp.WithPropagators(t.prop))
}

// httpTransport wraps a service's HTTP client transport.
func (t *tracing) httpTransport(service string, rt http.RoundTripper) http.RoundTripper {
	return otelhttp.NewTransport(rt,
		otelhttp.WithTracerProvider(t.services[service]), otelhttp.WithPropagators(t.prop))
}
