package bench

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// startResilientProxy runs hopwatch in front of the backends with a retry
// and fallback policy on both routes: every call takes the resilient path
// (request recorded for replay, detached upstream context, latency budget
// armed, success stored in the fallback cache), though none is ever late or
// failed, so what is measured is the policy's cost on the fast path.
func startResilientProxy(b *testing.B, be backends, withTelemetry bool) (grpcAddr, httpAddr string) {
	b.Helper()
	opts := proxy.Options{Logger: slog.New(slog.DiscardHandler)}
	if withTelemetry {
		tel, err := telemetry.New(telemetry.Options{Registry: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tel.Shutdown(context.Background()) })
		opts.Telemetry = tel
	}
	p := proxy.New(opts)
	policy := func(on string, static *routes.FallbackStatic) (*routes.Retry, *routes.Fallback) {
		return &routes.Retry{Attempts: 2, On: []string{on}},
			&routes.Fallback{
				After:  time.Second,
				Use:    []string{"cache", "static"},
				Cache:  &routes.FallbackCache{TTL: time.Minute, MaxEntries: 1000},
				Static: static,
			}
	}
	gr, gf := policy("unavailable", &routes.FallbackStatic{GRPCCode: "unavailable", GRPCMessage: "degraded"})
	hr, hf := policy("connect-failure", &routes.FallbackStatic{Status: 200, ContentType: "application/json", Body: `{}`})
	err := p.Apply(&routes.Spec{
		Callers: []string{"bench"},
		Listeners: []routes.Listener{
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Caller: "bench"},
			{Name: "http", Address: "127.0.0.1:0", Protocol: "http", Caller: "bench"},
		},
		Routes: []routes.Route{
			{Name: "health", Listener: "grpc", Match: routes.Match{GRPCService: "grpc.health.v1.Health"}, Upstream: "health",
				Timeout: 5 * time.Second, Retry: gr, Fallback: gf},
			{Name: "nlu", Listener: "http", Match: routes.Match{PathPrefix: "/nlu/"}, Upstream: "nlu",
				Timeout: 5 * time.Second, Retry: hr, Fallback: hf},
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
	return p.Addr("grpc").String(), p.Addr("http").String()
}

// benchHTTPBody posts a small JSON body, as a bot turn does: a resilient
// route buffers it for replay and keys the cache on it.
func benchHTTPBody(b *testing.B, url string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer client.CloseIdleConnections()
	const body = `{"message":"what are your opening hours?"}`
	do := func() {
		resp, err := client.Post(url, "application/json", strings.NewReader(body))
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

// BenchmarkResilient: a unary gRPC call and an HTTP POST on routes with a
// retry and fallback policy (the resilient path), against the same
// backends as BenchmarkUnaryGRPC and BenchmarkHTTP. allocs/op counts the
// whole process; compare with the plain routes' rows.
func BenchmarkResilient(b *testing.B) {
	be := startBackends(b)
	for _, tel := range []bool{false, true} {
		name := "proxy"
		if tel {
			name = "proxy+telemetry"
		}
		b.Run("grpc/"+name, func(b *testing.B) {
			addr, _ := startResilientProxy(b, be, tel)
			benchGRPC(b, addr)
		})
		b.Run("http/"+name, func(b *testing.B) {
			_, addr := startResilientProxy(b, be, tel)
			benchHTTPBody(b, "http://"+addr+"/nlu/parse")
		})
	}
}
