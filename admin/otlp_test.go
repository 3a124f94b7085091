package admin

import (
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/telemetry"
)

// TestAdminOTLPReceiver: with a receiver, the admin address takes the
// services' spans from the OpenTelemetry SDK's own OTLP exporters, over
// HTTP and over gRPC (h2c on the same port), and they show in the trace;
// the Host check guards the receiver like every other path.
func TestAdminOTLPReceiver(t *testing.T) {
	newExporter := map[string]func(addr string) (sdktrace.SpanExporter, error){
		"http": func(addr string) (sdktrace.SpanExporter, error) {
			return otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(addr), otlptracehttp.WithInsecure())
		},
		"grpc": func(addr string) (sdktrace.SpanExporter, error) {
			return otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(addr), otlptracegrpc.WithInsecure())
		},
	}
	for proto, newExp := range newExporter {
		t.Run(proto, func(t *testing.T) {
			store := telemetry.NewStore(10)
			hop := telemetry.Span{TraceID: tid(1), SpanID: sid(1), Kind: telemetry.KindServer, HopKey: hopChat,
				Start: time.Now().Add(-time.Second), Duration: time.Second, Outcome: telemetry.OutcomeOK}
			store.Add(hop)
			recv, err := telemetry.NewReceiver(store, prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			defer recv.Close()
			s := startAdmin(t, Options{Traces: store, OTLP: recv})

			exp, err := newExp(s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
				sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "gateway"))))
			parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid(1), SpanID: sid(1), TraceFlags: trace.FlagsSampled, Remote: true})
			ctx := trace.ContextWithRemoteSpanContext(context.Background(), parent)
			_, sp := tp.Tracer("test").Start(ctx, "POST /v1/chat")
			sp.End()
			if err := tp.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			d, _ := store.Trace(tid(1))
			if len(d.Spans) != 2 || d.Spans[1].Kind != telemetry.KindService || d.Spans[1].Service != "gateway" ||
				d.Spans[1].Name != "POST /v1/chat" || d.Spans[1].Parent != 0 {
				t.Fatalf("trace after the export: %+v", d.Spans)
			}

			code, _ := rawPost(t, "http://"+s.Addr().String()+telemetry.OTLPTracesPath, "evil.example")
			if code != http.StatusForbidden {
				t.Errorf("POST with Host evil.example: %d, want 403", code)
			}
		})
	}

	t.Run("off by default", func(t *testing.T) {
		s := startAdmin(t, Options{Traces: telemetry.NewStore(10)})
		if code, _ := rawPost(t, "http://"+s.Addr().String()+telemetry.OTLPTracesPath, ""); code != http.StatusNotFound {
			t.Errorf("POST %s without a receiver: %d, want 404", telemetry.OTLPTracesPath, code)
		}
	})
}

func rawPost(t *testing.T, url, host string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(nil))
	req.Header.Set("Content-Type", "application/x-protobuf")
	if host != "" {
		req.Host = host
	}
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode, res.Status
}
