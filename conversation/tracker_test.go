package conversation_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hopwatch/hopwatch/conversation"
)

// TestEviction: at max_sessions the least recently active session ends as
// evicted and is counted; a session touched recently survives.
func TestEviction(t *testing.T) {
	c := newClock()
	var ended []string
	cfg := conversation.Config{EntryRoutes: []string{"chat"}, MaxSessions: 3}
	tr, err := conversation.New(conversation.Options{Config: &cfg, Now: c.now,
		OnSession: func(r conversation.SessionResult) {
			if r.Outcome != conversation.SessionEvicted || r.Reason != conversation.EndEvicted || r.Good {
				t.Errorf("session %s: %q/%q good=%v, want evicted", r.ID, r.Outcome, r.Reason, r.Good)
			}
			ended = append(ended, r.ID)
		}})
	if err != nil {
		t.Fatal(err)
	}
	turn := func(id string) {
		c.add(time.Second)
		tr.Observe(conversation.Turn{Route: "chat", SessionID: id, Start: c.now(), Code: "200", HopOutcome: "ok"})
	}
	turn("a")
	turn("b")
	turn("c")
	turn("a") // a is now the most recent; b the least
	turn("d") // evicts b
	turn("e") // evicts c
	if got := strings.Join(ended, ","); got != "b,c" {
		t.Errorf("evicted %q, want b,c", got)
	}
	if st := tr.Stats(); st.Active != 3 || st.Evicted != 2 || st.Peak != 3 {
		t.Errorf("stats %+v, want 3 active, 2 evicted, peak 3", st)
	}
	// a's second turn was counted in the same session.
	if d, ok := tr.Session("a"); !ok || d.Turns != 2 {
		t.Errorf("session a: %+v %v, want 2 turns", d, ok)
	}
}

// TestSessionlessTurns: a turn without an id is classified and counted
// (identity "none") but starts no session.
func TestSessionlessTurns(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := conversation.Config{EntryRoutes: []string{"chat"}}
	tr, err := conversation.New(conversation.Options{Config: &cfg, Metrics: conversation.NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	res := tr.Observe(conversation.Turn{Route: "chat", Start: time.Now(), Code: "500", HopOutcome: "error"})
	if res.Outcome != conversation.TurnError || res.Index != 0 || res.SessionID != "" {
		t.Errorf("result %+v", res)
	}
	if st := tr.Stats(); st.Active != 0 {
		t.Errorf("%d active sessions, want 0", st.Active)
	}
	want := `
# HELP hopwatch_conversation_identity_total Turns by where their session id was found: header, baggage, json, none.
# TYPE hopwatch_conversation_identity_total counter
hopwatch_conversation_identity_total{source="none"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "hopwatch_conversation_identity_total"); err != nil {
		t.Error(err)
	}
}

// TestMetrics checks the series a session produces, by name and labels.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := newClock()
	cfg := conversation.Config{EntryRoutes: []string{"chat"}}
	tr, err := conversation.New(conversation.Options{Config: &cfg, Now: c.now, Metrics: conversation.NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	obs := func(text, code, outcome string, d time.Duration, h ...conversation.Hop) {
		tr.Observe(conversation.Turn{Route: "chat", SessionID: "s", Source: "header", Start: c.now(), Duration: d,
			Code: code, HopOutcome: outcome, Text: text, Hops: h})
		c.add(time.Minute)
	}
	obs("where is my order", "200", "ok", time.Second)
	obs("where is my order", "200", "ok", 3*time.Second,
		conversation.Hop{Name: "chat", Self: time.Second}, conversation.Hop{Name: "kb", Self: 2 * time.Second, Depth: 1})
	obs("hello there friend", "200", "ok", time.Second, conversation.Hop{Name: "kb", Outcome: "fallback", Depth: 1})
	c.add(conversation.DefaultIdleTimeout)
	tr.Sweep()
	want := `
# HELP hopwatch_conversation_active_sessions Sessions tracked now (at most max_sessions).
# TYPE hopwatch_conversation_active_sessions gauge
hopwatch_conversation_active_sessions 0
# HELP hopwatch_conversation_bad_turns_total Turns that were not good, by the hop blamed (route name) and cause (the turn outcome).
# TYPE hopwatch_conversation_bad_turns_total counter
hopwatch_conversation_bad_turns_total{cause="fallback",hop="kb"} 1
hopwatch_conversation_bad_turns_total{cause="slow",hop="kb"} 1
# HELP hopwatch_conversation_sessions_total Ended sessions by outcome (handoff, resolved, evicted, abandoned, frustrated, completed) and whether they were good, with the last trace as exemplar.
# TYPE hopwatch_conversation_sessions_total counter
hopwatch_conversation_sessions_total{good="false",outcome="abandoned"} 1
# HELP hopwatch_conversation_turn_signals_total Turns flagged by a signal: repeat, frustration, regenerate, truncated.
# TYPE hopwatch_conversation_turn_signals_total counter
hopwatch_conversation_turn_signals_total{route="chat",signal="repeat"} 1
# HELP hopwatch_conversation_turns_total User turns (requests on entry routes) by outcome: error, canceled, fallback, slow, good.
# TYPE hopwatch_conversation_turns_total counter
hopwatch_conversation_turns_total{outcome="fallback",route="chat"} 1
hopwatch_conversation_turns_total{outcome="good",route="chat"} 1
hopwatch_conversation_turns_total{outcome="slow",route="chat"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"hopwatch_conversation_active_sessions", "hopwatch_conversation_bad_turns_total", "hopwatch_conversation_sessions_total",
		"hopwatch_conversation_turn_signals_total", "hopwatch_conversation_turns_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "hopwatch_conversation_session_turns", "hopwatch_conversation_session_duration_seconds"); n != 2 {
		t.Errorf("%d histogram series, want 2", n)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// TestMillionSessions pushes 1,000,000 sessions through a tracker at the
// default max_sessions: it never holds more, evicts the rest, and its live
// heap stays bounded. (Under -race, 200,000: the detector makes a million
// take a minute; eviction starts at 100,000 either way.)
func TestMillionSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	n := 1_000_000
	if raceEnabled {
		n = 200_000
	}
	c := newClock()
	cfg := conversation.Config{EntryRoutes: []string{"chat"}}
	tr, err := conversation.New(conversation.Options{Config: &cfg, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak, peakLive uint64
	for i := range n {
		c.add(time.Millisecond) // 1,000 s in all: nothing goes idle
		tr.Observe(conversation.Turn{Route: "chat", SessionID: fmt.Sprintf("session-%07d", i), Start: c.now(),
			Duration: 10 * time.Millisecond, Code: "200", HopOutcome: "ok", Text: "where is my order number please"})
		if i%50_000 == 49_999 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc-min(base, ms.HeapAlloc))
			if i%200_000 == 199_999 {
				runtime.GC()
				runtime.ReadMemStats(&ms)
				peakLive = max(peakLive, ms.HeapAlloc-min(base, ms.HeapAlloc))
			}
		}
	}
	st := tr.Stats()
	max := conversation.DefaultMaxSessions
	if st.Peak != max || st.Active != max || st.Evicted != uint64(n-max) {
		t.Errorf("stats %+v, want peak=active=%d, evicted %d", st, max, n-max)
	}
	t.Logf("%d sessions: peak heap above baseline %.1f MiB (garbage included), live %.1f MiB after GC = %d bytes per tracked session",
		n, float64(peak)/(1<<20), float64(peakLive)/(1<<20), peakLive/uint64(st.Peak))
	// A tracked session with one turn is about 0.6 KiB live; 96 MiB
	// leaves room without letting a leak through (keeping what was
	// evicted would be several hundred MiB).
	if peakLive > 96<<20 {
		t.Errorf("live heap %d MiB above baseline, want ≤ 96 MiB", peakLive>>20)
	}
	runtime.KeepAlive(tr)
}

func BenchmarkObserve(b *testing.B) {
	cfg := conversation.Config{EntryRoutes: []string{"chat"}, FrustrationKeywords: []string{"useless", "talk to a human"}}
	c := newClock()
	tr, err := conversation.New(conversation.Options{Config: &cfg, Now: c.now})
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprint("s", i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		tr.Observe(conversation.Turn{Route: "chat", SessionID: ids[i%len(ids)], Start: c.now(), Duration: time.Millisecond,
			Code: "200", HopOutcome: "ok", Text: "hello, could you tell me where my order 12345 is right now?"})
	}
}

// TestZeroTimes: a turn without a start time (a careless caller) is
// tracked and expired without indexing the SLI ring out of range.
func TestZeroTimes(t *testing.T) {
	c := newClock()
	tr := newTracker(t, conversation.Config{}, c)
	tr.Observe(conversation.Turn{Route: "chat", SessionID: "z", Code: "200", HopOutcome: "ok"})
	tr.Sweep() // idle since year 1: ends now
	if st := tr.Stats(); st.Active != 0 {
		t.Errorf("%d active, want 0", st.Active)
	}
	tr.SLI(time.Time{}, time.Hour, time.Minute)
}

// TestLongSessionsMemory: the worst case per session, every tracked
// session holding MaxTurnsKept turn records, stays near 1.5 KiB, so the
// default max_sessions bounds the tracker to about 150 MiB however long
// sessions get.
func TestLongSessionsMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const sessions = 20_000
	c := newClock()
	cfg := conversation.Config{EntryRoutes: []string{"chat"}, MaxSessions: sessions}
	tr, err := conversation.New(conversation.Options{Config: &cfg, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, sessions)
	for i := range ids {
		ids[i] = fmt.Sprintf("session-%07d", i)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	fellBack := []conversation.Hop{{Name: "chat"}, {Name: "kb", Outcome: "fallback", Depth: 1}}
	for turn := range conversation.MaxTurnsKept + 2 {
		var hops []conversation.Hop
		if turn%2 == 1 {
			hops = fellBack
		}
		for _, id := range ids {
			c.add(time.Microsecond)
			tr.Observe(conversation.Turn{Route: "chat", SessionID: id, Start: c.now(), Duration: time.Millisecond,
				Code: "200", HopOutcome: "ok", Hops: hops})
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	per := (ms.HeapAlloc - min(base, ms.HeapAlloc)) / sessions
	t.Logf("%d sessions of %d turns: %d bytes live per session (x %d default max_sessions = %.0f MiB)",
		sessions, conversation.MaxTurnsKept+2, per, conversation.DefaultMaxSessions, float64(per)*conversation.DefaultMaxSessions/(1<<20))
	if per > 1600 {
		t.Errorf("%d bytes per session, want ≤ 1600", per)
	}
	if r, _ := tr.Session(ids[0]); len(r.Records) != conversation.MaxTurnsKept || r.Records[0].Blame != "" || r.Records[1].Blame != "kb" {
		t.Errorf("records %+v", r.Records[:2])
	}
	runtime.KeepAlive(tr)
	runtime.KeepAlive(ids)
}
