package telemetry

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/propagation"
)

// lockedBuffer is an io.Writer for the writer goroutine and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func openTestLog(t *testing.T, tel *Telemetry, cfg AccessLogConfig, w io.Writer) *AccessLog {
	t.Helper()
	a, err := tel.OpenAccessLog(cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	tel.SetAccessLog(a)
	t.Cleanup(func() { tel.SetAccessLog(nil).Close() })
	return a
}

// hopThrough runs one HTTP hop: request r, response status and body.
func hopThrough(tel *Telemetry, rt *Route, r *http.Request, status int, body string, outcome Outcome) *Hop {
	_, h := rt.Start(context.Background(), propagation.HeaderCarrier(r.Header), "gateway", r.Method)
	b, x := h.ObserveHTTP(r)
	if b != nil {
		io.Copy(io.Discard, b)
	}
	ctx, att := h.Attempt(context.Background(), "10.0.0.7:8000")
	_ = ctx
	h.FirstByte()
	x.WriteHeader(status, http.Header{"Content-Type": {"application/json"}})
	x.Write([]byte(body))
	att.End(HTTPCode(status), outcome)
	h.End(HTTPCode(status), outcome)
	return h
}

func readLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) > MaxAccessLogLine {
			t.Errorf("line of %d bytes, bound is %d", len(sc.Bytes()), MaxAccessLogLine)
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line is not JSON: %v\n%s", err, sc.Bytes())
		}
		out = append(out, m)
	}
	return out
}

func TestAccessLogLine(t *testing.T) {
	tel := newTestTelemetry(t, Config{})
	tel.SetGenAI(GenAIConfig{Models: []string{"gpt-4o-mini"}})
	var buf lockedBuffer
	a := openTestLog(t, tel, AccessLogConfig{Output: AccessLogStdout}, &buf)
	rt := tel.Route(RouteInfo{Name: "llm", Upstream: "openai", GenAI: GenAIAPIOpenAI}, []string{"gateway"})

	r := httptest.NewRequest("POST", "/v1/chat/completions?api_key=secret", strings.NewReader(chatReq))
	r.Header.Set("Authorization", "Bearer sk-secret")
	r.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	h := hopThrough(tel, rt, r, 200, chatResp, OutcomeOK)
	h.LogSession("s-1")
	a.Close()

	if strings.Contains(buf.String(), "secret") {
		t.Fatalf("the line carries a credential: %s", buf.String())
	}
	lines := readLines(t, buf.String())
	if len(lines) != 1 {
		t.Fatalf("%d lines, want 1:\n%s", len(lines), buf.String())
	}
	l := lines[0]
	want := map[string]any{
		"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "caller": "gateway", "route": "llm", "upstream": "openai",
		"endpoint": "10.0.0.7:8000", "method": "POST", "path": "/v1/chat/completions", "code": "200", "outcome": "ok",
		"bytes_in": float64(len(chatReq)), "bytes_out": float64(len(chatResp)), "attempts": float64(1),
	}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("%s = %v, want %v", k, l[k], v)
		}
	}
	for _, k := range []string{"time", "span_id", "duration_ms", "ttfb_ms"} {
		if _, ok := l[k]; !ok {
			t.Errorf("no %s in %v", k, l)
		}
	}
	g, _ := l["genai"].(map[string]any)
	if g["model"] != "gpt-4o-mini" || g["input_tokens"] != float64(19) || g["output_tokens"] != float64(7) || g["finish_reason"] != "stop" || g["operation"] != "chat" {
		t.Errorf("genai = %v", g)
	}
}

// TestAccessLogBounded: whatever a client sends, a line is valid JSON of
// at most MaxAccessLogLine bytes.
func TestAccessLogBounded(t *testing.T) {
	tel := newTestTelemetry(t, Config{})
	var buf lockedBuffer
	a := openTestLog(t, tel, AccessLogConfig{Output: AccessLogStdout, IncludeQuery: true}, &buf)
	rt := tel.Route(RouteInfo{Name: "llm", Upstream: "u", GenAI: GenAIAPIOpenAI}, nil)
	nasty := strings.Repeat("\"\\\x01\xff€", 5000)
	r := httptest.NewRequest("POST", "/x", strings.NewReader(`{"model":"`+strings.Repeat("m\\u0000", 100)+`"}`))
	r.URL.Path = "/" + nasty
	r.URL.RawQuery = nasty
	hopThrough(tel, rt, r, 200, `{"model":"`+strings.Repeat("\\\"", 200)+`"}`, OutcomeOK)
	a.Close()
	if n := len(readLines(t, buf.String())); n != 1 {
		t.Fatalf("%d lines", n)
	}
}

func TestAccessLogFilter(t *testing.T) {
	zero, half := 0.0, 0.5
	cases := []struct {
		name    string
		cfg     AccessLogConfig
		outcome Outcome
		slow    bool
		want    bool
	}{
		{"all: ok", AccessLogConfig{}, OutcomeOK, false, true},
		{"errors only: ok", AccessLogConfig{SampleRatio: &zero}, OutcomeOK, false, false},
		{"errors only: error", AccessLogConfig{SampleRatio: &zero}, OutcomeError, false, true},
		{"errors only: fallback", AccessLogConfig{SampleRatio: &zero}, OutcomeFallback, false, true},
		{"slow: fast ok", AccessLogConfig{SampleRatio: &zero, SlowerThan: time.Second}, OutcomeOK, false, false},
		{"slow: slow ok", AccessLogConfig{SampleRatio: &zero, SlowerThan: time.Second}, OutcomeOK, true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tel := newTestTelemetry(t, Config{})
			c.cfg.Output = AccessLogStdout
			a := openTestLog(t, tel, c.cfg, io.Discard)
			rt := tel.Route(RouteInfo{Name: "r"}, nil)
			_, h := rt.Start(context.Background(), propagation.HeaderCarrier{}, "", "GET")
			d := time.Millisecond
			if c.slow {
				d = 2 * time.Second
			}
			if got := a.wants(h, c.outcome, d); got != c.want {
				t.Errorf("wants = %v, want %v", got, c.want)
			}
			h.End("200", OutcomeOK)
		})
	}
	t.Run("sample ratio by trace id", func(t *testing.T) {
		tel := newTestTelemetry(t, Config{})
		a := openTestLog(t, tel, AccessLogConfig{Output: AccessLogStdout, SampleRatio: &half}, io.Discard)
		rt := tel.Route(RouteInfo{Name: "r"}, nil)
		n := 0
		for range 2000 {
			_, h := rt.Start(context.Background(), propagation.HeaderCarrier{}, "", "GET")
			if a.wants(h, OutcomeOK, 0) {
				n++
			}
			if first, again := a.wants(h, OutcomeOK, 0), a.wants(h, OutcomeOK, 0); first != again {
				t.Fatal("sampling is not a function of the trace id")
			}
			h.End("200", OutcomeOK)
		}
		if n < 800 || n > 1200 {
			t.Errorf("sampled %d of 2000 at 0.5", n)
		}
	})
}

// TestAccessLogReopen: logrotate moves the file away (or deletes it);
// Reopen makes a new one at the configured path and later lines go there.
func TestAccessLogReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	tel := newTestTelemetry(t, Config{})
	a := openTestLog(t, tel, AccessLogConfig{Output: path}, nil)
	rt := tel.Route(RouteInfo{Name: "r", Upstream: "u"}, nil)
	one := func() {
		hopThrough(tel, rt, httptest.NewRequest("GET", "/a", nil), 200, "ok", OutcomeOK)
	}
	waitLines := func(p string, n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := os.ReadFile(p)
			if got := len(readLines(t, string(b))); got == n {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("%s has %d lines, want %d", p, got, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	one()
	waitLines(path, 1)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	one() // still written to the moved file, as logrotate expects
	waitLines(path+".1", 2)
	if err := a.Reopen(); err != nil {
		t.Fatal(err)
	}
	one()
	waitLines(path, 1)
	os.Remove(path)
	if err := a.Reopen(); err != nil {
		t.Fatal(err)
	}
	one()
	waitLines(path, 1)

	// A path that cannot be opened: the old file stays in use.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := a.Reopen(); err == nil {
		t.Fatal("reopening onto a directory succeeded")
	}
}

// blockingWriter blocks every Write until released: a stuck disk.
type blockingWriter struct{ release chan struct{} }

func (b *blockingWriter) Write(p []byte) (int, error) {
	<-b.release
	return len(p), nil
}

// TestAccessLogSlowDiskDrops: with the writer stuck, requests go on and
// the lines beyond the queue are dropped and counted.
func TestAccessLogSlowDiskDrops(t *testing.T) {
	tel := newTestTelemetry(t, Config{})
	w := &blockingWriter{release: make(chan struct{})}
	a, err := tel.OpenAccessLog(AccessLogConfig{Output: AccessLogStdout, QueueSize: 8}, w)
	if err != nil {
		t.Fatal(err)
	}
	tel.SetAccessLog(a)
	rt := tel.Route(RouteInfo{Name: "r", Upstream: "u"}, nil)
	// Enough lines to fill the bufio buffer (64 KiB) that the writer
	// blocks in, plus the queue.
	const n = 1000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range n {
			hopThrough(tel, rt, httptest.NewRequest("GET", "/a", nil), 200, "ok", OutcomeOK)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("requests blocked on a stuck access log")
	}
	if d := testutil.ToFloat64(tel.x.alogM.dropped); d == 0 || d >= n {
		t.Errorf("dropped = %v of %d", d, n)
	}
	close(w.release)
	tel.SetAccessLog(nil).Close()
}

func TestAccessLogConfigValidate(t *testing.T) {
	neg, over := -0.1, 1.5
	cases := []struct {
		name string
		cfg  AccessLogConfig
		want []string
	}{
		{"off", AccessLogConfig{}, nil},
		{"stdout", AccessLogConfig{Output: "stdout"}, nil},
		{"bad values", AccessLogConfig{Output: "x", SlowerThan: -1, SampleRatio: &neg, QueueSize: -1}, []string{"slower_than", "sample_ratio", "queue_size"}},
		{"ratio over 1", AccessLogConfig{Output: "x", SampleRatio: &over}, []string{"sample_ratio"}},
		{"settings without output", AccessLogConfig{SlowerThan: time.Second}, []string{"output"}},
		{"settings with OTLP records only", AccessLogConfig{OTLP: true, SlowerThan: time.Second}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			errs := c.cfg.Validate()
			if len(errs) != len(c.want) {
				t.Fatalf("errors = %v, want paths %v", errs, c.want)
			}
			for _, p := range c.want {
				if errs[p] == "" {
					t.Errorf("no error at %s: %v", p, errs)
				}
			}
		})
	}
}

// BenchmarkAccessLogLine is the cost on the request's goroutine of one
// access log line: the filter, the JSON line in a pooled buffer and the
// hand-off to the writer (which writes to io.Discard here).
func BenchmarkAccessLogLine(b *testing.B) {
	tel := newTestTelemetry(b, Config{})
	a, err := tel.OpenAccessLog(AccessLogConfig{Output: AccessLogStdout, QueueSize: 1 << 16}, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	tel.SetAccessLog(a)
	defer tel.SetAccessLog(nil).Close()
	rt := tel.Route(RouteInfo{Name: "kb", Upstream: "kb"}, []string{"gateway"})
	_, h := rt.Start(context.Background(), propagation.HeaderCarrier{}, "gateway", "POST")
	h.ext.endpoint, h.attempts = "10.0.0.7:8080", 1
	events := []SpanEvent{{Name: "fallback", Attrs: map[string]string{"source": "cache"}}}
	b.ReportAllocs()
	for b.Loop() {
		h.logAccess("200", OutcomeFallback, time.Now(), 12*time.Millisecond, events, nil)
	}
}
