package admin

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/telemetry"
)

// convFixture is a conversation tracker fed with forty minutes of chat
// sessions whose good-session ratio falls while turn latency stays within
// the SLO (more and more users repeat themselves and leave: "green" bad
// sessions), then with sessions over the last minute's stored traces of
// uiFixture (two turns a second, six turns a session), so that a session's
// turns open real waterfalls.
type convFixture struct {
	tr *conversation.Tracker
	// slowSession holds the slowest trace as its last turn: abandoned
	// after a slow KB call.
	slowSession string
	slowTurns   int
}

// convIdle is the fixture's idle timeout: the first two thirds of the last
// minute's sessions have ended by now, the rest are active.
const convIdle = 20 * time.Second

// uiTurn is one turn to feed, with its end time for ordering.
type uiTurn struct {
	conversation.Turn
	end time.Time
}

func newConvFixture(t *testing.T, store *telemetry.Store, now time.Time, slowest trace.TraceID) *convFixture {
	t.Helper()
	clock := now
	tr, err := conversation.New(conversation.Options{
		Config: &conversation.Config{EntryRoutes: []string{uiChat.Route}, TurnSLO: 2 * time.Second, IdleTimeout: convIdle},
		Now:    func() time.Time { return clock },
	})
	if err != nil {
		t.Fatal(err)
	}
	var turns []uiTurn
	add := func(session string, start time.Time, d time.Duration, code, hopOutcome, text, verdict string, trace uint64, hops ...conversation.Hop) {
		turns = append(turns, uiTurn{Turn: conversation.Turn{
			Route: uiChat.Route, SessionID: session, Source: conversation.SourceHeader, TraceID: tid(trace),
			Start: start, Duration: d, Code: code, HopOutcome: hopOutcome, Verdict: verdict, Text: text, Hops: hops,
		}, end: start.Add(d)})
	}
	questions := []string{
		"where is my order 4711", "can I return a jacket without the receipt", "when does the store open on sunday",
		"how much is delivery to berlin", "I forgot the password of my account", "is shipping free over fifty euros",
	}
	kbSlow := []conversation.Hop{{Name: uiChat.Route, Self: 10 * time.Millisecond}, {Name: uiKB.Route, Self: 2400 * time.Millisecond, Depth: 1}}
	infErr := []conversation.Hop{{Name: uiChat.Route, Outcome: "error", Code: "502"}, {Name: uiInfer.Route, Outcome: "error", Code: "Unavailable", Depth: 1}}

	// History: five sessions a minute; from minute 8 on, more of them go
	// bad each minute, most of them "green" (every answer fast and 2xx,
	// yet the user repeated the question and left), a few after a slow KB
	// call or a failed inference.
	var n uint64
	const minutes = 40
	base := now.Add(-time.Duration(minutes+2) * time.Minute).Truncate(time.Minute)
	for m := range minutes {
		bad := max(0, (m-6)/7)
		for k := range 5 {
			n++
			id := fmt.Sprintf("web-%02d%02d-%04x", m, k, (n*2654435761)&0xffff)
			at := base.Add(time.Duration(m)*time.Minute + time.Duration(k)*9*time.Second)
			q := func(i int) string { return questions[(int(n)+i)%len(questions)] }
			fast := func(i int) time.Duration { return time.Duration(280+(int(n)*37+i*53)%260) * time.Millisecond }
			kind := "good"
			if k < bad {
				kind = []string{"repeat", "frustrated", "repeat", "slow", "repeat", "error"}[(m+k)%6]
			}
			tr := 900000 + n*10
			switch kind {
			case "repeat": // green: fast answers, the same question again, gone
				add(id, at, fast(0), "200", "ok", q(0), "", tr)
				add(id, at.Add(8*time.Second), fast(1), "200", "ok", q(1), "", tr+1)
				add(id, at.Add(16*time.Second), fast(2), "200", "ok", q(1), "", tr+2)
			case "frustrated": // green: asked three times, then something else
				add(id, at, fast(0), "200", "ok", q(0), "", tr)
				add(id, at.Add(7*time.Second), fast(1), "200", "ok", q(0), "", tr+1)
				add(id, at.Add(14*time.Second), fast(2), "200", "ok", q(0), "", tr+2)
				add(id, at.Add(21*time.Second), fast(3), "200", "ok", q(2), "", tr+3)
			case "slow":
				add(id, at, fast(0), "200", "ok", q(0), "", tr)
				add(id, at.Add(8*time.Second), 2600*time.Millisecond, "200", "ok", q(1), "", tr+1, kbSlow...)
			case "error":
				add(id, at, fast(0), "200", "ok", q(0), "", tr)
				add(id, at.Add(8*time.Second), 40*time.Millisecond, "502", "error", q(1), "", tr+1, infErr...)
			default: // good; every other one closes with a goodbye
				add(id, at, fast(0), "200", "ok", q(0), "", tr)
				add(id, at.Add(8*time.Second), fast(1), "200", "ok", q(1), "", tr+1)
				verdict := ""
				if k%2 == 0 {
					verdict = conversation.VerdictResolved
				}
				add(id, at.Add(16*time.Second), fast(2), "200", "ok", "thanks bye", verdict, tr+2)
			}
		}
	}

	// The last minute: uiFixture's 120 stored traces, six turns a session.
	f := &convFixture{tr: tr}
	for i := range 120 {
		traceN := 5000 + uint64(i)
		d, ok := store.Trace(tid(traceN))
		if !ok {
			t.Fatalf("fixture trace %d is not in the store", traceN)
		}
		var root telemetry.SpanNode
		for _, s := range d.Spans {
			if s.Depth == 0 {
				root = s
			}
		}
		id := fmt.Sprintf("app-%02d-%04x", i/6, (uint64(i/6)*40503)&0xffff)
		text := questions[i%len(questions)]
		var hops []conversation.Hop
		code, outcome := root.Code, string(root.Outcome)
		switch i {
		case 29: // inference failed: the gateway answered 502
			code, outcome, hops = "502", "error", infErr
		case 53:
			hops = kbSlow
			f.slowSession = id
		case 71:
			hops = []conversation.Hop{{Name: uiChat.Route}, {Name: uiKB.Route, Outcome: "fallback", Depth: 1}}
		}
		if i%6 == 5 && i/6 == 3 {
			text = questions[(i-1)%len(questions)] // a green repeat, then gone
		}
		verdict := ""
		if i%6 == 5 && i/6%3 == 0 && i/6 != 3 {
			verdict = conversation.VerdictResolved
		}
		add(id, root.Start, root.Duration, code, outcome, text, verdict, traceN, hops...)
	}
	f.slowTurns = 6
	if slowest != tid(5053) {
		t.Fatalf("the slowest trace is %d, want the fixture's turn 53", slowest)
	}

	slices.SortStableFunc(turns, func(a, b uiTurn) int { return a.end.Compare(b.end) })
	for _, tu := range turns {
		clock = tu.end
		tr.Observe(tu.Turn)
	}
	clock = now
	tr.Sweep()
	return f
}
