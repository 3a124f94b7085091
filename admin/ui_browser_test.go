package admin

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/telemetry"
)

// The dashboard in a real headless Chromium (Debian's chromium package),
// driven over the DevTools protocol by chromedp: the hop table lists the
// hops, clicking the slowest trace draws its waterfall, the page runs
// under its CSP without a violation or a script error, and a screenshot is
// kept as an artifact.

const chromiumPath = "/usr/bin/chromium"

// The bot stack of the fixture: the chat hop into the gateway, which calls
// NLU, the knowledge base and inference through the proxy.
var (
	uiChat  = telemetry.HopKey{Caller: "client", Route: "chat", Upstream: "gateway"}
	uiNLU   = telemetry.HopKey{Caller: "gateway", Route: "nlu", Upstream: "nlu"}
	uiKB    = telemetry.HopKey{Caller: "gateway", Route: "kb-search", Upstream: "kb"}
	uiInfer = telemetry.HopKey{Caller: "gateway", Route: "inference", Upstream: "inference"}
)

// turnRecorder records one trace's spans the way the proxy does: a server
// span per hop and a client span per attempt, into the store, and each
// hop's duration into the statistics.
type turnRecorder struct {
	store  *telemetry.Store
	stats  *telemetry.Stats
	trace  trace.TraceID
	nextID *uint64
}

func (r turnRecorder) id() trace.SpanID {
	*r.nextID++
	return sid(*r.nextID)
}

func (r turnRecorder) server(parent trace.SpanID, k telemetry.HopKey, method string, at time.Time, d time.Duration,
	code string, o telemetry.Outcome, events ...telemetry.SpanEvent) trace.SpanID {
	id := r.id()
	r.store.Add(telemetry.Span{
		TraceID: r.trace, SpanID: id, ParentID: parent, Kind: telemetry.KindServer, HopKey: k,
		Method: method, Start: at, Duration: d, Code: code, Outcome: o, Events: events,
	})
	r.stats.Observe(k, d, o, at.Add(d))
	return id
}

func (r turnRecorder) client(parent trace.SpanID, k telemetry.HopKey, method, endpoint string, attempt int,
	at time.Time, d time.Duration, code string, o telemetry.Outcome) trace.SpanID {
	id := r.id()
	r.store.Add(telemetry.Span{
		TraceID: r.trace, SpanID: id, ParentID: parent, Kind: telemetry.KindClient, HopKey: k,
		Method: method, Endpoint: endpoint, Attempt: attempt, Start: at, Duration: d, Code: code, Outcome: o,
	})
	return id
}

// hop records a hop with a single attempt and returns the end of the hop.
func (r turnRecorder) hop(parent trace.SpanID, k telemetry.HopKey, method, endpoint string, at time.Time, d time.Duration,
	code string, o telemetry.Outcome, events ...telemetry.SpanEvent) time.Time {
	srv := r.server(parent, k, method, at, d, code, o, events...)
	const edge = 200 * time.Microsecond // proxy overhead on each side
	r.client(srv, k, method, endpoint, 1, at.Add(edge), d-2*edge, code, o)
	return at.Add(d)
}

// uiFixture fills store and stats with a minute of bot turns, two a second,
// ending just before now. Every tenth turn's KB call is slow (1.2 to 2.3 s);
// turn 53's KB call timed out once and was retried, which makes it the
// slowest; turn 29's inference failed and turn 71's KB answer came from a
// fallback. In turn 53 the gateway runs its own tracing: its KB call's
// parent is its own client span, which the store stitches, and it sent
// one of its spans to the OTLP receiver. It returns the slowest trace.
func uiFixture(store *telemetry.Store, stats *telemetry.Stats, now time.Time) trace.TraceID {
	rng := rand.New(rand.NewPCG(7, 11))
	jitter := func(d time.Duration, frac float64) time.Duration {
		return d + time.Duration(float64(d)*frac*(2*rng.Float64()-1))
	}
	var nextID uint64
	const turns = 120
	for i := range turns {
		r := turnRecorder{store: store, stats: stats, trace: tid(5000 + uint64(i)), nextID: &nextID}
		start := now.Add(-61*time.Second + time.Duration(i)*500*time.Millisecond)

		// The chat hop's attempt into the gateway parents the gateway's
		// calls (the gateway propagates the proxy's trace context). Its
		// spans are recorded last, when it ends, as the proxy does.
		chatSrvID, chatCliID := r.id(), r.id()
		at := start.Add(jitter(4*time.Millisecond, 0.3))
		at = r.hop(chatCliID, uiNLU, "/bot.v1.NLU/Parse", "127.0.0.1:7101", at, jitter(15*time.Millisecond, 0.3), "OK", telemetry.OutcomeOK)
		at = at.Add(jitter(3*time.Millisecond, 0.3))

		switch {
		case i == 53: // a timed-out attempt, then a slow success
			kbSrv := r.id()
			first, second := 800*time.Millisecond, 2100*time.Millisecond
			d := first + second + time.Millisecond
			retryAt := at.Add(first)
			r.store.Add(telemetry.Span{
				TraceID: r.trace, SpanID: kbSrv, ParentID: sid(1 << 40), Kind: telemetry.KindServer, HopKey: uiKB, // the gateway's own span
				Method: "POST", Start: at, Duration: d, Code: "200", Outcome: telemetry.OutcomeOK,
				Events: []telemetry.SpanEvent{{Name: "retry", Time: retryAt, Attrs: map[string]string{"attempt": "2", "after": "timeout"}}},
			})
			r.stats.Observe(uiKB, d, telemetry.OutcomeOK, at.Add(d))
			r.client(kbSrv, uiKB, "POST", "10.0.0.7:443", 1, at, first, "504", telemetry.OutcomeTimeout)
			r.client(kbSrv, uiKB, "POST", "10.0.0.8:443", 2, retryAt.Add(time.Millisecond), second, "200", telemetry.OutcomeOK)
			at = at.Add(d)
		case i == 71: // late: answered from the cache after 300 ms
			d := 300 * time.Millisecond
			at = r.hop(chatCliID, uiKB, "POST", "10.0.0.7:443", at, d, "200", telemetry.OutcomeFallback,
				telemetry.SpanEvent{Name: "fallback", Time: at.Add(d), Attrs: map[string]string{"reason": "slow", "source": "cache"}})
		case i%10 == 3:
			at = r.hop(chatCliID, uiKB, "POST", "10.0.0.7:443", at, time.Duration(1200+100*(i/10))*time.Millisecond, "200", telemetry.OutcomeOK)
		default:
			at = r.hop(chatCliID, uiKB, "POST", "10.0.0.7:443", at, jitter(40*time.Millisecond, 0.3), "200", telemetry.OutcomeOK)
		}
		at = at.Add(jitter(3*time.Millisecond, 0.3))

		if i == 29 {
			at = r.hop(chatCliID, uiInfer, "/bot.v1.Inference/Generate", "127.0.0.1:7401", at, 20*time.Millisecond, "Unavailable", telemetry.OutcomeError)
		} else {
			at = r.hop(chatCliID, uiInfer, "/bot.v1.Inference/Generate", "127.0.0.1:7401", at, jitter(350*time.Millisecond, 0.2), "OK", telemetry.OutcomeOK)
		}
		end := at.Add(jitter(5*time.Millisecond, 0.3))

		d := end.Sub(start)
		r.store.Add(telemetry.Span{
			TraceID: r.trace, SpanID: chatCliID, ParentID: chatSrvID, Kind: telemetry.KindClient, HopKey: uiChat,
			Method: "POST", Endpoint: "127.0.0.1:7300", Attempt: 1,
			Start: start.Add(100 * time.Microsecond), Duration: d - 200*time.Microsecond, Code: "200", Outcome: telemetry.OutcomeOK,
		})
		r.store.Add(telemetry.Span{
			TraceID: r.trace, SpanID: chatSrvID, Kind: telemetry.KindServer, HopKey: uiChat,
			Method: "POST", Start: start, Duration: d, Code: "200", Outcome: telemetry.OutcomeOK,
		})
		r.stats.Observe(uiChat, d, telemetry.OutcomeOK, end)
		if i == 53 {
			r.store.AddService(telemetry.Span{
				TraceID: r.trace, SpanID: r.id(), ParentID: chatCliID, Service: "gateway", Name: "POST /v1/chat",
				Start: start.Add(time.Millisecond), Duration: d - 2*time.Millisecond, Outcome: telemetry.OutcomeOK,
			})
		}
	}

	list := store.Traces(telemetry.TraceQuery{Limit: 1000})
	slowest := slices.MaxFunc(list, func(a, b telemetry.TraceSummary) int { return cmp.Compare(a.Duration, b.Duration) })
	return slowest.TraceID
}

// syncBuffer collects the browser's output from its reader goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func artifactDir(t *testing.T) string {
	dir := os.Getenv("HOPWATCH_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("HOPWATCH_ARTIFACTS: %v", err)
	}
	return dir
}

// TestUIBrowser runs the dashboard twice: without a conversation section
// (the panel says how to turn it on) and with one (sessions appear, a
// click shows a session's turns, a click on a turn opens its waterfall).
func TestUIBrowser(t *testing.T) {
	t.Run("without conversations", func(t *testing.T) { testUIBrowser(t, false) })
	t.Run("with conversations", func(t *testing.T) { testUIBrowser(t, true) })
}

func testUIBrowser(t *testing.T, withConv bool) {
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("HOPWATCH_E2E") == "require" {
			t.Fatalf("HOPWATCH_E2E=require, but %s is missing (apt-get install -y chromium): %v", chromiumPath, err)
		}
		t.Skipf("skipping the dashboard browser test: %s not found (apt-get install -y chromium; HOPWATCH_E2E=require makes this a failure)", chromiumPath)
	}

	now := time.Now()
	store, stats := telemetry.NewStore(1000), telemetry.NewStats()
	slowest := uiFixture(store, stats, now)
	detail, ok := store.Trace(slowest)
	if !ok {
		t.Fatal("the slowest trace is not in the store")
	}
	wantSpans := len(detail.Spans)

	var conv *convFixture
	opts := Options{
		Logger: slog.New(slog.DiscardHandler),
		Traces: store, Hops: stats,
		// The clock stands still, so the fixture's minute stays in the
		// statistics windows however long the browser takes.
		Now: func() time.Time { return now },
	}
	if withConv {
		conv = newConvFixture(t, store, now, slowest)
		opts.Sessions = conv.tr
		// The variant with everything on has genai routes too.
		opts.GenAI = func() any {
			return map[string]any{"models": []telemetry.ModelUsage{
				{Route: "llm", Model: "faq-large", Requests: 40, InputTokens: 5200, OutputTokens: 16400, Truncated: 3, Cost: 0.0312, TTFT: 0.182},
				{Route: "llm", Model: "faq-small", Requests: 120, InputTokens: 15600, OutputTokens: 24000, Truncated: 9, Cost: 0.0045, TTFT: 0.041},
			}}
		}
	}
	srv := New(opts)
	if err := srv.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	base := "http://" + srv.Addr().String()
	artifacts := artifactDir(t)

	// Everything the browser does is bounded by this context; each step
	// below has a shorter one of its own.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var browserOut syncBuffer
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
		chromedp.CombinedOutput(&browserOut),
	)
	// cancelAlloc kills the browser if it is still running and waits for
	// it to exit, so its profile directory can be removed.
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()

	// Console starts the browser and subscribes to the page's console and
	// log before the page loads; the collector ends with bctx.
	messages := chromedp.Console(bctx)
	var (
		consoleMu sync.Mutex
		console   []chromedp.ConsoleMessage
	)
	consoleDone := make(chan struct{})
	go func() {
		defer close(consoleDone)
		for m, err := range messages {
			if err != nil {
				if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("console: %v", err)
				}
				return
			}
			consoleMu.Lock()
			console = append(console, m)
			consoleMu.Unlock()
		}
	}()
	defer func() {
		// Close the browser gracefully, then make sure the process and the
		// collector are gone before the test returns.
		cctx, ccancel := context.WithTimeout(bctx, 10*time.Second)
		defer ccancel()
		if err := chromedp.Cancel(cctx); err != nil && !errors.Is(err, context.Canceled) {
			t.Logf("closing the browser: %v", err)
		}
		cancelBrowser()
		cancelAlloc()
		<-consoleDone
	}()

	screenshot := func(name string, full bool) {
		sctx, scancel := context.WithTimeout(bctx, 15*time.Second)
		defer scancel()
		shot := chromedp.CaptureScreenshot()
		if full {
			shot = chromedp.FullScreenshot(100) // 100: PNG
		}
		png, err := chromedp.Run(sctx, shot)
		if err != nil {
			t.Errorf("screenshot %s: %v", name, err)
			return
		}
		path := filepath.Join(artifacts, name)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Errorf("screenshot: %v", err)
			return
		}
		t.Logf("screenshot: %s", path)
	}
	dumpConsole := func() {
		consoleMu.Lock()
		defer consoleMu.Unlock()
		for _, m := range console {
			t.Logf("browser console: %s (%s:%d)", m, m.URL, m.Line)
		}
	}
	// step runs one bounded part of the test; on failure it keeps a
	// screenshot of the page and the console for the record.
	step := func(name string, d time.Duration, f func(ctx context.Context) error) {
		t.Helper()
		sctx, scancel := context.WithTimeout(bctx, d)
		defer scancel()
		if err := f(sctx); err != nil {
			screenshot("dashboard-failure.png", true)
			dumpConsole()
			if out := browserOut.String(); out != "" {
				t.Logf("browser output:\n%s", out)
			}
			t.Fatalf("%s: %v", name, err)
		}
	}

	step("load /ui", 30*time.Second, func(ctx context.Context) error {
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
			return err
		}
		return chromedp.Do(ctx, chromedp.Navigate(base+"/ui"))
	})

	step("hop table lists the hops", 20*time.Second, func(ctx context.Context) error {
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelectorAll('#hops tbody tr').length >= 4`)); err != nil {
			return fmt.Errorf("waiting for hop rows: %w", err)
		}
		routes, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
			`[...document.querySelectorAll('#hops tbody tr .route')].map(e => e.textContent)`))
		if err != nil {
			return err
		}
		for _, want := range []string{uiChat.Route, uiNLU.Route, uiKB.Route, uiInfer.Route} {
			if !slices.Contains(routes, want) {
				return fmt.Errorf("hop table routes %q, want %q among them", routes, want)
			}
		}
		// The table names the KB as the bottleneck of the slow turns.
		bottleneck, err := chromedp.Run(ctx, chromedp.Evaluate[string](
			`(document.querySelector('#hops tbody tr .badge')?.closest('tr')?.querySelector('.route')?.textContent) || ''`))
		if err != nil {
			return err
		}
		if bottleneck != uiKB.Route {
			return fmt.Errorf("bottleneck badge on %q, want %q", bottleneck, uiKB.Route)
		}
		return nil
	})

	step("sparklines draw the p95 samples", 20*time.Second, func(ctx context.Context) error {
		// Two polls give each hop's ring two samples: a line.
		_, err := chromedp.Run(ctx, chromedp.Poll[bool](
			`[...document.querySelectorAll('#hops tbody tr')].every(r => r.querySelector('svg.spark polyline'))`))
		return err
	})

	step("slowest trace listed first", 20*time.Second, func(ctx context.Context) error {
		_, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(
			`document.querySelector('#traces tbody tr')?.dataset.trace === %q`, slowest.String())))
		return err
	})

	step("click it and see its waterfall", 20*time.Second, func(ctx context.Context) error {
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#traces tbody tr:first-child td.route a`))); err != nil {
			return fmt.Errorf("click: %w", err)
		}
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(
			`!document.querySelector('#waterfall').hidden && document.querySelectorAll('#waterfall tbody tr').length === %d`, wantSpans))); err != nil {
			return fmt.Errorf("waiting for %d waterfall rows: %w", wantSpans, err)
		}
		got, err := chromedp.Run(ctx, chromedp.Evaluate[struct {
			Hash   string   `json:"hash"`
			Rows   int      `json:"rows"`
			Routes []string `json:"routes"`
			Bars   int      `json:"bars"`
			Title  string   `json:"title"`
			// Stitched hops and service spans, as drawn.
			Stitched []string `json:"stitched"`
			Services []string `json:"services"`
		}](`({
			stitched: [...document.querySelectorAll('#waterfall tbody tr')].filter(r => r.querySelector('.stitched')).map(r => r.dataset.route),
			services: [...document.querySelectorAll('#waterfall tbody tr.kind-service td.label')].map(td => td.textContent),
			hash: location.hash,
			rows: document.querySelectorAll('#waterfall tbody tr').length,
			routes: [...document.querySelectorAll('#waterfall tbody tr')].map(r => r.dataset.route),
			bars: document.querySelectorAll('#waterfall tbody .bar').length,
			title: document.querySelector('#wf-summary').textContent,
		})`))
		if err != nil {
			return err
		}
		if got.Hash != "#trace="+slowest.String() {
			return fmt.Errorf("location.hash %q, want the slowest trace %s", got.Hash, slowest)
		}
		if got.Rows != wantSpans || got.Bars != wantSpans {
			return fmt.Errorf("waterfall has %d rows and %d bars, want one per span: %d", got.Rows, got.Bars, wantSpans)
		}
		if !slices.Contains(got.Routes, uiKB.Route) {
			return fmt.Errorf("waterfall rows are for routes %q, want the kb hop %q among them", got.Routes, uiKB.Route)
		}
		if !strings.Contains(got.Title, slowest.String()) {
			return fmt.Errorf("waterfall summary %q does not name trace %s", got.Title, slowest)
		}
		if !slices.Equal(got.Stitched, []string{uiKB.Route}) {
			return fmt.Errorf("rows marked stitched: %q, want the kb hop alone", got.Stitched)
		}
		if len(got.Services) != 1 || !strings.Contains(got.Services[0], "POST /v1/chat") || !strings.Contains(got.Services[0], "in gateway") {
			return fmt.Errorf("service span rows %q, want the gateway's POST /v1/chat", got.Services)
		}
		return nil
	})

	if withConv {
		step("model usage lists each route's models", 20*time.Second, func(ctx context.Context) error {
			if _, err := chromedp.Run(ctx, chromedp.Poll[bool](
				`document.querySelectorAll('#genai-table tbody tr').length === 2`)); err != nil {
				return fmt.Errorf("the model usage table never showed 2 models: %w", err)
			}
			got, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
				`[...document.querySelectorAll('#genai-table tbody tr[data-model="faq-small"] td')].map(td => td.textContent)`))
			if err != nil {
				return err
			}
			want := []string{"faq-small", "120", "15.6 k / 24.0 k", "9", "0.0045", "41.0 ms"}
			if !slices.Equal(got, want) {
				return fmt.Errorf("faq-small row %q, want %q", got, want)
			}
			return nil
		})
	}

	step("panels of what is not configured", 10*time.Second, func(ctx context.Context) error {
		want := map[string]string{"#br-msg": "circuit breakers: not configured"}
		if !withConv {
			want["#cv-msg"] = "Conversation signals are off. Add a conversation section"
			want["#ga-msg"] = "model usage: not available"
		}
		for sel, prefix := range want {
			if _, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(
				`document.querySelector(%q).textContent.startsWith(%q)`, sel, prefix))); err != nil {
				return fmt.Errorf("%s never said %q: %w", sel, prefix, err)
			}
		}
		return nil
	})

	if withConv {
		conversationSteps(t, step, conv, slowest, wantSpans)
	}

	step("no placeholder text leaks into the page", 5*time.Second, func(ctx context.Context) error {
		text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
		if err != nil {
			return err
		}
		for _, bad := range []string{"undefined", "null", "NaN", "[object"} {
			if strings.Contains(text, bad) {
				return fmt.Errorf("page text contains %q:\n%s", bad, text)
			}
		}
		return nil
	})

	if withConv {
		screenshot("dashboard.png", false)
		screenshot("dashboard-full.png", true)
	} else {
		screenshot("dashboard-no-conversations.png", false)
	}

	// No script error, and nothing refused by the policy. The 404s of
	// /api/breakers, /api/sli and /api/sessions are expected when the
	// server has no breakers or no conversation section.
	consoleMu.Lock()
	defer consoleMu.Unlock()
	for _, m := range console {
		expected404 := strings.Contains(m.Text, "404") &&
			(strings.HasSuffix(m.URL, "/api/breakers") || !withConv && (strings.Contains(m.URL, "/api/sessions") ||
				strings.Contains(m.URL, "/api/sli") || strings.HasSuffix(m.URL, "/api/genai")))
		switch {
		case m.IsException():
			t.Errorf("script error: %s", m.Text)
		case strings.Contains(m.Text, "Content Security Policy") || m.Source == "security":
			t.Errorf("CSP violation: %s", m.Text)
		case m.Type == chromedp.ConsoleError && !expected404:
			t.Errorf("console error: %s (%s)", m.Text, m.URL)
		}
	}
}

// conversationSteps: the conversation panel draws the SLI chart, lists
// the worst sessions green ones first, shows a session's turns on a click,
// and opens the waterfall of a turn on a click on it.
func conversationSteps(t *testing.T, step func(string, time.Duration, func(context.Context) error), conv *convFixture,
	slowest trace.TraceID, wantSpans int) {
	t.Helper()
	step("SLI chart draws three lines on one time axis", 20*time.Second, func(ctx context.Context) error {
		_, err := chromedp.Run(ctx, chromedp.Poll[bool](
			`['sli', 'p95', 'err'].every(k => document.querySelector('#cv-chart svg polyline.cv-' + k))`))
		if err != nil {
			return fmt.Errorf("waiting for the SLI, p95 and error lines: %w", err)
		}
		label, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('#cv-chart svg').getAttribute('aria-label')`))
		if err != nil {
			return err
		}
		for _, want := range []string{"good sessions", "turn p95", "turn errors"} {
			if !strings.Contains(label, want) {
				return fmt.Errorf("chart label %q lacks %q", label, want)
			}
		}
		return nil
	})

	step("worst sessions listed, green ones first", 20*time.Second, func(ctx context.Context) error {
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelectorAll('#cv-sessions tbody tr').length >= 5`)); err != nil {
			return fmt.Errorf("waiting for session rows: %w", err)
		}
		rows, err := chromedp.Run(ctx, chromedp.Evaluate[[]struct {
			ID      string `json:"id"`
			Outcome string `json:"outcome"`
			Green   bool   `json:"green"`
		}](`[...document.querySelectorAll('#cv-sessions tbody tr')].map(r => ({
			id: r.dataset.session, outcome: r.querySelector('.so').textContent, green: !!r.querySelector('.tag-green')}))`))
		if err != nil {
			return err
		}
		seenPlain, found := false, false
		for _, r := range rows {
			if r.Outcome != "abandoned" && r.Outcome != "frustrated" {
				return fmt.Errorf("session %s (%s) listed among the worst", r.ID, r.Outcome)
			}
			if r.Green && seenPlain {
				return fmt.Errorf("green session %s listed after a session that was not green: %+v", r.ID, rows)
			}
			seenPlain = seenPlain || !r.Green
			found = found || r.ID == conv.slowSession
		}
		if !rows[0].Green {
			return fmt.Errorf("the first session is not green: %+v", rows[0])
		}
		if !found {
			return fmt.Errorf("session %s, abandoned after the slowest turn, is not listed: %+v", conv.slowSession, rows)
		}
		// The list says what the session ended after: the slow KB call.
		after, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(
			`document.querySelector('#cv-sessions tbody tr[data-session=%q] td.after').textContent`, conv.slowSession)))
		if err != nil {
			return err
		}
		if want := "slow · " + uiKB.Route; after != want {
			return fmt.Errorf("session %s ended after %q, want %q", conv.slowSession, after, want)
		}
		return nil
	})

	step("click a session and see its turns", 20*time.Second, func(ctx context.Context) error {
		sel := fmt.Sprintf(`#cv-sessions tbody tr[data-session=%q] td.sid`, conv.slowSession)
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel))); err != nil {
			return fmt.Errorf("click: %w", err)
		}
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(
			`!document.querySelector('#cv-turns').hidden && document.querySelectorAll('#cv-turns tbody tr').length === %d`, conv.slowTurns))); err != nil {
			return fmt.Errorf("waiting for %d turn rows: %w", conv.slowTurns, err)
		}
		last, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#cv-turns tbody tr:last-child td')].map(td => td.textContent)`))
		if err != nil {
			return err
		}
		// #, time, latency, outcome, signals · verdict, blamed hop, trace
		if len(last) != 7 || last[0] != "6" || last[3] != "slow" || last[5] != uiKB.Route || !strings.HasPrefix(slowest.String(), strings.TrimSuffix(last[6], "…")) {
			return fmt.Errorf("last turn row %q, want turn 6, slow, blamed on %s, trace %s", last, uiKB.Route, slowest)
		}
		return nil
	})

	step("click its last turn and see the waterfall", 20*time.Second, func(ctx context.Context) error {
		// Away from the waterfall first, so the click is what opens it.
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(location.hash = '', true)`)); err != nil {
			return err
		}
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#cv-turns tbody tr:last-child td.blame`))); err != nil {
			return fmt.Errorf("click: %w", err)
		}
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(
			`location.hash === '#trace=%s' && !document.querySelector('#waterfall').hidden && document.querySelectorAll('#waterfall tbody tr').length === %d && document.querySelector('#wf-summary').textContent.includes(%q)`,
			slowest, wantSpans, slowest.String()))); err != nil {
			return fmt.Errorf("waiting for the waterfall of %s: %w", slowest, err)
		}
		return nil
	})
	// Back to the top for the screenshot: hops and conversations.
	step("scroll to the top", 5*time.Second, func(ctx context.Context) error {
		_, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(window.scrollTo(0, 0), true)`))
		return err
	})
}
