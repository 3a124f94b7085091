package telemetry

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
)

// GenAI routes (`genai: {api: openai}`): token usage, model, finish reason,
// time to first token and time per output token read from the wire, as
// the OpenTelemetry GenAI semantic conventions name them (development
// status), mapped to Prometheus names.

// GenAIAPIOpenAI is the one wire format read so far: OpenAI's chat
// completions, completions and embeddings, which vLLM, Ollama, llama.cpp
// and most gateways speak as well.
const GenAIAPIOpenAI = "openai"

// GenAIConfig is the top-level genai section, as written: which model names
// become label values, and what tokens cost.
type GenAIConfig struct {
	// Models are the model names kept as the model label; any other model
	// is recorded as "other", so a client cannot grow the label set. Every
	// model in Prices is a label value too.
	Models []string `yaml:"models"`
	// Prices per model, in any currency per million tokens. A model
	// without a price costs nothing and is counted in
	// hopwatch_genai_unpriced_requests_total.
	Prices map[string]GenAIPrice `yaml:"prices"`
}

// GenAIPrice is the price of a million tokens.
type GenAIPrice struct {
	Input  float64 `yaml:"input"`
	Output float64 `yaml:"output"`
}

// OtherModel is the model label of a model not in the configured list.
const OtherModel = "other"

// MaxGenAIModels bounds the configured model list (it multiplies the series
// of every genai metric).
const MaxGenAIModels = 256

// Validate reports problems as field paths relative to "genai".
func (c *GenAIConfig) Validate() map[string]string {
	errs := map[string]string{}
	if len(c.Models) > MaxGenAIModels {
		errs["models"] = fmt.Sprintf("at most %d models (each is a label value of every genai metric)", MaxGenAIModels)
	}
	seen := map[string]int{}
	for i, m := range c.Models {
		p := pathIndex("models", i)
		if msg := checkModelName(m); msg != "" {
			errs[p] = msg
		} else if j, dup := seen[m]; dup {
			errs[p] = fmt.Sprintf("duplicate model %q (first at models[%d])", m, j)
		}
		seen[m] = i
	}
	for m, pr := range c.Prices {
		p := "prices." + m
		if msg := checkModelName(m); msg != "" {
			errs[p] = msg
		}
		for _, v := range []struct {
			f    string
			cost float64
		}{{"input", pr.Input}, {"output", pr.Output}} {
			if v.cost < 0 || math.IsNaN(v.cost) || math.IsInf(v.cost, 0) {
				errs[p+"."+v.f] = "must be a finite price per million tokens, 0 or more"
			}
		}
	}
	return errs
}

func checkModelName(m string) string {
	switch {
	case m == "":
		return "model name is empty"
	case m == OtherModel:
		return fmt.Sprintf("%q is reserved for models that are not in this list", OtherModel)
	case len(m) > MaxGenAIValueLen:
		return fmt.Sprintf("model name longer than %d bytes", MaxGenAIValueLen)
	case !utf8.ValidString(m) || strings.ContainsFunc(m, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "model name must be printable UTF-8"
	}
	return ""
}

// genaiTable is a compiled GenAIConfig.
type genaiTable struct {
	models map[string]bool
	prices map[string]GenAIPrice
}

// SetGenAI installs the model list and price table (at start and on every
// reload). Safe while requests are served: a request uses the table that
// was current when it ended.
func (t *Telemetry) SetGenAI(c GenAIConfig) {
	if t == nil {
		return
	}
	tab := &genaiTable{models: map[string]bool{}, prices: map[string]GenAIPrice{}}
	for _, m := range c.Models {
		tab.models[m] = true
	}
	for m, p := range c.Prices {
		tab.models[m] = true
		tab.prices[m] = p
	}
	t.x.genaiTab.Store(tab)
}

// genaiMetrics are the hopwatch_genai_* series (design section 5).
type genaiMetrics struct {
	tokens      *prometheus.CounterVec
	ttft        *prometheus.HistogramVec
	tpot        *prometheus.HistogramVec
	requests    *prometheus.CounterVec
	cost        *prometheus.CounterVec
	unpriced    *prometheus.CounterVec
	parseErrors *prometheus.CounterVec
}

// Buckets of the OpenTelemetry GenAI conventions
// (gen_ai.server.time_to_first_token, gen_ai.server.time_per_output_token),
// with finer low ends for local models.
var (
	ttftBuckets = []float64{.001, .005, .01, .02, .04, .06, .08, .1, .25, .5, .75, 1, 2.5, 5, 7.5, 10}
	tpotBuckets = []float64{.001, .0025, .005, .01, .025, .05, .075, .1, .15, .2, .3, .4, .5, .75, 1, 2.5}
)

func newGenAIMetrics(reg prometheus.Registerer) *genaiMetrics {
	m := &genaiMetrics{
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_genai_tokens_total",
			Help: "Tokens used on genai routes, by model and type (input, output), as the response's usage reports them (streams without a usage chunk: output counts content chunks).",
		}, []string{"route", "model", "type"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hopwatch_genai_time_to_first_token_seconds",
			Help:    "Time from request arrival to the first content chunk of a stream (non-streaming: to the first response body byte).",
			Buckets: ttftBuckets,
		}, []string{"route", "model"}),
		tpot: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hopwatch_genai_time_per_output_token_seconds",
			Help:    "Streams: time from the first to the last content chunk divided by the output tokens after the first.",
			Buckets: tpotBuckets,
		}, []string{"route", "model"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_genai_requests_total",
			Help: "Requests on genai routes by model and finish reason (stop, length, content_filter, tool_calls, error, other, none).",
		}, []string{"route", "model", "finish_reason"}),
		cost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_genai_cost_total",
			Help: "Cost of the tokens used, from the genai.prices table (its currency).",
		}, []string{"route", "model"}),
		unpriced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_genai_unpriced_requests_total",
			Help: "Requests whose model has no price in genai.prices (their cost is not counted).",
		}, []string{"route", "model"}),
		parseErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_genai_parse_errors_total",
			Help: "Request or response bodies of genai routes that could not be read (malformed, too_large, too_deep, truncated, encoded, event_large); the response itself passed unchanged.",
		}, []string{"route", "reason"}),
	}
	reg.MustRegister(m.tokens, m.ttft, m.tpot, m.requests, m.cost, m.unpriced, m.parseErrors)
	return m
}

// genaiRoute is the genai part of a Route.
type genaiRoute struct {
	t     *Telemetry
	route string

	mu     sync.RWMutex // guards series
	series map[genaiKey]*genaiSeries
}

type genaiKey struct{ model, finish string }

type genaiSeries struct {
	in, out, cost prometheus.Counter
	unpriced      prometheus.Counter
	ttft, tpot    prometheus.Observer
	requests      prometheus.Counter
}

// get returns the handles of one model and finish reason; both are from
// bounded sets, so the map is bounded.
func (g *genaiRoute) get(k genaiKey) *genaiSeries {
	g.mu.RLock()
	s := g.series[k]
	g.mu.RUnlock()
	if s != nil {
		return s
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if s := g.series[k]; s != nil {
		return s
	}
	m := g.t.x.genai
	s = &genaiSeries{
		in:       m.tokens.WithLabelValues(g.route, k.model, "input"),
		out:      m.tokens.WithLabelValues(g.route, k.model, "output"),
		cost:     m.cost.WithLabelValues(g.route, k.model),
		unpriced: m.unpriced.WithLabelValues(g.route, k.model),
		ttft:     m.ttft.WithLabelValues(g.route, k.model),
		tpot:     m.tpot.WithLabelValues(g.route, k.model),
		requests: m.requests.WithLabelValues(g.route, k.model, k.finish),
	}
	g.series[k] = s
	return s
}

// genaiOperation names gen_ai.operation.name from the request path.
func genaiOperation(path string) string {
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		return "chat"
	case strings.HasSuffix(path, "/completions"):
		return "text_completion"
	case strings.HasSuffix(path, "/embeddings"):
		return "embeddings"
	}
	return "other"
}

// GenAIUsage is what one genai call said, for the conversation signals and
// the access log. Zero fields were not seen.
type GenAIUsage struct {
	Operation     string
	RequestModel  string
	ResponseModel string
	// Model is the model label: a configured model or "other".
	Model        string
	Stream       bool
	InputTokens  int64
	OutputTokens int64
	// Estimated is true when OutputTokens counts content chunks of a
	// stream that sent no usage.
	Estimated bool
	// FinishReason is the first choice's, from the fixed set (Finish*).
	FinishReason  string
	FinishReasons []string
	// TTFT is the time to the first token; 0 when none came.
	TTFT time.Duration
	// Truncated is a "length" finish: the model stopped at its token limit.
	Truncated  bool
	ParseError string
	// Replayed: a cached or static fallback answered; its tokens are not
	// counted as spent.
	Replayed bool
}

// GenAICall observes one call on a genai route: the request body as the
// transport reads it (another goroutine: hence reqMu) and the response as
// it is written to the client (the handler's goroutine).
type GenAICall struct {
	g     *genaiRoute
	op    string
	start time.Time
	now   func() time.Time

	reqMu   sync.Mutex // guards req, reqScan, reqSeen
	req     oaiFields
	reqScan jsonScanner
	reqSeen int64

	status    int
	sse       bool
	skip      string // a parse error reason: the response is not scanned
	seen      int64
	scan      jsonScanner
	sseF      sseFramer
	cur, tot  oaiFields
	chunks    int64 // stream events with content
	firstTok  time.Time
	lastTok   time.Time
	firstB    time.Time
	done      bool // [DONE] seen
	streamErr string
	result    *GenAIUsage
}

// MaxGenAIBodyBytes caps how much of a request body, or of a non-streaming
// response body, the parser looks at; the rest passes unread. Usage comes
// last in a response, so a larger one is counted as too_large. 1 MiB
// holds a chat completion hundreds of times over, and a batch of about
// thirty 1536-dimension embeddings.
const MaxGenAIBodyBytes = 1 << 20

func newGenAICall(g *genaiRoute, path string, start time.Time) *GenAICall {
	c := &GenAICall{g: g, op: genaiOperation(path), start: start, now: g.t.now}
	c.req.request = true
	c.reqScan.sink = &c.req
	c.scan.sink = &c.cur
	c.sseF.reset()
	return c
}

// request scans request body bytes (transport goroutine).
func (c *GenAICall) request(p []byte) {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	if c.reqSeen >= MaxGenAIBodyBytes {
		return
	}
	if rest := MaxGenAIBodyBytes - c.reqSeen; int64(len(p)) > rest {
		p = p[:rest]
	}
	c.reqSeen += int64(len(p))
	c.reqScan.write(p)
}

// header notes the response status and framing.
func (c *GenAICall) header(code int, contentType, contentEncoding string) {
	c.status = code
	if contentEncoding != "" && !strings.EqualFold(contentEncoding, "identity") {
		c.skip = parseEncoded
		return
	}
	mt, _, _ := strings.Cut(contentType, ";")
	c.sse = strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}

// response scans response body bytes as they are written to the client.
func (c *GenAICall) response(p []byte) {
	if c.firstB.IsZero() {
		c.firstB = c.now()
	}
	if c.skip != "" || c.status < 200 || c.status > 299 {
		return
	}
	if c.sse {
		c.sseF.write(p, c)
		return
	}
	if c.seen >= MaxGenAIBodyBytes {
		return
	}
	if rest := MaxGenAIBodyBytes - c.seen; int64(len(p)) > rest {
		p = p[:rest]
	}
	c.seen += int64(len(p))
	c.scan.write(p)
	if c.scan.state == stError {
		c.skip = c.scan.err
	}
}

// sseSink: each event is one JSON value, scanned into cur and merged into
// tot when complete.
func (c *GenAICall) data(p []byte) { c.scan.write(p) }
func (c *GenAICall) newline()      { c.scan.write([]byte{'\n'}) }

func (c *GenAICall) event(done, tooBig bool) {
	defer func() { c.scan.reset(); c.cur.clear() }()
	switch {
	case done:
		c.done = true
		return
	case tooBig:
		c.noteErr(parseEventLarge)
		return
	}
	if !c.scan.end() {
		c.noteErr(cmpOr(c.scan.err, parseMalformed))
		return
	}
	if c.cur.content {
		now := c.now()
		if c.firstTok.IsZero() {
			c.firstTok = now
		}
		c.lastTok = now
		c.chunks++
	}
	c.merge(&c.cur)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// noteErr keeps the first parse problem of a stream; the stream goes on
// being read (one bad event does not hide the usage chunk).
func (c *GenAICall) noteErr(reason string) {
	if c.streamErr == "" {
		c.streamErr = reason
	}
}

func (c *GenAICall) merge(f *oaiFields) {
	if f.modelN > 0 {
		c.tot.modelN = copy(c.tot.model[:], f.model[:f.modelN])
		c.tot.modelTrunc = f.modelTrunc
	}
	if f.hasIn {
		c.tot.in, c.tot.hasIn = f.in, true
	}
	if f.hasOut {
		c.tot.out, c.tot.hasOut = f.out, true
	}
	for i := 0; i < f.finishN && c.tot.finishN < maxFinishReasons; i++ {
		c.tot.finish[c.tot.finishN] = f.finish[i]
		c.tot.finishN++
	}
	c.tot.err = c.tot.err || f.err
}

// finish ends the call: what it said, recorded in the metrics. replayed
// says the answer came from hopwatch's cache or a static fallback: it
// counts as a request, but its tokens were not spent now. Called once,
// from Hop.End.
func (c *GenAICall) finish(end time.Time, replayed bool) *GenAIUsage {
	if c.result != nil {
		return c.result
	}
	u := &GenAIUsage{Operation: c.op, Replayed: replayed}
	c.reqMu.Lock()
	c.reqScan.end()
	if c.req.modelN > 0 && !c.req.modelTrunc {
		u.RequestModel = modelName(c.req.model[:c.req.modelN])
	}
	u.Stream = c.req.stream
	reqErr := ""
	if u.RequestModel == "" && c.reqSeen > 0 {
		switch {
		case c.reqScan.state == stError:
			reqErr = c.reqScan.err
		case c.reqSeen >= MaxGenAIBodyBytes:
			reqErr = parseTooLarge
		}
	}
	c.reqMu.Unlock()

	ok2xx := c.status >= 200 && c.status <= 299
	switch {
	case !ok2xx || c.skip != "":
	case c.sse:
		c.sseF.flush(c)
	default:
		if c.scan.end() {
			c.merge(&c.cur)
		} else if c.seen >= MaxGenAIBodyBytes {
			c.skip = parseTooLarge
		} else if c.seen > 0 {
			c.skip = cmpOr(c.scan.err, parseTruncated)
		}
	}
	respErr := ""
	if ok2xx {
		respErr = cmpOr(c.skip, c.streamErr)
	}
	parseErr := cmpOr(respErr, reqErr)
	u.ParseError = parseErr

	if c.tot.modelN > 0 && !c.tot.modelTrunc {
		u.ResponseModel = modelName(c.tot.model[:c.tot.modelN])
	}
	u.InputTokens, u.OutputTokens = c.tot.in, c.tot.out
	if !c.tot.hasOut && c.sse && c.chunks > 0 {
		// No usage chunk (stream_options.include_usage not set): count
		// content chunks, as the GenAI conventions allow.
		u.OutputTokens, u.Estimated = c.chunks, true
	}
	for i := 0; i < c.tot.finishN; i++ {
		u.FinishReasons = append(u.FinishReasons, c.tot.finish[i])
		u.Truncated = u.Truncated || c.tot.finish[i] == FinishLength
	}
	switch {
	case !ok2xx || c.tot.err:
		u.FinishReason = FinishError
	case c.tot.finishN > 0:
		u.FinishReason = c.tot.finish[0]
	default:
		u.FinishReason = FinishNone
	}
	if c.sse {
		if !c.firstTok.IsZero() {
			u.TTFT = c.firstTok.Sub(c.start)
		}
	} else if ok2xx && !c.firstB.IsZero() {
		u.TTFT = c.firstB.Sub(c.start)
	}

	tab := c.g.t.x.genaiTab.Load()
	u.Model = OtherModel
	price, priced := GenAIPrice{}, false
	for _, m := range []string{u.RequestModel, u.ResponseModel} {
		if m != "" && tab != nil && tab.models[m] {
			u.Model = m
			price, priced = tab.prices[m]
			break
		}
	}
	s := c.g.get(genaiKey{model: u.Model, finish: u.FinishReason})
	s.requests.Inc()
	if parseErr != "" {
		c.g.t.x.genai.parseErrors.WithLabelValues(c.g.route, parseErr).Inc()
	}
	c.result = u
	if replayed {
		return u
	}
	if u.InputTokens > 0 {
		s.in.Add(float64(u.InputTokens))
	}
	if u.OutputTokens > 0 {
		s.out.Add(float64(u.OutputTokens))
	}
	if priced {
		if cost := (float64(u.InputTokens)*price.Input + float64(u.OutputTokens)*price.Output) / 1e6; cost > 0 {
			s.cost.Add(cost)
		}
	} else if ok2xx {
		s.unpriced.Inc()
	}
	if u.TTFT > 0 {
		s.ttft.Observe(u.TTFT.Seconds())
	}
	if c.sse && u.OutputTokens > 1 && !c.firstTok.IsZero() {
		last := c.lastTok
		if !last.After(c.firstTok) {
			last = end
		}
		s.tpot.Observe(last.Sub(c.firstTok).Seconds() / float64(u.OutputTokens-1))
	}
	return u
}

// finishReason is what the stored span keeps of a call (nil: not a genai
// call): FinishLength when any choice stopped at its token limit, the
// conversation's truncated signal, else the first choice's reason.
func (u *GenAIUsage) finishReason() string {
	switch {
	case u == nil:
		return ""
	case u.Truncated:
		return FinishLength
	}
	return u.FinishReason
}

// attrs are the gen_ai.* span attributes of a finished call.
func (u *GenAIUsage) appendAttrs(a []attribute.KeyValue) []attribute.KeyValue {
	a = append(a, attribute.String("gen_ai.operation.name", u.Operation))
	if u.RequestModel != "" {
		a = append(a, attribute.String("gen_ai.request.model", u.RequestModel))
	}
	if u.ResponseModel != "" {
		a = append(a, attribute.String("gen_ai.response.model", u.ResponseModel))
	}
	if u.InputTokens > 0 {
		a = append(a, attribute.Int64("gen_ai.usage.input_tokens", u.InputTokens))
	}
	if u.OutputTokens > 0 {
		a = append(a, attribute.Int64("gen_ai.usage.output_tokens", u.OutputTokens))
	}
	if len(u.FinishReasons) > 0 {
		a = append(a, attribute.StringSlice("gen_ai.response.finish_reasons", u.FinishReasons))
	}
	return a
}

// modelName makes a captured model name safe for span attributes and log
// lines (OTLP strings must be UTF-8): invalid bytes become U+FFFD.
func modelName(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
