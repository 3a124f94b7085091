package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// openAIUpstream answers like an OpenAI-compatible server: JSON for
// "stream": false, SSE with a final usage chunk for "stream": true. A
// stream sends its first chunk, then waits on next before each further
// chunk (nil: no wait), so a test can prove chunks are not held back.
type openAIUpstream struct {
	next chan struct{}

	mu          sync.Mutex
	traceparent []string
}

func (u *openAIUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.traceparent = append(u.traceparent, r.Header.Get("Traceparent"))
	u.mu.Unlock()
	var req struct {
		Model  string `json:"model"`
		Stream bool   `json:"stream"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, `{"error":{"message":"bad json"}}`, http.StatusBadRequest)
		return
	}
	if req.Model == "busy" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"error":{"message":"Rate limit reached","code":"rate_limit_exceeded"}}`)
		return
	}
	if !req.Stream {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"1","object":"chat.completion","model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":4,"total_tokens":15}}`, req.Model)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	words := []string{"Hel", "lo", " there"}
	for i, word := range words {
		if i > 0 && u.next != nil {
			select {
			case <-u.next:
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Second):
				return // the client never saw the previous chunk
			}
		}
		fin := "null"
		if i == len(words)-1 {
			fin = `"length"`
		}
		fmt.Fprintf(w, "data: {\"model\":%q,\"choices\":[{\"index\":0,\"delta\":{\"content\":%q},\"finish_reason\":%s}]}\n\n", req.Model, word, fin)
		w.(http.Flusher).Flush()
	}
	fmt.Fprintf(w, "data: {\"model\":%q,\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\ndata: [DONE]\n\n", req.Model)
}

type genaiEnv struct {
	tel  *telemetry.Telemetry
	reg  *prometheus.Registry
	addr string
	up   *openAIUpstream
	log  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startGenAIEnv(t testing.TB, genai bool, accessLog bool) *genaiEnv {
	t.Helper()
	up := &openAIUpstream{}
	us := httptest.NewServer(up)
	t.Cleanup(us.Close)
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(telemetry.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	tel.SetGenAI(telemetry.GenAIConfig{Models: []string{"llama3.1:8b"}, Prices: map[string]telemetry.GenAIPrice{"llama3.1:8b": {Input: 1, Output: 2}}})
	env := &genaiEnv{tel: tel, reg: reg, up: up, log: &syncBuffer{}}
	if accessLog {
		a, err := tel.OpenAccessLog(telemetry.AccessLogConfig{Output: telemetry.AccessLogStdout}, env.log)
		if err != nil {
			t.Fatal(err)
		}
		tel.SetAccessLog(a)
		t.Cleanup(func() { tel.SetAccessLog(nil).Close() })
	}
	p := proxy.New(proxy.Options{Telemetry: tel})
	route := routes.Route{Name: "llm", Listener: "http", Match: routes.Match{PathPrefix: "/v1/"}, Upstream: "model"}
	if genai {
		route.GenAI = &routes.GenAI{API: routes.GenAIOpenAI}
	}
	spec := &routes.Spec{
		Callers:   []string{"faq"},
		Listeners: []routes.Listener{{Name: "http", Address: "127.0.0.1:0", Protocol: "http", Caller: "faq"}},
		Routes:    []routes.Route{route},
		Upstreams: []routes.Upstream{{Name: "model", Protocol: "http", Endpoints: []string{us.Listener.Addr().String()}}},
	}
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, p) })
	env.addr = p.Addr("http").String()
	return env
}

func (e *genaiEnv) post(t testing.TB, model string, stream bool) (*http.Response, error) {
	body := fmt.Sprintf(`{"model":%q,"stream":%v,"messages":[{"role":"user","content":"hi"}]}`, model, stream)
	return http.Post("http://"+e.addr+"/v1/chat/completions", "application/json", strings.NewReader(body))
}

// TestGenAIThroughProxy: token counts, finish reasons and TTFT are recorded
// for streaming and non-streaming calls, the client gets the upstream's
// bytes unchanged, and the access log line carries the trace id the
// upstream saw.
func TestGenAIThroughProxy(t *testing.T) {
	env := startGenAIEnv(t, true, true)
	cases := []struct {
		name       string
		model      string
		stream     bool
		wantStatus int
		wantBody   string // substring
	}{
		{"json", "llama3.1:8b", false, 200, `"usage":{"prompt_tokens":11`},
		{"stream", "llama3.1:8b", true, 200, "data: [DONE]"},
		{"rate limited", "busy", false, 429, "rate_limit_exceeded"},
		{"unlisted model", "mystery-7b", true, 200, "data: [DONE]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, err := env.post(t, c.model, c.stream)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.wantStatus || !strings.Contains(string(b), c.wantBody) {
				t.Fatalf("status %d, body %q", resp.StatusCode, b)
			}
		})
	}
	waitFor(t, "hops ended", func() bool {
		return strings.Count(env.log.String(), "\n") == len(cases)
	})

	m := func(name string, labels ...string) float64 {
		t.Helper()
		return metricValue(t, env.reg, name, labels...)
	}
	checks := []struct {
		name string
		got  float64
		want float64
	}{
		{"input tokens llama", m("hopwatch_genai_tokens_total", "route", "llm", "model", "llama3.1:8b", "type", "input"), 11 + 7},
		{"output tokens llama", m("hopwatch_genai_tokens_total", "route", "llm", "model", "llama3.1:8b", "type", "output"), 4 + 3},
		{"output tokens other", m("hopwatch_genai_tokens_total", "route", "llm", "model", "other", "type", "output"), 3},
		{"stop", m("hopwatch_genai_requests_total", "route", "llm", "model", "llama3.1:8b", "finish_reason", "stop"), 1},
		{"length", m("hopwatch_genai_requests_total", "route", "llm", "model", "llama3.1:8b", "finish_reason", "length"), 1},
		{"429", m("hopwatch_genai_requests_total", "route", "llm", "model", "other", "finish_reason", "error"), 1},
		{"cost", m("hopwatch_genai_cost_total", "route", "llm", "model", "llama3.1:8b"), (18*1 + 7*2) / 1e6},
		{"ttft count llama (json and stream)", m("hopwatch_genai_time_to_first_token_seconds_count", "route", "llm", "model", "llama3.1:8b"), 2},
		{"tpot count llama (stream)", m("hopwatch_genai_time_per_output_token_seconds_count", "route", "llm", "model", "llama3.1:8b"), 1},
	}
	for _, c := range checks {
		if c.got < c.want*0.999999 || c.got > c.want*1.000001 {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	// The access log joins the upstream's trace.
	env.up.mu.Lock()
	seen := append([]string(nil), env.up.traceparent...)
	env.up.mu.Unlock()
	sc := bufio.NewScanner(strings.NewReader(env.log.String()))
	i := 0
	for ; sc.Scan(); i++ {
		if len(sc.Bytes()) > telemetry.MaxAccessLogLine {
			t.Errorf("line %d is %d bytes", i, len(sc.Bytes()))
		}
		var l struct {
			TraceID string `json:"trace_id"`
			Route   string `json:"route"`
			Genai   *struct {
				Model        string `json:"model"`
				OutputTokens int64  `json:"output_tokens"`
			} `json:"genai"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, sc.Bytes())
		}
		if i >= len(seen) || len(l.TraceID) != 32 || !strings.Contains(seen[i], l.TraceID) {
			t.Errorf("line %d trace_id %s, upstream saw traceparent %q", i, l.TraceID, seen[i])
		}
		if l.Genai == nil || l.Route != "llm" {
			t.Errorf("line %d has no genai usage: %s", i, sc.Bytes())
		}
	}
	if i != len(cases) {
		t.Errorf("%d access log lines, want %d", i, len(cases))
	}
}

// TestGenAIStreamNotHeldBack: the client receives each chunk before the
// upstream sends the next one. A proxy (or parser) that held bytes back
// would leave the upstream waiting, and the test would time out.
func TestGenAIStreamNotHeldBack(t *testing.T) {
	for _, genai := range []bool{false, true} {
		t.Run(fmt.Sprintf("genai=%v", genai), func(t *testing.T) {
			env := startGenAIEnv(t, genai, true)
			env.up.next = make(chan struct{})
			resp, err := env.post(t, "llama3.1:8b", true)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			for chunk := 0; chunk < 3; chunk++ {
				got := make(chan string, 1)
				go func() {
					line, _ := br.ReadString('\n')
					br.ReadString('\n') // the blank line ending the event
					got <- line
				}()
				select {
				case line := <-got:
					if !strings.HasPrefix(line, "data: ") {
						t.Fatalf("chunk %d: %q", chunk, line)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("chunk %d did not reach the client before the upstream sent the next", chunk)
				}
				if chunk < 2 {
					env.up.next <- struct{}{} // only now may the upstream send the next chunk
				}
			}
			io.Copy(io.Discard, br)
		})
	}
}

// metricValue reads one sample from reg.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	base, suffix := name, ""
	for _, s := range []string{"_count", "_sum"} {
		if strings.HasSuffix(name, s) && !strings.HasSuffix(name, "_total") {
			base, suffix = strings.TrimSuffix(name, s), s
		}
	}
	for _, mf := range mfs {
		if mf.GetName() != base {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			switch {
			case suffix == "_count":
				return float64(m.GetHistogram().GetSampleCount())
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// BenchmarkGenAIProxy compares a streamed chat completion through a plain
// route and through a genai route with the access log on: the difference
// is what the tee, the parser and the log line cost per call.
// ns/first-chunk is the client's wait for the first SSE event, which the
// parser must not lengthen.
func BenchmarkGenAIProxy(b *testing.B) {
	for _, genai := range []bool{false, true} {
		b.Run(fmt.Sprintf("genai=%v", genai), func(b *testing.B) {
			env := startGenAIEnv(b, genai, genai)
			b.ReportAllocs()
			var first time.Duration
			for b.Loop() {
				start := time.Now()
				resp, err := env.post(b, "llama3.1:8b", true)
				if err != nil {
					b.Fatal(err)
				}
				br := bufio.NewReader(resp.Body)
				br.ReadString('\n')
				first += time.Since(start)
				io.Copy(io.Discard, br)
				resp.Body.Close()
			}
			b.ReportMetric(float64(first.Nanoseconds())/float64(b.N), "ns/first-chunk")
		})
	}
}

// TestAccessLogBackgroundRetry: a fallback answers the client and ends the
// hop while the upstream call goes on in the background and retries. The
// access log line is written at the end of the hop, concurrently with
// that retry's attempt: it must read the attempt count and endpoint
// safely (run with -race).
func TestAccessLogBackgroundRetry(t *testing.T) {
	var calls sync.WaitGroup
	calls.Add(2)
	var n atomicInt
	us := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer calls.Done()
		if n.add() == 1 {
			time.Sleep(100 * time.Millisecond) // late: the fallback answers meanwhile
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "late ok")
	}))
	t.Cleanup(us.Close)
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(telemetry.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	log := &syncBuffer{}
	a, err := tel.OpenAccessLog(telemetry.AccessLogConfig{Output: telemetry.AccessLogStdout}, log)
	if err != nil {
		t.Fatal(err)
	}
	tel.SetAccessLog(a)
	t.Cleanup(func() { tel.SetAccessLog(nil).Close() })
	p := proxy.New(proxy.Options{Telemetry: tel})
	spec := &routes.Spec{
		Listeners: []routes.Listener{{Name: "http", Address: "127.0.0.1:0", Protocol: "http"}},
		Routes: []routes.Route{{Name: "kb", Listener: "http", Upstream: "kb", Timeout: 5 * time.Second,
			Retry: &routes.Retry{Attempts: 2, On: []string{"503"}, Budget: 1},
			Fallback: &routes.Fallback{After: 20 * time.Millisecond, Use: []string{routes.FallbackSourceStatic},
				Static: &routes.FallbackStatic{Body: "degraded"}}}},
		Upstreams: []routes.Upstream{{Name: "kb", Protocol: "http", Endpoints: []string{us.Listener.Addr().String()}}},
	}
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, p) })
	resp, err := http.Get("http://" + p.Addr("http").String() + "/kb/search")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "degraded" {
		t.Fatalf("body %q, want the fallback", b)
	}
	calls.Wait() // the background retry reached the upstream
	waitFor(t, "access log line", func() bool { return strings.Contains(log.String(), `"fallback":"static"`) })
	if !strings.Contains(log.String(), `"outcome":"fallback"`) {
		t.Errorf("line: %s", log.String())
	}
}

type atomicInt struct {
	mu sync.Mutex
	n  int
}

func (a *atomicInt) add() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.n++
	return a.n
}

// TestHTTPStreamedAnswerToPOST: an upstream that reads a POST body and
// streams its answer, to clients on keep-alive connections, for each
// client and upstream protocol. The upstream transport copies a body of
// declared length straight to the socket and then reads it once more (to
// catch extra bytes); the upstream may answer, and the proxy send the
// response headers, in between, and net/http's HTTP/1 server closes the
// request body as those headers go out. That last read then failed, the
// transport closed the upstream connection and the client saw "unexpected
// EOF": http1 to http1 failed in every run before the fix.
func TestHTTPStreamedAnswerToPOST(t *testing.T) {
	for _, client := range []string{protoHTTP1, protoH2C} {
		for _, upstream := range []string{protoHTTP1, protoH2C} {
			t.Run(client+" to "+upstream, func(t *testing.T) {
				us := startHTTPUpstream(t, upstream, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					io.Copy(io.Discard, r.Body)
					w.Header().Set("Content-Type", "text/event-stream")
					for i := range 4 {
						fmt.Fprintf(w, "data: %d\n\n", i)
						w.(http.Flusher).Flush()
						time.Sleep(2 * time.Millisecond)
					}
				}), nil)
				p := proxy.New(proxy.Options{})
				spec := &routes.Spec{
					Listeners: []routes.Listener{{Name: "http", Address: "127.0.0.1:0", Protocol: "http"}},
					Routes:    []routes.Route{{Name: "llm", Listener: "http", Upstream: "m", Timeout: 30 * time.Second}},
					Upstreams: []routes.Upstream{{Name: "m", Protocol: upstreamProtocol(upstream), Endpoints: []string{us.Listener.Addr().String()}}},
				}
				if err := p.Apply(spec); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { shutdown(t, p) })
				url := "http://" + p.Addr("http").String() + "/v1/chat/completions"
				c := newHTTPClient(t, client)
				var wg sync.WaitGroup
				for range 3 {
					wg.Go(func() {
						for range 60 {
							resp, err := c.Post(url, "application/json", strings.NewReader(`{"model":"x","stream":true}`))
							if err != nil {
								t.Error(err)
								return
							}
							b, err := io.ReadAll(resp.Body)
							resp.Body.Close()
							if err != nil || strings.Count(string(b), "data: ") != 4 {
								t.Errorf("stream cut: %v after %q", err, b)
								return
							}
						}
					})
				}
				wg.Wait()
			})
		}
	}
}
