package e2e

import (
	"bufio"
	"context"
	"fmt"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/demo"
)

const installClickHouse = "apt-get install -y clickhouse-server (Debian ships 18.16; any newer release works too)"

// TestClickHouseRebuildsSessions proves the README's events query on a
// real ClickHouse: the demo bot runs behind the real hopwatch binary
// (cmd/proxy, built by the test) with conversation events written to a
// file; simulated users have one short conversation each (slow KB calls,
// no_match answers, repeats, goodbyes, quitters). Once hopwatch has ended
// every session, the events are loaded into a clickhouse-server on
// loopback with INSERT ... FORMAT JSONEachRow over its HTTP interface, the
// README's schema and query run as written (only the idle timeout is
// set), and the session outcomes the query rebuilds from the turn lines
// must equal hopwatch's own hopwatch_conversation_sessions_total.
func TestClickHouseRebuildsSessions(t *testing.T) {
	chBin := needProgram(t, installClickHouse, "clickhouse-server")
	schema, query := readmeEventsSQL(t)
	began := time.Now()
	proxyBin := buildProxy(t)
	t.Logf("go build ./cmd/proxy: %v", time.Since(began).Round(time.Millisecond))

	// The bot stack: a third of KB calls are slow (1.1-1.3 s, over the
	// 1 s turn SLO), the NLU misses 15% of questions.
	// Well above the longest turn (about 1.7 s), even on a loaded machine:
	// a session must not end while its next turn is being answered.
	const idle = 5 * time.Second
	stack, err := demo.Start(demo.Config{
		NLU:          demo.Latency{Base: 2 * time.Millisecond},
		FirstToken:   demo.Latency{Base: 20 * time.Millisecond, Jitter: 20 * time.Millisecond},
		TokenGap:     demo.Latency{Base: 2 * time.Millisecond},
		KB:           demo.Latency{Base: 10 * time.Millisecond, Jitter: 10 * time.Millisecond},
		KBSlow:       demo.Latency{Base: 1100 * time.Millisecond, Jitter: 200 * time.Millisecond},
		KBSlowShare:  0.33,
		NoMatchShare: 0.15,
		Seed:         42,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stack.Close(ctx)
	})
	dir := t.TempDir()
	events := filepath.Join(dir, "events.jsonl")
	admin, grpcAddr, httpAddr := loopback(testkit.FreePort(t)), loopback(testkit.FreePort(t)), loopback(testkit.FreePort(t))
	cfg, err := demo.RenderHopwatchConfig(stack.Endpoints(), demo.Placement{
		GRPC: grpcAddr, HTTP: httpAddr, Admin: admin,
		TurnSLO: time.Second, IdleTimeout: idle, EventsFile: events,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "hopwatch.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	hw := startProcess(t, proxyBin, "-config", cfgPath, "-log-level", "warn")
	eventually(t, 15*time.Second, "hopwatch ready", hw, func() error { return httpOK("http://" + admin + "/readyz") })
	if err := stack.ServeGateway(demo.Listeners{GRPC: grpcAddr, HTTP: httpAddr}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rec := demo.NewRecorder(nil)
	if err := demo.RunUsers(ctx, demo.UsersConfig{
		URL: "http://" + httpAddr, Users: 24, Conversations: 1, MinTurns: 2, MaxTurns: 3,
		SlowAfter: time.Second, StreamShare: 0.5, CloseShare: 0.6,
		Rand: rand.New(rand.NewPCG(7, 8)),
	}, rec); err != nil {
		t.Fatal(err)
	}
	// Every session ends idle_timeout after its last turn (a goodbye ends
	// it at once); then hopwatch's counts are final.
	var want map[string]int
	eventually(t, idle+10*time.Second, "hopwatch ended every session", hw, func() error {
		m, active, err := sessionMetrics("http://" + admin + "/metrics")
		if err != nil {
			return err
		}
		if active != 0 {
			return fmt.Errorf("%d sessions active", active)
		}
		want = m
		return nil
	})
	hw.stop(t) // SIGTERM: the events still queued are written, the file closed
	t.Logf("demo run through hopwatch done after %v", time.Since(began).Round(time.Millisecond))

	total := 0
	for _, n := range want {
		total += n
	}
	if total != 24 || len(want) < 2 {
		t.Fatalf("hopwatch ended %v sessions; want 24 of at least two outcomes", want)
	}
	t.Logf("hopwatch's session outcomes: %v; the simulation's: %+v", want, rec.Total().Sessions)

	ch := startClickHouse(t, chBin)
	t.Logf("clickhouse-server answering after %v", time.Since(began).Round(time.Millisecond))
	ch.exec(t, schema, nil)
	f, err := os.Open(events)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ch.exec(t, "INSERT INTO events FORMAT JSONEachRow", f)
	// The README query counts sessions idle for idle_timeout, written for
	// the default 15m. Every session here has ended, its last turn at
	// least idle (5 s) ago; now() has whole seconds, so ask for 1 s.
	q := strings.Replace(query, "15 * 60", "1", 1)
	if q == query {
		t.Fatal("the README query has no `15 * 60` idle timeout to set")
	}
	got := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(ch.exec(t, q, nil)))
	for sc.Scan() {
		outcome, n, ok := strings.Cut(sc.Text(), "\t")
		count, err := strconv.Atoi(n)
		if !ok || err != nil {
			t.Fatalf("query answer line %q: want outcome<TAB>count", sc.Text())
		}
		got[outcome] = count
	}
	t.Logf("ClickHouse %s rebuilt from the events: %v", ch.version, got)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("the README query rebuilt %v, hopwatch counted %v", got, want)
	}
}

// readmeEventsSQL returns the README's two SQL blocks of "Events for
// fleets": the events table and the query that rebuilds session outcomes.
func readmeEventsSQL(t *testing.T) (schema, query string) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "**Events for fleets.**")
	if !ok {
		t.Fatal("README.md has no **Events for fleets.** paragraph")
	}
	var blocks []string
	for len(blocks) < 2 {
		var block string
		if _, rest, ok = strings.Cut(rest, "```sql\n"); ok {
			block, rest, ok = strings.Cut(rest, "```")
		}
		if !ok {
			t.Fatalf("README.md: want two sql blocks after **Events for fleets.**, found %d", len(blocks))
		}
		blocks = append(blocks, strings.TrimSpace(block))
	}
	return blocks[0], blocks[1]
}

// buildProxy builds cmd/proxy into the test's temporary directory.
func buildProxy(t *testing.T) string {
	t.Helper()
	// go test puts its own GOROOT/bin first on the test's PATH.
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building cmd/proxy: %v", err)
	}
	out := filepath.Join(t.TempDir(), "hopwatch")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, "github.com/hopwatch/hopwatch/cmd/proxy")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/proxy: %v\n%s", err, b)
	}
	return out
}

// sessionMetrics reads hopwatch_conversation_sessions_total by outcome
// and the active sessions from an admin /metrics.
func sessionMetrics(metricsURL string) (map[string]int, int, error) {
	res, err := apiClient.Get(metricsURL)
	if err != nil {
		return nil, 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("GET %s: %s", metricsURL, res.Status)
	}
	byOutcome, active, seen := map[string]int{}, -1, false
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "hopwatch_conversation_sessions_total{"):
			seen = true
			labels, v, _ := strings.Cut(strings.TrimPrefix(line, "hopwatch_conversation_sessions_total{"), "} ")
			n, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
			if err != nil {
				return nil, 0, fmt.Errorf("%q: %w", line, err)
			}
			for _, kv := range strings.Split(labels, ",") {
				if k, v, _ := strings.Cut(kv, "="); k == "outcome" && n > 0 {
					byOutcome[strings.Trim(v, `"`)] += int(n)
				}
			}
		case strings.HasPrefix(line, "hopwatch_conversation_active_sessions "):
			n, err := strconv.ParseFloat(strings.TrimPrefix(line, "hopwatch_conversation_active_sessions "), 64)
			if err != nil {
				return nil, 0, fmt.Errorf("%q: %w", line, err)
			}
			active = int(n)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, 0, err
	}
	if !seen || active < 0 {
		return nil, 0, fmt.Errorf("%s has no conversation metrics yet", metricsURL)
	}
	return byOutcome, active, nil
}

func httpOK(u string) error {
	res, err := apiClient.Get(u)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, res.Status)
	}
	return nil
}

// clickHouse is a clickhouse-server of the test's own: loopback only, its
// data and configuration in a temporary directory, no system service.
type clickHouse struct {
	url     string
	version string
}

// startClickHouse starts chBin on free loopback ports and waits (bounded)
// until it answers queries.
func startClickHouse(t *testing.T, chBin string) *clickHouse {
	t.Helper()
	dir := t.TempDir()
	httpPort, tcpPort := testkit.FreePort(t), testkit.FreePort(t)
	config := fmt.Sprintf(`<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>%d</http_port>
  <tcp_port>%d</tcp_port>
  <path>%s/data/</path>
  <tmp_path>%s/tmp/</tmp_path>
  <format_schema_path>%s/schema/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
`, httpPort, tcpPort, dir, dir, dir)
	// One user, loopback only, no password: the server is the test's.
	users := `<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
`
	if err := os.WriteFile(filepath.Join(dir, "config.xml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "users.xml"), []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, chBin, "--config-file="+filepath.Join(dir, "config.xml"))
	ch := &clickHouse{url: fmt.Sprintf("http://127.0.0.1:%d/", httpPort)}
	eventually(t, 30*time.Second, "clickhouse-server answers", p, func() error {
		v, err := ch.query("SELECT version()", nil)
		ch.version = strings.TrimSpace(v)
		return err
	})
	return ch
}

// query runs one statement over the HTTP interface, with body (may be
// nil) as its data, and returns the answer (TabSeparated).
func (c *clickHouse) query(q string, body io.Reader) (string, error) {
	u := c.url
	if body == nil {
		body = strings.NewReader(q)
	} else {
		u += "?query=" + url.QueryEscape(q)
	}
	res, err := apiClient.Post(u, "text/plain", body)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if err != nil {
		return "", err
	}
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("clickhouse: %s: %s", res.Status, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

func (c *clickHouse) exec(t *testing.T, q string, body io.Reader) string {
	t.Helper()
	out, err := c.query(q, body)
	if err != nil {
		t.Fatalf("%v\nstatement:\n%s", err, q)
	}
	return out
}
