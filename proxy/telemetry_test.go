package proxy_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// seenHeaders is an HTTP upstream that records the trace headers it gets.
type seenHeaders struct {
	mu   sync.Mutex
	last http.Header
}

func (s *seenHeaders) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.last = r.Header.Clone()
	s.mu.Unlock()
	fmt.Fprint(w, "ok")
}

func (s *seenHeaders) get() http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

type telemetryEnv struct {
	tel      *telemetry.Telemetry
	reg      *prometheus.Registry
	grpcAddr string
	httpAddr string
	// relayAddr is a gRPC listener with relay: frames, route "echo-relay".
	relayAddr string
	web       *seenHeaders
}

func startTelemetryEnv(t *testing.T, cfg telemetry.Config) *telemetryEnv {
	t.Helper()
	backend := startEcho(t)
	web := &seenHeaders{}
	ws := httptest.NewServer(web)
	t.Cleanup(ws.Close)
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(telemetry.Options{Config: cfg, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	p := proxy.New(proxy.Options{Telemetry: tel})
	spec := &routes.Spec{
		Callers: []string{"gateway"},
		Listeners: []routes.Listener{
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", CallerHeader: "x-hop-caller", Relay: routes.ListenerRelayMessages},
			{Name: "http", Address: "127.0.0.1:0", Protocol: "http", Caller: "gateway"},
			{Name: "relay", Address: "127.0.0.1:0", Protocol: "grpc", CallerHeader: "x-hop-caller", Relay: routes.ListenerRelayFrames},
		},
		Routes: []routes.Route{
			{Name: "echo", Listener: "grpc", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
			{Name: "echo-relay", Listener: "relay", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
			{Name: "web", Listener: "http", Match: routes.Match{PathPrefix: "/"}, Upstream: "web"},
		},
		Upstreams: []routes.Upstream{
			{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}},
			{Name: "web", Protocol: "http", Endpoints: []string{ws.Listener.Addr().String()}},
		},
	}
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, p) })
	return &telemetryEnv{tel: tel, reg: reg, grpcAddr: p.Addr("grpc").String(), httpAddr: p.Addr("http").String(),
		relayAddr: p.Addr("relay").String(), web: web}
}

const (
	inTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	inParent = "00f067aa0ba902b7"
)

func parseTraceparent(t *testing.T, v string) (trace.TraceID, trace.SpanID, string) {
	t.Helper()
	parts := strings.Split(v, "-")
	if len(parts) != 4 {
		t.Fatalf("upstream got traceparent %q", v)
	}
	tid, err1 := trace.TraceIDFromHex(parts[1])
	sid, err2 := trace.SpanIDFromHex(parts[2])
	if err1 != nil || err2 != nil {
		t.Fatalf("upstream got malformed traceparent %q", v)
	}
	return tid, sid, parts[3]
}

// TestPropagation checks what the upstream receives and what the proxy
// records, for both listener kinds, with trusted, untrusted and malformed
// incoming context.
func TestPropagation(t *testing.T) {
	no := false
	cases := []struct {
		name        string
		cfg         telemetry.Config
		traceparent string
		// wantSameTrace: the upstream continues the caller's trace.
		wantSameTrace bool
		// wantBaggage: the caller's baggage reaches the upstream (only
		// from a trusted caller, issue 8).
		wantBaggage bool
	}{
		{"trusted parent is continued", telemetry.Config{}, "00-" + inTrace + "-" + inParent + "-01", true, true},
		{"untrusted parent starts a new trace", telemetry.Config{Tracing: telemetry.Tracing{TrustIncoming: &no}}, "00-" + inTrace + "-" + inParent + "-01", false, false},
		{"untrusted caller without a parent", telemetry.Config{Tracing: telemetry.Tracing{TrustIncoming: &no}}, "", false, false},
		{"untrusted, baggage not among the propagators", telemetry.Config{Tracing: telemetry.Tracing{TrustIncoming: &no, Propagators: []string{"tracecontext"}}}, "", false, false},
		{"malformed traceparent starts a new trace", telemetry.Config{}, "00-zzzz-not-a-trace", false, true},
		{"no traceparent starts a new trace", telemetry.Config{}, "", false, true},
	}
	for _, tc := range cases {
		for _, kind := range []string{"grpc", "relay", "http"} {
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				env := startTelemetryEnv(t, tc.cfg)
				var got http.Header
				switch kind {
				case "grpc", "relay":
					addr := env.grpcAddr
					if kind == "relay" {
						addr = env.relayAddr
					}
					md := metadata.Pairs("x-hop-caller", "gateway", "baggage", "session=s-42", "x-deadline", "1")
					if tc.traceparent != "" {
						md.Set("traceparent", tc.traceparent)
						md.Set("tracestate", "vendor=opaque")
					}
					var hdr metadata.MD
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					// The echo backend returns x-* metadata; trace headers
					// come back via a small trick: ask it to echo them.
					md.Set("x-traceparent-probe", "1")
					o := unary(ctx, dial(t, addr), "/"+echoService+"/Unary", md, []byte("q"))
					if o.Code != 0 {
						t.Fatalf("call failed: %v", o)
					}
					hdr = o.Header
					got = http.Header{}
					for _, k := range []string{"traceparent", "tracestate", "baggage"} {
						if v := hdr["echo-seen-"+k]; len(v) > 0 {
							got.Set(k, v[0])
						}
					}
				case "http":
					req, _ := http.NewRequest("GET", "http://"+env.httpAddr+"/x", nil)
					req.Header.Set("Baggage", "session=s-42")
					req.Header.Set("X-B3-Sampled", "1") // b3 is not configured here
					if tc.traceparent != "" {
						req.Header.Set("Traceparent", tc.traceparent)
						req.Header.Set("Tracestate", "vendor=opaque")
					}
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					resp.Body.Close()
					http.DefaultClient.CloseIdleConnections()
					got = env.web.get()
				}
				tid, parent, _ := parseTraceparent(t, got.Get("traceparent"))
				if tc.wantBaggage && got.Get("baggage") != "session=s-42" {
					t.Errorf("baggage not passed: %q", got.Get("baggage"))
				}
				if !tc.wantBaggage && got.Get("baggage") != "" {
					t.Errorf("untrusted caller's baggage forwarded: %q", got.Get("baggage"))
				}
				if kind == "http" && !tc.wantBaggage && got.Get("X-B3-Sampled") != "" {
					t.Errorf("untrusted caller's B3 header forwarded: %q", got.Get("X-B3-Sampled"))
				}
				if (tid.String() == inTrace) != tc.wantSameTrace {
					t.Errorf("upstream trace %s, incoming %s, want same=%v", tid, inTrace, tc.wantSameTrace)
				}
				if !tc.wantSameTrace && got.Get("tracestate") == "vendor=opaque" {
					t.Errorf("caller's tracestate travelled on with a new trace")
				}
				// The upstream's parent is the proxy's client span, whose
				// parent is the proxy's server span, whose parent (trusted
				// only) is the caller's span.
				detail, ok := env.tel.Store.Trace(tid)
				if !ok {
					t.Fatalf("trace %s not in the store", tid)
				}
				var server, client *telemetry.Span
				for i := range detail.Spans {
					s := &detail.Spans[i].Span
					switch s.Kind {
					case telemetry.KindServer:
						server = s
					case telemetry.KindClient:
						client = s
					}
				}
				if server == nil || client == nil {
					t.Fatalf("want a server and a client span, got %+v", detail.Spans)
				}
				if client.SpanID != parent {
					t.Errorf("upstream parent %s, want the proxy's client span %s", parent, client.SpanID)
				}
				if client.ParentID != server.SpanID {
					t.Errorf("client span parent %s, want server span %s", client.ParentID, server.SpanID)
				}
				wantParent := ""
				if tc.wantSameTrace {
					wantParent = inParent
				}
				if server.ParentID.IsValid() && server.ParentID.String() != wantParent || !server.ParentID.IsValid() && wantParent != "" {
					t.Errorf("server span parent %s, want %q", server.ParentID, wantParent)
				}
				if server.Caller != "gateway" || server.Outcome != telemetry.OutcomeOK {
					t.Errorf("server span %+v", server)
				}
			})
		}
	}
}

// TestHopMetrics checks the RED series and their labels after a few calls.
func TestHopMetrics(t *testing.T) {
	env := startTelemetryEnv(t, telemetry.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, addr := range []string{env.grpcAddr, env.relayAddr} {
		cc := dial(t, addr)
		unary(ctx, cc, "/"+echoService+"/Unary", metadata.Pairs("x-hop-caller", "gateway"), nil)
		unary(ctx, cc, "/"+echoService+"/Unary", metadata.Pairs("x-hop-caller", "intruder-123"), nil)
		o := unary(ctx, cc, "/"+echoService+"/Unary", metadata.Pairs("x-hop-caller", "gateway", "x-status", "14"), nil)
		if status.Code(nil) != 0 || o.Code != 14 {
			t.Fatalf("want UNAVAILABLE from upstream, got %v", o.Code)
		}
		unary(ctx, cc, "/other.Svc/Nope", nil, nil) // unrouted
	}
	resp, err := http.Get("http://" + env.httpAddr + "/page")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()

	const m = "/" + echoService + "/Unary"
	cases := []struct {
		name   string
		metric string
		labels []string
		want   float64
	}{
		{"known caller ok", "hopwatch_hop_requests_total", []string{"gateway", "echo", "echo", m, "OK", "ok"}, 1},
		{"unknown caller becomes other", "hopwatch_hop_requests_total", []string{"other", "echo", "echo", m, "OK", "ok"}, 1},
		{"upstream error by code", "hopwatch_hop_requests_total", []string{"gateway", "echo", "echo", m, "Unavailable", "error"}, 1},
		{"http route", "hopwatch_hop_requests_total", []string{"gateway", "web", "web", "GET", "200", "ok"}, 1},
		{"relay: known caller ok", "hopwatch_hop_requests_total", []string{"gateway", "echo-relay", "echo", m, "OK", "ok"}, 1},
		{"relay: unknown caller becomes other", "hopwatch_hop_requests_total", []string{"other", "echo-relay", "echo", m, "OK", "ok"}, 1},
		{"relay: upstream error by code", "hopwatch_hop_requests_total", []string{"gateway", "echo-relay", "echo", m, "Unavailable", "error"}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := counterValue(t, env.reg, tc.metric, tc.labels)
			if got != tc.want {
				t.Fatalf("%s%v = %v, want %v", tc.metric, tc.labels, got, tc.want)
			}
		})
	}
	if n, err := testutil.GatherAndCount(env.reg, "hopwatch_unrouted_requests_total"); err != nil || n != 2 { // one per gRPC listener
		t.Errorf("unrouted series: %d, %v", n, err)
	}
	if n, err := testutil.GatherAndCount(env.reg, "hopwatch_hop_duration_seconds", "hopwatch_hop_first_byte_seconds", "hopwatch_hop_inflight"); err != nil || n == 0 {
		t.Errorf("duration/first byte/inflight series: %d, %v", n, err)
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels []string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			lp := m.GetLabel()
			// Labels come sorted by name: caller, code, method, outcome, route, upstream.
			want := map[string]string{"caller": labels[0], "route": labels[1], "upstream": labels[2], "method": labels[3], "code": labels[4], "outcome": labels[5]}
			for _, l := range lp {
				if want[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestB3Extraction: with b3 among the propagators, a B3-only caller's
// trace is continued, and the upstream gets both W3C and B3 context.
func TestB3Extraction(t *testing.T) {
	env := startTelemetryEnv(t, telemetry.Config{Tracing: telemetry.Tracing{Propagators: []string{"tracecontext", "baggage", "b3"}}})
	req, _ := http.NewRequest("GET", "http://"+env.httpAddr+"/x", nil)
	req.Header.Set("X-B3-TraceId", inTrace)
	req.Header.Set("X-B3-SpanId", inParent)
	req.Header.Set("X-B3-Sampled", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	got := env.web.get()
	tid, parent, _ := parseTraceparent(t, got.Get("traceparent"))
	if tid.String() != inTrace {
		t.Fatalf("upstream trace %s, want the B3 caller's %s", tid, inTrace)
	}
	if got.Get("X-B3-Traceid") != inTrace || got.Get("X-B3-Spanid") != parent.String() {
		t.Fatalf("upstream B3 headers %q/%q, want trace %s span %s (the proxy's client span)",
			got.Get("X-B3-Traceid"), got.Get("X-B3-Spanid"), inTrace, parent)
	}
}

// TestLabelsBoundedThroughProxy: long and malformed gRPC method names on
// the gRPC listener, any URL path sent as gRPC (content-type
// application/grpc over h2c) on the HTTP listener, and an upstream's
// undefined grpc-status number leave /metrics small and its labels in a
// fixed set (issue 8, item 4).
func TestLabelsBoundedThroughProxy(t *testing.T) {
	env := startTelemetryEnv(t, telemetry.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc := dial(t, env.grpcAddr)
	const names = 40
	pad := strings.Repeat("x", 4<<10)
	for i := range names {
		// Matches the echo route (its service); the backend answers
		// Unimplemented.
		unary(ctx, cc, fmt.Sprintf("/%s/M%d%s", echoService, i, pad), metadata.Pairs("x-hop-caller", "gateway"), nil)
	}
	if o := unary(ctx, cc, "/"+echoService+"/Unary", metadata.Pairs("x-hop-caller", "gateway", "x-status", "99"), nil); o.Code != 99 {
		t.Fatalf("want the upstream's status 99 passed through, got %v", o.Code)
	}
	h2c := newHTTPClient(t, protoH2C)
	for i := range names {
		req, _ := http.NewRequestWithContext(ctx, "POST", fmt.Sprintf("http://%s/kb/%d/%s", env.httpAddr, i, pad), strings.NewReader(""))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		resp, err := h2c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	rec := httptest.NewRecorder()
	env.tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	// Unbounded, every name would appear in a counter and 17+ histogram
	// lines: 80 names × 4 KiB × 18 ≈ 6 MiB.
	const maxBody = 128 << 10
	t.Logf("/metrics: %d bytes after %d long method names per listener", len(body), names)
	if len(body) > maxBody {
		t.Fatalf("/metrics is %d bytes, want at most %d", len(body), maxBody)
	}
	for _, bad := range []string{pad[:64], "Code(", "/kb/"} {
		if strings.Contains(body, bad) {
			t.Errorf("/metrics contains %.20q", bad)
		}
	}
	for _, want := range []string{`code="Unknown"`, `method="other"`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
