package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
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
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/propagation"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
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
	{"grpc over an http listener", Config{}, func(e *goldenEnv) {
		e.hop(e.tel.Route(httpRoute, []string{"gateway"}), propagation.MapCarrier{}, "/bot.v1.NLU/Parse",
			[]string{"Unavailable", "OK"}, "OK", OutcomeOK)
	}},
	{"trusted sampled parent honoured at ratio 0", Config{Tracing: Tracing{SampleRatio: new(0.0)}}, func(e *goldenEnv) {
		in := propagation.MapCarrier{"traceparent": inTraceparent}
		e.hop(e.tel.Route(grpcRoute, nil), in, "/bot.v1.NLU/Parse", []string{"OK"}, "OK", OutcomeOK)
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

// otlpAttrs are OTLP attributes as text (strings as they are, integers
// in decimal, arrays of strings in JSON), by key.
func otlpAttrs(kvs []*commonpb.KeyValue) map[string]string {
	out := map[string]string{}
	for _, kv := range kvs {
		switch v := kv.Value.Value.(type) {
		case *commonpb.AnyValue_StringValue:
			out[kv.Key] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			out[kv.Key] = strconv.FormatInt(v.IntValue, 10)
		case *commonpb.AnyValue_ArrayValue:
			var ss []string
			for _, e := range v.ArrayValue.Values {
				ss = append(ss, e.GetStringValue())
			}
			b, _ := json.Marshal(ss)
			out[kv.Key] = string(b)
		default:
			out[kv.Key] = kv.Value.String()
		}
	}
	return out
}

// exportOptions builds telemetry whose hop spans go to client.
func exportOptions(cfg Config, reg *prometheus.Registry, now func() time.Time, client *fakeClient) Options {
	return Options{Config: cfg, Registry: reg, Now: now, SpanClient: client}
}

// exportRun is a telemetry with an exporter whose client is client, on
// a fake clock, logging into log.
func exportRun(t *testing.T, o OTLP, client *fakeClient, log *bytes.Buffer) (*goldenEnv, *Telemetry) {
	t.Helper()
	clk := &fakeClock{t0}
	opts := exportOptions(Config{Tracing: Tracing{OTLP: &o}}, prometheus.NewRegistry(), clk.now, client)
	if log != nil {
		opts.Logger = slog.New(slog.NewTextHandler(log, nil))
	}
	tel, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return &goldenEnv{t: t, tel: tel, clk: clk}, tel
}

// grpcCall is one hop with one attempt: two spans.
func (e *goldenEnv) grpcCall() {
	e.hop(e.tel.Route(grpcRoute, []string{"gateway"}), propagation.MapCarrier{}, "/bot.v1.NLU/Parse", []string{"OK"}, "OK", OutcomeOK)
}

// TestExportQueueBound: at most queue_size spans are queued or in an
// export call at once; past that spans are dropped and counted, and the
// request never waits. What was within the bound is exported.
func TestExportQueueBound(t *testing.T) {
	cases := []struct {
		name      string
		queue     int
		calls     int // made while the first upload is held up
		exported  float64
		dropped   float64
		spansSent int
	}{
		// The first 2 calls fill a batch of 4 (the queue's size), whose
		// upload blocks; every later span finds the bound taken.
		{"full: drops counted", 4, 3, 4, 6, 4},
		// A batch is at most 512 spans: with 600 places, 6 more spans fit
		// beside the blocked one.
		{"within the bound: nothing dropped", 600, 3, 518, 0, 518},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client := &fakeClient{block: make(chan struct{}), started: make(chan struct{})}
			e, tel := exportRun(t, OTLP{QueueSize: tc.queue}, client, nil)
			for range min(tc.queue, maxExportBatch) / 2 {
				e.grpcCall()
			}
			select {
			case <-client.started:
			case <-time.After(10 * time.Second):
				t.Fatal("a full batch was not uploaded")
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for range tc.calls {
					e.grpcCall()
				}
			}()
			select {
			case <-done: // the calls did not wait for the blocked upload
			case <-time.After(10 * time.Second):
				t.Fatal("calls waited for the exporter")
			}
			close(client.block)
			if err := tel.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			spans, _ := client.spans(t)
			exported, dropped := testutil.ToFloat64(tel.m.spansExported), testutil.ToFloat64(tel.m.spansDropped)
			if len(spans) != tc.spansSent || exported != tc.exported || dropped != tc.dropped {
				t.Errorf("%d spans sent, %v counted exported, %v dropped; want %d, %v, %v",
					len(spans), exported, dropped, tc.spansSent, tc.exported, tc.dropped)
			}
		})
	}
}

// TestExportFailure: a failed upload is counted per call and logged once
// per exportLogEvery, with the spans it lost; nothing counts as exported;
// the calls are unaffected.
func TestExportFailure(t *testing.T) {
	var log bytes.Buffer
	client := &fakeClient{err: errors.New("collector down")}
	e, tel := exportRun(t, OTLP{}, client, &log)
	for range 3 {
		e.grpcCall()
		if err := tel.exp.flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(tel.m.exportFailures); got != 3 {
		t.Errorf("hopwatch_span_export_failures_total = %v, want 3 (one per upload)", got)
	}
	if got := testutil.ToFloat64(tel.m.spansExported); got != 0 {
		t.Errorf("hopwatch_spans_exported_total = %v, want 0", got)
	}
	if n := strings.Count(log.String(), "span export failed"); n != 1 || !strings.Contains(log.String(), "collector down") ||
		!strings.Contains(log.String(), "spans=2") {
		t.Errorf("%d failure lines, want 1 naming the error and the 2 spans lost:\n%s", n, log.String())
	}
}

// TestExportShutdown: spans wait for a full batch or the export interval
// (neither comes here), and Shutdown sends them; spans that end after it
// are not exported, and nothing fails.
func TestExportShutdown(t *testing.T) {
	client := &fakeClient{}
	e, tel := exportRun(t, OTLP{}, client, nil)
	for range 3 {
		e.grpcCall()
	}
	if spans, _ := client.spans(t); len(spans) != 0 {
		t.Fatalf("%d spans sent before a batch was full or due", len(spans))
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if spans, _ := client.spans(t); len(spans) != 6 || testutil.ToFloat64(tel.m.spansExported) != 6 {
		t.Errorf("%d spans sent at shutdown (%v counted), want 6", len(spans), testutil.ToFloat64(tel.m.spansExported))
	}
	e.grpcCall() // after shutdown: served, not exported
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if spans, _ := client.spans(t); len(spans) != 6 || client.uploads != 1 {
		t.Errorf("%d spans in %d uploads after a second shutdown, want 6 in 1", len(spans), client.uploads)
	}
}

// captureServer is an OTLP/gRPC trace receiver that hands what it gets
// to a fakeClient's list.
type captureServer struct {
	coltracepb.UnimplementedTraceServiceServer
	into *fakeClient
}

func (c captureServer) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	return &coltracepb.ExportTraceServiceResponse{}, c.into.UploadTraces(ctx, req.ResourceSpans)
}

// TestExportOverTheWire: the OTLP exporters' own clients, over gRPC and
// over HTTP (protobuf) to receivers on loopback, deliver the golden
// spans: what the converter builds and reuses marshals as it should.
func TestExportOverTheWire(t *testing.T) {
	for _, protocol := range []string{"grpc", "http"} {
		t.Run(protocol, func(t *testing.T) {
			got := &fakeClient{}
			var endpoint string
			if protocol == "grpc" {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				srv := grpc.NewServer()
				coltracepb.RegisterTraceServiceServer(srv, captureServer{into: got})
				go srv.Serve(ln)
				t.Cleanup(srv.Stop)
				endpoint = ln.Addr().String()
			} else {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					var req coltracepb.ExportTraceServiceRequest
					b, err := io.ReadAll(r.Body)
					if err == nil {
						err = proto.Unmarshal(b, &req)
					}
					if err != nil || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
						t.Errorf("%s %s (%s): %v", r.Method, r.URL.Path, r.Header.Get("Content-Type"), err)
						http.Error(w, "bad export", http.StatusBadRequest)
						return
					}
					got.UploadTraces(r.Context(), req.ResourceSpans)
					w.Header().Set("Content-Type", "application/x-protobuf")
					w.Write(marshal(t, &coltracepb.ExportTraceServiceResponse{}))
				}))
				t.Cleanup(srv.Close)
				endpoint = srv.Listener.Addr().String()
			}
			clk := &fakeClock{t0}
			reg := prometheus.NewRegistry()
			tel, err := New(Options{Config: Config{Tracing: Tracing{OTLP: &OTLP{Endpoint: endpoint, Protocol: protocol}}},
				Registry: reg, Now: clk.now})
			if err != nil {
				t.Fatal(err)
			}
			e := &goldenEnv{t: t, tel: tel, clk: clk}
			for range 2 { // twice: the second batch reuses the first one's messages
				clk.t = t0
				e.grpcCall()
				if err := tel.exp.flush(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			if err := tel.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if n := testutil.ToFloat64(tel.m.spansExported); n != 4 {
				t.Fatalf("%v spans exported, want 4 (failures: %v)", n, testutil.ToFloat64(tel.m.exportFailures))
			}
			// Each batch is the golden grpc call (ids are renumbered).
			want, err := os.ReadFile(filepath.Join("testdata", "otlp", "grpc_call.json"))
			if err != nil {
				t.Fatal(err)
			}
			if len(got.rs) != 2 {
				t.Fatalf("%d batches received, want 2", len(got.rs))
			}
			for i, rs := range got.rs {
				if g := goldenJSON(t, &fakeClient{rs: []*tracepb.ResourceSpans{rs}}); !bytes.Equal(g, want) {
					t.Errorf("batch %d differs from the golden grpc call:\n%s", i+1, lineDiff(string(want), string(g)))
				}
			}
		})
	}
}

// TestExportEvents: an exported span keeps the latest maxExportedEvents
// events and counts the older ones it let go, as the SDK's span limits
// did; an event that comes after the hop ended (resilience code on
// another goroutine) is not on its exported span, and is no race.
func TestExportEvents(t *testing.T) {
	cases := []struct {
		name           string
		events, late   int
		kept, dropped  int
		firstAttemptNo int64
	}{
		{"a few", 3, 0, 3, 0, 1},
		{"over the limit", maxExportedEvents + 2, 0, maxExportedEvents, 2, 3},
		{"after the end", 1, 5, 1, 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client := &fakeClient{}
			e, tel := exportRun(t, OTLP{}, client, nil)
			_, h := tel.Route(grpcRoute, nil).Start(context.Background(), propagation.MapCarrier{}, "gateway", "/bot.v1.NLU/Parse")
			for i := range tc.events {
				e.tick()
				h.Retried(i+1, "unavailable")
			}
			e.tick()
			h.End("OK", OutcomeOK)
			var wg sync.WaitGroup
			for i := range tc.late {
				wg.Go(func() { h.Retried(100+i, "late") })
			}
			wg.Wait()
			if err := tel.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			spans, _ := client.spans(t)
			if len(spans) != 1 {
				t.Fatalf("%d spans", len(spans))
			}
			s := spans[0]
			if len(s.Events) != tc.kept || int(s.DroppedEventsCount) != tc.dropped {
				t.Fatalf("%d events, %d dropped; want %d, %d", len(s.Events), s.DroppedEventsCount, tc.kept, tc.dropped)
			}
			if got := otlpAttrs(s.Events[0].Attributes)["hopwatch.attempt"]; got != strconv.FormatInt(tc.firstAttemptNo, 10) {
				t.Errorf("first event kept is attempt %s, want %d", got, tc.firstAttemptNo)
			}
		})
	}
}
