package telemetry

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/internal/testkit"
)

// t0 is aligned to a 5 s stats slot so window arithmetic in tests is exact.
var t0 = time.Unix(1_800_000_000, 0).UTC()

// Short names for the shared helpers: span tables read better with them.
var (
	tid = testkit.TraceID
	sid = testkit.SpanID
	ms  = testkit.Millis
)

// span builds a span of trace tr starting at t0+start.
func span(tr, id, parent uint64, kind SpanKind, caller, route, upstream string, start, dur time.Duration, o Outcome) Span {
	sp := Span{
		TraceID: tid(tr), SpanID: sid(id), Kind: kind,
		HopKey: HopKey{Caller: caller, Route: route, Upstream: upstream},
		Start:  t0.Add(start), Duration: dur, Outcome: o,
	}
	if parent != 0 {
		sp.ParentID = sid(parent)
	}
	return sp
}

func TestStoreEviction(t *testing.T) {
	cases := []struct {
		name        string
		max         int
		adds        []uint64 // trace of each added span, in order
		wantPresent []uint64
		wantGone    []uint64
		wantEvicted uint64
	}{
		{"under capacity keeps all", 3, []uint64{1, 2, 3}, []uint64{1, 2, 3}, nil, 0},
		{"oldest goes first", 3, []uint64{1, 2, 3, 4, 5}, []uint64{3, 4, 5}, []uint64{1, 2}, 2},
		{"spans of a known trace evict nothing", 2, []uint64{1, 2, 1, 1, 2}, []uint64{1, 2}, nil, 0},
		{"age is first arrival, not last activity", 2, []uint64{1, 2, 1, 3}, []uint64{2, 3}, []uint64{1}, 1},
		{"wraps around the ring several times", 2, []uint64{1, 2, 3, 4, 5, 6, 7}, []uint64{6, 7}, []uint64{1, 2, 3, 4, 5}, 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore(tc.max)
			for i, tr := range tc.adds {
				s.Add(span(tr, uint64(i+1), 0, KindServer, "c", "r", "u", ms(i), ms(1), OutcomeOK))
			}
			for _, tr := range tc.wantPresent {
				if _, ok := s.Trace(tid(tr)); !ok {
					t.Errorf("trace %d missing", tr)
				}
			}
			for _, tr := range tc.wantGone {
				if _, ok := s.Trace(tid(tr)); ok {
					t.Errorf("trace %d still present", tr)
				}
			}
			if got := s.Len(); got != len(tc.wantPresent) {
				t.Errorf("Len = %d, want %d", got, len(tc.wantPresent))
			}
			if _, ev := s.Dropped(); ev != tc.wantEvicted {
				t.Errorf("evicted = %d, want %d", ev, tc.wantEvicted)
			}
		})
	}
}

func TestStoreRecycledSlotStartsEmpty(t *testing.T) {
	s := NewStore(1)
	for i := range 3 {
		s.Add(span(1, uint64(i+1), 0, KindServer, "c", "old", "u", ms(i), ms(1), OutcomeError))
	}
	s.Add(span(2, 9, 0, KindServer, "c", "new", "u", 0, ms(1), OutcomeOK))
	d, ok := s.Trace(tid(2))
	if !ok {
		t.Fatal("trace 2 missing")
	}
	if len(d.Spans) != 1 || d.Summary.Spans != 1 || d.Summary.Error || d.Summary.Root.Route != "new" {
		t.Fatalf("recycled slot leaked the old trace: %+v", d.Summary)
	}
}

func TestStoreIgnoresInvalidTraceID(t *testing.T) {
	s := NewStore(2)
	s.Add(Span{SpanID: sid(1), Kind: KindServer})
	if s.Len() != 0 {
		t.Fatalf("Len = %d after a span without trace ID", s.Len())
	}
}

func TestStoreSpanCap(t *testing.T) {
	cases := []struct {
		name        string
		spans       int
		wantKept    int
		wantDropped int
	}{
		{"below the cap", 10, 10, 0},
		{"at the cap", MaxSpansPerTrace, MaxSpansPerTrace, 0},
		{"over the cap", MaxSpansPerTrace + 37, MaxSpansPerTrace, 37},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore(4)
			for i := range tc.spans {
				s.Add(span(1, uint64(i+1), 0, KindClient, "c", "r", "u", ms(i), ms(1), OutcomeOK))
			}
			d, ok := s.Trace(tid(1))
			if !ok {
				t.Fatal("trace missing")
			}
			if len(d.Spans) != tc.wantKept || d.Summary.Spans != tc.wantKept || d.Summary.DroppedSpans != tc.wantDropped {
				t.Fatalf("kept %d (summary %d), dropped %d; want %d, %d",
					len(d.Spans), d.Summary.Spans, d.Summary.DroppedSpans, tc.wantKept, tc.wantDropped)
			}
			if sp, _ := s.Dropped(); sp != uint64(tc.wantDropped) {
				t.Fatalf("store dropped %d spans, want %d", sp, tc.wantDropped)
			}
		})
	}
}

// addTrace stores a two-span trace: a server root and its client span.
func addTrace(s *Store, tr uint64, route string, start, dur time.Duration, o Outcome) {
	s.Add(span(tr, tr*10+2, tr*10+1, KindClient, "client", route, "up", start+ms(1), dur-ms(2), o))
	s.Add(span(tr, tr*10+1, 0, KindServer, "client", route, "up", start, dur, o))
}

func TestStoreTracesQuery(t *testing.T) {
	s := NewStore(100)
	addTrace(s, 1, "chat", 0, ms(100), OutcomeOK)
	addTrace(s, 2, "chat", ms(1000), ms(900), OutcomeError)
	addTrace(s, 3, "kb", ms(2000), ms(50), OutcomeOK)
	addTrace(s, 4, "chat", ms(3000), ms(400), OutcomeCanceled) // not an error
	addTrace(s, 5, "kb", ms(4000), ms(2000), OutcomeTimeout)
	// Trace 6 arrives last but started first: listed by start, not arrival.
	addTrace(s, 6, "chat", -ms(5000), ms(10), OutcomeOK)

	cases := []struct {
		name string
		q    TraceQuery
		want []uint64
	}{
		{"everything newest first", TraceQuery{}, []uint64{5, 4, 3, 2, 1, 6}},
		{"route", TraceQuery{Route: "chat"}, []uint64{4, 2, 1, 6}},
		{"unknown route", TraceQuery{Route: "nope"}, nil},
		{"min duration", TraceQuery{MinDuration: ms(400)}, []uint64{5, 4, 2}},
		{"errors only", TraceQuery{ErrorOnly: true}, []uint64{5, 2}},
		{"route and errors", TraceQuery{Route: "chat", ErrorOnly: true}, []uint64{2}},
		{"since", TraceQuery{Since: t0.Add(ms(2000))}, []uint64{5, 4, 3}},
		{"limit", TraceQuery{Limit: 2}, []uint64{5, 4}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []uint64
			for _, sum := range s.Traces(tc.q) {
				got = append(got, binary.BigEndian.Uint64(sum.TraceID[8:]))
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Traces(%+v) = %v, want %v", tc.q, got, tc.want)
			}
		})
	}

	t.Run("summary fields", func(t *testing.T) {
		got := s.Traces(TraceQuery{Route: "kb", ErrorOnly: true})
		want := TraceSummary{
			TraceID: tid(5), Root: HopKey{"client", "kb", "up"},
			Start: t0.Add(ms(4000)), Duration: ms(2000), Spans: 2, Error: true, Outcome: OutcomeTimeout,
		}
		if len(got) != 1 || got[0] != want {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	})
}

func TestStoreTracesLimit(t *testing.T) {
	s := NewStore(2000)
	for i := range 1100 {
		addTrace(s, uint64(i+1), "chat", ms(i), ms(5), OutcomeOK)
	}
	cases := []struct {
		name  string
		limit int
		want  int
	}{
		{"default", 0, 50},
		{"negative is default", -3, 50},
		{"explicit", 7, 7},
		{"capped", 5000, 1000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := len(s.Traces(TraceQuery{Limit: tc.limit})); got != tc.want {
				t.Fatalf("Limit %d gave %d traces, want %d", tc.limit, got, tc.want)
			}
		})
	}
}

// A bot turn as the proxy sees it. Times in ms from t0:
//
//	S1 client→chat→gateway       [0,1000]  server, parent outside the proxy
//	  C1 attempt                 [5,995]
//	    S2 gateway→nlu→nlu       [100,200]
//	      C2                     [105,195]
//	    S3 gateway→kb-search→kb  [250,650]
//	      C3                     [255,645]
//	    S4 gateway→infer→infer   [600,900] (overlaps S3: union counted once)
//	      C4                     [605,895]
//	        S5 infer→kb-search→kb [700,800] error (a child hop of S4, not S1)
//	          C5                 [705,795]
func turnSpans() []Span {
	const tr = 7
	external := uint64(999)
	return []Span{
		span(tr, 1, external, KindServer, "client", "chat", "gateway", 0, ms(1000), OutcomeOK),
		span(tr, 11, 1, KindClient, "client", "chat", "gateway", ms(5), ms(990), OutcomeOK),
		span(tr, 2, 11, KindServer, "gateway", "nlu", "nlu", ms(100), ms(100), OutcomeOK),
		span(tr, 12, 2, KindClient, "gateway", "nlu", "nlu", ms(105), ms(90), OutcomeOK),
		span(tr, 3, 11, KindServer, "gateway", "kb-search", "kb", ms(250), ms(400), OutcomeOK),
		span(tr, 13, 3, KindClient, "gateway", "kb-search", "kb", ms(255), ms(390), OutcomeOK),
		span(tr, 4, 11, KindServer, "gateway", "infer", "infer", ms(600), ms(300), OutcomeOK),
		span(tr, 14, 4, KindClient, "gateway", "infer", "infer", ms(605), ms(290), OutcomeOK),
		span(tr, 5, 14, KindServer, "infer", "kb-search", "kb", ms(700), ms(100), OutcomeError),
		span(tr, 15, 5, KindClient, "infer", "kb-search", "kb", ms(705), ms(90), OutcomeError),
	}
}

func TestStoreTraceTree(t *testing.T) {
	spans := turnSpans()
	orders := []struct {
		name  string
		spans []Span
	}{
		{"parents first", spans},
		{"children first, as they end", reversed(spans)},
	}
	for _, order := range orders {
		in := order.spans
		t.Run(order.name, func(t *testing.T) {
			s := NewStore(10)
			for _, sp := range in {
				s.Add(sp)
			}
			d, ok := s.Trace(tid(7))
			if !ok {
				t.Fatal("trace missing")
			}
			wantSum := TraceSummary{
				TraceID: tid(7), Root: HopKey{"client", "chat", "gateway"}, Start: t0,
				Duration: ms(1000), Spans: 10, Error: true, Outcome: OutcomeOK,
			}
			if d.Summary != wantSum {
				t.Errorf("summary %+v\nwant    %+v", d.Summary, wantSum)
			}
			want := []struct {
				span     uint64
				parent   uint64 // 0: root
				depth    int
				self     time.Duration
				children []uint64
			}{
				{1, 0, 0, ms(250), []uint64{11}}, // 1000 - |[100,200] ∪ [250,900]|
				{11, 1, 1, 0, []uint64{2, 3, 4}},
				{2, 11, 2, ms(100), []uint64{12}},
				{12, 2, 3, 0, nil},
				{3, 11, 2, ms(400), []uint64{13}},
				{13, 3, 3, 0, nil},
				{4, 11, 2, ms(200), []uint64{14}}, // 300 - 100 (S5)
				{14, 4, 3, 0, []uint64{5}},
				{5, 14, 4, ms(100), []uint64{15}},
				{15, 5, 5, 0, nil},
			}
			if len(d.Spans) != len(want) {
				t.Fatalf("%d spans, want %d", len(d.Spans), len(want))
			}
			idOf := func(i int) uint64 {
				if i < 0 {
					return 0
				}
				return binary.BigEndian.Uint64(d.Spans[i].SpanID[:])
			}
			for i, w := range want {
				n := d.Spans[i]
				var kids []uint64
				for _, c := range n.Children {
					kids = append(kids, idOf(c))
				}
				if idOf(i) != w.span || idOf(n.Parent) != w.parent || n.Depth != w.depth || n.SelfTime != w.self || !slices.Equal(kids, w.children) {
					t.Errorf("span[%d] = id %d parent %d depth %d self %v children %v; want id %d parent %d depth %d self %v children %v",
						i, idOf(i), idOf(n.Parent), n.Depth, n.SelfTime, kids, w.span, w.parent, w.depth, w.self, w.children)
				}
			}
		})
	}
}

func reversed(s []Span) []Span {
	r := slices.Clone(s)
	slices.Reverse(r)
	return r
}

func TestStoreSummaryRoot(t *testing.T) {
	cases := []struct {
		name      string
		spans     []Span
		wantRoute string
		wantOut   Outcome
	}{
		{
			"earliest of several orphan server spans",
			[]Span{
				span(1, 2, 50, KindServer, "dm", "late", "u", ms(10), ms(5), OutcomeOK),
				span(1, 1, 0, KindServer, "client", "early", "u", 0, ms(5), OutcomeError),
			},
			"early", OutcomeError,
		},
		{
			"server span preferred over an earlier orphan client span",
			[]Span{
				span(1, 3, 77, KindClient, "x", "client-route", "u", 0, ms(50), OutcomeOK),
				span(1, 4, 0, KindServer, "y", "server-route", "u", ms(1), ms(5), OutcomeOK),
			},
			"server-route", OutcomeOK,
		},
		{
			"root not ended yet: earliest orphan of any kind",
			[]Span{
				span(1, 12, 1, KindClient, "client", "chat", "gw", ms(2), ms(5), OutcomeOK),
				span(1, 13, 12, KindServer, "gw", "nlu", "nlu", ms(3), ms(2), OutcomeOK),
			},
			"chat", OutcomeOK,
		},
		{
			"parent cycle does not hang",
			[]Span{
				span(1, 1, 2, KindServer, "a", "ra", "u", 0, ms(5), OutcomeOK),
				span(1, 2, 1, KindServer, "b", "rb", "u", ms(1), ms(5), OutcomeOK),
			},
			"ra", OutcomeOK,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore(4)
			for _, sp := range tc.spans {
				s.Add(sp)
			}
			d, ok := s.Trace(tid(1))
			if !ok {
				t.Fatal("trace missing")
			}
			if d.Summary.Root.Route != tc.wantRoute || d.Summary.Outcome != tc.wantOut {
				t.Fatalf("root %q outcome %q, want %q %q", d.Summary.Root.Route, d.Summary.Outcome, tc.wantRoute, tc.wantOut)
			}
			roots := 0
			for _, n := range d.Spans {
				if n.Parent < 0 {
					roots++
					if n.Depth != 0 {
						t.Errorf("root at depth %d", n.Depth)
					}
				} else if n.Depth != d.Spans[n.Parent].Depth+1 {
					t.Errorf("depth %d under parent at depth %d", n.Depth, d.Spans[n.Parent].Depth)
				}
			}
			if roots == 0 {
				t.Error("no root in the tree")
			}
		})
	}
}

func TestCovered(t *testing.T) {
	iv := func(a, b int) interval { return interval{t0.Add(ms(a)), t0.Add(ms(b))} }
	cases := []struct {
		name string
		ivs  []interval
		want time.Duration
	}{
		{"none", nil, 0},
		{"disjoint", []interval{iv(10, 20), iv(30, 40)}, ms(20)},
		{"overlapping", []interval{iv(10, 30), iv(20, 40)}, ms(30)},
		{"nested", []interval{iv(10, 90), iv(20, 30)}, ms(80)},
		{"touching", []interval{iv(10, 20), iv(20, 30)}, ms(20)},
		{"clipped to the parent", []interval{iv(-10, 10), iv(90, 200)}, ms(20)},
		{"outside the parent", []interval{iv(200, 300)}, 0},
		{"unsorted", []interval{iv(50, 60), iv(10, 20), iv(15, 55)}, ms(50)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := covered(iv(0, 100), tc.ivs); got != tc.want {
				t.Fatalf("covered = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestStoreConcurrent(t *testing.T) {
	s := NewStore(64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				tr := uint64(g*100000 + i/4 + 1)
				s.Add(span(tr, uint64(i+1), 0, KindServer, "c", fmt.Sprint("r", g), "u", ms(i), ms(3), OutcomeOK))
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			for _, sum := range s.Traces(TraceQuery{Limit: 10}) {
				s.Trace(sum.TraceID)
			}
			s.Bottlenecks(BottleneckQuery{Now: t0.Add(time.Hour), Window: 2 * time.Hour, MinDuration: ms(1)})
		}
	})
	wg.Wait()
	if s.Len() != 64 {
		t.Fatalf("Len = %d, want 64", s.Len())
	}
}

func BenchmarkStoreAdd(b *testing.B) {
	// A bot turn is about eight spans (four hops, one attempt each).
	const spansPerTrace = 8
	sp := span(1, 1, 2, KindServer, "gateway", "kb-search", "kb", 0, ms(20), OutcomeOK)
	b.Run("serial", func(b *testing.B) {
		s := NewStore(DefaultMaxTraces)
		b.ReportAllocs()
		i := uint64(0)
		for b.Loop() {
			x := sp
			x.TraceID = tid(i / spansPerTrace)
			x.SpanID = sid(i)
			s.Add(x)
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		s := NewStore(DefaultMaxTraces)
		b.ReportAllocs()
		var seq uint64
		var mu sync.Mutex
		b.RunParallel(func(pb *testing.PB) {
			mu.Lock()
			seq++
			g := seq << 40
			mu.Unlock()
			i := uint64(0)
			for pb.Next() {
				x := sp
				x.TraceID = tid(g | i/spansPerTrace)
				x.SpanID = sid(i)
				s.Add(x)
				i++
			}
		})
	})
}

// BenchmarkStoreTraces measures a dashboard query against a full store:
// the time Add waits behind the store's mutex while a query scans.
func BenchmarkStoreTraces(b *testing.B) {
	s := NewStore(DefaultMaxTraces)
	for tr := range uint64(DefaultMaxTraces) {
		for _, sp := range turnSpans() {
			sp.TraceID = tid(tr + 1)
			s.Add(sp)
		}
	}
	b.Run("summaries fresh", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s.Traces(TraceQuery{Route: "chat", MinDuration: time.Second})
		}
	})
	b.Run("summaries stale", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s.mu.Lock()
			for i := range s.ring {
				s.ring[i].fresh = false
			}
			s.mu.Unlock()
			s.Traces(TraceQuery{Route: "chat", MinDuration: time.Second})
		}
	})
}
