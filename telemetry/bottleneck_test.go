package telemetry

import (
	"math"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

var (
	hopChat  = HopKey{"client", "chat", "gateway"}
	hopNLU   = HopKey{"gateway", "nlu", "nlu"}
	hopKB    = HopKey{"gateway", "kb-search", "kb"}
	hopInfer = HopKey{"gateway", "inference", "inference"}
)

// chainTurn is one synthetic bot turn: the chat hop to the gateway, which
// calls nlu, kb and inference one after another, each through the proxy.
// The gateway's own time is 5 ms before, between and after the calls.
type chainTurn struct {
	id                 uint64
	start              time.Duration // from t0
	nlu, kb, inference time.Duration
	canceled           bool // the client gave up: the root hop ends canceled
}

func (c chainTurn) duration() time.Duration { return c.nlu + c.kb + c.inference + 4*ms(5) }

// add stores the turn's spans (children first, as they end) and feeds the
// hop statistics like the proxy does.
func (c chainTurn) add(s *Store, st *Stats) {
	base := c.id * 100
	gwAttempt := base + 2
	at := c.start + ms(5)
	var spans []Span
	for i, h := range []struct {
		key HopKey
		d   time.Duration
	}{{hopNLU, c.nlu}, {hopKB, c.kb}, {hopInfer, c.inference}} {
		srv := base + 10 + uint64(i)*2
		spans = append(spans,
			span(c.id, srv+1, srv, KindClient, h.key.Caller, h.key.Route, h.key.Upstream, at, h.d, OutcomeOK),
			span(c.id, srv, gwAttempt, KindServer, h.key.Caller, h.key.Route, h.key.Upstream, at, h.d, OutcomeOK),
		)
		at += h.d + ms(5)
	}
	root := OutcomeOK
	if c.canceled {
		root = OutcomeCanceled
	}
	spans = append(spans,
		span(c.id, gwAttempt, base+1, KindClient, hopChat.Caller, hopChat.Route, hopChat.Upstream, c.start, c.duration(), root),
		span(c.id, base+1, 0, KindServer, hopChat.Caller, hopChat.Route, hopChat.Upstream, c.start, c.duration(), root),
	)
	for _, sp := range spans {
		s.Add(sp)
		if st != nil && sp.Kind == KindServer {
			st.Observe(sp.HopKey, sp.Duration, sp.Outcome, sp.End())
		}
	}
}

// chainStore holds 100 turns over the last ~100 s: 90 fast ones where
// inference is the largest hop, and 10 slow ones where the KB takes
// 500 ms to 1.4 s.
func chainStore() (*Store, *Stats, []chainTurn) {
	s, st := NewStore(1000), NewStats()
	var turns []chainTurn
	for i := range 100 {
		c := chainTurn{id: uint64(i + 1), start: time.Duration(i) * time.Second, nlu: ms(20), kb: ms(30), inference: ms(50)}
		if i%10 == 3 {
			c.kb = ms(500 + 100*(i/10))
		}
		turns = append(turns, c)
		c.add(s, st)
	}
	return s, st, turns
}

func TestBottlenecksChain(t *testing.T) {
	s, _, turns := chainStore()
	now := t0.Add(101 * time.Second)
	slowestFirst := func(minDur time.Duration) (ids []trace.TraceID, share float64, self time.Duration) {
		var slow []chainTurn
		for _, c := range turns {
			if c.duration() >= minDur {
				slow = append(slow, c)
			}
		}
		slices.SortFunc(slow, func(a, b chainTurn) int { return int(b.duration() - a.duration()) })
		for i, c := range slow {
			if i < 5 {
				ids = append(ids, tid(c.id))
			}
			share += float64(c.kb) / float64(c.duration())
			self += c.kb
		}
		return ids, share / float64(len(slow)), self / time.Duration(len(slow))
	}

	cases := []struct {
		name      string
		q         BottleneckQuery
		wantSlow  int
		wantFloor time.Duration // slow traces are those at least this long
	}{
		{
			name:      "min_duration",
			q:         BottleneckQuery{Window: 5 * time.Minute, MinDuration: ms(400), Now: now},
			wantSlow:  10,
			wantFloor: ms(400),
		},
		{
			// 90 turns of 90 ms and 10 of 560 ms to 1.46 s: clearly two
			// modes, so all ten slow ones are slow (a p95 would keep five).
			name:      "exact durations: the slow mode",
			q:         BottleneckQuery{Now: now},
			wantSlow:  10,
			wantFloor: ms(400),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rep := s.Bottlenecks(tc.q)
			if rep.Traces != 100 || rep.SlowTraces != tc.wantSlow {
				t.Fatalf("traces %d slow %d, want 100 and %d (thresholds %v)", rep.Traces, rep.SlowTraces, tc.wantSlow, rep.Thresholds)
			}
			if len(rep.Hops) != 1 {
				t.Fatalf("hops = %+v, want only kb", rep.Hops)
			}
			h := rep.Hops[0]
			ids, share, self := slowestFirst(tc.wantFloor)
			if h.HopKey != hopKB || h.Count != tc.wantSlow {
				t.Fatalf("bottleneck %v ×%d, want %v ×%d", h.HopKey, h.Count, hopKB, tc.wantSlow)
			}
			if !slices.Equal(h.ExampleTraceIDs, ids) {
				t.Errorf("examples %v, want %v", h.ExampleTraceIDs, ids)
			}
			if math.Abs(h.Share-share) > 1e-9 || h.MeanSelf != self {
				t.Errorf("share %.4f mean self %v, want %.4f %v", h.Share, h.MeanSelf, share, self)
			}
		})
	}
}

func TestBottlenecksSelection(t *testing.T) {
	s := NewStore(100)
	turns := []chainTurn{
		{id: 1, start: 0, nlu: ms(10), kb: ms(900), inference: ms(50)},
		{id: 2, start: ms(100), nlu: ms(10), kb: ms(800), inference: ms(50)},
		{id: 3, start: ms(200), nlu: ms(10), kb: ms(20), inference: ms(1500)},
		{id: 4, start: ms(300), nlu: ms(700), kb: ms(20), inference: ms(50)},
		{id: 5, start: ms(400), nlu: ms(10), kb: ms(600), inference: ms(50)},
		{id: 6, start: ms(500), nlu: ms(10), kb: ms(20), inference: ms(50)}, // fast
		// Abandoned by the user: not a slow turn, whatever its length.
		{id: 8, start: ms(600), nlu: ms(10), kb: ms(20), inference: ms(4000), canceled: true},
		// Started ten minutes earlier: outside a 5m window.
		{id: 7, start: -10 * time.Minute, nlu: ms(10), kb: ms(20), inference: ms(3000)},
	}
	for _, c := range turns {
		c.add(s, nil)
	}
	now := t0.Add(time.Second)
	cases := []struct {
		name      string
		q         BottleneckQuery
		slos      map[string]time.Duration
		wantTotal int
		wantSlow  int
		want      []HopKey // by count desc
		wantCount []int
	}{
		{
			name:      "hops ranked by count",
			q:         BottleneckQuery{MinDuration: ms(500), Now: now},
			wantTotal: 6, wantSlow: 5,
			want:      []HopKey{hopKB, hopInfer, hopNLU},
			wantCount: []int{3, 1, 1},
		},
		{
			name:      "a longer window reaches older traces",
			q:         BottleneckQuery{Window: 15 * time.Minute, MinDuration: ms(500), Now: now},
			wantTotal: 7, wantSlow: 6,
			want:      []HopKey{hopKB, hopInfer, hopNLU},
			wantCount: []int{3, 2, 1},
		},
		{
			// 100, 680, 790, 880, 980 and 1580 ms: the last is clearly
			// slower than the rest (1.6×, the steps below are ≤ 1.2×).
			name:      "exact durations: the slow mode of one turn",
			q:         BottleneckQuery{Now: now},
			wantTotal: 6, wantSlow: 1,
			want:      []HopKey{hopInfer},
			wantCount: []int{1},
		},
		{
			name:      "turns over the SLO are slow too",
			q:         BottleneckQuery{Now: now},
			slos:      map[string]time.Duration{"chat": ms(600), "other": ms(1)},
			wantTotal: 6, wantSlow: 5,
			want:      []HopKey{hopKB, hopInfer, hopNLU},
			wantCount: []int{3, 1, 1},
		},
		{
			name:      "min_duration wins over the SLO",
			q:         BottleneckQuery{Now: now, MinDuration: ms(1000)},
			slos:      map[string]time.Duration{"chat": ms(600)},
			wantTotal: 6, wantSlow: 1,
			want:      []HopKey{hopInfer},
			wantCount: []int{1},
		},
		{
			name:      "window entirely after the traces",
			q:         BottleneckQuery{MinDuration: ms(1), Now: t0.Add(time.Hour)},
			wantTotal: 0, wantSlow: 0,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s.SetTurnSLOs(tc.slos)
			rep := s.Bottlenecks(tc.q)
			if rep.Traces != tc.wantTotal || rep.SlowTraces != tc.wantSlow {
				t.Fatalf("traces %d slow %d, want %d %d", rep.Traces, rep.SlowTraces, tc.wantTotal, tc.wantSlow)
			}
			var got []HopKey
			var counts []int
			for _, h := range rep.Hops {
				got = append(got, h.HopKey)
				counts = append(counts, h.Count)
			}
			if !slices.Equal(got, tc.want) || !slices.Equal(counts, tc.wantCount) {
				t.Fatalf("hops %v counts %v, want %v %v", got, counts, tc.want, tc.wantCount)
			}
			if rep.Threshold == "" {
				t.Error("no threshold description")
			}
		})
	}
}

func TestBottlenecksDefaults(t *testing.T) {
	s := NewStore(10)
	rep := s.Bottlenecks(BottleneckQuery{})
	if rep.Window != 5*time.Minute || rep.Traces != 0 || rep.Hops != nil {
		t.Fatalf("empty report = %+v", rep)
	}
}
