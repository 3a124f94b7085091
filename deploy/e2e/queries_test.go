package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"

	"github.com/hopwatch/hopwatch/demo"
	"github.com/hopwatch/hopwatch/deploy/internal/program"
)

const installPrometheus = "apt-get install -y prometheus (Debian; provides prometheus and promtool)"

// TestQueriesOnLiveHopwatch runs every PromQL expression of the Grafana
// dashboard (deploy/grafana/hopwatch.json) and of the rules
// (deploy/prometheus/rules.yaml, loaded into the Prometheus) against a real
// Prometheus scraping the real hopwatch binary, with the demo bot behind it
// and traffic that makes every series exist: simulated users whose
// conversations end (idle timeout 3 s), a knowledge base slow often enough
// to open its breaker and serve fallbacks, a purpose-built flaky backend
// behind a route with retries, and a SIGHUP reload. An expression that
// errors, or returns no series, fails the test; so does a rule Prometheus
// reports unhealthy (e.g. many-to-many matching at evaluation).
//
// Alerting rules are not expected to fire: each is split at its threshold
// comparisons and set operators (and, or, unless), and every signal
// compared with a threshold must return series.
func TestQueriesOnLiveHopwatch(t *testing.T) {
	promBin := program.Need(t, installPrometheus, "prometheus")
	proxyBin := program.BuildProxy(t)

	exprs := dashboardExprs(t)
	records, alerts := ruleExprs(t)

	// The bot: the KB is slow (over the breaker's 1 s slow_call) on 70% of
	// calls, so its breaker opens and the fallback answers; the NLU misses
	// a fifth of questions (no_match: fallback turns, bad sessions).
	stack, err := demo.Start(demo.Config{
		NLU:          demo.Latency{Base: 2 * time.Millisecond},
		DM:           demo.Latency{Base: 2 * time.Millisecond},
		FirstToken:   demo.Latency{Base: 10 * time.Millisecond, Jitter: 10 * time.Millisecond},
		TokenGap:     demo.Latency{Base: time.Millisecond},
		KB:           demo.Latency{Base: 5 * time.Millisecond},
		KBSlow:       demo.Latency{Base: 1100 * time.Millisecond, Jitter: 200 * time.Millisecond},
		KBSlowShare:  0.7,
		NoMatchShare: 0.2,
		Seed:         17,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stack.Close(ctx)
	})
	flaky := startFlaky(t)

	admin, grpcAddr, httpAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	cfg, err := demo.RenderHopwatchConfig(stack.Endpoints(), demo.Placement{
		GRPC: grpcAddr, HTTP: httpAddr, Admin: admin,
		Fallback: true, TurnSLO: time.Second, IdleTimeout: 3 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg = addFlakyRoute(t, cfg, flaky)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "hopwatch.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	hw := startProcess(t, proxyBin, "-config", cfgPath, "-log-level=warn", "-grace=2s")
	eventually(t, 30*time.Second, "hopwatch ready", hw, func() error { return httpGet("http://"+admin+"/readyz", nil) })
	if err := stack.ServeGateway(demo.Listeners{GRPC: grpcAddr, HTTP: httpAddr}); err != nil {
		t.Fatal(err)
	}

	prom := startPrometheus(t, promBin, admin)

	// Traffic until the checks are done.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Add(2)
	go func() {
		defer wg.Done()
		err := demo.RunUsers(ctx, demo.UsersConfig{
			URL: "http://" + httpAddr, Users: 12, MinTurns: 1, MaxTurns: 3,
			SlowAfter: time.Second, StreamShare: 0.3, CloseShare: 0.5,
			Rand: rand.New(rand.NewPCG(3, 4)),
		}, demo.NewRecorder(nil))
		if err != nil && ctx.Err() == nil {
			t.Errorf("demo users: %v", err)
		}
	}()
	go func() {
		defer wg.Done()
		driveFlaky(ctx, "http://"+httpAddr+"/flaky/ping")
	}()
	// A reload, so that the reload counters have a series.
	time.Sleep(2 * time.Second)
	if err := hw.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}

	// Every expression must return series; some need traffic that takes
	// a while (a breaker opening, sessions ending), so retry until all do
	// or the deadline passes, then report each one still failing.
	var all []check
	for _, e := range exprs {
		all = append(all, check{what: "dashboard " + e.where, expr: e.expr})
	}
	for _, r := range records {
		all = append(all, check{what: "recording rule " + r, expr: r})
	}
	for _, a := range alerts {
		all = append(all, check{what: "alert " + a.where, expr: a.expr})
	}
	all = append(all, check{what: "dashboard variable route", labelValues: "route", match: "hopwatch_hop_requests_total"})

	deadline := time.Now().Add(120 * time.Second)
	var failing []string
	for {
		failing = failing[:0]
		for i := range all {
			c := &all[i]
			if c.ok {
				continue
			}
			if c.err = prom.check(c); c.err == nil {
				c.ok = true
			} else {
				failing = append(failing, fmt.Sprintf("%s: %s\n    %v", c.what, c.expr, c.err))
			}
		}
		if err := prom.rulesHealthy(); err != nil {
			failing = append(failing, err.Error())
		}
		if len(failing) == 0 || time.Now().After(deadline) {
			break
		}
		if err := hw.exited(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
	}
	if len(failing) > 0 {
		t.Errorf("%d of %d expressions return nothing or fail after 120s of traffic (target: %s):\n%s",
			len(failing), len(all), prom.targetHealth(), strings.Join(failing, "\n"))
	}
	t.Logf("%d expressions checked: %d dashboard queries, %d recording rules, %d alert signals, 1 variable",
		len(all), len(exprs), len(records), len(alerts))
}

// check is one expression to run (or a label_values variable).
type check struct {
	what, expr         string
	labelValues, match string
	ok                 bool
	err                error
}

type located struct{ where, expr string }

// grafanaVars are the values the dashboard's variables get here: what
// Grafana would put in with every route selected and a 1 s scrape
// interval ($__rate_interval is four scrape intervals at least).
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "15s",
	"$route", ".*",
)

// dashboardExprs reads every query of the committed dashboard JSON.
func dashboardExprs(t *testing.T) []located {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "grafana", "hopwatch.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	var out []located
	for _, p := range d.Panels {
		for _, q := range p.Targets {
			expr := grafanaVars.Replace(q.Expr)
			if strings.Contains(expr, "$") {
				t.Fatalf("panel %q query %s: a variable this test does not know: %s", p.Title, q.RefID, q.Expr)
			}
			out = append(out, located{where: fmt.Sprintf("%q %s", p.Title, q.RefID), expr: expr})
		}
	}
	if len(out) < 20 {
		t.Fatalf("only %d dashboard queries found", len(out))
	}
	return out
}

// ruleExprs returns the recorded series names and, per alert, the signals
// its expression compares with thresholds.
func ruleExprs(t *testing.T) (records []string, alerts []located) {
	t.Helper()
	data, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Record string `yaml:"record"`
				Alert  string `yaml:"alert"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	p := parser.NewParser(parser.Options{})
	seen := map[string]bool{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				records = append(records, r.Record)
				continue
			}
			e, err := p.ParseExpr(r.Expr)
			if err != nil {
				t.Fatalf("alert %s: %v", r.Alert, err)
			}
			for _, s := range signals(e) {
				if key := r.Alert + s; !seen[key] {
					seen[key] = true
					alerts = append(alerts, located{where: r.Alert, expr: s})
				}
			}
		}
	}
	return records, alerts
}

// signals splits an alert's expression into what it compares: through
// and/or/unless and parentheses, and at each comparison with a scalar
// threshold the other side. Anything else is a signal as it stands.
func signals(e parser.Expr) []string {
	switch n := e.(type) {
	case *parser.ParenExpr:
		return signals(n.Expr)
	case *parser.BinaryExpr:
		switch {
		case n.Op == parser.LAND || n.Op == parser.LOR || n.Op == parser.LUNLESS:
			return append(signals(n.LHS), signals(n.RHS)...)
		case n.Op.IsComparisonOperator() && !n.ReturnBool && n.RHS.Type() == parser.ValueTypeScalar:
			return signals(n.LHS)
		case n.Op.IsComparisonOperator() && !n.ReturnBool && n.LHS.Type() == parser.ValueTypeScalar:
			return signals(n.RHS)
		}
	}
	return []string{e.String()}
}

// rulesPath is the rules file as committed.
var rulesPath = filepath.Join("..", "prometheus", "rules.yaml")

// promServer is a Prometheus scraping hopwatch every second and
// evaluating the rules every second.
type promServer struct {
	url  string
	proc *process
}

func startPrometheus(t *testing.T, bin, target string) *promServer {
	t.Helper()
	dir := t.TempDir()
	// The rules as committed, only evaluated every second instead of every
	// 30 s so that a short test sees them.
	rules, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	fast := strings.ReplaceAll(string(rules), "interval: 30s", "interval: 1s")
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte(fast), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [rules.yaml]
scrape_configs:
  - job_name: hopwatch
    static_configs:
      - targets: [%q]
`, target)
	confPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	p := &promServer{url: "http://" + addr}
	p.proc = startProcess(t, bin,
		"--config.file="+confPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--enable-feature=exemplar-storage",
		"--log.level=warn",
	)
	eventually(t, 60*time.Second, "prometheus ready", p.proc, func() error { return httpGet(p.url+"/-/ready", nil) })
	return p
}

// check runs c and wants at least one series back.
func (p *promServer) check(c *check) error {
	if c.labelValues != "" {
		var r promResponse[[]string]
		u := p.url + "/api/v1/label/" + c.labelValues + "/values?" + url.Values{"match[]": {c.match}}.Encode()
		if err := getJSON(u, &r); err != nil {
			return err
		}
		if len(r.Data) == 0 {
			return errors.New("no values")
		}
		return nil
	}
	var r promResponse[struct {
		ResultType string            `json:"resultType"`
		Result     []json.RawMessage `json:"result"`
	}]
	if err := getJSON(p.url+"/api/v1/query?"+url.Values{"query": {c.expr}}.Encode(), &r); err != nil {
		return err
	}
	if r.Status != "success" {
		return fmt.Errorf("status %q: %s", r.Status, r.Error)
	}
	if len(r.Warnings) > 0 {
		return fmt.Errorf("warnings: %v", r.Warnings)
	}
	if r.Data.ResultType == "vector" && len(r.Data.Result) == 0 {
		return errors.New("no series")
	}
	return nil
}

// rulesHealthy fails if Prometheus could not evaluate a rule.
func (p *promServer) rulesHealthy() error {
	var r promResponse[struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	}]
	if err := getJSON(p.url+"/api/v1/rules", &r); err != nil {
		return err
	}
	var bad []string
	n := 0
	for _, g := range r.Data.Groups {
		for _, rule := range g.Rules {
			n++
			if rule.Health == "err" {
				bad = append(bad, fmt.Sprintf("%s/%s: %s", g.Name, rule.Name, rule.LastError))
			}
		}
	}
	if n == 0 {
		return errors.New("prometheus loaded no rules")
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("rules Prometheus cannot evaluate:\n    %s", strings.Join(bad, "\n    "))
	}
	return nil
}

func (p *promServer) targetHealth() string {
	var r promResponse[struct {
		ActiveTargets []struct {
			Health    string `json:"health"`
			LastError string `json:"lastError"`
		} `json:"activeTargets"`
	}]
	if err := getJSON(p.url+"/api/v1/targets", &r); err != nil {
		return err.Error()
	}
	var s []string
	for _, a := range r.Data.ActiveTargets {
		s = append(s, fmt.Sprintf("%s %q", a.Health, a.LastError))
	}
	return strings.Join(s, "; ")
}

type promResponse[T any] struct {
	Status   string   `json:"status"`
	Error    string   `json:"error"`
	Warnings []string `json:"warnings"`
	Data     T        `json:"data"`
}

// startFlaky serves /flaky/ with 503 on two requests in five and 200
// otherwise: hopwatch retries the 503s (and counts errors when the retry
// fails too or the budget refuses it).
func startFlaky(t *testing.T) string {
	t.Helper()
	var n atomic.Int64
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			if n.Add(1)%5 < 2 {
				http.Error(w, "try again", http.StatusServiceUnavailable)
				return
			}
			w.Write([]byte("ok\n"))
		}),
	}
	addr := freeAddr(t)
	ln, err := listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return addr
}

// addFlakyRoute adds the flaky backend to the demo's configuration: an
// upstream and a route with retries on 503.
func addFlakyRoute(t *testing.T, cfg []byte, addr string) []byte {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(cfg, &doc); err != nil {
		t.Fatal(err)
	}
	root := doc.Content[0]
	add := func(key, item string) {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(item), &n); err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(root.Content); i += 2 {
			if root.Content[i].Value == key {
				seq := root.Content[i+1]
				// First in the list: the route must match before any other.
				seq.Content = append([]*yaml.Node{n.Content[0]}, seq.Content...)
				return
			}
		}
		t.Fatalf("configuration has no %s", key)
	}
	add("routes", `{name: flaky, listener: bot-http, match: {path_prefix: /flaky/}, upstream: flaky, timeout: 2s, retry: {attempts: 3, on: [503], budget: 0.5}}`)
	add("upstreams", fmt.Sprintf(`{name: flaky, protocol: http, endpoints: [%q]}`, addr))
	out, err := yaml.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// driveFlaky calls the flaky route every 20 ms until ctx ends.
func driveFlaky(ctx context.Context, u string) {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return
		}
		req.Header.Set(demo.HeaderCaller, "client")
		if res, err := c.Do(req); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}
}
