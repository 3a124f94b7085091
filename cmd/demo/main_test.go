package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopwatch/hopwatch/demo"
)

// TestMain fails the package if a run leaves a goroutine behind: Ctrl-C
// (the context) must stop users, hopwatch and the services completely.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// loopback places everything on free ports, so tests run beside a real
// demo and each other.
var loopback = []string{"-admin", "127.0.0.1:0", "-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0"}

// demoHops are the hops of one turn of the demo stack.
var demoHops = []hopKey{
	{"client", "chat", "gateway"},
	{"gateway", "nlu", "nlu"},
	{"gateway", "dm", "dm"},
	{"gateway", "kb", "kb"},
	{"gateway", "inference", "inference"},
	{"inference", "llm", "llm"},
}

// runFor runs the demo with the given flags (on free ports) and returns
// what it measured and printed.
func runFor(t *testing.T, args ...string) (result, string) {
	t.Helper()
	o, err := parseFlags(append(args, loopback...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := runDemo(context.Background(), o, &out, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("output:\n%s", out.String())
	return res, out.String()
}

// TestRunBounded runs the whole demo for a few seconds at a low rate: the
// turns succeed, every service saw traffic, every hop of the stack shows
// in hopwatch's /api/hops (so the traffic went through hopwatch), and the
// table was printed.
func TestRunBounded(t *testing.T) {
	res, out := runFor(t, "-duration", "3s", "-every", "1s", "-rate", "5", "-users", "3", "-seed", "7")
	if res.total.Turns < 3 {
		t.Errorf("only %d turns in 3s at 5/s", res.total.Turns)
	}
	if res.total.Errors != 0 {
		t.Errorf("%d turns failed", res.total.Errors)
	}
	for _, svc := range demo.Services {
		if res.calls[svc] == 0 {
			t.Errorf("service %s saw no calls", svc)
		}
	}
	seen := map[hopKey]hopRow{}
	for _, h := range res.hops {
		seen[h.hopKey] = h
	}
	// hopwatch read the model server's usage: tokens per configured model.
	var tokens float64
	for _, m := range res.models {
		if m.Model == "other" {
			t.Errorf("model %q: the demo's models are in its genai.models list", m.Model)
		}
		tokens += m.Output
		if m.Output > 0 && (m.Input <= 0 || m.TTFT <= 0 || m.Cost <= 0) {
			t.Errorf("model usage %+v: want input tokens, TTFT and cost", m)
		}
	}
	if tokens == 0 {
		t.Errorf("no output tokens counted; models: %+v", res.models)
	}
	for _, k := range demoHops {
		if h, ok := seen[k]; !ok || h.Rate <= 0 {
			t.Errorf("hop %s: %+v, want traffic in /api/hops", k, h)
		}
	}
	for _, want := range []string{"hopwatch demo:", "dashboard http://127.0.0.1:", "p95", "service calls, total:", "client → chat → gateway"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestRunNamesSlowKB: with every knowledge-base call slow, the KB hop is
// what hopwatch names as the bottleneck of the slow turns, and the table
// says so.
func TestRunNamesSlowKB(t *testing.T) {
	res, out := runFor(t, "-duration", "5s", "-every", "10s", "-rate", "4", "-users", "6", "-kb-slow-share", "1", "-seed", "3")
	if res.bottlenecks == nil || len(res.bottlenecks.Hops) == 0 {
		t.Fatalf("no bottleneck report: %+v", res.bottlenecks)
	}
	if got, want := res.bottlenecks.Hops[0].hopKey, (hopKey{"gateway", "kb", "kb"}); got != want {
		t.Errorf("bottleneck %s, want %s", got, want)
	}
	if !strings.Contains(out, "bottleneck: gateway → kb → kb") {
		t.Error("the table does not name the KB")
	}
}

func TestRunExitCodes(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		code       int
		wantStderr string
	}{
		{"fallback typo", []string{"-fallback=yes"}, 2, "-fallback must be on or off"},
		{"negative rate", []string{"-rate", "-1"}, 2, "-rate"},
		{"no users", []string{"-users", "0"}, 2, "-users"},
		{"share above 1", []string{"-kb-slow-share", "1.5"}, 2, "-kb-slow-share"},
		{"unknown flag", []string{"-turbo"}, 2, "not defined"},
		{"stray argument", []string{"now"}, 2, "unexpected arguments"},
		{"bad listener address", []string{"-grpc", "7000"}, 2, "listeners[0].address"},
		{"help", []string{"-h"}, 0, "-kb-slow-share"},
		{"short run", append([]string{"-duration", "500ms", "-rate", "2"}, loopback...), 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr lacks %q:\n%s", tt.wantStderr, stderr.String())
			}
		})
	}
}

// TestFallbackFlag: before hopwatch has fallbacks, -fallback=on must fail
// with a clear message and exit 2, not run without them. Once the loader
// accepts the section, the run must show it working: with every KB call
// slow, turns with the fallback are far faster than without.
func TestFallbackFlag(t *testing.T) {
	_, err := demo.ParseHopwatchConfig(nil, demo.Placement{Fallback: true})
	if errors.Is(err, demo.ErrFallbackUnavailable) {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"-fallback=on", "-duration", "1s"}, loopback...), &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), "fallback not available yet") {
			t.Errorf("exit %d, stderr:\n%s", code, stderr.String())
		}
		if stdout.Len() > 0 {
			t.Errorf("something ran:\n%s", stdout.String())
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-duration", "4s", "-every", "10s", "-rate", "4", "-users", "8", "-kb-slow-share", "1", "-seed", "5"}
	off, _ := runFor(t, append(args, "-fallback=off")...)
	on, _ := runFor(t, append(args, "-fallback=on")...)
	t.Logf("turn p95: fallback off %v, on %v", off.total.P95, on.total.P95)
	if on.total.Turns == 0 || on.total.P95 >= off.total.P95/2 {
		t.Errorf("fallback on: %d turns, p95 %v; off: p95 %v; want on far below off", on.total.Turns, on.total.P95, off.total.P95)
	}
}

// TestRunStopsOnCancel is Ctrl-C: the run ends promptly and cleanly
// (TestMain checks the goroutines).
func TestRunStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(time.Second, cancel)
	var stdout, stderr bytes.Buffer
	start := time.Now()
	if code := run(ctx, append([]string{"-rate", "20", "-users", "10"}, loopback...), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr.String())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("stopping took %v", d)
	}
	if !strings.Contains(stdout.String(), "done after") {
		t.Errorf("no final summary:\n%s", stdout.String())
	}
}

func TestFetchHops(t *testing.T) {
	row := `{"caller":"gateway","route":"kb","upstream":"kb","rate":3.5,"error_ratio":0.01,"p50":0.04,"p95":2.1,"p99":2.9}`
	tests := []struct {
		name       string
		status     int
		body       string
		wantRows   int
		notServed  bool
		wantReason string
		wantErr    bool
	}{
		{name: "not served", status: 404, body: "404 page not found", notServed: true},
		{name: "telemetry disabled", status: 503, body: `{"error":"telemetry disabled"}`, notServed: true, wantReason: "telemetry disabled"},
		{name: "envelope", status: 200, body: `{"hops":[` + row + `,` + row + `]}`, wantRows: 2},
		{name: "bare array", status: 200, body: `[` + row + `]`, wantRows: 1},
		{name: "empty", status: 200, body: `{"hops":[]}`},
		{name: "garbage", status: 200, body: `<html>`, wantErr: true},
		{name: "server error", status: 500, body: `{"error":"boom"}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/api/hops" {
					http.NotFound(w, r)
					return
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			rows, err := fetchHops(context.Background(), srv.Client(), srv.URL)
			var none *notServedError
			switch {
			case tt.notServed:
				if !errors.As(err, &none) || none.reason != tt.wantReason {
					t.Fatalf("err %v, want not served (%q)", err, tt.wantReason)
				}
			case tt.wantErr:
				if err == nil || errors.As(err, &none) {
					t.Fatalf("err %v, want a plain error", err)
				}
			case err != nil:
				t.Fatal(err)
			case len(rows) != tt.wantRows:
				t.Fatalf("%d rows, want %d", len(rows), tt.wantRows)
			case tt.wantRows > 0 && (rows[0].Route != "kb" || rows[0].P95 != 2.1 || rows[0].ErrorRatio != 0.01):
				t.Errorf("row %+v", rows[0])
			}
		})
	}
}

func TestFetchBottlenecks(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if q := r.URL.Query(); r.URL.Path != "/api/bottlenecks" || q.Get("window") != "1m" || q.Get("min_duration") != "1.5s" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, `{"window":60,"traces":40,"slow_traces":3,"threshold":"p95","hops":[
			{"caller":"gateway","route":"kb","upstream":"kb","count":2,"share":0.8,"mean_self":2.1,"example_trace_ids":[]}]}`)
	}))
	defer srv.Close()
	b, err := fetchBottlenecks(context.Background(), srv.Client(), srv.URL, 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if b.SlowTraces != 3 || len(b.Hops) != 1 || b.Hops[0].Route != "kb" || b.Hops[0].Count != 2 || b.Hops[0].Share != 0.8 {
		t.Errorf("got %+v", b)
	}
}

func TestWriteHops(t *testing.T) {
	rows := []hopRow{
		{hopKey: hopKey{"client", "chat", "gateway"}, Rate: 4, P50: 0.45, P95: 2.6, P99: 2.9},
		{hopKey: hopKey{"gateway", "nlu", "nlu"}, Rate: 4, P50: 0.015, P95: 0.018, P99: 0.019},
		{hopKey: hopKey{"gateway", "kb", "kb"}, Rate: 4, ErrorRatio: 0.25, P50: 0.04, P95: 0.05, P99: 2.8},
		{hopKey: hopKey{"gateway", "inference", "inference"}, Rate: 4, P50: 0.36, P95: 0.4, P99: 0.41},
		{hopKey: hopKey{"gateway", "dm", "dm"}, Rate: 0, P50: 9, P95: 9, P99: 9}, // idle: never marked
	}
	kbSlow := &bottlenecks{SlowTraces: 3, Hops: []bottleneckHop{{hopKey{"gateway", "kb", "kb"}, 2, 0.8}}}

	tests := []struct {
		name       string
		b          *bottlenecks
		marked     string // route of the marked row
		mark, line string
	}{
		{"no report: highest p95 outside the entry route", nil, "inference", "◀ highest p95", ""},
		{"empty report", &bottlenecks{}, "inference", "◀ highest p95", ""},
		{"report names the hop", kbSlow, "kb", "◀ bottleneck", "bottleneck: gateway → kb → kb, the largest hop in 2 of 3 slow turns (80% of their time)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			writeHops(&b, rows, tt.b, demo.EntryRoute)
			lines := strings.Split(strings.TrimSpace(b.String()), "\n")
			table := lines[:1+len(rows)]
			for i, l := range table[1:] {
				if marked := strings.HasSuffix(l, tt.mark); marked != (rows[i].Route == tt.marked) {
					t.Errorf("line %q: marked %t", l, marked)
				}
				// Fixed-width columns: every row is as wide as the header
				// once the mark is off, counted in runes, as the arrows are
				// multi-byte.
				l = strings.TrimSuffix(l, "  "+tt.mark)
				if got, want := len([]rune(l)), len([]rune(table[0])); got != want {
					t.Errorf("row %q is %d runes wide, header %d", l, got, want)
				}
			}
			if !strings.Contains(table[3], "25.0%") || !strings.Contains(table[3], "2.80s") {
				t.Errorf("kb line %q", table[3])
			}
			var last string
			if len(lines) > len(table) {
				last = lines[len(table)]
			}
			if last != tt.line {
				t.Errorf("summary line %q, want %q", last, tt.line)
			}
		})
	}

	var b bytes.Buffer
	writeHops(&b, nil, nil, demo.EntryRoute)
	if !strings.Contains(b.String(), "no traffic yet") {
		t.Errorf("empty table: %q", b.String())
	}
}
