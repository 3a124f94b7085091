package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/propagation"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/otlp/*.json from what the exporter sends")

// fakeClient is an otlptrace.Client that keeps what it is sent (or fails,
// or blocks until released).
type fakeClient struct {
	mu      sync.Mutex
	rs      []*tracepb.ResourceSpans
	uploads int
	err     error         // returned by every upload when set
	block   chan struct{} // uploads wait for it to close when set
	started chan struct{} // closed at the first upload, when set
	once    sync.Once
}

func (c *fakeClient) Start(context.Context) error { return nil }
func (c *fakeClient) Stop(context.Context) error  { return nil }
func (c *fakeClient) UploadTraces(ctx context.Context, rs []*tracepb.ResourceSpans) error {
	if c.started != nil {
		c.once.Do(func() { close(c.started) })
	}
	if c.block != nil {
		select {
		case <-c.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.uploads++
	if c.err != nil {
		return c.err
	}
	for _, r := range rs {
		c.rs = append(c.rs, proto.Clone(r).(*tracepb.ResourceSpans))
	}
	return nil
}

// spans returns every span received, and the resource and scope of each
// batch they came in (as a ResourceSpans without its spans, in JSON).
func (c *fakeClient) spans(t testing.TB) (spans []*tracepb.Span, headers []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.rs {
		for _, ss := range r.ScopeSpans {
			headers = append(headers, canonJSON(t, &tracepb.ResourceSpans{
				Resource: r.Resource, SchemaUrl: r.SchemaUrl,
				ScopeSpans: []*tracepb.ScopeSpans{{Scope: ss.Scope, SchemaUrl: ss.SchemaUrl}},
			}))
			spans = append(spans, ss.Spans...)
		}
	}
	return spans, headers
}

// canonJSON is m in protojson, made stable (protojson varies its
// whitespace on purpose) by a round trip through encoding/json.
func canonJSON(t testing.TB, m proto.Message) string {
	b, err := protojson.Marshal(m)
	if err == nil {
		var v any
		if err = json.Unmarshal(b, &v); err == nil {
			b, err = json.MarshalIndent(v, "", "  ")
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// goldenEnv runs hops on a fake clock with the exporter's client faked.
type goldenEnv struct {
	t   *testing.T
	tel *Telemetry
	clk *fakeClock
}

func (e *goldenEnv) tick() { e.clk.t = e.clk.t.Add(time.Millisecond) }

// hop runs one hop of route rt with one attempt per code in attempts
// (the last one answers), ending with code and outcome; between attempts
// a retry event. It returns the context the last attempt injected.
func (e *goldenEnv) hop(rt *Route, in propagation.MapCarrier, method string, attempts []string, code string, outcome Outcome) propagation.MapCarrier {
	ctx, h := rt.Start(context.Background(), in, "gateway", method)
	var out propagation.MapCarrier
	for i, c := range attempts {
		e.tick()
		if i > 0 {
			h.Retried(i+1, "unavailable")
		}
		_, a := h.Attempt(ctx, "127.0.0.1:50051")
		out = propagation.MapCarrier{}
		a.Inject(out, func(k string) { delete(out, k) })
		e.tick()
		o := OutcomeOK
		if c != attempts[len(attempts)-1] || outcome.IsError() {
			o = OutcomeError
		}
		a.End(c, o)
	}
	e.tick()
	h.FirstByte()
	h.End(code, outcome)
	return out
}

const (
	inTraceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	inTracestate  = "vendor=opaque"
)

var (
	grpcRoute = RouteInfo{Name: "nlu", Upstream: "nlu-svc", Listener: "grpc", GRPC: true}
	httpRoute = RouteInfo{Name: "dm", Upstream: "dm-svc", Listener: "http", HTTPRoute: "/dm"}
)

// exportCases are the hop shapes whose exported spans are compared with
// testdata/otlp/<name>.json: what a backend receives.
var exportCases = []struct {
	name string
	cfg  Config
	run  func(e *goldenEnv)
}{
	{"grpc call", Config{}, func(e *goldenEnv) {
		e.hop(e.tel.Route(grpcRoute, []string{"gateway"}), propagation.MapCarrier{}, "/bot.v1.NLU/Parse", []string{"OK"}, "OK", OutcomeOK)
	}},
	{"http call with trusted parent", Config{}, func(e *goldenEnv) {
		in := propagation.MapCarrier{"traceparent": inTraceparent, "tracestate": inTracestate}
		e.hop(e.tel.Route(httpRoute, []string{"gateway"}), in, "POST", []string{"200"}, "200", OutcomeOK)
	}},
	{"untrusted incoming context is a link", Config{Tracing: Tracing{TrustIncoming: new(false)}}, func(e *goldenEnv) {
		in := propagation.MapCarrier{"traceparent": inTraceparent, "tracestate": inTracestate, "baggage": "user=x"}
		e.hop(e.tel.Route(httpRoute, nil), in, "POST", []string{"200"}, "200", OutcomeOK)
	}},
	{"retries with events", Config{}, func(e *goldenEnv) {
		e.hop(e.tel.Route(grpcRoute, []string{"gateway"}), propagation.MapCarrier{}, "/bot.v1.NLU/Parse",
			[]string{"UNAVAILABLE", "UNAVAILABLE", "OK"}, "OK", OutcomeOK)
	}},
	{"error status", Config{}, func(e *goldenEnv) {
		e.hop(e.tel.Route(httpRoute, []string{"gateway"}), propagation.MapCarrier{}, "POST", []string{"503"}, "503", OutcomeError)
	}},
	{"rejected without attempts", Config{}, func(e *goldenEnv) {
		ctx, h := e.tel.Route(grpcRoute, []string{"gateway"}).Start(context.Background(), propagation.MapCarrier{}, "gateway", "/bot.v1.NLU/Parse")
		_ = ctx
		e.tick()
		h.Rejected("breaker_open")
		e.tick()
		h.End("UNAVAILABLE", OutcomeError)
	}},
	{"fallback", Config{}, func(e *goldenEnv) {
		rt := e.tel.Route(httpRoute, []string{"gateway"})
		ctx, h := rt.Start(context.Background(), propagation.MapCarrier{}, "gateway", "POST")
		e.tick()
		_, a := h.Attempt(ctx, "[::1]:8080")
		e.tick()
		a.End("504", OutcomeTimeout)
		h.FellBack("timeout", "static")
		e.tick()
		h.End("200", OutcomeOK)
	}},
	{"genai attributes", Config{}, func(e *goldenEnv) {
		rt := e.tel.Route(RouteInfo{Name: "llm", Upstream: "model", Listener: "http", HTTPRoute: "/v1", GenAI: GenAIAPIOpenAI}, nil)
		r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(chatStreamReq))
		ctx, h := rt.Start(context.Background(), propagation.HeaderCarrier(r.Header), "", "POST")
		body, x := h.ObserveHTTP(r)
		io.Copy(io.Discard, body)
		e.tick()
		_, a := h.Attempt(ctx, "127.0.0.1:11434")
		e.tick()
		x.WriteHeader(200, http.Header{"Content-Type": {"text/event-stream"}})
		x.Write([]byte(streamWithUsage))
		a.End("200", OutcomeOK)
		e.tick()
		h.End("200", OutcomeOK)
	}},
	{"turn attributes at the turn's end", Config{}, func(e *goldenEnv) {
		e.tel.SetTurnObserver(&turnRecorder{entry: "chat"})
		chat := e.tel.Route(RouteInfo{Name: "chat", Upstream: "gateway", Listener: "http", HTTPRoute: "/chat"}, nil)
		ctx, h := chat.Start(context.Background(), propagation.MapCarrier{"x-session-id": "sess-1"}, "client", "POST")
		e.tick()
		_, a := h.Attempt(ctx, "127.0.0.1:8081")
		out := propagation.MapCarrier{}
		a.Inject(out, func(k string) { delete(out, k) })
		e.tick()
		// The gateway calls two hops within the turn, in its trace.
		e.hop(e.tel.Route(grpcRoute, []string{"gateway"}), out, "/bot.v1.NLU/Parse", []string{"OK"}, "OK", OutcomeOK)
		e.tick()
		e.hop(e.tel.Route(httpRoute, []string{"gateway"}), out, "POST", []string{"200"}, "200", OutcomeOK)
		e.tick()
		a.End("200", OutcomeOK)
		e.tick()
		h.End("200", OutcomeOK)
	}},
	{"sampled out", Config{Tracing: Tracing{SampleRatio: new(0.0)}}, func(e *goldenEnv) {
		e.hop(e.tel.Route(grpcRoute, nil), propagation.MapCarrier{}, "/bot.v1.NLU/Parse", []string{"OK"}, "OK", OutcomeOK)
	}},
	{"trusted unsampled parent", Config{}, func(e *goldenEnv) {
		in := propagation.MapCarrier{"traceparent": strings.TrimSuffix(inTraceparent, "01") + "00"}
		e.hop(e.tel.Route(httpRoute, nil), in, "POST", []string{"200"}, "200", OutcomeOK)
	}},
}

// TestExportGolden: the spans of each hop shape reach the OTLP client as
// testdata/otlp/<name>.json has them (recorded from the OpenTelemetry
// SDK's own span pipeline, which hop spans went through before they were
// recorded in compact form): names, kinds, parents, trace state, flags,
// times, attributes, events, links, status, resource and scope. IDs are
// numbered in order of appearance and attributes sorted by key (OTLP
// attributes are a map); everything else is as sent.
func TestExportGolden(t *testing.T) {
	for _, tc := range exportCases {
		t.Run(tc.name, func(t *testing.T) {
			client := &fakeClient{}
			clk := &fakeClock{t0}
			cfg := tc.cfg
			cfg.Tracing.OTLP = &OTLP{Endpoint: "collector:4317"}
			tel, err := New(exportOptions(cfg, prometheus.NewRegistry(), clk.now, client))
			if err != nil {
				t.Fatal(err)
			}
			tc.run(&goldenEnv{t: t, tel: tel, clk: clk})
			if err := tel.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			got := goldenJSON(t, client)
			path := filepath.Join("testdata", "otlp", strings.ReplaceAll(tc.name, " ", "_")+".json")
			if *updateGolden {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("exported spans differ from %s:\n%s", path, lineDiff(string(want), string(got)))
			}
		})
	}
}

// goldenJSON is what client received, normalized (see TestExportGolden).
func goldenJSON(t *testing.T, client *fakeClient) []byte {
	spans, headers := client.spans(t)
	slices.SortStableFunc(spans, func(a, b *tracepb.Span) int {
		if a.StartTimeUnixNano != b.StartTimeUnixNano {
			return compareUint(a.StartTimeUnixNano, b.StartTimeUnixNano)
		}
		return int(a.Kind) - int(b.Kind) // server (2) before client (3)
	})
	ids := map[string][]byte{}
	renumber := func(id []byte) []byte {
		if len(id) == 0 {
			return id
		}
		if n, ok := ids[string(id)]; ok {
			return n
		}
		n := make([]byte, len(id))
		n[len(n)-1] = byte(len(ids) + 1)
		ids[string(id)] = n
		return n
	}
	out := struct {
		Batches []json.RawMessage `json:"batches"` // distinct resource and scope
		Spans   []json.RawMessage `json:"spans"`
	}{}
	for _, h := range slices.Compact(headers) {
		out.Batches = append(out.Batches, json.RawMessage(h))
	}
	for _, s := range spans {
		s.TraceId, s.SpanId, s.ParentSpanId = renumber(s.TraceId), renumber(s.SpanId), renumber(s.ParentSpanId)
		for _, l := range s.Links {
			l.TraceId, l.SpanId = renumber(l.TraceId), renumber(l.SpanId)
		}
		slices.SortStableFunc(s.Attributes, func(a, b *commonpb.KeyValue) int { return strings.Compare(a.Key, b.Key) })
		for _, ev := range s.Events {
			slices.SortStableFunc(ev.Attributes, func(a, b *commonpb.KeyValue) int { return strings.Compare(a.Key, b.Key) })
		}
		out.Spans = append(out.Spans, json.RawMessage(canonJSON(t, s)))
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func compareUint(a, b uint64) int {
	if a < b {
		return -1
	}
	return 1
}

// lineDiff lists the lines of got that differ from want, by position.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := range max(len(w), len(g)) {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want " + wl + "\n  got  " + gl + "\n")
		}
	}
	return b.String()
}

// exportOptions builds telemetry whose hop spans go to client.
func exportOptions(cfg Config, reg *prometheus.Registry, now func() time.Time, client *fakeClient) Options {
	return Options{Config: cfg, Registry: reg, Now: now, SpanExporter: otlptrace.NewUnstarted(client)}
}
