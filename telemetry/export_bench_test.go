package telemetry

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/propagation"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// countingSink is an OTLP/gRPC receiver that counts the spans it takes.
type countingSink struct {
	coltracepb.UnimplementedTraceServiceServer
	spans atomic.Int64
}

func (c *countingSink) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			c.spans.Add(int64(len(ss.Spans)))
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// processCPU is the process's user and system CPU time in nanoseconds.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkHopSpans is the telemetry of one proxied gRPC call (a hop
// with one attempt: Start, Attempt, Inject, End, End) with the built-in
// store only and with an OTLP exporter into a loopback sink; the export
// goroutine's work (conversion, marshalling, sending) is in the figures,
// as it is in the process's CPU: cpu-ns/op is the whole process's CPU
// time (both goroutines, the sink, GC) per call.
func BenchmarkHopSpans(b *testing.B) {
	for _, otlp := range []bool{false, true} {
		name := "store"
		if otlp {
			name = "store+otlp"
		}
		b.Run(name, func(b *testing.B) {
			cfg := Config{}
			sink := &countingSink{}
			if otlp {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					b.Fatal(err)
				}
				srv := grpc.NewServer()
				coltracepb.RegisterTraceServiceServer(srv, sink)
				go srv.Serve(ln)
				defer srv.Stop()
				// A queue for every span of the run: none is dropped, so
				// all of them are exported and in the figures.
				cfg.Tracing.OTLP = &OTLP{Endpoint: ln.Addr().String(), QueueSize: 1 << 18}
			}
			tel, err := New(Options{Config: cfg, Registry: prometheus.NewRegistry()})
			if err != nil {
				b.Fatal(err)
			}
			rt := tel.Route(RouteInfo{Name: "nlu", Upstream: "nlu", Listener: "grpc", GRPC: true}, []string{"gateway"})
			in := propagation.MapCarrier{}
			out := propagation.MapCarrier{}
			del := func(k string) { delete(out, k) }
			ctx := context.Background()
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				hctx, h := rt.Start(ctx, in, "gateway", "/bot.v1.NLU/Parse")
				_, a := h.Attempt(hctx, "127.0.0.1:50051")
				a.Inject(out, del)
				h.FirstByte()
				a.End("OK", OutcomeOK)
				h.End("OK", OutcomeOK)
			}
			if err := tel.Shutdown(ctx); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
			if got, want := sink.spans.Load(), int64(2*b.N); otlp && got != want {
				b.Fatalf("the sink received %d spans, want %d (dropped: %v)", got, want, testutil.ToFloat64(tel.m.spansDropped))
			}
		})
	}
}
