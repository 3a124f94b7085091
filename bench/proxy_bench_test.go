package bench

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// backends are a real grpc-go server (the standard health service: a tiny
// unary call, so the proxy's own cost dominates) and an HTTP server.
type backends struct {
	grpcAddr string
	httpAddr string
}

func startBackends(b *testing.B) backends {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)
	b.Cleanup(srv.Stop)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte(`{"intent":"greet"}`))
	}))
	b.Cleanup(hs.Close)
	return backends{grpcAddr: ln.Addr().String(), httpAddr: hs.Listener.Addr().String()}
}

// startProxy runs hopwatch in front of the backends; withTelemetry turns
// spans, metrics, the trace store and hop statistics on.
func startProxy(b *testing.B, be backends, withTelemetry bool, cfg ...telemetry.Config) (grpcAddr, httpAddr string) {
	b.Helper()
	a := startProxyAddrs(b, be, withTelemetry, cfg...)
	return a.grpc, a.http
}

// proxyAddrs are the listeners of startProxyAddrs: gRPC through grpc-go
// (relay: messages), HTTP, and gRPC through the frame relay (the default,
// relay: frames).
type proxyAddrs struct{ grpc, http, relay string }

func startProxyAddrs(b *testing.B, be backends, withTelemetry bool, cfg ...telemetry.Config) proxyAddrs {
	b.Helper()
	opts := proxy.Options{}
	if withTelemetry {
		var c telemetry.Config
		if len(cfg) > 0 {
			c = cfg[0]
		}
		tel, err := telemetry.New(telemetry.Options{Config: c, Registry: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tel.Shutdown(context.Background()) })
		opts.Telemetry = tel
	}
	opts.Logger = slog.New(slog.DiscardHandler)
	p := proxy.New(opts)
	err := p.Apply(&routes.Spec{
		Callers: []string{"bench"},
		Listeners: []routes.Listener{
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Caller: "bench", Relay: routes.ListenerRelayMessages},
			{Name: "http", Address: "127.0.0.1:0", Protocol: "http", Caller: "bench"},
			{Name: "relay", Address: "127.0.0.1:0", Protocol: "grpc", Caller: "bench", Relay: routes.ListenerRelayFrames},
		},
		Routes: []routes.Route{
			{Name: "health", Listener: "grpc", Match: routes.Match{GRPCService: "grpc.health.v1.Health"}, Upstream: "health"},
			{Name: "health-relay", Listener: "relay", Match: routes.Match{GRPCService: "grpc.health.v1.Health"}, Upstream: "health"},
			{Name: "nlu", Listener: "http", Match: routes.Match{PathPrefix: "/nlu/"}, Upstream: "nlu"},
		},
		Upstreams: []routes.Upstream{
			{Name: "health", Protocol: "grpc", Endpoints: []string{be.grpcAddr}},
			{Name: "nlu", Protocol: "http", Endpoints: []string{be.httpAddr}},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Shutdown(context.Background()) })
	return proxyAddrs{grpc: p.Addr("grpc").String(), http: p.Addr("http").String(), relay: p.Addr("relay").String()}
}

func benchGRPC(b *testing.B, addr string) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	ctx := context.Background()
	req := &healthpb.HealthCheckRequest{}
	if _, err := hc.Check(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := hc.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

func benchHTTP(b *testing.B, url string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer client.CloseIdleConnections()
	do := func() {
		resp, err := client.Post(url, "application/json", nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	do()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		do()
	}
}

// BenchmarkUnaryGRPC: one unary call; allocs/op counts the whole process
// (client, proxy and backend), so compare the rows, not the absolute value.
func BenchmarkUnaryGRPC(b *testing.B) {
	be := startBackends(b)
	b.Run("direct", func(b *testing.B) { benchGRPC(b, be.grpcAddr) })
	b.Run("proxy", func(b *testing.B) {
		addr, _ := startProxy(b, be, false)
		benchGRPC(b, addr)
	})
	b.Run("proxy+telemetry", func(b *testing.B) {
		addr, _ := startProxy(b, be, true)
		benchGRPC(b, addr)
	})
	// With an OTLP exporter: the collector here is a closed port, so
	// exports fail in the background (counted).
	b.Run("proxy+telemetry+otlp", func(b *testing.B) {
		addr, _ := startProxy(b, be, true, otlpConfig)
		benchGRPC(b, addr)
	})
	// The same with a collector that takes the spans (a loopback OTLP/gRPC
	// sink that counts and drops them): the exporter does all its work.
	b.Run("proxy+telemetry+otlp-sink", func(b *testing.B) {
		addr, _ := startProxy(b, be, true, sinkConfig(b))
		benchGRPC(b, addr)
	})
	// The same through the frame relay (listeners[].relay: frames).
	b.Run("relay", func(b *testing.B) {
		benchGRPC(b, startProxyAddrs(b, be, false).relay)
	})
	b.Run("relay+telemetry", func(b *testing.B) {
		benchGRPC(b, startProxyAddrs(b, be, true).relay)
	})
	b.Run("relay+telemetry+otlp", func(b *testing.B) {
		benchGRPC(b, startProxyAddrs(b, be, true, otlpConfig).relay)
	})
	b.Run("relay+telemetry+otlp-sink", func(b *testing.B) {
		benchGRPC(b, startProxyAddrs(b, be, true, sinkConfig(b)).relay)
	})
}

// BenchmarkUnaryGRPCConcurrent: 16 unary calls at a time over one
// connection, as bench/peers loads the proxy: frames of concurrent calls
// share the connections' writes.
func BenchmarkUnaryGRPCConcurrent(b *testing.B) {
	be := startBackends(b)
	b.Run("proxy+telemetry", func(b *testing.B) {
		benchGRPCParallel(b, startProxyAddrs(b, be, true).grpc)
	})
	b.Run("relay+telemetry", func(b *testing.B) {
		benchGRPCParallel(b, startProxyAddrs(b, be, true).relay)
	})
}

func benchGRPCParallel(b *testing.B, addr string) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	req := &healthpb.HealthCheckRequest{}
	if _, err := hc.Check(context.Background(), req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetParallelism(8) // × GOMAXPROCS (2 here): 16 calls at a time
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := hc.Check(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

var otlpConfig = telemetry.Config{Tracing: telemetry.Tracing{OTLP: &telemetry.OTLP{Endpoint: "127.0.0.1:1", Timeout: 100 * time.Millisecond}}}

// BenchmarkHTTP: one HTTP/1.1 POST with keep-alive.
func BenchmarkHTTP(b *testing.B) {
	be := startBackends(b)
	b.Run("direct", func(b *testing.B) { benchHTTP(b, "http://"+be.httpAddr+"/nlu/parse") })
	b.Run("proxy", func(b *testing.B) {
		_, addr := startProxy(b, be, false)
		benchHTTP(b, "http://"+addr+"/nlu/parse")
	})
	b.Run("proxy+telemetry", func(b *testing.B) {
		_, addr := startProxy(b, be, true)
		benchHTTP(b, "http://"+addr+"/nlu/parse")
	})
	b.Run("proxy+telemetry+otlp-sink", func(b *testing.B) {
		_, addr := startProxy(b, be, true, sinkConfig(b))
		benchHTTP(b, "http://"+addr+"/nlu/parse")
	})
}

// otlpSink is a minimal OTLP/gRPC trace receiver that counts the spans it
// is sent and drops them.
type otlpSink struct {
	collectortrace.UnimplementedTraceServiceServer
	spans atomic.Int64
}

func (s *otlpSink) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			s.spans.Add(int64(len(ss.GetSpans())))
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// sinkConfig starts an otlpSink on loopback for b and returns a telemetry
// configuration that exports to it; b fails at cleanup if no span arrived.
func sinkConfig(b *testing.B) telemetry.Config {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	sink := &otlpSink{}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, sink)
	go srv.Serve(ln)
	b.Cleanup(func() {
		srv.Stop()
		if sink.spans.Load() == 0 {
			b.Error("the OTLP sink received no span")
		}
	})
	return telemetry.Config{Tracing: telemetry.Tracing{OTLP: &telemetry.OTLP{Endpoint: ln.Addr().String()}}}
}
