package conversation_test

import (
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/conversation"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// clock is a settable fake clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time                     { return c.t }
func (c *clock) add(d time.Duration)                { c.t = c.t.Add(d) }
func newClock() *clock                              { return &clock{t: t0} }
func hops(h ...conversation.Hop) []conversation.Hop { return h }

func newTracker(t testing.TB, cfg conversation.Config, c *clock) *conversation.Tracker {
	t.Helper()
	if len(cfg.EntryRoutes) == 0 {
		cfg.EntryRoutes = []string{"chat"}
	}
	tr, err := conversation.New(conversation.Options{Config: &cfg, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestTurnOutcome covers every turn rule and their order: error,
// canceled, fallback, slow, good (first match wins), and the blamed hop.
func TestTurnOutcome(t *testing.T) {
	entry := conversation.Hop{Name: "chat", Outcome: "ok", Code: "200", Self: 10 * time.Millisecond}
	nlu := conversation.Hop{Name: "nlu", Outcome: "ok", Code: "OK", Self: 20 * time.Millisecond, Depth: 1}
	kb := conversation.Hop{Name: "kb", Outcome: "ok", Code: "200", Self: 1500 * time.Millisecond, Depth: 2}
	with := func(h conversation.Hop, outcome, code string) conversation.Hop {
		h.Outcome, h.Code = outcome, code
		return h
	}
	cases := []struct {
		name  string
		turn  conversation.Turn
		want  conversation.TurnOutcome
		blame string
		green bool
	}{
		{"good", conversation.Turn{Code: "200", HopOutcome: "ok", Duration: time.Second, Hops: hops(entry, nlu, kb)},
			conversation.TurnGood, "", true},
		{"good at exactly the SLO", conversation.Turn{Code: "200", HopOutcome: "ok", Duration: 2 * time.Second},
			conversation.TurnGood, "", true},
		{"5xx is an error, blamed on the deepest failing hop", conversation.Turn{Code: "502", HopOutcome: "error",
			Hops: hops(with(entry, "error", "502"), with(nlu, "error", "Unavailable"), kb)},
			conversation.TurnError, "nlu", false},
		{"500 from the service itself blames the entry route", conversation.Turn{Code: "500", HopOutcome: "error", Hops: hops(with(entry, "error", "500"))},
			conversation.TurnError, "chat", false},
		{"5xx without hops blames the route", conversation.Turn{Code: "503", HopOutcome: "error"},
			conversation.TurnError, "chat", false},
		{"gRPC NotFound is an error for the user", conversation.Turn{Code: "NotFound", HopOutcome: "ok"},
			conversation.TurnError, "chat", false},
		{"proxy timeout", conversation.Turn{Code: "504", HopOutcome: "timeout"}, conversation.TurnError, "chat", false},
		{"breaker rejection", conversation.Turn{Code: "Unavailable", HopOutcome: "rejected"}, conversation.TurnError, "chat", false},
		{"error beats slow", conversation.Turn{Code: "500", HopOutcome: "error", Duration: time.Minute},
			conversation.TurnError, "chat", false},
		{"4xx is not an error", conversation.Turn{Code: "404", HopOutcome: "ok", Duration: time.Second},
			conversation.TurnGood, "", false},
		{"canceled, blamed on the slowest hop", conversation.Turn{Code: "Canceled", HopOutcome: "canceled", Duration: 5 * time.Second,
			Hops: hops(with(entry, "canceled", "Canceled"), nlu, with(kb, "canceled", "499"))},
			conversation.TurnCanceled, "kb", false},
		{"gRPC Canceled is canceled, not an error", conversation.Turn{Code: "Canceled", HopOutcome: "canceled"},
			conversation.TurnCanceled, "chat", false},
		{"canceled beats fallback", conversation.Turn{Code: "499", HopOutcome: "canceled", Hops: hops(with(kb, "fallback", "200"))},
			conversation.TurnCanceled, "kb", false},
		{"fallback on the entry hop", conversation.Turn{Code: "200", HopOutcome: "fallback", Hops: hops(with(entry, "fallback", "200"))},
			conversation.TurnFallback, "chat", true},
		{"fallback deep in the trace", conversation.Turn{Code: "200", HopOutcome: "ok", Hops: hops(entry, nlu, with(kb, "fallback", "200"))},
			conversation.TurnFallback, "kb", true},
		{"no_match verdict without its hop", conversation.Turn{Code: "200", HopOutcome: "ok", Verdict: "no_match", Hops: hops(entry, nlu)},
			conversation.TurnFallback, "chat", true},
		{"no_match verdict blames the hop that said it", conversation.Turn{Code: "200", HopOutcome: "ok", Verdict: "no_match",
			Hops: hops(entry, conversation.Hop{Name: "nlu", Outcome: "ok", Verdict: "no_match", Depth: 1}, kb)},
			conversation.TurnFallback, "nlu", true},
		{"fallback beats slow", conversation.Turn{Code: "200", HopOutcome: "fallback", Duration: time.Minute},
			conversation.TurnFallback, "chat", false},
		{"slow, blamed on the largest self time", conversation.Turn{Code: "200", HopOutcome: "ok", Duration: 3 * time.Second, Hops: hops(entry, nlu, kb)},
			conversation.TurnSlow, "kb", false},
		{"a stream is held to its first byte", conversation.Turn{Code: "200", HopOutcome: "ok", Duration: 30 * time.Second, FirstByte: 500 * time.Millisecond},
			conversation.TurnGood, "", true},
		{"a late first byte is slow", conversation.Turn{Code: "OK", HopOutcome: "ok", Duration: 3 * time.Second, FirstByte: 2500 * time.Millisecond},
			conversation.TurnSlow, "chat", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker(t, conversation.Config{}, newClock())
			tc.turn.Route = "chat"
			tc.turn.Start = t0
			got := tr.Observe(tc.turn)
			if got.Outcome != tc.want || got.Blame != tc.blame || got.Green != tc.green {
				t.Errorf("outcome %q blame %q green %v, want %q %q %v", got.Outcome, got.Blame, got.Green, tc.want, tc.blame, tc.green)
			}
		})
	}
}
