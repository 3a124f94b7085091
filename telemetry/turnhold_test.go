package telemetry

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// passed is the export queue behind the holder in these tests: it counts
// the spans passed on, and keeps the attributes of the marked ones (only
// when keep is set: the flood must not be kept alive by it).
type passed struct {
	mu     sync.Mutex
	n      int
	marked int
	keep   bool
	last   [][]attribute.KeyValue
}

func (p *passed) add(s *hopSpan) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	if s.turn != nil {
		p.marked++
		if p.keep {
			p.last = append(p.last, s.appendAttrs(nil))
		}
	}
}

func (p *passed) counts() (n, marked int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n, p.marked
}

// holderEnv is a turn holder in front of passed, on a fake clock.
type holderEnv struct {
	h     *turnHolder
	next  *passed
	clk   *fakeClock
	reg   *prometheus.Registry
	route *Route
	seq   uint64
}

func newHolderEnv(t *testing.T, keep bool) *holderEnv {
	e := &holderEnv{next: &passed{keep: keep}, clk: &fakeClock{t0}, reg: prometheus.NewRegistry()}
	m := newMetrics(e.reg)
	e.h = newTurnHolder(e.next.add, e.clk.now, m.turnSpansUnmarked)
	e.route = newTestTelemetry(t, Config{}).Route(RouteInfo{Name: "dm", Upstream: "dm", HTTPRoute: "/dm"}, nil)
	return e
}

func (e *holderEnv) traceID() trace.TraceID {
	e.seq++
	var id trace.TraceID
	binary.BigEndian.PutUint64(id[8:], e.seq)
	id[0] = 1
	return id
}

// span ends a sampled hop span of trace id, as Hop.End hands it on (with
// the session id known at its start, if given).
func (e *holderEnv) span(id trace.TraceID, session ...string) {
	e.seq++
	s := getHopSpan()
	s.r, s.traceID, s.parent, s.flags, s.remoteParent = e.route, id, trace.SpanID{1}, trace.FlagsSampled, true
	binary.BigEndian.PutUint64(s.spanID[:], e.seq)
	s.caller, s.method, s.start, s.end, s.code, s.outcome = "gateway", "POST", e.clk.t, e.clk.t, "200", OutcomeOK
	if len(session) > 0 {
		s.session = session[0]
	}
	e.h.onEnd(s)
}

func (e *holderEnv) unmarked(reason string) float64 {
	return testutil.ToFloat64(e.h.unmarked[indexOf(unmarkedReasonName[:], reason)])
}

func indexOf(names []string, n string) int {
	for i, v := range names {
		if v == n {
			return i
		}
	}
	panic(n)
}

// TestTurnHolder: spans of a trace with a turn open wait for the turn's
// classification and then go on with its attributes, replacing those of
// the same keys; other spans pass at once; a turn open past MaxTurnHold
// lets its spans go unmarked at the next span; shutdown lets every held
// span go; each way out unmarked is counted.
func TestTurnHolder(t *testing.T) {
	mark := turnAttrs(TurnMark{SessionID: "s9", Index: 3, Outcome: "slow"})
	cases := []struct {
		name string
		run  func(e *holderEnv)
		// spans passed on, of which marked; held after; unmarked by reason
		passed, marked, held int
		unmarked             map[string]float64
	}{
		{"no turn: straight through", func(e *holderEnv) {
			for range 5 {
				e.span(e.traceID())
			}
		}, 5, 0, 0, nil},
		{"held until the turn is classified, then marked", func(e *holderEnv) {
			id := e.traceID()
			ht := e.h.openTurn(id, "s9")
			e.span(id, "s9")
			e.span(id)
			e.span(e.traceID()) // another trace: passes
			if n, _ := e.next.counts(); n != 1 {
				t.Errorf("%d spans passed before the turn ended, want 1", n)
			}
			e.h.closeTurn(ht, mark)
			e.h.closeTurn(ht, mark) // twice: nothing more
			e.span(id)              // after the turn: passes, unmarked
		}, 4, 2, 0, nil},
		{"a second turn of an open trace goes with the first", func(e *holderEnv) {
			id := e.traceID()
			first := e.h.openTurn(id, "s9")
			if second := e.h.openTurn(id, "other"); second != nil {
				t.Error("a second turn opened on the same trace")
			}
			if got := e.h.session(id); got != "s9" {
				t.Errorf("session %q, want the first turn's", got)
			}
			e.span(id)
			e.h.closeTurn(first, mark)
		}, 1, 1, 0, nil},
		{"time cap", func(e *holderEnv) {
			id := e.traceID()
			ht := e.h.openTurn(id, "s9")
			e.span(id)
			e.span(id)
			e.clk.t = e.clk.t.Add(MaxTurnHold - time.Millisecond)
			e.span(e.traceID())
			if _, held := e.h.heldCounts(); held != 2 {
				t.Errorf("%d held just before the cap, want 2", held)
			}
			e.clk.t = e.clk.t.Add(time.Millisecond)
			e.span(e.traceID()) // lets the expired turn go
			e.h.closeTurn(ht, mark)
		}, 4, 0, 0, map[string]float64{"timeout": 2}},
		{"shutdown", func(e *holderEnv) {
			id := e.traceID()
			e.h.openTurn(id, "")
			e.span(id)
			e.h.shutdown()
		}, 1, 0, 0, map[string]float64{"shutdown": 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newHolderEnv(t, true)
			tc.run(e)
			n, marked := e.next.counts()
			_, held := e.h.heldCounts()
			if n != tc.passed || marked != tc.marked || held != tc.held {
				t.Errorf("passed %d (%d marked), held %d; want %d (%d), %d", n, marked, held, tc.passed, tc.marked, tc.held)
			}
			for _, r := range unmarkedReasonName {
				if got := e.unmarked(r); got != tc.unmarked[r] {
					t.Errorf("unmarked %s = %v, want %v", r, got, tc.unmarked[r])
				}
			}
			// Marked spans carry the turn's attributes once each.
			for _, attrs := range e.next.last {
				seen := map[attribute.Key]int{}
				for _, a := range attrs {
					seen[a.Key]++
				}
				for k, c := range seen {
					if c > 1 {
						t.Errorf("%s appears %d times: %v", k, c, attrs)
					}
				}
			}
			// ... and each of them as the turn said (the session id the
			// span started with gives way to the turn's).
			for _, attrs := range e.next.last {
				for _, m := range mark {
					if !slices.Contains(attrs, m) {
						t.Errorf("marked span lacks %s=%s: %v", m.Key, m.Value.String(), attrs)
					}
				}
			}
			if tc.marked > 0 && len(e.next.last) == 0 {
				t.Error("no marked span kept")
			}
		})
	}
}

// TestTurnHolderBounded: a flood of turns that are never classified, and
// of their spans, stays within MaxHeldTurns and MaxHeldSpans: past them
// spans pass on at once and the oldest turns are let go, all counted;
// nothing starts a goroutine; the heap held is within the documented
// estimate (MaxHeldSpans: under 1 KiB a span, turns included).
func TestTurnHolderBounded(t *testing.T) {
	e := newHolderEnv(t, false)
	goroutines := runtime.NumGoroutine()
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)

	ids := make([]trace.TraceID, MaxHeldTurns)
	for i := range ids {
		ids[i] = e.traceID()
		e.h.openTurn(ids[i], "a-session-id")
	}
	const extra = 1000
	for i := range MaxHeldSpans + extra { // one span for most open turns, more than fit
		e.span(ids[i%len(ids)])
	}
	turns, held := e.h.heldCounts()
	if turns != MaxHeldTurns || held != MaxHeldSpans {
		t.Errorf("held %d turns, %d spans; want %d, %d", turns, held, MaxHeldTurns, MaxHeldSpans)
	}
	if n, _ := e.next.counts(); n != extra || e.unmarked("spans_full") != extra {
		t.Errorf("%d spans passed on, %v counted spans_full; want %d", n, e.unmarked("spans_full"), extra)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	perSpan := (int64(ms1.HeapAlloc) - int64(ms0.HeapAlloc)) / MaxHeldSpans
	t.Logf("heap held: %d bytes per held span (turns included)", perSpan)
	if perSpan > 1<<10 {
		t.Errorf("%d bytes per held span, want at most 1 KiB", perSpan)
	}

	// More turns: the oldest are let go, with their spans, unmarked.
	for range extra {
		e.h.openTurn(e.traceID(), "")
	}
	turns, held = e.h.heldCounts()
	if turns != MaxHeldTurns || held != MaxHeldSpans-extra {
		t.Errorf("after more turns: held %d turns, %d spans; want %d, %d", turns, held, MaxHeldTurns, MaxHeldSpans-extra)
	}
	if got := e.unmarked("turns_full"); got != extra {
		t.Errorf("turns_full %v, want %d", got, extra)
	}
	// Time lets all of them go at the next span.
	e.clk.t = e.clk.t.Add(MaxTurnHold)
	e.span(e.traceID())
	if turns, held = e.h.heldCounts(); turns != 0 || held != 0 {
		t.Errorf("after the time cap: held %d turns, %d spans", turns, held)
	}
	if n, marked := e.next.counts(); n != MaxHeldSpans+extra+1 || marked != 0 {
		t.Errorf("%d spans passed (%d marked), want every one of %d, unmarked", n, marked, MaxHeldSpans+extra+1)
	}
	if got := runtime.NumGoroutine(); got > goroutines {
		t.Errorf("goroutines %d, were %d", got, goroutines)
	}
	runtime.KeepAlive(ids)
}

// BenchmarkTurnHops is what the turn hook reads from the store when an
// entry hop ends (a turn of four hops, each with a client span, in a
// store of other traces), next to what reading it through Store.Trace,
// as the hook did before, costs.
func BenchmarkTurnHops(b *testing.B) {
	store := NewStore(0)
	var tid trace.TraceID
	for i := range 1000 {
		binary.BigEndian.PutUint64(tid[8:], uint64(i+1))
		tid[0] = 1
		for k := range 8 {
			kind := KindServer
			if k%2 == 1 {
				kind = KindClient
			}
			store.Add(Span{TraceID: tid, SpanID: trace.SpanID{byte(k + 1)}, Kind: kind,
				HopKey: HopKey{Caller: "gateway", Route: fmt.Sprint("hop", k/2), Upstream: "up"},
				Start:  t0.Add(time.Duration(k) * time.Millisecond), Duration: 10 * time.Millisecond, Code: "200", Outcome: OutcomeOK})
		}
	}
	tel := &Telemetry{Store: store}
	entry := Span{TraceID: tid, SpanID: trace.SpanID{9}, Kind: KindServer, HopKey: HopKey{Route: "chat"},
		Start: t0.Add(-time.Millisecond), Duration: time.Second, Code: "200", Outcome: OutcomeOK}
	b.Run("turnHops", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if hops, _ := tel.turnHops(entry); len(hops) != 5 {
				b.Fatalf("%d hops", len(hops))
			}
		}
	})
	b.Run("Store.turnSpans", func(b *testing.B) {
		b.ReportAllocs()
		var buf [8]Span
		for b.Loop() {
			if spans := store.turnSpans(tid, entry.Start, entry.End(), entry.SpanID, buf[:0]); len(spans) != 4 {
				b.Fatalf("%d spans", len(spans))
			}
		}
	})
	b.Run("Store.Trace", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := store.Trace(tid); !ok {
				b.Fatal("no trace")
			}
		}
	})
}
