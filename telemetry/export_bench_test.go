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
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
)

// countingSink is an OTLP/gRPC receiver that counts the spans it takes.
// It walks the request's wire format rather than unmarshalling it: the
// sink shares the benchmark's process, and a collector's decoding is not
// hopwatch's CPU (decoding cost about twice what the exporter did, and
// hid it).
type countingSink struct {
	spans atomic.Int64
}

// sinkCodec hands the sink each request's bytes as they came.
type sinkCodec struct{}

func (sinkCodec) Name() string { return "proto" }

func (sinkCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }

func (sinkCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append((*v.(*[]byte))[:0], data...)
	return nil
}

// serve is the sink's handler for every method (only Export is called).
func (c *countingSink) serve(_ any, stream grpc.ServerStream) error {
	var req []byte
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	n, err := countWireSpans(req)
	if err != nil {
		return err
	}
	c.spans.Add(n)
	empty := []byte{} // an empty ExportTraceServiceResponse
	return stream.SendMsg(&empty)
}

// countWireSpans counts ExportTraceServiceRequest.resource_spans[].
// scope_spans[].spans[] in b.
func countWireSpans(b []byte) (int64, error) {
	var n int64
	// fields returns the length-delimited fields numbered num in b.
	fields := func(b []byte, num protowire.Number, each func([]byte) error) error {
		for len(b) > 0 {
			f, typ, k := protowire.ConsumeTag(b)
			if k < 0 {
				return protowire.ParseError(k)
			}
			b = b[k:]
			if f == num && typ == protowire.BytesType {
				v, k := protowire.ConsumeBytes(b)
				if k < 0 {
					return protowire.ParseError(k)
				}
				if err := each(v); err != nil {
					return err
				}
				b = b[k:]
				continue
			}
			k = protowire.ConsumeFieldValue(f, typ, b)
			if k < 0 {
				return protowire.ParseError(k)
			}
			b = b[k:]
		}
		return nil
	}
	err := fields(b, 1, func(rs []byte) error {
		return fields(rs, 2, func(ss []byte) error {
			return fields(ss, 2, func([]byte) error { n++; return nil })
		})
	})
	return n, err
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
				srv := grpc.NewServer(grpc.ForceServerCodec(sinkCodec{}), grpc.UnknownServiceHandler(sink.serve))
				go srv.Serve(ln)
				defer srv.Stop()
				// A queue for every span of the run: none is dropped, so
				// all of them are exported and in the figures (requests
				// outrun the exporter, which is what is measured).
				cfg.Tracing.OTLP = &OTLP{Endpoint: ln.Addr().String(), QueueSize: 1 << 22}
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
