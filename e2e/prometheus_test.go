package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/telemetry"
)

const installPrometheus = "apt-get install -y prometheus (Debian; provides prometheus and promtool)"

// TestPrometheusScrape has a real Prometheus scrape hopwatch's admin
// /metrics while turns go through the chain, and asks it, in PromQL, for
// the p95 latency of every hop: once from the classic buckets (text /
// OpenMetrics scrape, exemplars on) and once from native histograms
// (protobuf scrape), each by its own Prometheus. It also lints the
// exposition with promtool.
func TestPrometheusScrape(t *testing.T) {
	promBin := needProgram(t, installPrometheus, "prometheus")
	promtool := needProgram(t, installPrometheus, "promtool")
	version := programVersion(t, promBin)
	t.Logf("using %s", version)

	c := startChain(t, telemetry.Config{})
	// A turn every 20 ms: a few hundred per minute, so every bucket rate
	// in the query window is non-zero for all three hops.
	c.drive(t, 20*time.Millisecond)
	ctx := context.Background()
	if err := c.turn(ctx, ""); err != nil {
		t.Fatal(err)
	}

	t.Run("promtool check metrics", func(t *testing.T) {
		// No Accept header: the classic text format, the one promtool reads.
		res, err := apiClient.Get(c.adminURL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("GET /metrics: %s %v", res.Status, err)
		}
		for _, name := range []string{"hopwatch_hop_requests_total", "hopwatch_hop_duration_seconds_bucket", "hopwatch_hop_first_byte_seconds_bucket", "hopwatch_hop_inflight"} {
			if !bytes.Contains(body, []byte("\n"+name+"{")) {
				t.Errorf("/metrics has no %s series", name)
			}
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})

	t.Run("classic histograms", func(t *testing.T) {
		t.Parallel()
		prom := startPrometheus(t, promBin, c.adminURL, "exemplar-storage")
		q := `histogram_quantile(0.95, sum by (le, route) (rate(hopwatch_hop_duration_seconds_bucket[1m])))`
		prom.waitQuantiles(t, q)

		prom.checkExemplars(t, c, "hopwatch_hop_duration_seconds_bucket")
	})

	t.Run("native histograms", func(t *testing.T) {
		t.Parallel()
		if !atLeast(version, 2, 40) {
			t.Skipf("%s has no native histograms (feature flag since 2.40)", version)
		}
		// With the feature on, Prometheus asks for the protobuf format and
		// (before 2.45's scrape_classic_histograms) ingests only the native
		// form of a histogram that has one: the query has no _bucket.
		prom := startPrometheus(t, promBin, c.adminURL, "native-histograms", "exemplar-storage")
		prom.waitQuantiles(t, `histogram_quantile(0.95, sum by (route) (rate(hopwatch_hop_duration_seconds[1m])))`)
		// The exemplars come with the native series (its classic buckets
		// are not stored).
		prom.checkExemplars(t, c, "hopwatch_hop_duration_seconds")
	})
}

// promServer is a Prometheus server scraping one target every second.
type promServer struct {
	url  string
	proc *process
}

func startPrometheus(t *testing.T, bin, adminURL string, features ...string) *promServer {
	t.Helper()
	dir := t.TempDir()
	target := strings.TrimPrefix(adminURL, "http://")
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: hopwatch
    static_configs:
      - targets: [%q]
`, target)
	confPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := loopback(testkit.FreePort(t))
	args := []string{
		"--config.file=" + confPath,
		"--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + addr,
		"--log.level=warn",
	}
	if len(features) > 0 {
		args = append(args, "--enable-feature="+strings.Join(features, ","))
	}
	p := &promServer{url: "http://" + addr, proc: startProcess(t, bin, args...)}
	eventually(t, 60*time.Second, "prometheus ready", p.proc, func() error {
		res, err := apiClient.Get(p.url + "/-/ready")
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return errors.New(res.Status)
		}
		return nil
	})
	return p
}

// promResponse is the envelope of Prometheus's HTTP API.
type promResponse[T any] struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Data   T      `json:"data"`
}

type vectorData struct {
	ResultType string `json:"resultType"`
	Result     []struct {
		Metric map[string]string `json:"metric"`
		Value  [2]any            `json:"value"` // [unix seconds, "value"]
	} `json:"result"`
}

// quantiles runs an instant query and returns its value per route.
func (p *promServer) quantiles(ctx context.Context, query string) (map[string]float64, error) {
	var r promResponse[vectorData]
	if err := getJSON(ctx, p.url+"/api/v1/query?"+url.Values{"query": {query}}.Encode(), &r); err != nil {
		return nil, err
	}
	if r.Status != "success" || r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query: status %q, type %q, error %q", r.Status, r.Data.ResultType, r.Error)
	}
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("value %v of %v: %w", s.Value[1], s.Metric, err)
		}
		out[s.Metric["route"]] = v
	}
	return out, nil
}

// waitQuantiles waits until query gives every hop's route a latency: a
// finite, positive number (NaN means no requests in the window).
func (p *promServer) waitQuantiles(t *testing.T, query string) {
	t.Helper()
	ctx := context.Background()
	var got map[string]float64
	eventually(t, 60*time.Second, "a p95 per hop from "+query, p.proc, func() error {
		var err error
		if got, err = p.quantiles(ctx, query); err != nil {
			return err
		}
		var missing []string
		for _, h := range chainHops {
			if v, ok := got[h.route]; !ok || math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
				missing = append(missing, h.route)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("no value yet for %v (got %v; target: %s)", missing, got, p.targetHealth(ctx))
		}
		return nil
	})
	routes := make([]string, 0, len(got))
	for r := range got {
		routes = append(routes, r)
	}
	sort.Strings(routes)
	for _, r := range routes {
		t.Logf("p95 %-5s %.6fs", r, got[r])
	}
}

// targetHealth describes the scrape target's state, for failure messages.
func (p *promServer) targetHealth(ctx context.Context) string {
	var r promResponse[struct {
		ActiveTargets []struct {
			Health    string `json:"health"`
			LastError string `json:"lastError"`
		} `json:"activeTargets"`
	}]
	if err := getJSON(ctx, p.url+"/api/v1/targets", &r); err != nil {
		return err.Error()
	}
	var s []string
	for _, a := range r.Data.ActiveTargets {
		s = append(s, fmt.Sprintf("%s %q", a.Health, a.LastError))
	}
	return strings.Join(s, "; ")
}

type exemplarSet struct {
	SeriesLabels map[string]string `json:"seriesLabels"`
	Exemplars    []struct {
		Labels map[string]string `json:"labels"`
		Value  string            `json:"value"`
	} `json:"exemplars"`
}

func (p *promServer) exemplars(ctx context.Context, query string) ([]exemplarSet, error) {
	now := time.Now()
	v := url.Values{
		"query": {query},
		"start": {strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10)},
		"end":   {strconv.FormatInt(now.Add(time.Minute).Unix(), 10)},
	}
	var r promResponse[[]exemplarSet]
	if err := getJSON(ctx, p.url+"/api/v1/query_exemplars?"+v.Encode(), &r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query_exemplars: %q %q", r.Status, r.Error)
	}
	return r.Data, nil
}

// checkExemplars waits for exemplars on series and checks that the
// trace_id of each (up to five) names a trace in hopwatch's own store that
// has a server span of the series' route: the jump from a latency spike to
// its trace works.
func (p *promServer) checkExemplars(t *testing.T, c *chain, series string) {
	t.Helper()
	ctx := context.Background()
	var sets []exemplarSet
	eventually(t, 30*time.Second, "an exemplar with a trace_id on "+series, p.proc, func() error {
		var err error
		if sets, err = p.exemplars(ctx, series); err != nil {
			return err
		}
		for _, s := range sets {
			for _, e := range s.Exemplars {
				if e.Labels["trace_id"] != "" {
					return nil
				}
			}
		}
		return fmt.Errorf("none yet (%d series with exemplars)", len(sets))
	})
	checked := 0
	for _, s := range sets {
		for _, e := range s.Exemplars {
			id := e.Labels["trace_id"]
			if id == "" || checked == 5 {
				continue
			}
			checked++
			var tr storedTrace
			if err := getJSON(ctx, c.adminURL+"/api/traces/"+id, &tr); err != nil {
				t.Errorf("exemplar of %v: trace not in hopwatch: %v", s.SeriesLabels, err)
				continue
			}
			if !tr.hasServerSpan(s.SeriesLabels["route"]) {
				t.Errorf("exemplar trace %s has no server span of route %q: %+v", id, s.SeriesLabels["route"], tr.Spans)
			}
		}
	}
	t.Logf("%d exemplar trace IDs on %s checked against hopwatch's trace store", checked, series)
}

// storedTrace is hopwatch's /api/traces/{id} answer, as far as read here.
type storedTrace struct {
	Summary struct {
		TraceID string `json:"trace_id"`
		Spans   int    `json:"spans"`
	} `json:"summary"`
	Spans []struct {
		SpanID string `json:"span_id"`
		Kind   string `json:"kind"`
		Route  string `json:"route"`
		Caller string `json:"caller"`
	} `json:"spans"`
}

func (tr *storedTrace) hasServerSpan(route string) bool {
	for _, s := range tr.Spans {
		if s.Kind == "server" && s.Route == route {
			return true
		}
	}
	return false
}

// programVersion is the first line of "bin --version".
func programVersion(t testing.TB, bin string) string {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", bin, err, out)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

var versionRE = regexp.MustCompile(`version (\d+)\.(\d+)`)

// atLeast reports whether a "..., version X.Y.Z..." line is X.Y or later.
func atLeast(versionLine string, major, minor int) bool {
	m := versionRE.FindStringSubmatch(versionLine)
	if m == nil {
		return false
	}
	x, _ := strconv.Atoi(m[1])
	y, _ := strconv.Atoi(m[2])
	return x > major || x == major && y >= minor
}
