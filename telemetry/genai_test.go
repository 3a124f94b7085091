package telemetry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/propagation"
)

// Recorded OpenAI-style bodies (shapes as OpenAI, vLLM and Ollama send them).
const (
	chatReq       = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Where is my parcel? \"quoted\" \u00e9"}],"stream":false}`
	chatStreamReq = `{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}`
	chatResp      = `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18",
 "choices":[{"index":0,"message":{"role":"assistant","content":"It is on its way.","refusal":null},"logprobs":null,"finish_reason":"stop"}],
 "usage":{"prompt_tokens":19,"completion_tokens":7,"total_tokens":26,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp_1"}`
	embedResp = `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023,-0.0093,1.5e-3,-2E+2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}`
	errResp   = `{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}`
)

func sse(events ...string) string {
	var b strings.Builder
	for _, e := range events {
		b.WriteString("data: " + e + "\n\n")
	}
	return b.String()
}

func chunk(content, finish string) string {
	f := "null"
	if finish != "" {
		f = `"` + finish + `"`
	}
	return `{"id":"c","object":"chat.completion.chunk","model":"llama3.1:8b","choices":[{"index":0,"delta":{"content":` +
		fmt.Sprintf("%q", content) + `},"finish_reason":` + f + `}],"usage":null}`
}

var (
	streamWithUsage = sse(
		`{"id":"c","object":"chat.completion.chunk","model":"llama3.1:8b","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`,
		chunk("Hel", ""), chunk("lo", ""), chunk("!", "length"),
		`{"id":"c","object":"chat.completion.chunk","model":"llama3.1:8b","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}`,
		"[DONE]")
	streamNoUsage = sse(chunk("a", ""), chunk("b", ""), chunk("c", ""), chunk("d", "stop"), "[DONE]")
)

type genaiCase struct {
	name                       string
	req                        string
	status                     int
	contentType, encoding      string
	resp                       string
	wantReqModel, wantRspModel string
	wantIn, wantOut            int64
	wantEstimated              bool
	wantFinish                 string
	wantParseErr               string
	wantTTFT                   bool
}

var genaiCases = []genaiCase{
	{name: "chat json", req: chatReq, status: 200, contentType: "application/json", resp: chatResp,
		wantReqModel: "gpt-4o-mini", wantRspModel: "gpt-4o-mini-2024-07-18", wantIn: 19, wantOut: 7, wantFinish: FinishStop, wantTTFT: true},
	{name: "embeddings", req: `{"model":"text-embedding-3-small","input":["a","b"]}`, status: 200, contentType: "application/json", resp: embedResp,
		wantReqModel: "text-embedding-3-small", wantRspModel: "text-embedding-3-small", wantIn: 8, wantFinish: FinishNone, wantTTFT: true},
	{name: "stream with usage chunk", req: chatStreamReq, status: 200, contentType: "text/event-stream; charset=utf-8", resp: streamWithUsage,
		wantReqModel: "gpt-4o-mini", wantRspModel: "llama3.1:8b", wantIn: 5, wantOut: 3, wantFinish: FinishLength, wantTTFT: true},
	{name: "stream without usage counts chunks", req: chatStreamReq, status: 200, contentType: "text/event-stream", resp: streamNoUsage,
		wantReqModel: "gpt-4o-mini", wantRspModel: "llama3.1:8b", wantOut: 4, wantEstimated: true, wantFinish: FinishStop, wantTTFT: true},
	{name: "stream with CRLF and comments", req: chatStreamReq, status: 200, contentType: "text/event-stream",
		resp:         ": keep-alive\r\n\r\nevent: message\r\ndata: " + chunk("x", "") + "\r\n\r\ndata: " + chunk("y", "tool_calls") + "\r\n\r\ndata: [DONE]\r\n\r\n",
		wantReqModel: "gpt-4o-mini", wantRspModel: "llama3.1:8b", wantOut: 2, wantEstimated: true, wantFinish: FinishToolCalls, wantTTFT: true},
	{name: "stream error event", req: chatStreamReq, status: 200, contentType: "text/event-stream",
		resp: sse(chunk("x", ""), errResp), wantReqModel: "gpt-4o-mini", wantRspModel: "llama3.1:8b", wantOut: 1, wantEstimated: true, wantFinish: FinishError, wantTTFT: true},
	{name: "stream cut without final blank line", req: chatStreamReq, status: 200, contentType: "text/event-stream",
		resp: "data: " + chunk("x", "") + "\n\ndata: " + chunk("y", "stop"), wantReqModel: "gpt-4o-mini", wantRspModel: "llama3.1:8b", wantOut: 2, wantEstimated: true, wantFinish: FinishStop, wantTTFT: true},
	{name: "stream with one malformed event", req: chatStreamReq, status: 200, contentType: "text/event-stream",
		resp: sse(chunk("x", ""), `{"choices":[{"delta":{"content":"y"}}`, chunk("z", "stop")), wantReqModel: "gpt-4o-mini", wantRspModel: "llama3.1:8b",
		wantOut: 2, wantEstimated: true, wantFinish: FinishStop, wantParseErr: parseMalformed, wantTTFT: true},
	{name: "429 rate limited", req: chatReq, status: 429, contentType: "application/json", resp: errResp,
		wantReqModel: "gpt-4o-mini", wantFinish: FinishError},
	{name: "500 with html", req: chatReq, status: 500, contentType: "text/html", resp: "<html>oops</html>",
		wantReqModel: "gpt-4o-mini", wantFinish: FinishError},
	{name: "200 error body", req: chatReq, status: 200, contentType: "application/json", resp: errResp,
		wantReqModel: "gpt-4o-mini", wantFinish: FinishError, wantTTFT: true},
	{name: "malformed json", req: chatReq, status: 200, contentType: "application/json", resp: `{"model":"m","usage":{"prompt_tokens":1,}}`,
		wantReqModel: "gpt-4o-mini", wantFinish: FinishNone, wantParseErr: parseMalformed, wantTTFT: true},
	{name: "truncated json", req: chatReq, status: 200, contentType: "application/json", resp: chatResp[:len(chatResp)-30],
		wantReqModel: "gpt-4o-mini", wantFinish: FinishNone, wantParseErr: parseTruncated, wantTTFT: true},
	{name: "huge json", req: chatReq, status: 200, contentType: "application/json",
		resp:         `{"model":"m","pad":"` + strings.Repeat("x", MaxGenAIBodyBytes) + `","usage":{"prompt_tokens":1,"completion_tokens":2}}`,
		wantReqModel: "gpt-4o-mini", wantFinish: FinishNone, wantParseErr: parseTooLarge, wantTTFT: true},
	{name: "too deep", req: chatReq, status: 200, contentType: "application/json", resp: strings.Repeat("[", maxJSONDepth+1),
		wantReqModel: "gpt-4o-mini", wantFinish: FinishNone, wantParseErr: parseTooDeep, wantTTFT: true},
	{name: "gzip is skipped", req: chatReq, status: 200, contentType: "application/json", encoding: "gzip", resp: "\x1f\x8b\x08garbage",
		wantReqModel: "gpt-4o-mini", wantFinish: FinishNone, wantParseErr: parseEncoded, wantTTFT: true},
	{name: "huge sse event", req: chatStreamReq, status: 200, contentType: "text/event-stream",
		resp:         "data: {\"pad\":\"" + strings.Repeat("y", maxEventBytes) + "\"}\n\n" + sse(chunk("a", "stop")),
		wantReqModel: "gpt-4o-mini", wantRspModel: "llama3.1:8b", wantOut: 1, wantEstimated: true, wantFinish: FinishStop, wantParseErr: parseEventLarge, wantTTFT: true},
	{name: "malformed request", req: `{"model": gpt}`, status: 200, contentType: "application/json", resp: chatResp,
		wantRspModel: "gpt-4o-mini-2024-07-18", wantIn: 19, wantOut: 7, wantFinish: FinishStop, wantParseErr: parseMalformed, wantTTFT: true},
	{name: "negative and fractional counts ignored", req: chatReq, status: 200, contentType: "application/json",
		resp: `{"model":"m","usage":{"prompt_tokens":-1,"completion_tokens":2.5}}`, wantReqModel: "gpt-4o-mini", wantRspModel: "m", wantFinish: FinishNone, wantTTFT: true},
	{name: "responses api spelling", req: chatReq, status: 200, contentType: "application/json",
		resp: `{"model":"m","usage":{"input_tokens":3,"output_tokens":4}}`, wantReqModel: "gpt-4o-mini", wantRspModel: "m", wantIn: 3, wantOut: 4, wantFinish: FinishNone, wantTTFT: true},
}

// runCall drives one call through a GenAICall, the body split every split
// bytes (0: whole), on a fake clock that ticks a millisecond per write.
func runCall(t testing.TB, tel *Telemetry, c genaiCase, split int) *GenAIUsage {
	start := time.Unix(1000, 0)
	now := start
	tel.now = func() time.Time { return now }
	rt := tel.Route(RouteInfo{Name: "llm", Upstream: "up", GenAI: GenAIAPIOpenAI}, nil)
	call := newGenAICall(rt.genai, "/v1/chat/completions", start)
	feed := func(s string, f func([]byte)) {
		b := []byte(s)
		for len(b) > 0 {
			n := len(b)
			if split > 0 && split < n {
				n = split
			}
			now = now.Add(time.Millisecond)
			f(b[:n])
			b = b[n:]
		}
	}
	feed(c.req, call.request)
	call.header(c.status, c.contentType, c.encoding)
	feed(c.resp, call.response)
	return call.finish(now.Add(time.Millisecond), false)
}

func TestGenAIParse(t *testing.T) {
	for _, c := range genaiCases {
		for _, split := range []int{0, 1, 7, 64} {
			t.Run(fmt.Sprintf("%s/split=%d", c.name, split), func(t *testing.T) {
				tel := newTestTelemetry(t, Config{})
				u := runCall(t, tel, c, split)
				if u.RequestModel != c.wantReqModel || u.ResponseModel != c.wantRspModel {
					t.Errorf("models = %q, %q; want %q, %q", u.RequestModel, u.ResponseModel, c.wantReqModel, c.wantRspModel)
				}
				if u.InputTokens != c.wantIn || u.OutputTokens != c.wantOut || u.Estimated != c.wantEstimated {
					t.Errorf("tokens = %d in, %d out (estimated %v); want %d, %d (%v)", u.InputTokens, u.OutputTokens, u.Estimated, c.wantIn, c.wantOut, c.wantEstimated)
				}
				if u.FinishReason != c.wantFinish {
					t.Errorf("finish = %q, want %q", u.FinishReason, c.wantFinish)
				}
				if u.ParseError != c.wantParseErr {
					t.Errorf("parse error = %q, want %q", u.ParseError, c.wantParseErr)
				}
				if (u.TTFT > 0) != c.wantTTFT {
					t.Errorf("ttft = %v, want set: %v", u.TTFT, c.wantTTFT)
				}
				if u.Truncated != (c.wantFinish == FinishLength) {
					t.Errorf("truncated = %v for finish %q", u.Truncated, c.wantFinish)
				}
			})
		}
	}
}

// TestGenAIStreamTimings checks TTFT (first content chunk, not the empty
// role chunk) and time per output token on a stream.
func TestGenAIStreamTimings(t *testing.T) {
	tel := newTestTelemetry(t, Config{})
	start := time.Unix(1000, 0)
	now := start
	tel.now = func() time.Time { return now }
	rt := tel.Route(RouteInfo{Name: "llm", Upstream: "up", GenAI: GenAIAPIOpenAI}, nil)
	call := newGenAICall(rt.genai, "/v1/chat/completions", start)
	call.header(200, "text/event-stream", "")
	now = now.Add(100 * time.Millisecond)
	call.response([]byte("data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"))
	for i := range 5 {
		now = now.Add(20 * time.Millisecond)
		if i == 0 {
			now = now.Add(200 * time.Millisecond) // first token at 320ms
		}
		call.response([]byte("data: " + chunk("t", "") + "\n\n"))
	}
	call.response([]byte("data: [DONE]\n\n"))
	u := call.finish(now, false)
	if u.TTFT != 320*time.Millisecond {
		t.Errorf("ttft = %v, want 320ms", u.TTFT)
	}
	h := tel.x.genai.tpot.WithLabelValues("llm", OtherModel).(prometheus.Histogram)
	m := testutil.CollectAndCount(h)
	if m != 1 {
		t.Fatalf("tpot series = %d", m)
	}
	if sum := histSum(t, h); sum < 0.0199 || sum > 0.0201 {
		t.Errorf("time per output token = %v, want 0.02 (80ms over 4 tokens after the first)", sum)
	}
}

func histSum(t testing.TB, h prometheus.Histogram) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	h.Collect(ch)
	m := <-ch
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		t.Fatal(err)
	}
	return pb.GetHistogram().GetSampleSum()
}

// TestGenAIMetrics checks the series a call leaves: model labels from the
// configured list (else "other"), tokens, cost from the price table, and
// unpriced models counted.
func TestGenAIMetrics(t *testing.T) {
	tel := newTestTelemetry(t, Config{})
	tel.SetGenAI(GenAIConfig{
		Models: []string{"llama3.1:8b"},
		Prices: map[string]GenAIPrice{"gpt-4o-mini": {Input: 0.15, Output: 0.60}},
	})
	runCall(t, tel, genaiCases[0], 0) // gpt-4o-mini: priced, 19 in, 7 out
	runCall(t, tel, genaiCases[0], 0)
	runCall(t, tel, genaiCases[2], 0) // request gpt-4o-mini (priced), response llama: request model wins
	tel.SetGenAI(GenAIConfig{Models: []string{"llama3.1:8b"}})
	runCall(t, tel, genaiCases[3], 0) // request gpt-4o-mini, now unlisted; response llama3.1:8b listed, unpriced
	runCall(t, tel, genaiCases[1], 0) // text-embedding-3-small: other

	m := tel.x.genai
	checks := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"input tokens gpt-4o-mini", m.tokens.WithLabelValues("llm", "gpt-4o-mini", "input"), 19*2 + 5},
		{"output tokens gpt-4o-mini", m.tokens.WithLabelValues("llm", "gpt-4o-mini", "output"), 7*2 + 3},
		{"output tokens llama", m.tokens.WithLabelValues("llm", "llama3.1:8b", "output"), 4},
		{"input tokens other", m.tokens.WithLabelValues("llm", OtherModel, "input"), 8},
		{"requests stop", m.requests.WithLabelValues("llm", "gpt-4o-mini", FinishStop), 2},
		{"requests length", m.requests.WithLabelValues("llm", "gpt-4o-mini", FinishLength), 1},
		{"requests none other", m.requests.WithLabelValues("llm", OtherModel, FinishNone), 1},
		{"cost", m.cost.WithLabelValues("llm", "gpt-4o-mini"), (43*0.15 + 17*0.60) / 1e6},
		{"unpriced llama", m.unpriced.WithLabelValues("llm", "llama3.1:8b"), 1},
		{"unpriced other", m.unpriced.WithLabelValues("llm", OtherModel), 1},
	}
	for _, c := range checks {
		if got := testutil.ToFloat64(c.c); got < c.want*0.999999 || got > c.want*1.000001 || (c.want == 0) != (got == 0) {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.ttft); n != 3 {
		t.Errorf("ttft series = %d, want 3 (gpt-4o-mini, llama3.1:8b, other)", n)
	}
}

func TestGenAIParseErrorsCounted(t *testing.T) {
	tel := newTestTelemetry(t, Config{})
	for _, c := range genaiCases {
		runCall(t, tel, c, 0)
	}
	for _, reason := range []string{parseMalformed, parseTooLarge, parseTooDeep, parseTruncated, parseEncoded, parseEventLarge} {
		if got := testutil.ToFloat64(tel.x.genai.parseErrors.WithLabelValues("llm", reason)); got < 1 {
			t.Errorf("parse errors %q = %v, want at least 1", reason, got)
		}
	}
}

func TestGenAIConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  GenAIConfig
		want []string // error paths
	}{
		{"empty", GenAIConfig{}, nil},
		{"ok", GenAIConfig{Models: []string{"a", "llama3.1:8b", "meta-llama/Llama-3-8B"}, Prices: map[string]GenAIPrice{"a": {1, 2}}}, nil},
		{"reserved and duplicate", GenAIConfig{Models: []string{"other", "a", "a", ""}}, []string{"models[0]", "models[2]", "models[3]"}},
		{"control character", GenAIConfig{Models: []string{"a\nb"}}, []string{"models[0]"}},
		{"negative price", GenAIConfig{Prices: map[string]GenAIPrice{"a": {Input: -1}}}, []string{"prices.a.input"}},
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

// TestGenAISpanAttributes: the hop's server span carries the gen_ai.*
// attributes of the OpenTelemetry GenAI conventions.
func TestGenAISpanAttributes(t *testing.T) {
	client := &fakeClient{}
	tel, err := New(exportOptions(Config{Tracing: Tracing{OTLP: &OTLP{Endpoint: "collector:4317"}}}, prometheus.NewRegistry(), time.Now, client))
	if err != nil {
		t.Fatal(err)
	}
	rt := tel.Route(RouteInfo{Name: "llm", Upstream: "up", GenAI: GenAIAPIOpenAI}, nil)
	r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(chatStreamReq))
	_, h := rt.Start(context.Background(), propagation.HeaderCarrier(r.Header), "", "POST")
	body, x := h.ObserveHTTP(r)
	io.Copy(io.Discard, body)
	x.WriteHeader(200, http.Header{"Content-Type": {"text/event-stream"}})
	x.Write([]byte(streamWithUsage))
	h.End("200", OutcomeOK)
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	spans, _ := client.spans(t)
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	got := otlpAttrs(spans[0].Attributes)
	want := map[string]string{
		"gen_ai.operation.name":          "chat",
		"gen_ai.request.model":           "gpt-4o-mini",
		"gen_ai.response.model":          "llama3.1:8b",
		"gen_ai.usage.input_tokens":      "5",
		"gen_ai.usage.output_tokens":     "3",
		"gen_ai.response.finish_reasons": `["length"]`,
	}
	for k, v := range want {
		if g := got[k]; g != v {
			t.Errorf("%s = %q, want %q", k, g, v)
		}
	}
	if u, ok := h.GenAI(); !ok || !u.Truncated {
		t.Errorf("GenAI() = %+v, %v: want a truncated answer for the conversation signals", u, ok)
	}
}

// BenchmarkGenAITee is the parser's cost per streamed response (a dozen
// SSE events with a usage chunk) and per non-streaming response: what
// the tee adds to a genai call, beyond the copy it does not make.
func BenchmarkGenAITee(b *testing.B) {
	tel := newTestTelemetry(b, Config{})
	rt := tel.Route(RouteInfo{Name: "llm", Upstream: "up", GenAI: GenAIAPIOpenAI}, nil)
	var stream strings.Builder
	for range 10 {
		stream.WriteString("data: " + chunk("token", "") + "\n\n")
	}
	stream.WriteString(streamWithUsage)
	for _, c := range []struct {
		name, ct, body string
	}{{"sse", "text/event-stream", stream.String()}, {"json", "application/json", chatResp}} {
		body := []byte(c.body)
		req := []byte(chatReq)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				call := newGenAICall(rt.genai, "/v1/chat/completions", time.Now())
				call.request(req)
				call.header(200, c.ct, "")
				for i := 0; i < len(body); i += 512 {
					call.response(body[i:min(i+512, len(body))])
				}
				call.finish(time.Now(), false)
			}
		})
	}
}

// TestGenAIParserKeepsNoCopy: the tee scans bodies of any size with
// constant memory. 32 MiB of JSON and of SSE pass through one call each
// while the bytes allocated stay under 64 KiB (a buffering parser would
// allocate at least the body).
func TestGenAIParserKeepsNoCopy(t *testing.T) {
	tel := newTestTelemetry(t, Config{})
	rt := tel.Route(RouteInfo{Name: "llm", Upstream: "up", GenAI: GenAIAPIOpenAI}, nil)
	event := []byte("data: " + chunk("token", "") + "\n\n")
	jsonPiece := []byte(`{"x":"` + strings.Repeat("y", 32<<10-8) + `"},`)
	cases := []struct {
		name, ct string
		first    []byte
		piece    []byte
	}{
		{"sse", "text/event-stream", nil, event},
		{"json", "application/json", []byte(`{"data":[`), jsonPiece},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			call := newGenAICall(rt.genai, "/v1/chat/completions", time.Now())
			call.header(200, c.ct, "")
			if c.first != nil {
				call.response(c.first)
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for n := 0; n < 32<<20; n += len(c.piece) {
				call.response(c.piece)
			}
			runtime.ReadMemStats(&after)
			if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
				t.Errorf("scanning 32 MiB allocated %d bytes", d)
			}
			u := call.finish(time.Now(), false)
			if c.name == "sse" && u.OutputTokens < 100000 {
				t.Errorf("counted %d chunks", u.OutputTokens)
			}
		})
	}
}

// TestGenAIFallbackSpendsNoTokens: an answer from hopwatch's cache or a
// static fallback is a request, but its tokens were not spent now.
func TestGenAIFallbackSpendsNoTokens(t *testing.T) {
	for _, c := range []struct {
		source     string
		wantTokens float64
	}{{"cache", 0}, {"static", 0}, {"upstream", 7}, {"", 7}} {
		t.Run("fallback="+c.source, func(t *testing.T) {
			tel := newTestTelemetry(t, Config{})
			rt := tel.Route(RouteInfo{Name: "llm", Upstream: "up", GenAI: GenAIAPIOpenAI}, nil)
			r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(chatReq))
			_, h := rt.Start(context.Background(), propagation.HeaderCarrier(r.Header), "", "POST")
			body, x := h.ObserveHTTP(r)
			io.Copy(io.Discard, body)
			if c.source != "" {
				h.FellBack("slow", c.source)
			}
			x.WriteHeader(200, http.Header{"Content-Type": {"application/json"}})
			x.Write([]byte(chatResp))
			h.End("200", OutcomeFallback)
			m := tel.x.genai
			if got := testutil.ToFloat64(m.tokens.WithLabelValues("llm", OtherModel, "output")); got != c.wantTokens {
				t.Errorf("output tokens = %v, want %v", got, c.wantTokens)
			}
			if got := testutil.ToFloat64(m.requests.WithLabelValues("llm", OtherModel, FinishStop)); got != 1 {
				t.Errorf("requests = %v, want 1", got)
			}
			if u, _ := h.GenAI(); u.Replayed != (c.wantTokens == 0) {
				t.Errorf("replayed = %v", u.Replayed)
			}
		})
	}
}

// TestTurnFinishReason: when the genai route is itself the entry route
// (an FAQ bot calling the model directly), the turn's entry hop carries
// the finish reason for the conversation signals, and the stored span
// keeps it with the turn's mark.
func TestTurnFinishReason(t *testing.T) {
	tel := newTestTelemetry(t, Config{})
	rec := &turnRecorder{entry: "llm"}
	tel.SetTurnObserver(rec)
	rt := tel.Route(RouteInfo{Name: "llm", Upstream: "up", GenAI: GenAIAPIOpenAI}, nil)
	r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(chatStreamReq))
	_, h := rt.Start(context.Background(), propagation.HeaderCarrier(r.Header), "", "POST")
	body, x := h.ObserveHTTP(r)
	io.Copy(io.Discard, body)
	x.WriteHeader(200, http.Header{"Content-Type": {"text/event-stream"}})
	x.Write([]byte(streamWithUsage)) // ends with finish_reason "length"
	h.End("200", OutcomeOK)

	if len(rec.turns) != 1 || len(rec.turns[0].Hops) != 1 || rec.turns[0].Hops[0].FinishReason != FinishLength {
		t.Fatalf("turns %+v: want one whose entry hop finished with length", rec.turns)
	}
	d, ok := tel.Store.Trace(h.TraceID())
	if !ok || len(d.Spans) != 1 {
		t.Fatalf("stored trace: %v %+v", ok, d)
	}
	sp := d.Spans[0].Span
	if sp.FinishReason != FinishLength || sp.Turn == nil || *sp.Turn != (SpanTurn{SessionID: "s", Index: 1, Outcome: "good"}) {
		t.Errorf("stored span: finish %q, turn %+v", sp.FinishReason, sp.Turn)
	}
}
