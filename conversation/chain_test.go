package conversation_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/hopwatch/hopwatch/admin"
	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// A bot of four hops, each through hopwatch, in one trace, three deep:
//
//	client  ─► hopwatch chat ─► gateway
//	gateway ─► hopwatch nlu  ─► nlu (gRPC: grpc.health.v1.Health/Check)
//	gateway ─► hopwatch dm   ─► dm
//	dm      ─► hopwatch llm  ─► model (OpenAI-compatible, genai route)
//
// The services forward the trace headers as an instrumented service does,
// and the client's JSON body unchanged down to the model, which reads
// from it how to answer: "stream", "finish" (its finish_reason) and
// "fail" (a 500).
type botChain struct {
	tel     *telemetry.Telemetry
	reg     *prometheus.Registry
	exp     *keptSpans
	admin   string // http://host:port of the admin API
	chatURL string

	mu    sync.Mutex
	turns map[trace.TraceID]conversation.TurnResult
}

// keptSpans is an OTLP client that keeps the spans it is sent.
type keptSpans struct {
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (*keptSpans) Start(context.Context) error { return nil }
func (*keptSpans) Stop(context.Context) error  { return nil }
func (k *keptSpans) UploadTraces(_ context.Context, rs []*tracepb.ResourceSpans) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, r := range rs {
		for _, ss := range r.ScopeSpans {
			for _, s := range ss.Spans {
				// The exporter reuses its messages once the upload returns.
				k.spans = append(k.spans, proto.Clone(s).(*tracepb.Span))
			}
		}
	}
	return nil
}

// modelServer answers chat completions as an OpenAI-compatible server:
// JSON, or SSE with a final usage chunk.
func modelServer(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model  string `json:"model"`
		Stream bool   `json:"stream"`
		Finish string `json:"finish"`
		Fail   bool   `json:"fail"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Fail {
		http.Error(w, `{"error":{"message":"model down"}}`, http.StatusInternalServerError)
		return
	}
	if !req.Stream {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"1","object":"chat.completion","model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":%q}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}`, req.Model, req.Finish)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	for i, word := range []string{"Hel", "lo"} {
		fin := "null"
		if i == 1 {
			fin = fmt.Sprintf("%q", req.Finish)
		}
		fmt.Fprintf(w, "data: {\"model\":%q,\"choices\":[{\"index\":0,\"delta\":{\"content\":%q},\"finish_reason\":%s}]}\n\n", req.Model, word, fin)
		w.(http.Flusher).Flush()
	}
	fmt.Fprintf(w, "data: {\"model\":%q,\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\ndata: [DONE]\n\n", req.Model)
}

// forwarder is a service that passes its request body to next through
// hopwatch (next is read at request time: hopwatch's address is known
// only once it listens), copying the trace headers, and answers with what
// it got back (a failure as 502). With nlu set, it first makes a gRPC
// call through hopwatch on *nlu, with the trace context in its metadata.
func forwarder(next *string, path string, nlu **grpc.ClientConn) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if nlu != nil {
			md := metadata.Pairs("traceparent", r.Header.Get("Traceparent"))
			ctx := metadata.NewOutgoingContext(r.Context(), md)
			if _, err := healthpb.NewHealthClient(*nlu).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		}
		req, _ := http.NewRequestWithContext(r.Context(), "POST", *next+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for _, h := range []string{"Traceparent", "Tracestate", "Baggage"} {
			if v := r.Header.Get(h); v != "" {
				req.Header.Set(h, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		answer, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 500 {
			http.Error(w, "upstream failed", http.StatusBadGateway)
			return
		}
		w.Write(answer)
	}
}

func startBotChain(t *testing.T) *botChain {
	t.Helper()
	var hopwatchURL string
	var nluConn *grpc.ClientConn
	model := httptest.NewServer(http.HandlerFunc(modelServer))
	t.Cleanup(model.Close)
	dm := httptest.NewServer(forwarder(&hopwatchURL, "/v1/chat/completions", nil))
	t.Cleanup(dm.Close)
	gateway := httptest.NewServer(forwarder(&hopwatchURL, "/dm", &nluConn))
	t.Cleanup(gateway.Close)
	nluLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nlu := grpc.NewServer()
	healthpb.RegisterHealthServer(nlu, health.NewServer())
	served := make(chan struct{})
	go func() { defer close(served); nlu.Serve(nluLn) }()
	t.Cleanup(func() { nlu.Stop(); <-served })

	c := &botChain{reg: prometheus.NewRegistry(), exp: &keptSpans{}, turns: map[trace.TraceID]conversation.TurnResult{}}
	tel, err := telemetry.New(telemetry.Options{Registry: c.reg, Logger: testkit.Logger(t), SpanClient: c.exp})
	if err != nil {
		t.Fatal(err)
	}
	c.tel = tel
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	tel.SetGenAI(telemetry.GenAIConfig{Models: []string{"m"}})
	cfg := conversation.Config{EntryRoutes: []string{"chat"}, SessionFrom: []string{"header:x-session-id", "json:session_id"}}
	tr, err := conversation.New(conversation.Options{Config: &cfg, Metrics: conversation.NewMetrics(c.reg),
		OnTurn: func(r conversation.TurnResult) {
			c.mu.Lock()
			c.turns[r.TraceID] = r
			c.mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	tel.SetTurnObserver(tr.Observer())

	p := proxy.New(proxy.Options{Telemetry: tel, Logger: testkit.Logger(t)})
	if err := p.Apply(&routes.Spec{
		Listeners: []routes.Listener{
			{Name: "http", Address: "127.0.0.1:0", Protocol: "http"},
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc"},
		},
		Routes: []routes.Route{
			{Name: "nlu", Listener: "grpc", Upstream: "nlu"},
			{Name: "chat", Listener: "http", Match: routes.Match{PathPrefix: "/chat"}, Upstream: "gateway"},
			{Name: "dm", Listener: "http", Match: routes.Match{PathPrefix: "/dm"}, Upstream: "dm"},
			{Name: "llm", Listener: "http", Match: routes.Match{PathPrefix: "/v1/"}, Upstream: "model",
				GenAI: &routes.GenAI{API: routes.GenAIOpenAI}},
		},
		Upstreams: []routes.Upstream{
			{Name: "gateway", Protocol: "http", Endpoints: []string{gateway.Listener.Addr().String()}},
			{Name: "dm", Protocol: "http", Endpoints: []string{dm.Listener.Addr().String()}},
			{Name: "model", Protocol: "http", Endpoints: []string{model.Listener.Addr().String()}},
			{Name: "nlu", Protocol: "grpc", Endpoints: []string{nluLn.Addr().String()}},
		},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	hopwatchURL = "http://" + p.Addr("http").String()
	nluConn, err = grpc.NewClient(p.Addr("grpc").String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nluConn.Close() })
	c.chatURL = hopwatchURL + "/chat"
	as := httptest.NewServer(admin.New(admin.Options{Traces: tel.Store, Hops: tel.Stats, Sessions: tr}).Handler())
	t.Cleanup(as.Close)
	c.admin = as.URL
	return c
}

// botTurn is one user message.
type botTurn struct {
	header string // session id in x-session-id ("": none)
	body   string // session id in the JSON body ("": none)
	stream bool
	finish string // the model's finish_reason
	fail   bool   // the model fails: an error turn
}

// send makes the turn and returns its trace (the traceparent the client
// started it with), once the turn is classified. Safe to call from
// goroutines other than the test's: it never calls t.Fatal.
func (c *botChain) send(bt botTurn) (trace.TraceID, error) {
	var tid trace.TraceID
	copy(tid[:], newID(16))
	req, _ := http.NewRequest("POST", c.chatURL, strings.NewReader(fmt.Sprintf(
		`{"model":"m","stream":%v,"finish":%q,"fail":%v,"session_id":%q,"messages":[{"role":"user","content":"hi"}]}`,
		bt.stream, bt.finish, bt.fail, bt.body)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Traceparent", fmt.Sprintf("00-%s-%x-01", tid, newID(8)))
	if bt.header != "" {
		req.Header.Set("X-Session-Id", bt.header)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return tid, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if want := map[bool]int{false: 200, true: 502}[bt.fail]; resp.StatusCode != want {
		return tid, fmt.Errorf("turn %+v: status %d, want %d", bt, resp.StatusCode, want)
	}
	// The entry hop ends (and the turn is classified) just after the
	// client has the whole answer.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		c.mu.Lock()
		_, ok := c.turns[tid]
		c.mu.Unlock()
		if ok {
			return tid, nil
		}
	}
	return tid, fmt.Errorf("turn %+v: not classified", bt)
}

var (
	idMu  sync.Mutex
	idSeq uint64
)

// newID returns n bytes, unique within the test binary and never zero.
func newID(n int) []byte {
	idMu.Lock()
	idSeq++
	v := idSeq
	idMu.Unlock()
	b := make([]byte, n)
	for i := 0; i < 8 && i < n; i++ {
		b[n-1-i] = byte(v >> (8 * i))
	}
	b[0] = 0x42
	return b
}

// result is the classification of the turn of trace tid.
func (c *botChain) result(tid trace.TraceID) conversation.TurnResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.turns[tid]
}

// storedSpan is a span of /api/traces/{id}.
type storedSpan struct {
	Kind         string `json:"kind"`
	Route        string `json:"route"`
	SessionID    string `json:"session_id"`
	TurnIndex    int    `json:"turn_index"`
	TurnOutcome  string `json:"turn_outcome"`
	FinishReason string `json:"finish_reason"`
}

func (c *botChain) stored(t *testing.T, tid trace.TraceID) []storedSpan {
	t.Helper()
	resp, err := http.Get(c.admin + "/api/traces/" + tid.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d struct {
		Spans []storedSpan `json:"spans"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/api/traces/%s: %d %v", tid, resp.StatusCode, err)
	}
	return d.Spans
}

// TestTurnMarksEveryHopSpan: every span hopwatch makes for a turn (server
// and client spans of all four hops, HTTP and gRPC) carries the turn's session.id,
// gen_ai.conversation.id, hopwatch.turn.index and hopwatch.turn.outcome,
// in the OTLP export and in the built-in store (/api/traces/{id}), though
// the hops behind the entry end before the turn is classified; also when
// the session id is found only in the entry request's body. Two sessions
// taking turns at the same time do not mix.
func TestTurnMarksEveryHopSpan(t *testing.T) {
	c := startBotChain(t)
	sessions := []struct {
		name  string
		turns []botTurn
		want  []conversation.TurnOutcome
	}{
		{"alpha: id in a header", []botTurn{
			{header: "alpha", finish: "stop"}, {header: "alpha", stream: true, finish: "stop"},
			{header: "alpha", fail: true}, {header: "alpha", finish: "stop"},
		}, []conversation.TurnOutcome{"good", "good", "error", "good"}},
		{"beta: id in the body only", []botTurn{
			{body: "beta", stream: true, finish: "stop"}, {body: "beta", fail: true},
			{body: "beta", finish: "stop"}, {body: "beta", stream: true, finish: "stop"},
		}, []conversation.TurnOutcome{"good", "error", "good", "good"}},
	}
	type sent struct {
		session string
		index   int
		outcome conversation.TurnOutcome
		tid     trace.TraceID
	}
	var mu sync.Mutex
	var all []sent
	var wg sync.WaitGroup
	for _, s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, bt := range s.turns {
				// The next turn waits for this one's classification, so
				// that indexes follow the order the turns were sent in.
				tid, err := c.send(bt)
				if err != nil {
					t.Errorf("%s: %v", s.name, err)
					return
				}
				mu.Lock()
				all = append(all, sent{bt.header + bt.body, i + 1, s.want[i], tid})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// The turns' spans have left the holder (each went on with its
	// turn's attributes when the turn was classified); flush them out.
	if err := c.tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	byTrace := map[trace.TraceID][]*tracepb.Span{}
	for _, s := range c.exp.spans {
		id := trace.TraceID(s.TraceId)
		byTrace[id] = append(byTrace[id], s)
	}
	for _, s := range all {
		name := fmt.Sprintf("%s turn %d", s.session, s.index)
		r := c.result(s.tid)
		if r.SessionID != s.session || r.Index != s.index || r.Outcome != s.outcome {
			t.Errorf("%s: classified %s#%d %s, want %s#%d %s", name, r.SessionID, r.Index, r.Outcome, s.session, s.index, s.outcome)
		}
		spans := byTrace[s.tid]
		var kinds []string
		for _, sp := range spans {
			attrs := map[string]*commonpb.AnyValue{}
			for _, a := range sp.Attributes {
				if _, dup := attrs[a.Key]; dup {
					t.Errorf("%s: span %s has %s twice", name, sp.Name, a.Key)
				}
				attrs[a.Key] = a.Value
			}
			route := attrs["hopwatch.route"].GetStringValue()
			kind := strings.ToLower(strings.TrimPrefix(sp.Kind.String(), "SPAN_KIND_"))
			kinds = append(kinds, route+"/"+kind)
			got := fmt.Sprintf("%s|%s|%d|%s", attrs["session.id"].GetStringValue(), attrs["gen_ai.conversation.id"].GetStringValue(),
				attrs["hopwatch.turn.index"].GetIntValue(), attrs["hopwatch.turn.outcome"].GetStringValue())
			if want := fmt.Sprintf("%s|%s|%d|%s", s.session, s.session, s.index, s.outcome); got != want {
				t.Errorf("%s: exported %s span of %s: %s, want %s", name, kind, route, got, want)
			}
		}
		slices.Sort(kinds)
		if got := strings.Join(kinds, " "); got != "chat/client chat/server dm/client dm/server llm/client llm/server nlu/client nlu/server" {
			t.Errorf("%s: exported spans %s, want a server and a client span of each hop", name, got)
		}
		stored := c.stored(t, s.tid)
		if len(stored) != 8 {
			t.Errorf("%s: %d stored spans, want 8", name, len(stored))
		}
		for _, sp := range stored {
			if sp.SessionID != s.session || sp.TurnIndex != s.index || sp.TurnOutcome != string(s.outcome) {
				t.Errorf("%s: stored %s span of %s: %s#%d %s", name, sp.Kind, sp.Route, sp.SessionID, sp.TurnIndex, sp.TurnOutcome)
			}
		}
	}
	if got := testutil.CollectAndCount(c.reg, "hopwatch_turn_spans_unmarked_total"); got != 4 {
		t.Errorf("hopwatch_turn_spans_unmarked_total has %d series, want one per reason", got)
	}
	if got := metricSum(t, c.reg, "hopwatch_turn_spans_unmarked_total"); got != 0 {
		t.Errorf("%v spans left without their turn's attributes", got)
	}
}

// metricSum adds up the counters of the family name.
func metricSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestTruncatedSignal: a model answer cut at its token limit
// (finish_reason "length"), two hops behind the entry route, flags the
// turn truncated, streamed (SSE) or not: counted in
// hopwatch_conversation_turn_signals_total and shown in the session's
// turns; "stop" flags nothing. The genai hop's stored span keeps the
// finish reason (and nothing of the text).
func TestTruncatedSignal(t *testing.T) {
	c := startBotChain(t)
	cases := []struct {
		name      string
		stream    bool
		finish    string
		truncated bool
	}{
		{"streamed, cut at the limit", true, "length", true},
		{"json, cut at the limit", false, "length", true},
		{"streamed, complete", true, "stop", false},
		{"json, complete", false, "stop", false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			session := fmt.Sprintf("trunc-%d", i)
			tid, err := c.send(botTurn{header: session, stream: tc.stream, finish: tc.finish})
			if err != nil {
				t.Fatal(err)
			}
			if got := c.result(tid).Signals.Has(conversation.SignalTruncated); got != tc.truncated {
				t.Errorf("turn signals %v, want truncated %v", c.result(tid).Signals.Names(), tc.truncated)
			}
			resp, err := http.Get(c.admin + "/api/sessions/" + session)
			if err != nil {
				t.Fatal(err)
			}
			var d struct {
				Turns []struct {
					Signals []string `json:"signals"`
					TraceID string   `json:"trace_id"`
				} `json:"turns_detail"`
			}
			err = json.NewDecoder(resp.Body).Decode(&d)
			resp.Body.Close()
			if err != nil || len(d.Turns) != 1 {
				t.Fatalf("/api/sessions/%s: %v %+v", session, err, d)
			}
			if got := slices.Contains(d.Turns[0].Signals, "truncated"); got != tc.truncated || d.Turns[0].TraceID != tid.String() {
				t.Errorf("/api/sessions/%s turn: %+v, want truncated %v", session, d.Turns[0], tc.truncated)
			}
			for _, sp := range c.stored(t, tid) {
				want := ""
				if sp.Route == "llm" && sp.Kind == "server" {
					want = tc.finish
				}
				if sp.FinishReason != want {
					t.Errorf("stored %s span of %s: finish_reason %q, want %q", sp.Kind, sp.Route, sp.FinishReason, want)
				}
			}
		})
	}
	m, err := c.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got float64
	for _, mf := range m {
		if mf.GetName() != "hopwatch_conversation_turn_signals_total" {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "signal" && l.GetValue() == "truncated" {
					got += s.GetCounter().GetValue()
				}
			}
		}
	}
	if got != 2 {
		t.Errorf(`hopwatch_conversation_turn_signals_total{signal="truncated"} = %v, want 2`, got)
	}
}
