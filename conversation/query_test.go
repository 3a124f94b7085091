package conversation_test

import (
	"slices"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/conversation"
)

// queryFixture ends four sessions of known shape and leaves one active:
//
//	a: completed, good, green
//	b: abandoned after a fallback that was 200 and fast: green, not good
//	c: abandoned after a 500: not green
//	d: frustrated by repeats, every turn fine: green, not good
//	e: active
func queryFixture(t *testing.T) (*conversation.Tracker, *clock) {
	c := newClock()
	tr := newTracker(t, conversation.Config{}, c)
	obs := func(id, code, hop, text string) {
		tr.Observe(conversation.Turn{Route: "chat", SessionID: id, Start: c.now(), Duration: 100 * time.Millisecond,
			Code: code, HopOutcome: hop, Text: text, Hops: []conversation.Hop{{Name: "chat"}, {Name: "kb", Outcome: hop, Depth: 1}}})
		c.add(time.Second)
	}
	obs("a", "200", "ok", "")
	obs("b", "200", "fallback", "")
	obs("c", "500", "error", "")
	obs("d", "200", "ok", "where is my order")
	obs("d", "200", "ok", "where is my order")
	obs("d", "200", "ok", "where is my order")
	obs("d", "200", "ok", "fine")
	c.add(conversation.DefaultIdleTimeout)
	obs("e", "200", "ok", "")
	return tr, c
}

func TestSessionsQuery(t *testing.T) {
	tr, c := queryFixture(t)
	// The last bad turn of each session (index), 0 for none; e is active
	// and had a bad turn too.
	tr.Observe(conversation.Turn{Route: "chat", SessionID: "e", Start: c.now(), Duration: 3 * time.Second, Code: "200", HopOutcome: "ok"})
	c.add(4 * time.Second)
	tr.Observe(conversation.Turn{Route: "chat", SessionID: "e", Start: c.now(), Duration: 100 * time.Millisecond, Code: "200", HopOutcome: "ok"})
	lastBad := map[string]int{"b": 1, "c": 1, "e": 2}
	yes, no := true, false
	cases := []struct {
		name string
		q    conversation.SessionQuery
		want []string
	}{
		{"everything: ended newest first, then active", conversation.SessionQuery{}, []string{"d", "c", "b", "a", "e"}},
		{"by outcome", conversation.SessionQuery{Outcome: conversation.SessionAbandoned}, []string{"c", "b"}},
		{"active only", conversation.SessionQuery{Outcome: conversation.SessionActive}, []string{"e"}},
		{"good", conversation.SessionQuery{Good: &yes}, []string{"a"}},
		{"not good", conversation.SessionQuery{Good: &no}, []string{"d", "c", "b"}},
		{"green: dashboards were green, session was not", conversation.SessionQuery{Green: true}, []string{"d", "b"}},
		{"signal", conversation.SessionQuery{Signal: conversation.SignalRepeat}, []string{"d"}},
		{"since", conversation.SessionQuery{Since: t0.Add(3 * time.Second)}, []string{"d", "e"}},
		{"limit", conversation.SessionQuery{Limit: 2}, []string{"d", "c"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, r := range tr.Sessions(tc.q) {
				got = append(got, r.ID)
				// Listed with its last bad turn only: what it ended after.
				want := lastBad[r.ID]
				switch {
				case want == 0 && r.Records != nil:
					t.Errorf("session %s listed with turns %+v, want none", r.ID, r.Records)
				case want != 0 && (len(r.Records) != 1 || r.Records[0].Index != want || r.Records[0].Outcome == conversation.TurnGood):
					t.Errorf("session %s listed with turns %+v, want its last bad turn, #%d", r.ID, r.Records, want)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
	b, ok := tr.Session("b")
	if !ok || len(b.Records) != 1 || b.Records[0].Outcome != conversation.TurnFallback || b.Records[0].Blame != "kb" || !b.Records[0].Green {
		t.Errorf("session b: %+v", b)
	}
	if last, ok := b.LastBad(); !ok || last.Index != 1 {
		t.Errorf("b's last bad turn: %+v %v", last, ok)
	}
	if _, ok := tr.Session("nope"); ok {
		t.Error("unknown session found")
	}
	_ = c
}

func TestSLI(t *testing.T) {
	tr, c := queryFixture(t)
	points, total := tr.SLI(c.now(), 30*time.Minute, 15*time.Minute)
	if len(points) != 2 {
		t.Fatalf("%d points, want 2", len(points))
	}
	// Four sessions ended, one good; eight turns, one failed.
	if total.Sessions != 4 || total.Good != 1 || *total.GoodRatio != 0.25 || total.Turns != 8 || total.Errors != 1 || *total.ErrorRatio != 0.125 {
		t.Errorf("total %+v", total)
	}
	if total.P95 == nil || *total.P95 <= 0.05 || *total.P95 > 0.1 {
		t.Errorf("p95 %v, want within the 50-100 ms bucket", total.P95)
	}
	// The first turns landed in the older point, the sessions ended (at
	// idle expiry) and e's turn in the newer one.
	if points[0].Turns != 7 || points[0].Sessions != 0 || points[0].GoodRatio != nil ||
		points[1].Turns != 1 || points[1].Sessions != 4 {
		t.Errorf("points %+v %+v", points[0], points[1])
	}
	// An hour later the window is empty.
	points, total = tr.SLI(c.now().Add(time.Hour), 30*time.Minute, time.Minute)
	if len(points) != 30 || total.Sessions != 0 || total.Turns != 0 || total.P95 != nil {
		t.Errorf("an hour later: %d points, total %+v", len(points), total)
	}
}

// TestTurnsKept: a long session keeps its last MaxTurnsKept turns, oldest
// first, and counts all of them.
func TestTurnsKept(t *testing.T) {
	c := newClock()
	tr := newTracker(t, conversation.Config{}, c)
	n := conversation.MaxTurnsKept + 5
	for range n {
		tr.Observe(conversation.Turn{Route: "chat", SessionID: "long", Start: c.now(), Code: "200", HopOutcome: "ok"})
		c.add(time.Second)
	}
	r, ok := tr.Session("long")
	if !ok || r.Turns != n || len(r.Records) != conversation.MaxTurnsKept {
		t.Fatalf("%d turns, %d kept, want %d and %d", r.Turns, len(r.Records), n, conversation.MaxTurnsKept)
	}
	for i, rec := range r.Records {
		if rec.Index != 6+i {
			t.Fatalf("record %d has index %d, want %d", i, rec.Index, 6+i)
		}
	}
}
