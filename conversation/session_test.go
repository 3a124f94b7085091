package conversation_test

import (
	"slices"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/conversation"
)

// step is one event of a session script: a turn (text, outcome knobs) or
// the clock moving.
type step struct {
	wait     time.Duration // advance the clock first
	text     string
	code     string // default "200"
	hop      string // default "ok"
	dur      time.Duration
	verdict  string
	session  string   // default "s1"
	finish   []string // finish reasons of the turn's genai hops
	signals  []string
	outcome  conversation.TurnOutcome // expected; "" = don't check
	sweepNow bool                     // sweep instead of a turn
}

func run(t *testing.T, tr *conversation.Tracker, c *clock, steps []step) {
	t.Helper()
	for i, s := range steps {
		c.add(s.wait)
		if s.sweepNow {
			tr.Sweep()
			continue
		}
		turn := conversation.Turn{
			Route: "chat", SessionID: s.session, Source: conversation.SourceHeader, Start: c.now(),
			Duration: s.dur, Code: s.code, HopOutcome: s.hop, Verdict: s.verdict, Text: s.text,
		}
		if turn.SessionID == "" {
			turn.SessionID = "s1"
		}
		if turn.Code == "" {
			turn.Code = "200"
		}
		if turn.HopOutcome == "" {
			turn.HopOutcome = "ok"
		}
		if turn.Duration == 0 {
			turn.Duration = 100 * time.Millisecond
		}
		turn.Hops = []conversation.Hop{{Name: "chat", Outcome: turn.HopOutcome, Code: turn.Code}}
		for d, f := range s.finish {
			turn.Hops = append(turn.Hops, conversation.Hop{Name: "llm", Outcome: "ok", Code: "200", FinishReason: f, Depth: d + 1})
		}
		res := tr.Observe(turn)
		if s.outcome != "" && res.Outcome != s.outcome {
			t.Errorf("step %d: outcome %q, want %q", i, res.Outcome, s.outcome)
		}
		if got := res.Signals.Names(); !slices.Equal(got, s.signals) {
			t.Errorf("step %d (%q): signals %v, want %v", i, s.text, got, s.signals)
		}
	}
}

// TestSignals covers repeat (similar to one of the last N, short messages
// exempt), frustration keywords (whole words, phrases, case), regenerate
// (a cancel, then the same message) and truncated (a "length" finish on
// any hop).
func TestSignals(t *testing.T) {
	repeat, frust := []string{"repeat"}, []string{"frustration"}
	cases := []struct {
		name  string
		cfg   conversation.Config
		steps []step
	}{
		{"same question again", conversation.Config{}, []step{
			{text: "where is my order"},
			{text: "Where is my order?", signals: repeat},
		}},
		{"a reworded question with one more word", conversation.Config{}, []step{
			{text: "where is my order"},
			{text: "where is my order please", signals: repeat},
		}},
		{"different questions", conversation.Config{}, []step{
			{text: "where is my order"},
			{text: "can I change the delivery address"},
			{text: "what are your opening hours on sunday"},
		}},
		{"short messages never repeat", conversation.Config{}, []step{
			{text: "yes ok"}, {text: "yes ok"}, {text: "thanks"}, {text: "thanks"},
		}},
		{"no text, no signal", conversation.Config{}, []step{{}, {}}},
		{"only the last N messages count", conversation.Config{Repeat: conversation.Repeat{Last: 2}}, []step{
			{text: "where is my order"},
			{text: "can I change the delivery address"},
			{text: "what are your opening hours on sunday"},
			{text: "where is my order"}, // three back: forgotten
			{text: "what are your opening hours on sunday", signals: repeat},
		}},
		{"a stricter similarity", conversation.Config{Repeat: conversation.Repeat{Similarity: 0.99}}, []step{
			{text: "where is my order"},
			{text: "where is my order please"},
			{text: "WHERE is my order!!", signals: repeat},
		}},
		{"frustration keywords are off by default", conversation.Config{}, []step{
			{text: "this is useless, let me talk to a human"},
		}},
		{"frustration keyword, any case, whole word", conversation.Config{FrustrationKeywords: []string{"useless", "talk to a human"}}, []step{
			{text: "this is USELESS", signals: frust},
			{text: "uselessness is a word"},
			{text: "please let me Talk to a Human.", signals: frust},
			{text: "talk to a humanoid"},
		}},
		{"frustration in other scripts", conversation.Config{FrustrationKeywords: []string{"Бесполезно"}}, []step{
			{text: "это бесполезно", signals: frust},
		}},
		{"repeat and frustration combine", conversation.Config{FrustrationKeywords: []string{"again"}}, []step{
			{text: "where is my order again", signals: frust},
			{text: "where is my order again", signals: []string{"repeat", "frustration"}},
		}},
		{"regenerate: canceled, then asked again", conversation.Config{}, []step{
			{text: "write me a poem about cats", hop: "canceled", code: "499", outcome: conversation.TurnCanceled},
			{text: "write me a poem about cats", signals: []string{"repeat", "regenerate"}, outcome: conversation.TurnGood},
		}},
		{"no regenerate without the cancel", conversation.Config{}, []step{
			{text: "write me a poem about cats", hop: "error", code: "500"},
			{text: "write me a poem about cats", signals: repeat},
		}},
		{"no regenerate for a different message", conversation.Config{}, []step{
			{text: "write me a poem about cats", hop: "canceled", code: "499"},
			{text: "what is the weather in paris"},
		}},
		{"truncated: a model answer cut at its limit, on any hop", conversation.Config{}, []step{
			{finish: []string{"length"}, signals: []string{"truncated"}, outcome: conversation.TurnGood},
			{finish: []string{"stop", "length"}, signals: []string{"truncated"}},
			{finish: []string{"stop"}},
			{finish: []string{"content_filter", "none", "error", ""}},
		}},
		{"truncated combines with repeat", conversation.Config{}, []step{
			{text: "tell me about your refund policy", finish: []string{"length"}, signals: []string{"truncated"}},
			{text: "tell me about your refund policy", finish: []string{"length"}, signals: []string{"repeat", "truncated"}},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			run(t, newTracker(t, tc.cfg, c), c, tc.steps)
		})
	}
}

// TestSessionOutcome covers every session rule and their order: handoff,
// resolved, abandoned, frustrated, completed; and what makes a session
// good.
func TestSessionOutcome(t *testing.T) {
	idle := conversation.DefaultIdleTimeout
	cases := []struct {
		name   string
		cfg    conversation.Config
		steps  []step
		want   conversation.SessionOutcome
		reason conversation.EndReason
		good   bool
		green  bool
	}{
		{"completed: good turns, then idle", conversation.Config{}, []step{
			{text: "hello there bot"}, {text: "where is my order", wait: time.Minute}, {wait: idle + time.Minute, sweepNow: true},
		}, conversation.SessionCompleted, conversation.EndIdle, true, true},
		{"resolved by verdict ends at once", conversation.Config{}, []step{
			{text: "where is my order"}, {text: "thanks bye", verdict: "resolved"},
		}, conversation.SessionResolved, conversation.EndVerdict, true, true},
		{"handoff beats everything", conversation.Config{}, []step{
			{code: "500", hop: "error"}, {text: "talk to a human", verdict: "handoff", hop: "fallback"},
		}, conversation.SessionHandoff, conversation.EndVerdict, false, false},
		{"resolved after a repeat is still good", conversation.Config{}, []step{
			{text: "where is my order"}, {text: "where is my order"}, {verdict: "resolved"},
		}, conversation.SessionResolved, conversation.EndVerdict, true, true},
		{"resolved after two repeats is not good", conversation.Config{}, []step{
			{text: "where is my order"}, {text: "where is my order"}, {text: "where is my order"}, {verdict: "resolved"},
		}, conversation.SessionResolved, conversation.EndVerdict, false, true},
		{"resolved with frustration is not good", conversation.Config{FrustrationKeywords: []string{"useless"}}, []step{
			{text: "useless"}, {verdict: "resolved"},
		}, conversation.SessionResolved, conversation.EndVerdict, false, true},
		{"abandoned after an error", conversation.Config{}, []step{
			{text: "hi"}, {code: "503", hop: "error"}, {wait: idle + time.Second, sweepNow: true},
		}, conversation.SessionAbandoned, conversation.EndIdle, false, false},
		{"abandoned after a slow answer", conversation.Config{}, []step{
			{dur: 3 * time.Second}, {wait: idle + 3*time.Second, sweepNow: true},
		}, conversation.SessionAbandoned, conversation.EndIdle, false, false},
		{"abandoned after a fallback answer on a green dashboard", conversation.Config{}, []step{
			{}, {hop: "fallback"}, {wait: idle + time.Second, sweepNow: true},
		}, conversation.SessionAbandoned, conversation.EndIdle, false, true},
		{"abandoned after a cancel", conversation.Config{}, []step{
			{code: "499", hop: "canceled"}, {wait: idle + time.Second, sweepNow: true},
		}, conversation.SessionAbandoned, conversation.EndIdle, false, false},
		{"abandoned after a repeat on good turns", conversation.Config{}, []step{
			{text: "where is my order"}, {text: "where is my order"}, {wait: idle + time.Second, sweepNow: true},
		}, conversation.SessionAbandoned, conversation.EndIdle, false, true},
		{"a bad turn followed by a good one is not abandoned", conversation.Config{}, []step{
			{code: "500", hop: "error"}, {}, {wait: idle + time.Second, sweepNow: true},
		}, conversation.SessionCompleted, conversation.EndIdle, true, false},
		{"frustrated: two repeats, last turn fine", conversation.Config{}, []step{
			{text: "where is my order"}, {text: "where is my order"}, {text: "where is my order"}, {text: "ok"},
			{wait: idle + time.Second, sweepNow: true},
		}, conversation.SessionFrustrated, conversation.EndIdle, false, true},
		{"frustrated: a repeat and a keyword", conversation.Config{FrustrationKeywords: []string{"ridiculous"}}, []step{
			{text: "where is my order"}, {text: "where is my order"}, {text: "ridiculous"}, {text: "fine"},
			{wait: idle + time.Second, sweepNow: true},
		}, conversation.SessionFrustrated, conversation.EndIdle, false, true},
		{"idle is measured from the end of the last turn", conversation.Config{}, []step{
			{dur: time.Second}, {wait: idle, sweepNow: true}, {wait: time.Second, sweepNow: true},
		}, conversation.SessionCompleted, conversation.EndIdle, true, true},
		{"a custom idle timeout", conversation.Config{IdleTimeout: time.Minute}, []step{
			{}, {wait: 61 * time.Second, sweepNow: true},
		}, conversation.SessionCompleted, conversation.EndIdle, true, true},
		{"max_duration ends the session at the next turn", conversation.Config{MaxDuration: time.Hour}, []step{
			{}, {wait: 14 * time.Minute}, {wait: 14 * time.Minute}, {wait: 14 * time.Minute}, {wait: 14 * time.Minute},
			{wait: 4 * time.Minute}, // 60 minutes after the first turn started
		}, conversation.SessionCompleted, conversation.EndMaxDuration, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			var ended []conversation.SessionResult
			cfg := tc.cfg
			cfg.EntryRoutes = []string{"chat"}
			tr, err := conversation.New(conversation.Options{Config: &cfg, Now: c.now,
				OnSession: func(r conversation.SessionResult) { ended = append(ended, r) }})
			if err != nil {
				t.Fatal(err)
			}
			for i := range tc.steps {
				tc.steps[i].signals = nil // checked in TestSignals
			}
			runLenient(t, tr, c, tc.steps)
			if len(ended) != 1 {
				t.Fatalf("%d sessions ended, want 1: %+v", len(ended), ended)
			}
			r := ended[0]
			if r.Outcome != tc.want || r.Reason != tc.reason || r.Good != tc.good || r.Green != tc.green {
				t.Errorf("outcome %q reason %q good %v green %v, want %q %q %v %v",
					r.Outcome, r.Reason, r.Good, r.Green, tc.want, tc.reason, tc.good, tc.green)
			}
		})
	}
}

// runLenient is run without the signal check.
func runLenient(t *testing.T, tr *conversation.Tracker, c *clock, steps []step) {
	t.Helper()
	for _, s := range steps {
		c.add(s.wait)
		if s.sweepNow {
			tr.Sweep()
			continue
		}
		code, hop, dur := s.code, s.hop, s.dur
		if code == "" {
			code = "200"
		}
		if hop == "" {
			hop = "ok"
		}
		if dur == 0 {
			dur = 100 * time.Millisecond
		}
		tr.Observe(conversation.Turn{Route: "chat", SessionID: "s1", Start: c.now(), Duration: dur,
			Code: code, HopOutcome: hop, Verdict: s.verdict, Text: s.text})
	}
}
