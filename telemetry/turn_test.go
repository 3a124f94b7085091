package telemetry

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// turnRecorder is a TurnObserver that keeps what it is told.
type turnRecorder struct {
	entry string
	mu    sync.Mutex
	turns []Turn
}

func (r *turnRecorder) IsEntry(route string) bool { return route == r.entry }
func (r *turnRecorder) Identify(get func(string) string) (string, string) {
	if id := get("x-session-id"); id != "" {
		return id, "header"
	}
	return "", "none"
}
func (r *turnRecorder) TurnEnded(t Turn) TurnMark {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.turns = append(r.turns, t)
	return TurnMark{SessionID: t.SessionID, Index: len(r.turns), Outcome: "good"}
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
	if turn.Route != "chat" || turn.SessionID != "s1" || turn.Source != "header" || turn.TraceID != tid ||
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
