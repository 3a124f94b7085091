package telemetry

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// turnRecorder is a TurnObserver that keeps what it is told.
type turnRecorder struct {
	entry    string
	mu       sync.Mutex
	turns    []Turn
	sessions []string
}

func (r *turnRecorder) Entry(route string) (bool, bool) { return route == r.entry, true }
func (r *turnRecorder) VerdictHeader() string           { return "x-bot-outcome" }
func (r *turnRecorder) HeaderKeys() []string            { return []string{"x-session-id"} }
func (r *turnRecorder) SessionID(get func(string) string) string {
	return get("x-session-id")
}
func (r *turnRecorder) TurnEnded(t Turn) TurnMark {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sessions = append(r.sessions, t.Header("x-session-id"))
	t.Header = nil
	r.turns = append(r.turns, t)
	return TurnMark{SessionID: "s", Index: len(r.turns), Outcome: "good"}
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// TestTurnHops: the entry hop reports one turn with every hop of its trace
// that ran within it, placed by time under the innermost enclosing hop
// (the services between proxy hops have spans of their own the proxy never
// sees), with self times; other routes report nothing; a span of the
// same trace outside the turn's time is left out.
func TestTurnHops(t *testing.T) {
	clk := &fakeClock{t0}
	tel, err := New(Options{Registry: prometheus.NewRegistry(), Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	rec := &turnRecorder{entry: "chat"}
	tel.SetTurnObserver(rec)
	chat := tel.Route(RouteInfo{Name: "chat", Upstream: "gateway"}, nil)
	dm := tel.Route(RouteInfo{Name: "dm", Upstream: "dm"}, nil)
	kb := tel.Route(RouteInfo{Name: "kb", Upstream: "kb"}, nil)
	at := func(d time.Duration) { clk.t = t0.Add(d) }

	// A hop of the same trace before the turn (a client reusing a trace).
	ctx, h := chat.Start(context.Background(), propagation.HeaderCarrier(http.Header{}), "client", "GET")
	tid := trace.SpanContextFromContext(ctx).TraceID()
	child := func(r *Route) *Hop {
		// The caller is a service with spans of its own: the parent id
		// is one the proxy never recorded.
		hdr := http.Header{}
		hdr.Set("traceparent", "00-"+tid.String()+"-00f067aa0ba902b7-01")
		_, hop := r.Start(context.Background(), propagation.HeaderCarrier(hdr), "gateway", "POST")
		return hop
	}
	at(10 * time.Millisecond)
	h.End("200", OutcomeOK)
	if len(rec.turns) != 1 {
		t.Fatalf("%d turns, want 1", len(rec.turns))
	}

	// The turn: chat [100, 750] → dm [101, 701] → kb [102, 600] (error).
	hdr := http.Header{}
	hdr.Set("traceparent", "00-"+tid.String()+"-00f067aa0ba902b7-01")
	hdr.Set("X-Session-Id", "s1")
	at(100 * time.Millisecond)
	_, entry := chat.Start(context.Background(), propagation.HeaderCarrier(hdr), "client", "GET")
	at(101 * time.Millisecond)
	d := child(dm)
	at(102 * time.Millisecond)
	k := child(kb)
	at(150 * time.Millisecond)
	entry.FirstByte() // early headers: a stream
	at(600 * time.Millisecond)
	k.End("500", OutcomeError)
	at(701 * time.Millisecond)
	d.End("502", OutcomeError)
	at(750 * time.Millisecond)
	entry.End("502", OutcomeError)

	if len(rec.turns) != 2 {
		t.Fatalf("%d turns, want 2 (dm and kb are not entry routes)", len(rec.turns))
	}
	turn := rec.turns[1]
	if turn.Route != "chat" || rec.sessions[1] != "s1" || turn.TraceID != tid ||
		turn.Duration != 650*time.Millisecond || turn.FirstByte != 50*time.Millisecond || turn.Code != "502" || turn.Outcome != OutcomeError {
		t.Errorf("turn %+v", turn)
	}
	want := []TurnHop{
		{HopKey: HopKey{"other", "chat", "gateway"}, Code: "502", Outcome: OutcomeError, Self: 50 * time.Millisecond, Depth: 0},
		{HopKey: HopKey{"other", "dm", "dm"}, Code: "502", Outcome: OutcomeError, Self: 102 * time.Millisecond, Depth: 1},
		{HopKey: HopKey{"other", "kb", "kb"}, Code: "500", Outcome: OutcomeError, Self: 498 * time.Millisecond, Depth: 2},
	}
	if len(turn.Hops) != len(want) {
		t.Fatalf("hops %+v, want %+v", turn.Hops, want)
	}
	for i := range want {
		if turn.Hops[i] != want[i] {
			t.Errorf("hop %d: %+v, want %+v", i, turn.Hops[i], want[i])
		}
	}

	// Without an observer nothing is reported.
	tel.SetTurnObserver(nil)
	_, h = chat.Start(context.Background(), propagation.HeaderCarrier(http.Header{}), "client", "GET")
	h.End("200", OutcomeOK)
	if len(rec.turns) != 2 {
		t.Errorf("%d turns after the observer was removed, want 2", len(rec.turns))
	}
}

// TestTurnBodyAndVerdict: an entry hop copies the start of a JSON body as
// it streams (nothing of other types), a verdict header on any hop of the
// turn is removed and the strongest one reaches the observer, and a body
// still being read after the hop ended is neither raced on nor copied.
func TestTurnBodyAndVerdict(t *testing.T) {
	clk := &fakeClock{t0}
	tel, err := New(Options{Registry: prometheus.NewRegistry(), Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	rec := &turnRecorder{entry: "chat"}
	tel.SetTurnObserver(rec)
	chat := tel.Route(RouteInfo{Name: "chat", Upstream: "gateway"}, nil)
	nlu := tel.Route(RouteInfo{Name: "nlu", Upstream: "nlu"}, nil)

	big := `{"message":"` + strings.Repeat("a", MaxTurnBodyBytes) + `"}`
	cases := []struct {
		name        string
		ct          string
		body        string
		entryV      string // verdict header on the entry hop's response
		nluV        string // ...on the nlu hop's response
		wantBody    string
		wantVerdict string
	}{
		{"json body, no verdict", "application/json", `{"session_id":"s"}`, "", "", `{"session_id":"s"}`, ""},
		{"json with charset and suffix", "application/vnd.bot+json; charset=utf-8", `{"a":1}`, "", "", `{"a":1}`, ""},
		{"not json", "text/plain", "hello", "", "", "", ""},
		{"cut at the limit", "application/json", big, "", "", big[:MaxTurnBodyBytes], ""},
		{"verdict from a downstream hop", "application/json", `{}`, "", "no_match", `{}`, "no_match"},
		{"the strongest verdict wins", "application/json", `{}`, "resolved", "HANDOFF", `{}`, "handoff"},
		{"an unknown verdict is removed and ignored", "application/json", `{}`, "great", "", `{}`, ""},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk.t = t0.Add(time.Duration(i) * time.Second)
			hdr := http.Header{}
			hdr.Set("Content-Type", tc.ct)
			ctx, entry := chat.Start(context.Background(), propagation.HeaderCarrier(hdr), "client", "POST")
			body := entry.RequestBody(io.NopCloser(strings.NewReader(tc.body)))
			if _, err := io.Copy(io.Discard, body); err != nil {
				t.Fatal(err)
			}
			// The nlu hop, called by the gateway within the turn.
			out := http.Header{}
			propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(out))
			clk.t = clk.t.Add(time.Millisecond)
			_, n := nlu.Start(context.Background(), propagation.HeaderCarrier(out), "gateway", "POST")
			resp := http.Header{}
			if tc.nluV != "" {
				resp.Set("X-Bot-Outcome", tc.nluV)
			}
			n.ResponseHeader(resp)
			if resp.Get("X-Bot-Outcome") != "" {
				t.Error("the nlu response kept the verdict header")
			}
			clk.t = clk.t.Add(time.Millisecond)
			n.End("200", OutcomeOK)
			resp = http.Header{}
			if tc.entryV != "" {
				resp.Set("X-Bot-Outcome", tc.entryV)
			}
			entry.ResponseHeader(resp)
			if len(resp) != 0 {
				t.Errorf("the entry response kept %v", resp)
			}
			clk.t = clk.t.Add(time.Millisecond)
			entry.End("200", OutcomeOK)
			got := rec.turns[len(rec.turns)-1]
			if string(got.Body) != tc.wantBody || got.Verdict != tc.wantVerdict {
				t.Errorf("body %d bytes %.20q, verdict %q; want %d bytes, %q", len(got.Body), got.Body, got.Verdict, len(tc.wantBody), tc.wantVerdict)
			}
		})
	}

	t.Run("read after the hop ended", func(t *testing.T) {
		hdr := http.Header{}
		hdr.Set("Content-Type", "application/json")
		_, entry := chat.Start(context.Background(), propagation.HeaderCarrier(hdr), "client", "POST")
		body := entry.RequestBody(io.NopCloser(strings.NewReader(`{"a":1}`)))
		buf := make([]byte, 5)
		if _, err := io.ReadFull(body, buf); err != nil {
			t.Fatal(err)
		}
		entry.End("200", OutcomeOK)
		rest, _ := io.ReadAll(body) // the transport, still sending
		if string(rest) != "1}" {
			t.Errorf("rest of the body %q", rest)
		}
		if got := rec.turns[len(rec.turns)-1].Body; string(got) != `{"a":` {
			t.Errorf("body %q, want what was read before the end", got)
		}
	})
}

// TestTurnBodyBudget: body copies held by entry hops in flight stay
// within MaxTurnBodyBytesInFlight together; a hop past it copies no more,
// and ending hops gives their bytes back.
func TestTurnBodyBudget(t *testing.T) {
	tel, err := New(Options{Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	rec := &turnRecorder{entry: "chat"}
	tel.SetTurnObserver(rec)
	chat := tel.Route(RouteInfo{Name: "chat", Upstream: "gateway"}, nil)
	hdr := http.Header{}
	hdr.Set("Content-Type", "application/json")
	chunk := strings.Repeat("x", MaxTurnBodyBytes)
	full := MaxTurnBodyBytesInFlight / MaxTurnBodyBytes
	var hops []*Hop
	for range full + 1 {
		_, h := chat.Start(context.Background(), propagation.HeaderCarrier(hdr), "client", "POST")
		io.Copy(io.Discard, h.RequestBody(io.NopCloser(strings.NewReader(chunk))))
		hops = append(hops, h)
	}
	if got := tel.turns.Load().copied.Load(); got != MaxTurnBodyBytesInFlight {
		t.Errorf("%d bytes held, want the bound %d", got, MaxTurnBodyBytesInFlight)
	}
	for _, h := range hops {
		h.End("200", OutcomeOK)
	}
	if n := len(rec.turns[len(rec.turns)-1].Body); n != 0 {
		t.Errorf("the hop past the budget copied %d bytes", n)
	}
	if n := len(rec.turns[0].Body); n != MaxTurnBodyBytes {
		t.Errorf("the first hop copied %d bytes, want %d", n, MaxTurnBodyBytes)
	}
	if got := tel.turns.Load().copied.Load(); got != 0 {
		t.Errorf("%d bytes still held after every hop ended", got)
	}
}

// TestTurnHeadersAsArrived: the observer reads the request's headers as
// they arrived, although the proxy writes its own propagation headers
// into gRPC metadata (the same map) before the hop ends.
func TestTurnHeadersAsArrived(t *testing.T) {
	tel, err := New(Options{Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	rec := &turnRecorder{entry: "chat"}
	tel.SetTurnObserver(rec)
	chat := tel.Route(RouteInfo{Name: "chat", Upstream: "gateway", GRPC: true}, nil)
	md := propagation.MapCarrier{"x-session-id": "s1"}
	_, h := chat.Start(context.Background(), md, "client", "/bot.v1.Chat/Say")
	delete(md, "x-session-id") // as Inject's del would for a propagation field
	h.End("OK", OutcomeOK)
	if got := rec.sessions[len(rec.sessions)-1]; got != "s1" {
		t.Errorf("session %q, want s1 as it arrived", got)
	}
}
