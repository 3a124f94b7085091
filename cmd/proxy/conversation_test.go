package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	logspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hopwatch/hopwatch/internal/testkit"
)

// otlpReceiver is a real OTLP/gRPC trace endpoint on loopback that keeps
// the attributes of every server span it receives, by span name.
type otlpReceiver struct {
	collectorpb.UnimplementedTraceServiceServer
	mu     sync.Mutex
	spans  []map[string]string
	events []map[string]string // log records: "event" is the event name
}

// otlpLogs is the same endpoint's OTLP/gRPC logs service.
type otlpLogs struct {
	logspb.UnimplementedLogsServiceServer
	r *otlpReceiver
}

func (l otlpLogs) Export(_ context.Context, req *logspb.ExportLogsServiceRequest) (*logspb.ExportLogsServiceResponse, error) {
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	for _, rl := range req.ResourceLogs {
		for _, sl := range rl.ScopeLogs {
			for _, lr := range sl.LogRecords {
				attrs := map[string]string{"event": lr.EventName,
					"record.trace_id": hex.EncodeToString(lr.TraceId), "record.span_id": hex.EncodeToString(lr.SpanId)}
				for _, kv := range lr.Attributes {
					attrs[kv.Key] = anyValue(kv.Value)
				}
				l.r.events = append(l.r.events, attrs)
			}
		}
	}
	return &logspb.ExportLogsServiceResponse{}, nil
}

func (r *otlpReceiver) Export(_ context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				if sp.Kind.String() != "SPAN_KIND_SERVER" {
					continue
				}
				attrs := map[string]string{"name": sp.Name}
				for _, kv := range sp.Attributes {
					attrs[kv.Key] = anyValue(kv.Value)
				}
				r.spans = append(r.spans, attrs)
			}
		}
	}
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

func anyValue(v *commonpb.AnyValue) string {
	switch x := v.Value.(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	}
	return v.String()
}

func startOTLP(t *testing.T) (*otlpReceiver, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	rec := &otlpReceiver{}
	collectorpb.RegisterTraceServiceServer(srv, rec)
	logspb.RegisterLogsServiceServer(srv, otlpLogs{r: rec})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return rec, ln.Addr().String()
}

// TestConversationThroughProxy runs the command's app with a conversation
// section in front of a two-hop bot (a gateway that calls a KB through
// hopwatch, forwarding trace headers as an instrumented service does) and
// checks what the issue asks of the wire: turns classified and blamed on
// the right hop, sessions counted when they go idle, identity sources
// counted, and the entry spans marked with the session and turn.
func TestConversationThroughProxy(t *testing.T) {
	p := newPorts(t)
	kb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("q") {
		case "fail":
			http.Error(w, "kb down", http.StatusInternalServerError)
		case "slow":
			time.Sleep(400 * time.Millisecond)
			fmt.Fprint(w, `{"results":[]}`)
		default:
			fmt.Fprint(w, `{"results":[]}`)
		}
	}))
	t.Cleanup(kb.Close)
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), "GET",
			fmt.Sprintf("http://127.0.0.1:%d/kb/search?q=%s", p.http, r.URL.Query().Get("q")), nil)
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
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			http.Error(w, "kb failed", http.StatusBadGateway)
			return
		}
		fmt.Fprint(w, "answer")
	}))
	t.Cleanup(gateway.Close)
	rec, otlpAddr := startOTLP(t)
	eventsFile := filepath.Join(t.TempDir(), "events.jsonl")

	cfg := fmt.Sprintf(`admin: {address: "127.0.0.1:%d"}
telemetry:
  tracing:
    otlp: {endpoint: "%s", protocol: grpc}
callers: [client, gateway]
listeners:
  - {name: http, address: "127.0.0.1:%d", protocol: http, caller_header: x-hop-caller}
upstreams:
  - {name: gateway, protocol: http, endpoints: ["%s"]}
  - {name: kb, protocol: http, endpoints: ["%s"]}
routes:
  - {name: chat, listener: http, match: {path_prefix: /chat}, upstream: gateway}
  - {name: kb, listener: http, match: {path_prefix: /kb/}, upstream: kb}
conversation:
  entry_routes: [chat]
  turn_slo: 300ms
  idle_timeout: 1s
  events: {file: %q, otlp: true}
`, p.admin, otlpAddr, p.http, gateway.Listener.Addr(), kb.Listener.Addr(), eventsFile)
	path := filepath.Join(t.TempDir(), "hopwatch.yaml")
	writeFile(t, path, cfg)
	a, err := start(path, 5*time.Second, testkit.Logger(t), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	drained := false
	t.Cleanup(func() {
		if !drained {
			a.drain(time.Second)
		}
	})

	turn := func(q string, hdr ...string) {
		t.Helper()
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/chat?q=%s", p.http, q), nil)
		req.Header.Set("x-hop-caller", "client")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// s1: a good turn, then the KB fails: abandoned, blamed on kb.
	turn("ok", "x-session-id", "s1")
	turn("fail", "x-session-id", "s1")
	// s2: a slow KB turn, then a good one: completed, good.
	turn("slow", "X-Conversation-Id", "s2")
	turn("ok", "X-Conversation-Id", "s2")
	// s3 from baggage: one good turn.
	turn("ok", "baggage", "session.id=s3")
	// No id: a turn, no session.
	turn("ok")

	metrics := func() string {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", p.admin))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	// Sessions end 1 s after their last turn; the sweeper runs every
	// second.
	testkit.WaitFor(t, "three sessions ended", func() bool {
		return strings.Contains(metrics(), "hopwatch_conversation_active_sessions 0")
	})
	m := metrics()
	for _, want := range []string{
		`hopwatch_conversation_turns_total{outcome="good",route="chat"} 4`,
		`hopwatch_conversation_turns_total{outcome="error",route="chat"} 1`,
		`hopwatch_conversation_turns_total{outcome="slow",route="chat"} 1`,
		`hopwatch_conversation_bad_turns_total{cause="error",hop="kb"} 1`,
		`hopwatch_conversation_bad_turns_total{cause="slow",hop="kb"} 1`,
		`hopwatch_conversation_sessions_total{good="false",outcome="abandoned"} 1`,
		`hopwatch_conversation_sessions_total{good="true",outcome="completed"} 2`,
		`hopwatch_conversation_identity_total{source="header"} 4`,
		`hopwatch_conversation_identity_total{source="baggage"} 1`,
		`hopwatch_conversation_identity_total{source="none"} 1`,
		`hopwatch_conversation_session_turns_count 3`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(m, `s1"`) || strings.Contains(m, `"s2`) {
		t.Error("a session id appears in /metrics")
	}
	// The KB hops are not turns.
	if strings.Contains(m, `hopwatch_conversation_turns_total{outcome="good",route="kb"}`) {
		t.Error("kb requests counted as turns")
	}

	// The bottleneck analysis uses the conversation's turn SLO for the
	// entry route: the 400 ms KB turn is over 300 ms, so it is slow.
	var bn struct {
		Rules []struct {
			Route string  `json:"route"`
			SLO   float64 `json:"slo"`
			Slow  int     `json:"slow_turns"`
		} `json:"rules"`
	}
	if code := getJSON(t, fmt.Sprintf("http://127.0.0.1:%d/api/bottlenecks", p.admin), &bn); code != 200 {
		t.Fatalf("/api/bottlenecks: %d", code)
	}
	var chatRule bool
	for _, r := range bn.Rules {
		if r.Route == "chat" {
			chatRule = true
			if r.SLO != 0.3 || r.Slow < 1 {
				t.Errorf("/api/bottlenecks rule for chat: %+v, want slo 0.3 and the slow turn", r)
			}
		}
	}
	if !chatRule {
		t.Errorf("/api/bottlenecks has no rule for the entry route: %+v", bn.Rules)
	}

	// The drill-down: s1 ended abandoned after the KB failed, and its
	// turn links to a trace the built-in store has.
	var s1 struct {
		Outcome string `json:"outcome"`
		Turns   []struct {
			Outcome string `json:"outcome"`
			Blame   string `json:"blame"`
			TraceID string `json:"trace_id"`
		} `json:"turns_detail"`
	}
	if code := getJSON(t, fmt.Sprintf("http://127.0.0.1:%d/api/sessions/s1", p.admin), &s1); code != 200 {
		t.Fatalf("/api/sessions/s1: %d", code)
	}
	if s1.Outcome != "abandoned" || len(s1.Turns) != 2 || s1.Turns[1].Outcome != "error" || s1.Turns[1].Blame != "kb" {
		t.Errorf("/api/sessions/s1: %+v", s1)
	}
	if len(s1.Turns) == 2 {
		var tr struct {
			Spans []struct {
				Route string `json:"route"`
			} `json:"spans"`
		}
		if code := getJSON(t, fmt.Sprintf("http://127.0.0.1:%d/api/traces/%s", p.admin, s1.Turns[1].TraceID), &tr); code != 200 || len(tr.Spans) < 4 {
			t.Errorf("trace of s1's bad turn: %d, %d spans", code, len(tr.Spans))
		}
	}
	var list struct {
		Sessions []struct {
			ID string `json:"id"`
		} `json:"sessions"`
	}
	getJSON(t, fmt.Sprintf("http://127.0.0.1:%d/api/sessions?good=true", p.admin), &list)
	if len(list.Sessions) != 2 {
		t.Errorf("/api/sessions?good=true: %+v, want s2 and s3", list.Sessions)
	}

	a.drain(2 * time.Second) // flushes the spans and the events
	drained = true

	// Events: one line per turn, one per ended session, as the metrics.
	b, err := os.ReadFile(eventsFile)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e struct {
			Type      string `json:"type"`
			SessionID string `json:"session_id"`
			Outcome   string `json:"outcome"`
			Blame     string `json:"blame"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("event line %q: %v", line, err)
		}
		counts[e.Type+":"+e.Outcome]++
		if e.Type == "turn" && e.Outcome == "error" && (e.SessionID != "s1" || e.Blame != "kb") {
			t.Errorf("error turn event %+v", e)
		}
	}
	wantCounts := map[string]int{"turn:good": 4, "turn:error": 1, "turn:slow": 1, "session:abandoned": 1, "session:completed": 2}
	if fmt.Sprint(counts) != fmt.Sprint(wantCounts) {
		t.Errorf("events %v, want %v", counts, wantCounts)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	// The same events as OTLP log records (events.otlp), flushed by the
	// drain: same counts, same fields as attributes.
	otlpCounts := map[string]int{}
	for _, e := range rec.events {
		otlpCounts[strings.TrimPrefix(e["event"], "hopwatch.conversation.")+":"+e["hopwatch.outcome"]]++
		if e["event"] == "hopwatch.conversation.turn" && e["hopwatch.outcome"] == "error" &&
			(e["hopwatch.session_id"] != "s1" || e["hopwatch.blame"] != "kb" || e["hopwatch.trace_id"] == "") {
			t.Errorf("error turn record %v", e)
		}
	}
	if fmt.Sprint(otlpCounts) != fmt.Sprint(wantCounts) {
		t.Errorf("OTLP event records %v, want %v", otlpCounts, wantCounts)
	}
	// Every hop of a turn carries its session and turn, not only the
	// entry hop: the KB hop's span too, though it ended before the turn
	// was classified.
	marked := map[string][]string{}
	for _, sp := range rec.spans {
		route := sp["hopwatch.route"]
		if sp["session.id"] != sp["gen_ai.conversation.id"] {
			t.Errorf("%s span: session.id %q, gen_ai.conversation.id %q", route, sp["session.id"], sp["gen_ai.conversation.id"])
		}
		if sp["hopwatch.turn.outcome"] == "" {
			t.Errorf("%s span without hopwatch.turn.outcome: %v", route, sp)
		}
		marked[route] = append(marked[route], fmt.Sprintf("%s#%s:%s", sp["session.id"], sp["hopwatch.turn.index"], sp["hopwatch.turn.outcome"]))
	}
	want := "#:good,s1#1:good,s1#2:error,s2#1:slow,s2#2:good,s3#1:good"
	for _, route := range []string{"chat", "kb"} {
		slices.Sort(marked[route])
		if got := strings.Join(marked[route], ","); got != want {
			t.Errorf("%s spans %s, want %s", route, got, want)
		}
	}
}

// TestConversationConfig: a hash key file is read (its trailing newline
// dropped) and the raw id is nowhere in the API; a changed conversation
// section is refused on reload (sessions live in the tracker), an
// unchanged one is not; a missing key file fails the start.
func TestConversationConfig(t *testing.T) {
	s := startStack(t)
	p := newPorts(t)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	writeFile(t, keyFile, "0123456789abcdef0123\n")
	rec, otlpAddr := startOTLP(t)
	base := configText(s, p, "a") + fmt.Sprintf("telemetry: {tracing: {otlp: {endpoint: %q}}}\n", otlpAddr)
	conv := func(idle string) string {
		return base + fmt.Sprintf("conversation:\n  entry_routes: [web]\n  idle_timeout: %s\n  hash_ids: true\n  hash_key_file: %q\n", idle, keyFile)
	}
	path := filepath.Join(dir, "hopwatch.yaml")
	writeFile(t, path, conv("1m"))
	a, err := start(path, time.Second, testkit.Logger(t), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	drained := false
	defer func() {
		if !drained {
			a.drain(time.Second)
		}
	}()

	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/x", p.http), nil)
	req.Header.Set("x-session-id", "alice@example.com")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var list struct {
		Sessions []struct {
			ID string `json:"id"`
		} `json:"sessions"`
	}
	getJSON(t, fmt.Sprintf("http://127.0.0.1:%d/api/sessions", p.admin), &list)
	if len(list.Sessions) != 1 || len(list.Sessions[0].ID) != 32 || strings.Contains(list.Sessions[0].ID, "alice") {
		t.Errorf("sessions %+v, want one with a 32-hex-digit keyed hash", list.Sessions)
	}

	cases := []struct {
		name string
		text string
		ok   bool
	}{
		{"unchanged section", conv("1m"), true},
		{"changed section", conv("2m"), false},
		{"section removed", base, false},
	}
	for _, tc := range cases {
		writeFile(t, path, tc.text)
		a.reload(tc.name)
		a.mu.Lock()
		last := a.last
		a.mu.Unlock()
		if last.OK != tc.ok || !tc.ok && !strings.Contains(strings.Join(last.Errors, ";"), "conversation section changed") {
			t.Errorf("%s: reload %+v, want ok=%v", tc.name, last, tc.ok)
		}
	}

	// The spans carry the hash, never the id.
	a.drain(time.Second)
	drained = true
	rec.mu.Lock()
	var ids []string
	for _, sp := range rec.spans {
		for k, v := range sp {
			if strings.Contains(v, "alice") {
				t.Errorf("span attribute %s = %q holds the raw session id", k, v)
			}
		}
		if sp["hopwatch.route"] == "web" {
			ids = append(ids, sp["session.id"])
		}
	}
	rec.mu.Unlock()
	if len(list.Sessions) == 1 && (len(ids) != 1 || ids[0] != list.Sessions[0].ID) {
		t.Errorf("web span session ids %q, want the hash %q", ids, list.Sessions[0].ID)
	}

	writeFile(t, path, conv("1m"))
	os.Remove(keyFile)
	p2 := newPorts(t)
	writeFile(t, path, strings.ReplaceAll(conv("1m"), fmt.Sprint(p.admin), fmt.Sprint(p2.admin)))
	if b, err := start(path, time.Second, testkit.Logger(t), io.Discard); err == nil || !strings.Contains(err.Error(), "hash_key_file") {
		if b != nil {
			b.drain(time.Second)
		}
		t.Errorf("start without the key file: %v, want a hash_key_file error", err)
	}
}

// TestConversationBodyAndVerdict: session id and message from the entry
// request's JSON body (the upstream still gets every byte, also past the
// 64 KiB read), repeats found from the message, verdict headers from any
// hop read, counted and removed before the client sees them.
func TestConversationBodyAndVerdict(t *testing.T) {
	p := newPorts(t)
	nlu := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("q") == "nomatch" {
			w.Header().Set("X-Bot-Outcome", "no_match")
		}
		fmt.Fprint(w, `{"intent":"x"}`)
	}))
	t.Cleanup(nlu.Close)
	var mu sync.Mutex
	var gotBodies []int
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		gotBodies = append(gotBodies, len(b))
		mu.Unlock()
		q := "ok"
		if strings.Contains(string(b), "nomatch") {
			q = "nomatch"
		}
		req, _ := http.NewRequestWithContext(r.Context(), "GET", fmt.Sprintf("http://127.0.0.1:%d/nlu?q=%s", p.http, q), nil)
		req.Header.Set("Traceparent", r.Header.Get("Traceparent"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		resp.Body.Close()
		if resp.Header.Get("X-Bot-Outcome") != "" {
			http.Error(w, "the verdict header reached the gateway", http.StatusInternalServerError)
			return
		}
		switch {
		case strings.Contains(string(b), "bye"):
			w.Header().Set("X-Bot-Outcome", "resolved")
		case strings.Contains(string(b), "human"):
			// Known only once the streamed answer is done: a trailer,
			// unannounced.
			fmt.Fprint(w, "let me see")
			w.(http.Flusher).Flush()
			w.Header().Set(http.TrailerPrefix+"X-Bot-Outcome", "handoff")
			return
		}
		fmt.Fprint(w, "answer")
	}))
	t.Cleanup(gateway.Close)

	cfg := fmt.Sprintf(`admin: {address: "127.0.0.1:%d"}
listeners:
  - {name: http, address: "127.0.0.1:%d", protocol: http}
upstreams:
  - {name: gateway, protocol: http, endpoints: ["%s"]}
  - {name: nlu, protocol: http, endpoints: ["%s"]}
routes:
  - {name: chat, listener: http, match: {path_prefix: /chat}, upstream: gateway}
  - {name: nlu, listener: http, match: {path_prefix: /nlu}, upstream: nlu}
conversation:
  entry_routes: [chat]
  session_from: [header:x-session-id, json:session_id]
  text_from: json:message
`, p.admin, p.http, gateway.Listener.Addr(), nlu.Listener.Addr())
	path := filepath.Join(t.TempDir(), "hopwatch.yaml")
	writeFile(t, path, cfg)
	a, err := start(path, 5*time.Second, testkit.Logger(t), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer a.drain(time.Second)

	var sent []int
	turn := func(session, message string) {
		t.Helper()
		body := fmt.Sprintf(`{"session_id":%q,"message":%q}`, session, message)
		sent = append(sent, len(body))
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/chat", p.http), "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("X-Bot-Outcome") != "" || resp.Trailer.Get("X-Bot-Outcome") != "" {
			t.Errorf("%q: status %d, verdict %q / trailer %q reached the client", message, resp.StatusCode,
				resp.Header.Get("X-Bot-Outcome"), resp.Trailer.Get("X-Bot-Outcome"))
		}
	}
	turn("s1", "where is my order")
	turn("s1", "where is my order?")
	turn("s1", "nomatch: please help me now")
	turn("s1", "ok thanks bye")
	turn("s2", "a long one "+strings.Repeat("word ", 40_000)) // 200 KB
	turn("s3", "I want a human")

	mu.Lock()
	if !slices.Equal(gotBodies, sent) {
		t.Errorf("the gateway got bodies of %v bytes, the client sent %v", gotBodies, sent)
	}
	mu.Unlock()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", p.admin))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := string(b)
	for _, want := range []string{
		`hopwatch_conversation_identity_total{source="json"} 6`,
		`hopwatch_conversation_turn_signals_total{route="chat",signal="repeat"} 1`,
		`hopwatch_conversation_turns_total{outcome="fallback",route="chat"} 1`,
		`hopwatch_conversation_bad_turns_total{cause="fallback",hop="nlu"} 1`,
		`hopwatch_conversation_sessions_total{good="true",outcome="resolved"} 1`,
		`hopwatch_conversation_verdicts_total{route="chat",verdict="no_match"} 1`,
		`hopwatch_conversation_verdicts_total{route="chat",verdict="resolved"} 1`,
		`hopwatch_conversation_verdicts_total{route="chat",verdict="handoff"} 1`,
		`hopwatch_conversation_sessions_total{good="false",outcome="handoff"} 1`,
		`hopwatch_conversation_active_sessions 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(m, "where is my order") || strings.Contains(m, "s1") {
		t.Error("user text or a session id in /metrics")
	}
}

// TestConversationGRPC: a gRPC entry route through the real proxy: the
// session id from metadata, and a NOT_FOUND status, which a hop counts as
// ok (the caller's mistake), is an error turn for the user.
func TestConversationGRPC(t *testing.T) {
	s := startStack(t)
	s.health.SetServingStatus("bot", healthpb.HealthCheckResponse_SERVING)
	p := newPorts(t)
	path := filepath.Join(t.TempDir(), "hopwatch.yaml")
	writeFile(t, path, configText(s, p, "a")+"conversation: {entry_routes: [health]}\n")
	a, err := start(path, time.Second, testkit.Logger(t), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer a.drain(time.Second)
	cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", p.grpc), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-session-id", "g1")
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "bot"}); err != nil {
		t.Fatal(err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown service: %v, want NOT_FOUND", err)
	}
	var d struct {
		Turns []struct {
			Outcome string `json:"outcome"`
			Code    string `json:"code"`
		} `json:"turns_detail"`
	}
	if code := getJSON(t, fmt.Sprintf("http://127.0.0.1:%d/api/sessions/g1", p.admin), &d); code != 200 {
		t.Fatalf("/api/sessions/g1: %d", code)
	}
	if len(d.Turns) != 2 || d.Turns[0].Outcome != "good" || d.Turns[0].Code != "OK" || d.Turns[1].Outcome != "error" || d.Turns[1].Code != "NotFound" {
		t.Errorf("turns %+v", d.Turns)
	}
}
