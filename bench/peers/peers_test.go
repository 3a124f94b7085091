package main

import (
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/internal/testkit"
)

func TestParseStat(t *testing.T) {
	// Fields after the name: state ppid pgrp session tty tpgid flags
	// minflt cminflt majflt cmajflt utime stime ...
	tail := " S 41 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 12345 1000000 500"
	tests := []struct {
		name      string
		line      string
		wantPPID  int
		wantTicks uint64
		wantErr   bool
	}{
		{name: "plain", line: "42 (nginx)" + tail, wantPPID: 41, wantTicks: 325},
		{name: "name with spaces and parens", line: "42 (a) b (c))" + tail, wantPPID: 41, wantTicks: 325},
		{name: "no name", line: "42 nginx S 1", wantErr: true},
		{name: "truncated", line: "42 (nginx) S 41 42", wantErr: true},
		{name: "bad utime", line: "42 (x) S 41 42 42 0 -1 4194560 100 0 0 0 x 75", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := parseStat([]byte(tc.line))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err == nil && (st.PPID != tc.wantPPID || st.Ticks != tc.wantTicks) {
				t.Fatalf("got %+v, want ppid %d ticks %d", st, tc.wantPPID, tc.wantTicks)
			}
		})
	}
}

func TestParseHWM(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		want    int64
		wantErr bool
	}{
		{name: "present", status: "Name:\tnginx\nVmPeak:\t  9999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n", want: 2 << 20},
		{name: "missing", status: "Name:\tnginx\nVmRSS:\t 1024 kB\n", wantErr: true},
		{name: "other unit", status: "VmHWM:\t 2 MB\n", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseHWM([]byte(tc.status))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("got %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestTreeUsage builds a fake /proc with a parent, a child, a grandchild
// and an unrelated process; the tree's figures are the three summed.
func TestTreeUsage(t *testing.T) {
	root := t.TempDir()
	proc := func(pid, ppid string, ticks string, hwmKB string) {
		dir := filepath.Join(root, pid)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := pid + " (p) S " + ppid + " 1 1 0 -1 0 0 0 0 0 " + ticks + " " + ticks + " 0 0"
		os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
		os.WriteFile(filepath.Join(dir, "status"), []byte("VmHWM:\t"+hwmKB+" kB\n"), 0o644)
	}
	proc("10", "1", "100", "1024")  // 2 s, 1 MiB
	proc("11", "10", "50", "1024")  // 1 s
	proc("12", "11", "25", "1024")  // 0.5 s
	proc("20", "1", "1000", "9999") // not ours
	os.MkdirAll(filepath.Join(root, "self"), 0o755)
	u, err := procFS{root: root}.treeUsage(10)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(u.CPUSeconds-3.5) > 1e-9 || u.HWMBytes != 3<<20 {
		t.Fatalf("got %+v, want 3.5 s and 3 MiB", u)
	}
	if _, err := (procFS{root: root}).treeUsage(99); err == nil {
		t.Fatal("a missing process must be an error")
	}
}

func TestParseGHZ(t *testing.T) {
	const report = `{"count":1010,"total":2000000000,
	 "latencyDistribution":[{"percentage":50,"latency":1500000},{"percentage":99,"latency":9000000}],
	 "statusCodeDistribution":{"OK":1000,"Unavailable":10},
	 "errorDistribution":{"rpc error: code = Unavailable desc = error reading from server: read tcp 127.0.0.1:1->127.0.0.1:2: use of closed network connection":6,
	   "rpc error: code = Canceled desc = grpc: the client connection is closing":2,
	   "rpc error: code = Unavailable desc = upstream connect error":2}}`
	tests := []struct {
		name       string
		out        string
		per        float64
		wantOps    float64
		wantFailed int64
		wantErr    bool
	}{
		{name: "unary", out: report, per: 1, wantOps: 1000, wantFailed: 2},
		{name: "stream messages", out: report, per: 50, wantOps: 50000, wantFailed: 2},
		{name: "not json", out: "Summary:", wantErr: true},
		{name: "no duration", out: `{"count":1}`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseGHZ([]byte(tc.out), tc.per)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err != nil {
				return
			}
			if r.Ops != tc.wantOps || r.Failed != tc.wantFailed || r.Seconds != 2 || r.P50 != 1500*time.Microsecond || r.P99 != 9*time.Millisecond {
				t.Fatalf("got %+v", r)
			}
		})
	}
}

func TestParseWrk(t *testing.T) {
	const out = `Running 5s test @ http://127.0.0.1:19203/nlu/parse
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms    0.50ms  20.00ms   90.00%
    Req/Sec    14.00k     1.00k   16.00k    70.00%
  140000 requests in 5.00s, 20.00MB read
  Non-2xx or 3xx responses: 7
  Socket errors: connect 1, read 2, write 0, timeout 3
Requests/sec:  28000.00
Transfer/sec:      4.00MB
`
	tests := []struct {
		name       string
		out        string
		wantOps    float64
		wantFailed int64
		wantSecs   float64
		wantErr    bool
	}{
		{name: "errors", out: out, wantOps: 140000 - 13, wantFailed: 13, wantSecs: 5},
		{name: "clean, minutes", out: "  600 requests in 1.00m, 1MB read\n", wantOps: 600, wantSecs: 60},
		{name: "garbage", out: "unable to connect", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseWrk([]byte(tc.out))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && (r.Ops != tc.wantOps || r.Failed != tc.wantFailed || r.Seconds != tc.wantSecs) {
				t.Fatalf("got %+v", r)
			}
		})
	}
}

func TestParseH2load(t *testing.T) {
	const out = `finished in 5.00s, 9000.00 req/s, 1.00MB/s
requests: 45100 total, 45100 started, 45050 done, 45000 succeeded, 50 failed, 20 errored, 0 timeout
status codes: 44990 2xx, 0 3xx, 6 4xx, 4 5xx
traffic: 5MB (5000000) total
`
	r, err := parseH2load([]byte(out), 20)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops != 44990*20 || r.Failed != 60 || r.Seconds != 5 {
		t.Fatalf("got %+v", r)
	}
	if _, err := parseH2load([]byte("connect: refused"), 1); err == nil {
		t.Fatal("want an error for output without a summary")
	}
}

func TestParseH2loadLog(t *testing.T) {
	tests := []struct {
		name    string
		log     string
		want    []time.Duration
		wantErr bool
	}{
		{name: "failed rows skipped", log: "1700000000000000\t200\t1500\n1700000000000100\t-1\t99\n1700000000000200\t200\t700\n", want: []time.Duration{1500 * time.Microsecond, 700 * time.Microsecond}},
		{name: "short row", log: "1700000000000000\t200\n", wantErr: true},
		{name: "bad number", log: "1\t200\tx\n", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseH2loadLog(strings.NewReader(tc.log))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && !equalDurations(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 100; i >= 1; i-- {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	tests := []struct {
		name string
		lat  []time.Duration
		p    float64
		want time.Duration
	}{
		{name: "p50 of 1..100", lat: lat, p: 50, want: 50 * time.Millisecond},
		{name: "p99 of 1..100", lat: lat, p: 99, want: 99 * time.Millisecond},
		{name: "p100", lat: lat, p: 100, want: 100 * time.Millisecond},
		{name: "single", lat: []time.Duration{7}, p: 99, want: 7},
		{name: "empty", lat: nil, p: 50, want: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.lat, tc.p); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name    string
		samples []sample
		want    summary
	}{
		{name: "odd rounds: medians, failures summed", samples: []sample{
			{CPUPerOp: 30, Throughput: 900, P50: 3, P99: 30, Failed: 1},
			{CPUPerOp: 10, Throughput: 1000, P50: 1, P99: 10},
			{CPUPerOp: 20, Throughput: 1100, P50: 2, P99: 20, Failed: 2},
		}, want: summary{CPUPerOp: 20, Throughput: 1000, P50: 2, P99: 20, Failed: 3, Rounds: 3}},
		{name: "even rounds: mean of the middle two", samples: []sample{
			{CPUPerOp: 10, Throughput: 1}, {CPUPerOp: 20, Throughput: 3},
		}, want: summary{CPUPerOp: 15, Throughput: 2, Rounds: 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := summarize(tc.samples); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	t.Run("no proxy: CPU unknown", func(t *testing.T) {
		if got := summarize([]sample{{CPUPerOp: nan}, {CPUPerOp: nan}}); !math.IsNaN(got.CPUPerOp) {
			t.Fatalf("got %v, want NaN", got.CPUPerOp)
		}
	})
}

func TestRotate(t *testing.T) {
	v := []string{"a", "b", "c"}
	tests := []struct {
		r    int
		want string
	}{{0, "abc"}, {1, "bca"}, {2, "cab"}, {3, "abc"}, {4, "bca"}}
	for _, tc := range tests {
		if got := strings.Join(rotate(v, tc.r), ""); got != tc.want {
			t.Errorf("round %d: got %s, want %s", tc.r, got, tc.want)
		}
	}
	if strings.Join(v, "") != "abc" {
		t.Fatal("rotate changed its input")
	}
}

func TestCheckGoals(t *testing.T) {
	res := newResults()
	res.add("nginx", "grpc-unary", sample{CPUPerOp: 50, Throughput: 9000})
	res.add("hopwatch", "grpc-unary", sample{CPUPerOp: 45, Throughput: 9500})
	res.add("hopwatch-otlp", "grpc-unary", sample{CPUPerOp: 70, Throughput: 8000})
	res.add("hopwatch-sample0", "grpc-unary", sample{CPUPerOp: 40, Throughput: 9000, Failed: 1})
	res.add("hopwatch-messages", "grpc-unary", sample{CPUPerOp: 55, Throughput: 8900})
	res.add("nginx", "http1", sample{CPUPerOp: 20})
	res.add("hopwatch", "http1", sample{CPUPerOp: 31})
	want := map[string]bool{
		"gRPC unary, relay: messages, store, 100% sampled: CPU/request ≤ 1.0× nginx": false, // 1.1×
		"gRPC unary, relay: messages: throughput ≥ nginx":                            false,
		"gRPC unary, relay: messages: zero failed calls":                             true,
		"gRPC unary, store, 100% sampled: CPU/request ≤ 1.0× nginx":                  true,
		"gRPC unary, store: throughput ≥ nginx":                                      true,
		"gRPC unary, store: zero failed calls":                                       true,
		"gRPC unary, OTLP exporter: CPU/request ≤ 1.3× nginx":                        false, // 1.4×
		"HTTP/1.1: CPU/request ≤ 1.5× nginx":                                         false, // 1.55×
		"gRPC unary: sampled at 0 vs 100% (store) ≤ 10% apart":                       false, // +12.5%
	}
	gs := checkGoals(res, runInfo{IdleConns: 10000})
	if len(gs) != len(want) {
		t.Fatalf("got %d goals, want %d: %+v", len(gs), len(want), gs)
	}
	for _, g := range gs {
		if w, ok := want[g.What]; !ok || w != g.Holds || !g.Known {
			t.Errorf("%s: holds %v (known %v), want %v", g.What, g.Holds, g.Known, w)
		}
	}
}

// TestHopwatchTargets: the targets issue 13's goals are measured on run
// the gRPC listener on the default (the frame relay), as users run it;
// only hopwatch-messages pins grpc-go's path. Every hopwatch target in
// allTargets has a variant, and every variant is a known target.
func TestHopwatchTargets(t *testing.T) {
	tests := []struct {
		name       string
		wantSample float64
		wantOTLP   bool
		wantRelay  string
		wantBase   bool
	}{
		{name: "hopwatch", wantSample: 1},
		{name: "hopwatch-otlp", wantSample: 1, wantOTLP: true},
		{name: "hopwatch-sample0", wantSample: 0},
		{name: "hopwatch-messages", wantSample: 1, wantRelay: "messages"},
		{name: "hopwatch-baseline", wantSample: 1, wantBase: true},
		{name: "hopwatch-otlp-baseline", wantSample: 1, wantOTLP: true, wantBase: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, ok := hopwatchVariants[tc.name]
			if !ok {
				t.Fatal("no such variant")
			}
			if v.sample != tc.wantSample || v.otlp != tc.wantOTLP || v.relay != tc.wantRelay || v.baseline != tc.wantBase {
				t.Fatalf("got %+v, want sample %v otlp %v relay %q baseline %v", v, tc.wantSample, tc.wantOTLP, tc.wantRelay, tc.wantBase)
			}
			if _, ok := targetByName(tc.name); !ok {
				t.Fatal("targetByName does not know it")
			}
		})
	}
	for _, n := range allTargets {
		if _, ok := targetByName(n); !ok {
			t.Errorf("allTargets names %q, which targetByName does not know", n)
		}
	}
	// hopwatch-baseline without a binary to run is refused before
	// anything starts.
	for _, n := range []string{"hopwatch-baseline", "hopwatch-otlp-baseline"} {
		if err := run(context.Background(), []string{"-targets", "nginx," + n, "-out", ""}, io.Discard); err == nil || !strings.Contains(err.Error(), "-baseline") {
			t.Errorf("%s without -baseline: got %v, want an error naming -baseline", n, err)
		}
	}
	if len(hopwatchVariants) != len(tests) {
		t.Errorf("%d variants, %d tested", len(hopwatchVariants), len(tests))
	}
}

func TestSpliceReport(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want string
	}{
		{name: "new file", doc: "", want: "# Benchmarks\n\n" + beginMarker + "\nGEN\n" + endMarker + "\n"},
		{name: "replaces only between the markers", doc: "# B\n\nintro\n" + beginMarker + "\nold\ntable\n" + endMarker + "\n\n## Analysis\nkept\n",
			want: "# B\n\nintro\n" + beginMarker + "\nGEN\n" + endMarker + "\n\n## Analysis\nkept\n"},
		{name: "no markers: appended", doc: "# B\nhand written\n", want: "# B\nhand written\n\n" + beginMarker + "\nGEN\n" + endMarker + "\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(spliceReport([]byte(tc.doc), "GEN\n")); got != tc.want {
				t.Fatalf("got\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

// TestRenderConfigs renders every template; hopwatch's must load through
// the real config package (strict decoding and validation), and the peers'
// must pass their own checks when the programs are installed.
func TestRenderConfigs(t *testing.T) {
	dir := t.TempDir()
	a := newAddrs(19200)
	tests := []struct {
		name  string
		tmpl  string
		data  renderData
		check []string // command checking the file, appended with its path; empty: config.Load
	}{
		{name: "hopwatch store", tmpl: "hopwatch.yaml.tmpl", data: renderData{addrs: a, Variant: "hopwatch", SampleRatio: 1}},
		{name: "hopwatch otlp", tmpl: "hopwatch.yaml.tmpl", data: renderData{addrs: a, Variant: "hopwatch-otlp", SampleRatio: 1, Exporter: a.OTLP}},
		{name: "hopwatch sampled at 0", tmpl: "hopwatch.yaml.tmpl", data: renderData{addrs: a, Variant: "hopwatch-sample0", SampleRatio: 0}},
		{name: "hopwatch messages", tmpl: "hopwatch.yaml.tmpl", data: renderData{addrs: a, Variant: "hopwatch-messages", SampleRatio: 1, Relay: "messages"}},
		{name: "hopwatch frames", tmpl: "hopwatch.yaml.tmpl", data: renderData{addrs: a, Variant: "hopwatch-frames", SampleRatio: 1, Relay: "frames"}},
		{name: "nginx", tmpl: "nginx.conf.tmpl", data: renderData{addrs: a, Dir: dir, Workers: 2}, check: []string{"nginx", "-t", "-e", filepath.Join(dir, "err.log"), "-p", dir, "-c"}},
		{name: "haproxy", tmpl: "haproxy.cfg.tmpl", data: renderData{addrs: a, Dir: dir, Workers: 2}, check: []string{"haproxy", "-c", "-f"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := render(tc.tmpl, tc.data)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			if len(tc.check) == 0 {
				cfg, err := config.Load(path)
				if err != nil {
					t.Fatalf("rendered config does not load: %v\n%s", err, b)
				}
				tr := cfg.Telemetry.Tracing
				if got := *tr.SampleRatio; got != tc.data.SampleRatio {
					t.Errorf("sample_ratio = %v, want %v", got, tc.data.SampleRatio)
				}
				if (tr.OTLP != nil) != (tc.data.Exporter != "") {
					t.Errorf("otlp = %+v, want exporter %q", tr.OTLP, tc.data.Exporter)
				}
				if got := cfg.Listeners[0].Relay; got != tc.data.Relay {
					t.Errorf("grpc listener relay = %q, want %q", got, tc.data.Relay)
				}
				return
			}
			if _, err := exec.LookPath(tc.check[0]); err != nil {
				t.Skipf("%s not installed (make bench-peers installs it)", tc.check[0])
			}
			if out, err := exec.Command(tc.check[0], append(tc.check[1:], path)...).CombinedOutput(); err != nil {
				t.Fatalf("%s rejects the rendered config: %v\n%s\n%s", tc.check[0], err, out, b)
			}
		})
	}
}

func TestIdleGoal(t *testing.T) {
	tests := []struct {
		name      string
		rss       []float64
		failed    int64
		conns     int
		wantGoal  bool
		wantHolds bool
	}{
		{name: "under the bound", rss: []float64{150 << 20, 190 << 20, 260 << 20}, conns: 10000, wantGoal: true, wantHolds: true},
		{name: "over the bound", rss: []float64{210 << 20, 220 << 20, 100 << 20}, conns: 10000, wantGoal: true, wantHolds: false},
		{name: "connections dropped", rss: []float64{100 << 20}, failed: 3, conns: 10000, wantGoal: true, wantHolds: false},
		{name: "fewer connections than the goal names", rss: []float64{100 << 20}, conns: 1000, wantGoal: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := newResults()
			res.idleRSS["hopwatch"] = tc.rss
			res.idleFailed["hopwatch"] = tc.failed
			var found *goal
			for _, g := range checkGoals(res, runInfo{IdleConns: tc.conns}) {
				if strings.Contains(g.What, "idle client connections") {
					found = &g
				}
			}
			if (found != nil) != tc.wantGoal {
				t.Fatalf("goal present %v, want %v", found != nil, tc.wantGoal)
			}
			if found != nil && found.Holds != tc.wantHolds {
				t.Fatalf("holds %v, want %v (%+v)", found.Holds, tc.wantHolds, *found)
			}
		})
	}
}

// TestOpenIdle: every connection gets its answer and stays open until
// closed; a server that closes after answering is counted as not kept.
func TestOpenIdle(t *testing.T) {
	tests := []struct {
		name     string
		close    bool
		wantOpen int
	}{
		{name: "keep-alive", wantOpen: 40},
		{name: "server closes", close: true, wantOpen: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			open := 0
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.close {
					w.Header().Set("Connection", "close")
				}
				w.Write([]byte("ok"))
			}))
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				mu.Lock()
				defer mu.Unlock()
				switch s {
				case http.StateNew:
					open++
				case http.StateClosed, http.StateHijacked:
					open--
				}
			}
			srv.Start()
			defer srv.Close()
			ic, closeAll := openIdle(context.Background(), srv.Listener.Addr().String(), 40)
			if ic.Open != tc.wantOpen || ic.Open+ic.Failed != 40 {
				t.Fatalf("got %+v, want %d open of 40", ic, tc.wantOpen)
			}
			testkit.WaitFor(t, "server's view of the open connections", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return open == tc.wantOpen
			})
			closeAll()
		})
	}
}

func TestStreamsGoal(t *testing.T) {
	tests := []struct {
		name      string
		rounds    []loadResult
		wantHolds bool
	}{
		{name: "all completed", rounds: []loadResult{{Ops: 1000}, {Ops: 1000}}, wantHolds: true},
		{name: "one failed", rounds: []loadResult{{Ops: 1000}, {Ops: 999, Failed: 1}}, wantHolds: false},
		{name: "one missing", rounds: []loadResult{{Ops: 1000}, {Ops: 999}}, wantHolds: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := newResults()
			res.streams["hopwatch"] = tc.rounds
			gs := checkGoals(res, runInfo{OpenStreams: 1000})
			if len(gs) != 1 || gs[0].Holds != tc.wantHolds {
				t.Fatalf("got %+v, want one goal holding %v", gs, tc.wantHolds)
			}
		})
	}
}
