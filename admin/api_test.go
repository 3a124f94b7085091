package admin

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/telemetry"
)

var t0 = time.Unix(1_800_000_000, 0).UTC()

// Short names for the shared helpers: span tables read better with them.
var (
	tid = testkit.TraceID
	sid = testkit.SpanID
	ms  = testkit.Millis
)

var (
	hopChat  = telemetry.HopKey{Caller: "client", Route: "chat", Upstream: "gateway"}
	hopNLU   = telemetry.HopKey{Caller: "gateway", Route: "nlu", Upstream: "nlu"}
	hopKB    = telemetry.HopKey{Caller: "gateway", Route: "kb-search", Upstream: "kb"}
	hopInfer = telemetry.HopKey{Caller: "gateway", Route: "inference", Upstream: "inference"}
)

// addTurn records a bot turn the way the proxy does: the chat hop into the
// gateway, which calls nlu, kb and inference in turn through the proxy.
// Every hop has one client span (the attempt); the gateway spends 5 ms
// before, between and after its calls.
func addTurn(store *telemetry.Store, stats *telemetry.Stats, n uint64, start time.Time, kb time.Duration, kbOutcome telemetry.Outcome) {
	base := n * 100
	total := ms(20) + kb + ms(50) + 4*ms(5)
	server := func(id, parent uint64, k telemetry.HopKey, at time.Time, d time.Duration, o telemetry.Outcome) {
		client := telemetry.Span{
			TraceID: tid(n), SpanID: sid(id + 1), ParentID: sid(id), Kind: telemetry.KindClient, HopKey: k,
			Method: "POST", Endpoint: "127.0.0.1:9000", Attempt: 1, Start: at, Duration: d, Code: "200", Outcome: o,
		}
		srv := telemetry.Span{
			TraceID: tid(n), SpanID: sid(id), Kind: telemetry.KindServer, HopKey: k,
			Method: "POST", Start: at, Duration: d, Code: "200", Outcome: o,
		}
		if parent != 0 {
			srv.ParentID = sid(parent)
		}
		if o == telemetry.OutcomeFallback {
			srv.Events = []telemetry.SpanEvent{{Name: "fallback", Time: at.Add(d), Attrs: map[string]string{"source": "cache"}}}
		}
		store.Add(client)
		store.Add(srv)
		stats.Observe(k, d, o, at.Add(d))
	}
	at := start.Add(ms(5))
	server(base+10, base+2, hopNLU, at, ms(20), telemetry.OutcomeOK)
	at = at.Add(ms(25))
	server(base+20, base+2, hopKB, at, kb, kbOutcome)
	at = at.Add(kb + ms(5))
	server(base+30, base+2, hopInfer, at, ms(50), telemetry.OutcomeOK)
	// The chat hop: its attempt (span base+2) parents the gateway's calls.
	server(base+1, 0, hopChat, start, total, telemetry.OutcomeOK)
}

// fixture: 100 turns, one a second, ending at now. Turns 3, 13, … 93 have
// a slow KB (500 ms to 1.4 s); turn 50's KB failed; turn 60's answered from
// a fallback.
func fixture() (*telemetry.Store, *telemetry.Stats, time.Time) {
	store, stats := telemetry.NewStore(1000), telemetry.NewStats()
	for i := range 100 {
		kb, o := ms(30), telemetry.OutcomeOK
		if i%10 == 3 {
			kb = ms(500 + 100*(i/10))
		}
		switch i {
		case 50:
			o = telemetry.OutcomeError
		case 60:
			o = telemetry.OutcomeFallback
		}
		addTurn(store, stats, uint64(i+1), t0.Add(time.Duration(i)*time.Second), kb, o)
	}
	return store, stats, t0.Add(100 * time.Second)
}

func get(t *testing.T, s *Server, target string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("GET %s: Content-Type %q", target, ct)
	}
	var doc map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatalf("GET %s: not JSON: %v\n%s", target, err, rec.Body)
	}
	return rec.Code, doc
}

func TestAPIDisabled(t *testing.T) {
	store, stats, now := fixture()
	cases := []struct {
		name string
		opts Options
		path string
	}{
		{"hops without stats", Options{Traces: store}, "/api/hops"},
		{"traces without store", Options{Hops: stats}, "/api/traces"},
		{"trace without store", Options{Hops: stats}, "/api/traces/" + tid(1).String()},
		{"bottlenecks without store", Options{Hops: stats}, "/api/bottlenecks"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Now = func() time.Time { return now }
			code, doc := get(t, New(tc.opts), tc.path)
			if code != http.StatusServiceUnavailable || doc["error"] != "telemetry disabled" {
				t.Fatalf("GET %s = %d %v, want 503 telemetry disabled", tc.path, code, doc)
			}
		})
	}
}

func TestAPIHops(t *testing.T) {
	store, stats, now := fixture()
	s := New(Options{Traces: store, Hops: stats, Now: func() time.Time { return now }})
	code, doc := get(t, s, "/api/hops")
	if code != http.StatusOK {
		t.Fatalf("status %d: %v", code, doc)
	}
	hops, _ := doc["hops"].([]any)
	if len(hops) != 4 {
		t.Fatalf("%d hops, want 4: %v", len(hops), doc)
	}
	var kb map[string]any
	for _, h := range hops {
		row := h.(map[string]any)
		for _, f := range []string{"caller", "route", "upstream", "rate", "error_ratio", "p50", "p95", "p99", "count", "windows"} {
			if _, ok := row[f]; !ok {
				t.Fatalf("row %v has no %q", row, f)
			}
		}
		if row["route"] == "kb-search" {
			kb = row
		}
	}
	w1 := kb["windows"].(map[string]any)["1m"].(map[string]any)
	w5 := kb["windows"].(map[string]any)["5m"].(map[string]any)
	// 1m at now (a slot start) covers the last 55 s: turns 45..99, one
	// KB failure (turn 50) among 55; 5m has all 100.
	cases := []struct {
		name      string
		got, want float64
		tolerance float64
	}{
		{"flat count is the 1m window", kb["count"].(float64), 55, 0},
		{"1m count", w1["count"].(float64), 55, 0},
		{"flat rate", kb["rate"].(float64), 1, 1e-9},
		{"flat error ratio", kb["error_ratio"].(float64), 1.0 / 55, 1e-9},
		{"flat p50 in seconds", kb["p50"].(float64), 0.030, 0.030 * telemetry.QuantileRelativeError},
		{"flat p99 same as 1m", kb["p99"].(float64), w1["p99"].(float64), 0},
		{"5m count", w5["count"].(float64), 100, 0},
		{"5m p95 in seconds (5th of 10 slow KB calls)", w5["p95"].(float64), 0.9, 0.9 * telemetry.QuantileRelativeError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if math.Abs(tc.got-tc.want) > tc.tolerance {
				t.Fatalf("got %v, want %v ± %v", tc.got, tc.want, tc.tolerance)
			}
		})
	}
}

func TestAPITraces(t *testing.T) {
	store, stats, now := fixture()
	s := New(Options{Traces: store, Hops: stats, Now: func() time.Time { return now }})
	cases := []struct {
		name      string
		query     string
		wantCode  int
		wantCount int    // 200: number of traces
		wantFirst uint64 // 200: first trace (newest matching)
		wantErr   string // 400: part of the error
	}{
		{"default limit 50, newest first", "", 200, 50, 100, ""},
		{"route of the root", "?route=chat", 200, 50, 100, ""},
		{"route that is never a root", "?route=kb-search", 200, 0, 0, ""},
		{"min duration", "?min_duration=1s&limit=100", 200, 5, 94, ""},
		{"errors only", "?error=true", 200, 1, 51, ""},
		{"error=false does not filter", "?error=false&limit=1000", 200, 100, 100, ""},
		{"limit", "?limit=3", 200, 3, 100, ""},
		{"everything combined", "?route=chat&min_duration=600ms&error=0&limit=2", 200, 2, 94, ""},
		{"bad duration", "?min_duration=fast", 400, 0, 0, "min_duration"},
		{"negative duration", "?min_duration=-1s", 400, 0, 0, "must not be negative"},
		{"bare number is not a duration", "?min_duration=5", 400, 0, 0, "Go syntax"},
		{"bad boolean", "?error=maybe", 400, 0, 0, "error"},
		{"limit not a number", "?limit=ten", 400, 0, 0, "limit"},
		{"limit zero", "?limit=0", 400, 0, 0, "limit"},
		{"limit too large", "?limit=1001", 400, 0, 0, "1 to 1000"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, doc := get(t, s, "/api/traces"+tc.query)
			if code != tc.wantCode {
				t.Fatalf("status %d, want %d: %v", code, tc.wantCode, doc)
			}
			if code != http.StatusOK {
				if msg, _ := doc["error"].(string); !strings.Contains(msg, tc.wantErr) {
					t.Fatalf("error %q does not mention %q", msg, tc.wantErr)
				}
				return
			}
			list, ok := doc["traces"].([]any)
			if !ok {
				t.Fatalf(`no "traces" array: %v`, doc)
			}
			if len(list) != tc.wantCount {
				t.Fatalf("%d traces, want %d", len(list), tc.wantCount)
			}
			if tc.wantCount > 0 {
				first := list[0].(map[string]any)
				if first["trace_id"] != tid(tc.wantFirst).String() {
					t.Fatalf("first trace %v, want %s", first["trace_id"], tid(tc.wantFirst))
				}
			}
		})
	}

	t.Run("summary shape", func(t *testing.T) {
		_, doc := get(t, s, "/api/traces?error=true")
		got := doc["traces"].([]any)[0].(map[string]any)
		want := map[string]any{
			"trace_id": tid(51).String(),
			"root":     map[string]any{"caller": "client", "route": "chat", "upstream": "gateway"},
			"start":    t0.Add(50 * time.Second).Format(time.RFC3339Nano),
			"duration": 0.120,
			"spans":    8.0,
			"error":    true,
			"outcome":  "ok",
		}
		for k, v := range want {
			if !jsonEqual(got[k], v) {
				t.Errorf("%s = %v, want %v", k, got[k], v)
			}
		}
		if len(got) != len(want) {
			t.Errorf("fields %v, want exactly %v", got, want)
		}
	})
}

func TestAPITrace(t *testing.T) {
	store, stats, now := fixture()
	s := New(Options{Traces: store, Hops: stats, Now: func() time.Time { return now }})
	cases := []struct {
		name     string
		id       string
		wantCode int
	}{
		{"known", tid(61).String(), 200},
		{"upper case hex", strings.ToUpper(tid(61).String()), 200},
		{"unknown", tid(5000).String(), 404},
		{"too short", tid(61).String()[1:], 400},
		{"not hex", strings.Repeat("zz", 16), 400},
		{"all zero", strings.Repeat("0", 32), 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, doc := get(t, s, "/api/traces/"+tc.id)
			if code != tc.wantCode {
				t.Fatalf("status %d, want %d: %v", code, tc.wantCode, doc)
			}
			if code != http.StatusOK {
				if msg, _ := doc["error"].(string); msg == "" {
					t.Fatalf("no error message: %v", doc)
				}
			}
		})
	}

	t.Run("waterfall shape", func(t *testing.T) {
		_, doc := get(t, s, "/api/traces/"+tid(61).String())
		sum := doc["summary"].(map[string]any)
		if sum["trace_id"] != tid(61).String() || sum["spans"] != 8.0 {
			t.Fatalf("summary %v", sum)
		}
		spans := doc["spans"].([]any)
		type row struct {
			route, kind string
			depth       float64
			parent      float64
			children    int
			self        float64
			offset      float64
		}
		// Sorted by start; equal starts put the enclosing server span first.
		want := []row{
			{"chat", "server", 0, -1, 1, 0.020, 0},   // 120 ms - 100 ms of calls
			{"chat", "client", 1, 0, 3, 0, 0},        // the attempt parents the calls
			{"nlu", "server", 2, 1, 1, 0.020, 0.005}, //
			{"nlu", "client", 3, 2, 0, 0, 0.005},     //
			{"kb-search", "server", 2, 1, 1, 0.030, 0.030},
			{"kb-search", "client", 3, 4, 0, 0, 0.030},
			{"inference", "server", 2, 1, 1, 0.050, 0.065},
			{"inference", "client", 3, 6, 0, 0, 0.065},
		}
		if len(spans) != len(want) {
			t.Fatalf("%d spans, want %d", len(spans), len(want))
		}
		for i, w := range want {
			sp := spans[i].(map[string]any)
			got := row{sp["route"].(string), sp["kind"].(string), sp["depth"].(float64), sp["parent"].(float64),
				len(sp["children"].([]any)), sp["self_time"].(float64), sp["offset"].(float64)}
			if math.Abs(got.self-w.self) > 1e-9 || math.Abs(got.offset-w.offset) > 1e-9 {
				t.Errorf("span %d: %+v, want %+v", i, got, w)
			}
			got.self, got.offset, w.self, w.offset = 0, 0, 0, 0
			if got != w {
				t.Errorf("span %d: %+v, want %+v", i, got, w)
			}
		}
		root := spans[0].(map[string]any)
		if _, ok := root["parent_id"]; ok {
			t.Errorf("root has a parent_id: %v", root)
		}
		kb := spans[4].(map[string]any)
		if kb["parent_id"] != sid(6102).String() || kb["duration"] != 0.030 || kb["outcome"] != "fallback" {
			t.Errorf("kb span %v", kb)
		}
		events, _ := kb["events"].([]any)
		if len(events) != 1 || events[0].(map[string]any)["name"] != "fallback" {
			t.Errorf("kb events %v", kb["events"])
		}
	})
}

func TestAPIBottlenecks(t *testing.T) {
	store, stats, now := fixture()
	cases := []struct {
		name      string
		opts      Options
		query     string
		wantCode  int
		wantSlow  float64
		wantCount float64
		wantErr   string
	}{
		// 90 turns of 110 ms and 10 of 0.58 s to 1.48 s: two clear
		// modes, so the ten slow turns are slow, all because of the KB.
		{"slow mode names kb", Options{Traces: store, Hops: stats}, "?window=5m", 200, 10, 10, ""},
		{"default window", Options{Traces: store, Hops: stats}, "", 200, 10, 10, ""},
		{"the rule needs no hop statistics", Options{Traces: store}, "", 200, 10, 10, ""},
		{"min_duration", Options{Traces: store, Hops: stats}, "?min_duration=500ms", 200, 10, 10, ""},
		{"min_duration needs no stats", Options{Traces: store}, "?min_duration=500ms", 200, 10, 10, ""},
		{"short window", Options{Traces: store, Hops: stats}, "?window=30s&min_duration=500ms", 200, 3, 3, ""},
		{"bad window", Options{Traces: store, Hops: stats}, "?window=5", 400, 0, 0, "window"},
		{"negative min_duration", Options{Traces: store, Hops: stats}, "?min_duration=-2s", 400, 0, 0, "min_duration"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Now = func() time.Time { return now }
			code, doc := get(t, New(tc.opts), "/api/bottlenecks"+tc.query)
			if code != tc.wantCode {
				t.Fatalf("status %d, want %d: %v", code, tc.wantCode, doc)
			}
			if code != http.StatusOK {
				if msg, _ := doc["error"].(string); !strings.Contains(msg, tc.wantErr) {
					t.Fatalf("error %q does not mention %q", msg, tc.wantErr)
				}
				return
			}
			if doc["slow_traces"] != tc.wantSlow {
				t.Fatalf("slow_traces %v, want %v: %v", doc["slow_traces"], tc.wantSlow, doc)
			}
			hops := doc["hops"].([]any)
			if len(hops) != 1 {
				t.Fatalf("hops %v, want only kb", hops)
			}
			h := hops[0].(map[string]any)
			if h["caller"] != "gateway" || h["route"] != "kb-search" || h["upstream"] != "kb" || h["count"] != tc.wantCount {
				t.Fatalf("bottleneck %v, want gateway→kb-search→kb ×%v", h, tc.wantCount)
			}
			ex := h["example_trace_ids"].([]any)
			if len(ex) != min(5, int(tc.wantCount)) || ex[0] != tid(94).String() {
				t.Fatalf("examples %v, want up to 5 starting with the slowest, %s", ex, tid(94))
			}
			for _, f := range []string{"share", "mean_self"} {
				if v, _ := h[f].(float64); v <= 0 || f == "share" && v > 1 {
					t.Fatalf("%s = %v", f, h[f])
				}
			}
			for _, f := range []string{"window", "traces", "threshold", "rules", "thresholds"} {
				if _, ok := doc[f]; !ok {
					t.Fatalf("no %q in %v", f, doc)
				}
			}
		})
	}
}

// jsonEqual compares a decoded JSON value with an expected Go value.
func jsonEqual(got, want any) bool {
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	return string(g) == string(w)
}

// addChainTurn records a turn of client → front → mid → back, every hop
// through one listener, as the proxy does: each hop a server span and an
// attempt (client) span, the next hop parented on that attempt. mid's own
// time is midSelf; the other services spend a few milliseconds.
func addChainTurn(store *telemetry.Store, stats *telemetry.Stats, n uint64, start time.Time, midSelf time.Duration) {
	hops := []telemetry.HopKey{
		{Caller: "client", Route: "front", Upstream: "front"},
		{Caller: "front", Route: "mid", Upstream: "mid"},
		{Caller: "mid", Route: "back", Upstream: "back"},
	}
	self := []time.Duration{ms(6), midSelf, ms(3)}
	var walk func(k int, at time.Time, parent uint64) time.Duration
	walk = func(k int, at time.Time, parent uint64) time.Duration {
		srv, att := n*100+uint64(k)*2+1, n*100+uint64(k)*2+2
		d := self[k]
		if k+1 < len(hops) {
			d += walk(k+1, at.Add(self[k]/2), att)
		}
		sp := telemetry.Span{TraceID: tid(n), SpanID: sid(srv), Kind: telemetry.KindServer, HopKey: hops[k],
			Method: "POST", Start: at, Duration: d, Code: "200", Outcome: telemetry.OutcomeOK}
		if parent != 0 {
			sp.ParentID = sid(parent)
		}
		store.Add(telemetry.Span{TraceID: tid(n), SpanID: sid(att), ParentID: sid(srv), Kind: telemetry.KindClient, HopKey: hops[k],
			Method: "POST", Endpoint: "127.0.0.1:9000", Attempt: 1, Start: at, Duration: d, Code: "200", Outcome: telemetry.OutcomeOK})
		store.Add(sp)
		stats.Observe(hops[k], d, telemetry.OutcomeOK, at.Add(d))
		return d
	}
	walk(0, start, 0)
}

// TestAPIBottlenecksTightSlowMode is issue 9's scenario: the middle of
// three services is ≈400 ms slow on every 4th call; after 60 turns the
// slow turns (0.41–0.42 s) all sat below the p95 read from the hop
// statistics (a bucket's middle, 0.43 s), so the panel found nothing.
func TestAPIBottlenecksTightSlowMode(t *testing.T) {
	store, stats := telemetry.NewStore(1000), telemetry.NewStats()
	for i := range 60 {
		mid := ms(2)
		if i%4 == 3 {
			mid = ms(406) + time.Duration(i)*100*time.Microsecond // turns of 415–421 ms
		}
		addChainTurn(store, stats, uint64(i+1), t0.Add(time.Duration(i)*time.Second), mid)
	}
	now := t0.Add(61 * time.Second)
	if sketch, _ := stats.Quantile("front", 0.95, 5*time.Minute, now); sketch <= ms(421) {
		t.Fatalf("the sketch's p95 %v is not above the slow turns: the fixture no longer reproduces issue 9", sketch)
	}
	s := New(Options{Traces: store, Hops: stats, Now: func() time.Time { return now }})
	code, doc := get(t, s, "/api/bottlenecks?window=5m")
	if code != http.StatusOK {
		t.Fatalf("status %d: %v", code, doc)
	}
	if doc["slow_traces"] != 15.0 {
		t.Fatalf("slow_traces %v, want the 15 slow turns: %v", doc["slow_traces"], doc)
	}
	hops := doc["hops"].([]any)
	if len(hops) != 1 {
		t.Fatalf("hops %v, want only mid", hops)
	}
	h := hops[0].(map[string]any)
	if h["route"] != "mid" || h["count"] != 15.0 || h["share"].(float64) < 0.95 {
		t.Fatalf("bottleneck %v, want mid ×15 with a share ≥ 95%%", h)
	}
	rules := doc["rules"].([]any)
	if len(rules) != 1 {
		t.Fatalf("rules %v", rules)
	}
	r := rules[0].(map[string]any)
	if r["route"] != "front" || r["rule"] != "bimodal" || r["turns"] != 60.0 || r["slow_turns"] != 15.0 ||
		r["threshold"].(float64) < 0.4 || r["threshold"].(float64) > 0.42 {
		t.Fatalf("rule %v, want the bimodal slow mode of front from ≈0.41 s", r)
	}
	if th := doc["thresholds"].(map[string]any)["front"]; th != r["threshold"] {
		t.Errorf("thresholds.front %v, want the rule's %v", th, r["threshold"])
	}

	// The dashboard's slow trace list: the same 15 turns.
	code, doc = get(t, s, "/api/traces?slow=true&window=5m&limit=100")
	if code != http.StatusOK {
		t.Fatalf("status %d: %v", code, doc)
	}
	list := doc["traces"].([]any)
	if len(list) != 15 {
		t.Fatalf("%d slow traces, want 15", len(list))
	}
	for _, x := range list {
		if d := x.(map[string]any)["duration"].(float64); d < 0.4 {
			t.Errorf("fast trace (%v s) in the slow list", d)
		}
	}
	for _, bad := range []string{"?slow=maybe", "?slow=true&window=x"} {
		if code, _ := get(t, s, "/api/traces"+bad); code != http.StatusBadRequest {
			t.Errorf("GET /api/traces%s = %d, want 400", bad, code)
		}
	}
}

// TestAPITraceStitched: a gateway that runs its own OpenTelemetry SDK makes
// its nlu call a child of its own client span, which hopwatch never sees.
// The waterfall shows the nlu hop under the chat attempt that carried the
// request into the gateway, marked as stitched, with the gateway's own
// time as the chat hop's self time.
func TestAPITraceStitched(t *testing.T) {
	store := telemetry.NewStore(10)
	add := func(id, parent uint64, kind telemetry.SpanKind, k telemetry.HopKey, at, d time.Duration) {
		sp := telemetry.Span{TraceID: tid(1), SpanID: sid(id), Kind: kind, HopKey: k, Start: t0.Add(at), Duration: d, Outcome: telemetry.OutcomeOK}
		if parent != 0 {
			sp.ParentID = sid(parent)
		}
		store.Add(sp)
	}
	add(1, 0, telemetry.KindServer, hopChat, 0, ms(100))
	add(2, 1, telemetry.KindClient, hopChat, ms(1), ms(98))
	add(3, 900, telemetry.KindServer, hopNLU, ms(20), ms(30)) // 900: the gateway's own client span
	add(4, 3, telemetry.KindClient, hopNLU, ms(21), ms(28))
	s := New(Options{Traces: store, Now: func() time.Time { return t0.Add(time.Minute) }})

	_, doc := get(t, s, "/api/traces/"+tid(1).String())
	spans := doc["spans"].([]any)
	if len(spans) != 4 {
		t.Fatalf("%d spans, want 4", len(spans))
	}
	chat, nlu := spans[0].(map[string]any), spans[2].(map[string]any)
	if _, ok := chat["stitched"]; ok {
		t.Errorf("the entry hop is marked stitched: %v", chat)
	}
	if math.Abs(chat["self_time"].(float64)-0.070) > 1e-9 {
		t.Errorf("chat self time %v, want 0.070 (100ms less the 30ms nlu hop)", chat["self_time"])
	}
	want := map[string]any{"route": "nlu", "kind": "server", "parent": 1.0, "depth": 2.0,
		"parent_id": sid(2).String(), "stitched": true, "stitched_from": sid(900).String()}
	for k, v := range want {
		if nlu[k] != v {
			t.Errorf("nlu %s = %v, want %v", k, nlu[k], v)
		}
	}
}
