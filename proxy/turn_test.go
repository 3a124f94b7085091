package proxy_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// turnRecorder is a conversation observer that keeps the turns it is told.
type turnRecorder struct {
	mu    sync.Mutex
	turns []telemetry.Turn
}

func (r *turnRecorder) Entry(route string) (bool, bool)      { return true, true }
func (r *turnRecorder) VerdictHeader() string                { return "x-bot-outcome" }
func (r *turnRecorder) HeaderKeys() []string                 { return nil }
func (r *turnRecorder) SessionID(func(string) string) string { return "" }
func (r *turnRecorder) TurnEnded(t telemetry.Turn) telemetry.TurnMark {
	r.mu.Lock()
	defer r.mu.Unlock()
	t.Body = append([]byte(nil), t.Body...) // valid only during the call
	t.Header = nil
	r.turns = append(r.turns, t)
	return telemetry.TurnMark{}
}

func (r *turnRecorder) last(t *testing.T) telemetry.Turn {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.turns) == 0 {
		t.Fatal("no turn observed")
	}
	return r.turns[len(r.turns)-1]
}

// TestGRPCTurnObservation: on a gRPC listener the conversation signals get
// the start of an entry call's first request message (for proto: session
// and text sources) and a service's verdict from the response headers or
// trailers, which the client never sees; on plain and resilient routes.
func TestGRPCTurnObservation(t *testing.T) {
	backend := startEcho(t)
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(telemetry.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	rec := &turnRecorder{}
	tel.SetTurnObserver(rec)
	p := proxy.New(proxy.Options{Telemetry: tel})
	if err := p.Apply(&routes.Spec{
		Listeners: []routes.Listener{inListener("grpc", "grpc"), inListener("relay", "relay")},
		Routes: []routes.Route{
			{Name: "plain", Listener: "grpc", Match: routes.Match{Headers: map[string]string{"x-route": "plain"}}, Upstream: "echo"},
			{Name: "relay", Listener: "relay", Upstream: "echo"},
			{Name: "resilient", Listener: "grpc", Upstream: "echo", Retry: &routes.Retry{Attempts: 2, On: []string{"unavailable"}},
				Fallback: &routes.Fallback{After: 5 * time.Second, Use: []string{"cache", "static"}, Static: &routes.FallbackStatic{}}},
		},
		Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
	}); err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, p)
	cc := dial(t, p.Addr("grpc").String())
	relay := dial(t, p.Addr("relay").String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name     string
		route    string
		md       []string
		verdict  string
		fallback string // the fallback source that must have answered
	}{
		{"plain route, verdict in the headers", "plain", []string{"x-answer-x-bot-outcome", "resolved"}, "resolved", ""},
		{"resilient route, verdict in the headers", "resilient", []string{"x-answer-x-bot-outcome", "no_match"}, "no_match", ""},
		{"no verdict", "plain", nil, "", ""},
		// The resilient case above left its answer in the cache; a failing
		// call gets it, without the earlier turn's verdict.
		{"a cached answer carries no earlier verdict", "resilient", []string{"x-status", "14"}, "", "cache"},
		{"frame relay, verdict in the headers", "relay", []string{"x-answer-x-bot-outcome", "handoff"}, "handoff", ""},
		{"frame relay, no verdict", "relay", nil, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			md := metadata.Pairs(append([]string{"x-route", tc.route}, tc.md...)...)
			// The echo service's request is a BytesValue: field 1 holds
			// the payload, as a session id would be in a bot's request.
			conn := cc
			if tc.route == "relay" {
				conn = relay
			}
			o := unary(ctx, conn, "/"+echoService+"/Unary", md, []byte("sess-42"))
			if o.Code != codes.OK {
				t.Fatalf("call: %v", o)
			}
			if got := first(o.Trailer, "x-hopwatch-fallback"); got != tc.fallback {
				t.Fatalf("answered by fallback %q, want %q: %v", got, tc.fallback, o)
			}
			if len(o.Header.Get("x-bot-outcome")) > 0 || len(o.Trailer.Get("x-bot-outcome")) > 0 {
				t.Errorf("the client saw the verdict header: %v", o)
			}
			turn := rec.last(t)
			if !turn.BodyProto || !strings.Contains(string(turn.Body), "sess-42") {
				t.Errorf("turn body %q (proto %v): want the first request message", turn.Body, turn.BodyProto)
			}
			if turn.Verdict != tc.verdict {
				t.Errorf("turn verdict %q, want %q", turn.Verdict, tc.verdict)
			}
		})
	}
}
