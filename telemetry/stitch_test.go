package telemetry

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

// A turn as the demo makes it, in trace tr: the user's chat hop to the
// gateway (S1, attempt C1); the gateway calls nlu (S2, C2) then the dialog
// manager (S3, C3), and the dialog manager calls the knowledge base (S4,
// C4). Times in ms from t0 plus off:
//
//	S1 client→chat→gateway [0,1000]   C1 [5,995]
//	  S2 gateway→nlu→nlu   [100,200]  C2 [105,195]
//	  S3 gateway→dm→dm     [250,850]  C3 [255,845]
//	    S4 dm→kb→kb        [400,800]  C4 [405,795]
//
// hopwatch's span IDs are base+1..base+8; a service running an SDK makes
// the next hop's parent one of its own spans (base+100..), which hopwatch
// never sees. gwSDK and dmSDK say which services do.
type sdkTurn struct {
	base         uint64
	off          time.Duration
	gwSDK, dmSDK bool
}

func (c sdkTurn) spans(tr uint64) []Span {
	b := c.base
	at := func(n int) time.Duration { return c.off + ms(n) }
	gwParent, dmParent := b+2, b+6 // the attempts that carried the request in
	if c.gwSDK {
		gwParent = b + 100 // the gateway's client span
	}
	if c.dmSDK {
		dmParent = b + 200
	}
	return []Span{
		span(tr, b+1, 0, KindServer, "client", "chat", "gateway", at(0), ms(1000), OutcomeOK),
		span(tr, b+2, b+1, KindClient, "client", "chat", "gateway", at(5), ms(990), OutcomeOK),
		span(tr, b+3, gwParent, KindServer, "gateway", "nlu", "nlu", at(100), ms(100), OutcomeOK),
		span(tr, b+4, b+3, KindClient, "gateway", "nlu", "nlu", at(105), ms(90), OutcomeOK),
		span(tr, b+5, gwParent, KindServer, "gateway", "dm", "dm", at(250), ms(600), OutcomeOK),
		span(tr, b+6, b+5, KindClient, "gateway", "dm", "dm", at(255), ms(590), OutcomeOK),
		span(tr, b+7, dmParent, KindServer, "dm", "kb", "kb", at(400), ms(400), OutcomeOK),
		span(tr, b+8, b+7, KindClient, "dm", "kb", "kb", at(405), ms(390), OutcomeOK),
	}
}

// wantLink is one span's expected place in the stitched tree.
type wantLink struct {
	parent   uint64 // 0: root
	stitched bool
	self     time.Duration // server spans
}

// sdkTurnTree is the tree of an sdkTurn at base b: the same whoever runs
// an SDK, only the stitched marks differ.
func sdkTurnTree(b uint64, gwSDK, dmSDK bool) map[uint64]wantLink {
	return map[uint64]wantLink{
		b + 1: {0, false, ms(300)}, // 1000 - |[100,200] ∪ [250,850]|
		b + 2: {b + 1, false, 0},
		b + 3: {b + 2, gwSDK, ms(100)},
		b + 4: {b + 3, false, 0},
		b + 5: {b + 2, gwSDK, ms(200)}, // 600 - 400: the dialog manager's own time around its KB call
		b + 6: {b + 5, false, 0},
		b + 7: {b + 6, dmSDK, ms(400)},
		b + 8: {b + 7, false, 0},
	}
}

func merge(ms ...map[uint64]wantLink) map[uint64]wantLink {
	out := map[uint64]wantLink{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func TestStoreStitching(t *testing.T) {
	const tr = 1
	cases := []struct {
		name      string
		spans     []Span
		want      map[uint64]wantLink // by span ID
		wantRoots int
	}{
		{
			name:  "no SDK: the services forward hopwatch's context, nothing to stitch",
			spans: sdkTurn{}.spans(tr), want: sdkTurnTree(0, false, false), wantRoots: 1,
		},
		{
			name:  "all SDK: every inner hop stitched to the attempt that reached its caller",
			spans: sdkTurn{gwSDK: true, dmSDK: true}.spans(tr), want: sdkTurnTree(0, true, true), wantRoots: 1,
		},
		{
			name:  "mixed: gateway with an SDK, dialog manager without",
			spans: sdkTurn{gwSDK: true}.spans(tr), want: sdkTurnTree(0, true, false), wantRoots: 1,
		},
		{
			name:  "mixed: dialog manager with an SDK, gateway without",
			spans: sdkTurn{dmSDK: true}.spans(tr), want: sdkTurnTree(0, false, true), wantRoots: 1,
		},
		{
			// A client that keeps one trace for its whole session: the
			// second turn starts while the first is still running, so its
			// hops fall inside both turns' gateway attempts; the later
			// attempt is the tighter fit, and the right one.
			name: "concurrent turns in one trace",
			spans: append(sdkTurn{gwSDK: true, dmSDK: true}.spans(tr),
				sdkTurn{base: 1000, off: ms(300), gwSDK: true, dmSDK: true}.spans(tr)...),
			want:      merge(sdkTurnTree(0, true, true), sdkTurnTree(1000, true, true)),
			wantRoots: 2,
		},
		{
			// The dm hop's first attempt fails after the dialog manager
			// had called the KB; the retry calls it again. Each KB hop
			// belongs to the attempt it happened in.
			name: "retries: each inner hop under its own attempt",
			spans: []Span{
				span(tr, 1, 0, KindServer, "client", "chat", "gateway", 0, ms(1000), OutcomeOK),
				span(tr, 2, 1, KindClient, "client", "chat", "gateway", ms(5), ms(990), OutcomeOK),
				span(tr, 5, 100, KindServer, "gateway", "dm", "dm", ms(250), ms(600), OutcomeOK),
				span(tr, 6, 5, KindClient, "gateway", "dm", "dm", ms(255), ms(200), OutcomeError),
				span(tr, 16, 5, KindClient, "gateway", "dm", "dm", ms(460), ms(385), OutcomeOK),
				span(tr, 7, 200, KindServer, "dm", "kb", "kb", ms(300), ms(150), OutcomeCanceled),
				span(tr, 8, 7, KindClient, "dm", "kb", "kb", ms(305), ms(140), OutcomeCanceled),
				span(tr, 17, 201, KindServer, "dm", "kb", "kb", ms(500), ms(300), OutcomeOK),
				span(tr, 18, 17, KindClient, "dm", "kb", "kb", ms(505), ms(290), OutcomeOK),
			},
			want: map[uint64]wantLink{
				1: {0, false, ms(400)}, 2: {1, false, 0},
				5: {2, true, ms(150)}, 6: {5, false, 0}, 16: {5, false, 0}, // 600 - 150 - 300
				7: {6, true, ms(150)}, 8: {7, false, 0},
				17: {16, true, ms(300)}, 18: {17, false, 0},
			},
			wantRoots: 1,
		},
		{
			// A fallback answered the gateway at 400 ms while the dm call
			// went on in the background; the dialog manager called the KB
			// after the hop had ended. The KB hop is still the dialog
			// manager's, and outside the dm hop's time (its self time is
			// all of it).
			name: "background completion after a fallback",
			spans: []Span{
				span(tr, 1, 0, KindServer, "client", "chat", "gateway", 0, ms(1000), OutcomeOK),
				span(tr, 2, 1, KindClient, "client", "chat", "gateway", ms(5), ms(990), OutcomeOK),
				span(tr, 5, 100, KindServer, "gateway", "dm", "dm", ms(250), ms(150), OutcomeFallback),
				span(tr, 6, 5, KindClient, "gateway", "dm", "dm", ms(255), ms(900), OutcomeOK),
				span(tr, 7, 200, KindServer, "dm", "kb", "kb", ms(600), ms(500), OutcomeOK),
				span(tr, 8, 7, KindClient, "dm", "kb", "kb", ms(605), ms(490), OutcomeOK),
			},
			want: map[uint64]wantLink{
				1: {0, false, ms(850)}, 2: {1, false, 0},
				5: {2, true, ms(150)}, 6: {5, false, 0},
				7: {6, true, ms(500)}, 8: {7, false, 0},
			},
			wantRoots: 1,
		},
		{
			name: "a caller no attempt went to stays a root",
			spans: []Span{
				span(tr, 1, 0, KindServer, "client", "chat", "gateway", 0, ms(1000), OutcomeOK),
				span(tr, 2, 1, KindClient, "client", "chat", "gateway", ms(5), ms(990), OutcomeOK),
				span(tr, 3, 100, KindServer, "other", "nlu", "nlu", ms(100), ms(100), OutcomeOK),
				span(tr, 4, 3, KindClient, "other", "nlu", "nlu", ms(105), ms(90), OutcomeOK),
			},
			want: map[uint64]wantLink{
				1: {0, false, ms(1000)}, 2: {1, false, 0}, 3: {0, false, ms(100)}, 4: {3, false, 0},
			},
			wantRoots: 2,
		},
		{
			name: "an attempt that had ended before the hop started is not its caller's",
			spans: []Span{
				span(tr, 1, 0, KindServer, "client", "chat", "gateway", 0, ms(100), OutcomeOK),
				span(tr, 2, 1, KindClient, "client", "chat", "gateway", ms(5), ms(90), OutcomeOK),
				span(tr, 3, 100, KindServer, "gateway", "nlu", "nlu", ms(200), ms(100), OutcomeOK),
				span(tr, 4, 3, KindClient, "gateway", "nlu", "nlu", ms(205), ms(90), OutcomeOK),
			},
			want: map[uint64]wantLink{
				1: {0, false, ms(100)}, 2: {1, false, 0}, 3: {0, false, ms(100)}, 4: {3, false, 0},
			},
			wantRoots: 2,
		},
		{
			// Forged or broken headers: the only enclosing attempt to the
			// caller is below the hop itself. Stitching there would close
			// a cycle; the hop stays a root.
			name: "no stitch onto the hop's own descendant",
			spans: []Span{
				span(tr, 3, 100, KindServer, "gateway", "x", "gateway", 0, ms(100), OutcomeOK),
				span(tr, 4, 3, KindClient, "gateway", "x", "gateway", 0, ms(100), OutcomeOK),
			},
			want:      map[uint64]wantLink{3: {0, false, ms(100)}, 4: {3, false, 0}},
			wantRoots: 1,
		},
	}
	for _, tc := range cases {
		for _, order := range []struct {
			name  string
			spans []Span
		}{{"arrival", tc.spans}, {"reversed", reversed(tc.spans)}} {
			t.Run(tc.name+"/"+order.name, func(t *testing.T) {
				s := NewStore(4)
				for _, sp := range order.spans {
					s.Add(sp)
				}
				d, ok := s.Trace(tid(tr))
				if !ok {
					t.Fatal("trace missing")
				}
				if len(d.Spans) != len(tc.want) {
					t.Fatalf("%d spans, want %d", len(d.Spans), len(tc.want))
				}
				idOf := func(i int) uint64 {
					if i < 0 {
						return 0
					}
					return binary.BigEndian.Uint64(d.Spans[i].SpanID[:])
				}
				roots := 0
				for i, n := range d.Spans {
					id := idOf(i)
					w := tc.want[id]
					got := wantLink{idOf(n.Parent), n.Stitched, n.SelfTime}
					if got != w {
						t.Errorf("span %d: parent %d stitched %v self %v; want parent %d stitched %v self %v",
							id, got.parent, got.stitched, got.self, w.parent, w.stitched, w.self)
					}
					if n.Parent < 0 {
						roots++
					} else if n.Depth != d.Spans[n.Parent].Depth+1 {
						t.Errorf("span %d at depth %d under a parent at depth %d", id, n.Depth, d.Spans[n.Parent].Depth)
					}
				}
				if roots != tc.wantRoots {
					t.Errorf("%d roots, want %d", roots, tc.wantRoots)
				}
				if d.Summary.Root.Route != "chat" && d.Summary.Root.Route != "x" {
					t.Errorf("summary root %+v, want the chat hop", d.Summary.Root)
				}
			})
		}
	}
}

// TestStoreStitchedSummaryRoot: while the entry hop is still running, a
// stitched inner hop is not taken for the turn's root.
func TestStoreStitchedSummaryRoot(t *testing.T) {
	s := NewStore(4)
	// Only the inner hops have ended: the gateway attempt that carried
	// the request is in, the chat hop is not.
	all := sdkTurn{gwSDK: true, dmSDK: true}.spans(1)
	for _, sp := range all[1:] {
		s.Add(sp)
	}
	d, _ := s.Trace(tid(1))
	if d.Summary.Root.Route != "chat" {
		t.Fatalf("root %+v, want the chat attempt's hop", d.Summary.Root)
	}
}

// TestBottlenecksStitched: with every service running an SDK the KB is
// still named. Unstitched, the chat hop would have no child hops, all of
// its time would be its own, and it would take the blame.
func TestBottlenecksStitched(t *testing.T) {
	for _, sdk := range []bool{false, true} {
		t.Run(fmt.Sprintf("sdk=%v", sdk), func(t *testing.T) {
			s := NewStore(100)
			for i := range 10 {
				for _, sp := range (sdkTurn{off: time.Duration(i) * time.Second, gwSDK: sdk, dmSDK: sdk}).spans(uint64(i + 1)) {
					s.Add(sp)
				}
			}
			rep := s.Bottlenecks(BottleneckQuery{MinDuration: ms(500), Now: t0.Add(time.Minute)})
			if rep.SlowTraces != 10 || len(rep.Hops) != 1 || rep.Hops[0].Route != "kb" || rep.Hops[0].Count != 10 || rep.Hops[0].MeanSelf != ms(400) {
				t.Fatalf("report %+v, want the kb hop blamed in all 10 turns with 400ms self", rep)
			}
		})
	}
}

func BenchmarkStoreTraceStitched(b *testing.B) {
	s := NewStore(10)
	for _, sp := range (sdkTurn{gwSDK: true, dmSDK: true}).spans(1) {
		s.Add(sp)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.Trace(tid(1))
	}
}
