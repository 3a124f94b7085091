package conversation_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hopwatch/hopwatch/conversation"
)

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	err error
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	return b.buf.Write(p)
}

// TestEvents: every turn and ended session becomes one JSON line with the
// documented fields and no text; Run writes what is queued before it
// returns.
func TestEvents(t *testing.T) {
	out := &lockedBuffer{}
	ev := conversation.NewEvents(out, 0, nil)
	c := newClock()
	cfg := conversation.Config{EntryRoutes: []string{"chat"}, TextFrom: "json:message"}
	tr, err := conversation.New(conversation.Options{Config: &cfg, Now: c.now, OnTurn: ev.Turn, OnSession: ev.Session})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ev.Run(ctx) }()
	body := []byte(`{"message":"where is my secret order"}`)
	tr.Observe(conversation.Turn{Route: "chat", SessionID: "s1", Source: "header", Start: c.now(), Duration: time.Second, Code: "200", HopOutcome: "ok", Body: body})
	c.add(2 * time.Second)
	tr.Observe(conversation.Turn{Route: "chat", SessionID: "s1", Source: "header", Start: c.now(), Duration: time.Second, Code: "200", HopOutcome: "fallback", Body: body,
		Hops: []conversation.Hop{{Name: "chat"}, {Name: "kb", Outcome: "fallback", Depth: 1}}})
	c.add(conversation.DefaultIdleTimeout + time.Minute)
	tr.Sweep()
	cancel()
	<-done

	var turns []conversation.TurnEvent
	var sessions []conversation.SessionEvent
	sc := bufio.NewScanner(strings.NewReader(out.buf.String()))
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.Contains(line, []byte("secret")) {
			t.Errorf("user text in an event: %s", line)
		}
		var kind struct{ Type string }
		json.Unmarshal(line, &kind)
		switch kind.Type {
		case "turn":
			var e conversation.TurnEvent
			if err := json.Unmarshal(line, &e); err != nil {
				t.Fatal(err)
			}
			turns = append(turns, e)
		case "session":
			var e conversation.SessionEvent
			if err := json.Unmarshal(line, &e); err != nil {
				t.Fatal(err)
			}
			sessions = append(sessions, e)
		default:
			t.Errorf("line of type %q: %s", kind.Type, line)
		}
	}
	if len(turns) != 2 || len(sessions) != 1 {
		t.Fatalf("%d turn and %d session events, want 2 and 1:\n%s", len(turns), len(sessions), out.buf.String())
	}
	if e := turns[1]; e.SessionID != "s1" || e.Index != 2 || e.Outcome != "fallback" || e.Blame != "kb" ||
		len(e.Signals) != 1 || e.Signals[0] != "repeat" || e.Latency != 1 || !e.Time.Equal(e.Start.Add(time.Second)) {
		t.Errorf("turn event %+v", e)
	}
	if e := sessions[0]; e.SessionID != "s1" || e.Outcome != "abandoned" || e.Good || e.Turns != 2 || e.Repeats != 1 || e.Reason != "idle" {
		t.Errorf("session event %+v", e)
	}
}

// TestEventsNeverBlock: with the writer behind or failing, events are
// dropped and counted, and Observe does not wait.
func TestEventsNeverBlock(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := conversation.NewMetrics(reg)
	out := &lockedBuffer{err: errors.New("disk full")}
	ev := conversation.NewEvents(out, 2, m)
	for range 5 { // nobody is running the writer: 2 queued, 3 dropped
		ev.Turn(conversation.TurnResult{})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ev.Run(ctx) // drains the 2, both fail
	want := `
# HELP hopwatch_conversation_events_dropped_total Turn and session events not written: queue_full (the writer fell behind), write_error, encode.
# TYPE hopwatch_conversation_events_dropped_total counter
hopwatch_conversation_events_dropped_total{reason="queue_full"} 3
hopwatch_conversation_events_dropped_total{reason="write_error"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "hopwatch_conversation_events_dropped_total"); err != nil {
		t.Error(err)
	}
}

// TestEventsEncodeOffTheRequest: a turn's end costs the request goroutine
// the event value and a channel send, not its JSON encoding (which runs in
// Run); the encoded line is the same.
func TestEventsEncodeOffTheRequest(t *testing.T) {
	out := &lockedBuffer{}
	ev := conversation.NewEvents(out, 1024, nil)
	r := conversation.TurnResult{SessionID: "s1"}
	r.Route, r.Code, r.Duration = "gateway", "OK", time.Second
	allocs := testing.AllocsPerRun(100, func() { ev.Turn(r) })
	t.Logf("%.0f allocations per queued turn event", allocs)
	// Encoding here (json.Marshal) made 4 (3.1 µs against 0.7 µs now).
	if allocs > 2 {
		t.Errorf("Turn made %.0f allocations on the caller's goroutine, want ≤ 2 (the event and its signal list)", allocs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ev.Run(ctx)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 101 { // AllocsPerRun runs the function once more to warm up
		t.Fatalf("%d lines written, want 101", len(lines))
	}
	var got conversation.TurnEvent
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil || got.Route != "gateway" || got.SessionID != "s1" || got.Duration != 1 {
		t.Errorf("line %q decodes to %+v, %v", lines[0], got, err)
	}
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
