package telemetry

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// AccessLogConfig is the access_log section, as written. Which requests
// get a line: every request whose outcome is not ok (error, timeout,
// rejected, fallback, canceled), every request slower than SlowerThan
// when that is set, and a SampleRatio share of the rest.
//
//	all requests (default)   access_log: {output: stdout}
//	errors only              sample_ratio: 0
//	errors and slow ones     sample_ratio: 0, slower_than: 500ms
//	a sample                 sample_ratio: 0.1
type AccessLogConfig struct {
	// Output is "" (no access log, the default), "stdout", or a file
	// path, appended to and reopened on SIGUSR1 (for logrotate).
	Output string `yaml:"output"`
	// OTLP also sends every line as an OTLP log record (event name
	// hopwatch.access, the line's fields as hopwatch.* attributes, the
	// hop's trace and span id as the record's) to the collector of
	// telemetry.tracing.otlp. With no Output, the records are the log.
	OTLP bool `yaml:"otlp"`
	// SlowerThan logs every request at least this long (0: no such rule).
	SlowerThan time.Duration `yaml:"slower_than"`
	// SampleRatio is the share of the other requests that are logged,
	// 0..1 (default 1: all). It is decided by trace id, so the hops of one
	// trace are logged together or not at all.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// IncludeQuery keeps the URL query in path (default false: queries
	// carry API keys and personal data more often than paths do).
	IncludeQuery bool `yaml:"include_query"`
	// QueueSize bounds the lines waiting for the writer (0:
	// DefaultAccessLogQueue). When it is full (a slow disk), lines are
	// dropped and counted in hopwatch_access_log_dropped_total: requests
	// never wait for the log.
	QueueSize int `yaml:"queue_size"`
}

// Access log defaults and bounds.
const (
	AccessLogStdout       = "stdout"
	DefaultAccessLogQueue = 4096
	// MaxAccessLogLine bounds one line, in bytes. Every field is bounded
	// (names from the configuration, a path cut at maxLogPath bytes, a
	// model name at MaxGenAIValueLen), so a line stays well under it.
	MaxAccessLogLine = 4096
	maxLogPath       = 1024
	maxLogField      = 128
)

// Validate reports problems as field paths relative to "access_log".
func (c *AccessLogConfig) Validate() map[string]string {
	errs := map[string]string{}
	if c.SlowerThan < 0 {
		errs["slower_than"] = "must not be negative"
	}
	if r := c.SampleRatio; r != nil && !(*r >= 0 && *r <= 1) {
		errs["sample_ratio"] = "must be between 0 and 1"
	}
	if c.QueueSize < 0 {
		errs["queue_size"] = "must not be negative"
	}
	if c.Output == "" && !c.OTLP && (c.SlowerThan != 0 || c.SampleRatio != nil || c.IncludeQuery || c.QueueSize != 0) {
		errs["output"] = `required when other access_log fields are set ("stdout" or a file path, or otlp: true)`
	}
	return errs
}

type accessLogMetrics struct {
	lines, dropped, errors prometheus.Counter
}

func newAccessLogMetrics(reg prometheus.Registerer) *accessLogMetrics {
	m := &accessLogMetrics{
		lines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_access_log_lines_total",
			Help: "Access log lines written.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_access_log_dropped_total",
			Help: "Access log lines dropped because the writer's queue was full (the disk or stdout reader is slow).",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_access_log_write_errors_total",
			Help: "Failed access log writes and reopens (their lines are lost).",
		}),
	}
	reg.MustRegister(m.lines, m.dropped, m.errors)
	return m
}

// AccessLog writes one JSON line per request from a bounded queue on its
// own goroutine, so a slow disk costs lines (counted), never latency.
type AccessLog struct {
	cfg       AccessLogConfig
	threshold uint64 // sampling: trace ids below it are logged
	m         *accessLogMetrics
	pool      sync.Pool

	queue  chan *[]byte
	reopen chan chan error
	quit   chan struct{}
	done   chan struct{}
	once   sync.Once

	// Owned by the writer goroutine.
	f  *os.File // nil for stdout
	w  io.Writer
	bw *bufio.Writer // nil: no output, OTLP records only
	// otlp receives every line as a log record (nil: access_log.otlp is
	// off). Its JSON decoding runs here, on the writer goroutine, never
	// on a request's.
	otlp *EventLog
}

// OpenAccessLog opens the configured output (nil, nil when there is none)
// and starts its writer; Close stops it. stdout is where "stdout" writes.
func (t *Telemetry) OpenAccessLog(cfg AccessLogConfig, stdout io.Writer) (*AccessLog, error) {
	if cfg.Output == "" && !cfg.OTLP {
		return nil, nil
	}
	a := &AccessLog{
		cfg:    cfg,
		m:      t.x.alogM,
		queue:  make(chan *[]byte, cmpInt(cfg.QueueSize, DefaultAccessLogQueue)),
		reopen: make(chan chan error),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	a.pool.New = func() any { b := make([]byte, 0, 1024); return &b }
	ratio := 1.0
	if cfg.SampleRatio != nil {
		ratio = *cfg.SampleRatio
	}
	a.threshold = uint64(ratio * math.MaxUint64)
	if ratio >= 1 {
		a.threshold = math.MaxUint64
	}
	switch cfg.Output {
	case "":
	case AccessLogStdout:
		a.w = stdout
	default:
		f, err := openLogFile(cfg.Output)
		if err != nil {
			return nil, err
		}
		a.f, a.w = f, f
	}
	if a.w != nil {
		a.bw = bufio.NewWriterSize(a.w, 64<<10)
	}
	if cfg.OTLP {
		el, err := t.OpenEventLog("access")
		if err != nil {
			if a.f != nil {
				a.f.Close()
			}
			return nil, fmt.Errorf("access log: %w", err)
		}
		a.otlp = el
	}
	go a.run()
	return a, nil
}

func cmpInt(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("access log: %w", err)
	}
	return f, nil
}

// SetAccessLog makes a the access log of every hop that ends from now on
// (nil: none) and returns the previous one, for the caller to Close.
func (t *Telemetry) SetAccessLog(a *AccessLog) *AccessLog {
	if t == nil {
		return nil
	}
	return t.x.alog.Swap(a)
}

// AccessLog returns the current access log, or nil.
func (t *Telemetry) AccessLog() *AccessLog {
	if t == nil {
		return nil
	}
	return t.x.alog.Load()
}

// Config is the configuration the access log was opened with.
func (a *AccessLog) Config() AccessLogConfig { return a.cfg }

// Reopen closes and reopens a file output, after logrotate moved or
// removed it (SIGUSR1). If the file cannot be opened, the old one stays.
// A no-op for stdout.
func (a *AccessLog) Reopen() error {
	if a == nil || a.cfg.Output == "" || a.cfg.Output == AccessLogStdout {
		return nil
	}
	ch := make(chan error, 1)
	select {
	case a.reopen <- ch:
		return <-ch
	case <-a.done:
		return errors.New("access log: closed")
	}
}

// Close writes the lines still queued and closes the output. Lines that
// arrive later are dropped.
func (a *AccessLog) Close() error {
	if a == nil {
		return nil
	}
	a.once.Do(func() { close(a.quit) })
	<-a.done
	return nil
}

func (a *AccessLog) run() {
	defer close(a.done)
	for {
		select {
		case b := <-a.queue:
			a.write(b)
			if len(a.queue) == 0 {
				a.flush()
			}
		case ch := <-a.reopen:
			a.flush()
			f, err := openLogFile(a.cfg.Output)
			if err != nil {
				a.m.errors.Inc()
				ch <- err
				continue
			}
			a.f.Close()
			a.f, a.w = f, f
			a.bw.Reset(f)
			ch <- nil
		case <-a.quit:
		drain:
			for {
				select {
				case b := <-a.queue:
					a.write(b)
				default:
					break drain
				}
			}
			a.flush()
			if a.f != nil {
				a.f.Close()
			}
			if a.otlp != nil {
				// Bounded: a collector that is down does not hold up a
				// reload or the shutdown.
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				a.otlp.Close(ctx)
				cancel()
			}
			return
		}
	}
}

func (a *AccessLog) write(b *[]byte) {
	if a.otlp != nil {
		// The SDK's batch processor queues the record (bounded, dropping
		// rather than blocking); the line's bytes are not kept.
		if _, err := a.otlp.Write(*b); err != nil {
			a.m.errors.Inc()
		}
	}
	if a.bw == nil {
		a.m.lines.Inc()
	} else if _, err := a.bw.Write(*b); err != nil {
		a.m.errors.Inc()
		a.bw.Reset(a.w) // drop what could not be written; try again with the next line
	} else {
		a.m.lines.Inc()
	}
	*b = (*b)[:0]
	a.pool.Put(b)
}

func (a *AccessLog) flush() {
	if a.bw == nil {
		return
	}
	if err := a.bw.Flush(); err != nil {
		a.m.errors.Inc()
		a.bw.Reset(a.w)
	}
}

// accessRecord is what one line says.
type accessRecord struct {
	h        *Hop
	code     string
	outcome  Outcome
	end      time.Time
	d        time.Duration
	fallback string
	usage    *GenAIUsage
	attempts int
	endpoint string
}

// wants applies the filter.
func (a *AccessLog) wants(h *Hop, outcome Outcome, d time.Duration) bool {
	if outcome != OutcomeOK {
		return true
	}
	if a.cfg.SlowerThan > 0 && d >= a.cfg.SlowerThan {
		return true
	}
	if a.threshold == math.MaxUint64 {
		return true
	}
	tid := h.sc.TraceID()
	return binary.BigEndian.Uint64(tid[8:]) < a.threshold
}

// logAccess queues the hop's line, if the filter takes it. Called by End.
func (h *Hop) logAccess(code string, outcome Outcome, end time.Time, d time.Duration, events []SpanEvent, usage *GenAIUsage) {
	a := h.r.t.x.alog.Load()
	if a == nil || !a.wants(h, outcome, d) {
		return
	}
	rec := accessRecord{h: h, code: code, outcome: outcome, end: end, d: d, usage: usage}
	h.mu.Lock()
	rec.attempts, rec.endpoint = h.attempts, h.ext.endpoint
	h.mu.Unlock()
	for _, ev := range events {
		if ev.Name == "fallback" {
			rec.fallback = ev.Attrs["source"]
		}
	}
	b := a.pool.Get().(*[]byte)
	*b = a.appendLine((*b)[:0], &rec)
	select {
	case a.queue <- b:
	default:
		a.m.dropped.Inc()
		*b = (*b)[:0]
		a.pool.Put(b)
	}
}

// appendLine writes the JSON line (field list in the README, "Access
// log"). Never bodies, headers or credentials.
func (a *AccessLog) appendLine(b []byte, r *accessRecord) []byte {
	h := r.h
	b = append(b, `{"time":"`...)
	b = h.start.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z")
	b = append(b, `","trace_id":"`...)
	tid, sid := h.sc.TraceID(), h.sc.SpanID()
	b = appendHex(b, tid[:])
	b = append(b, `","span_id":"`...)
	b = appendHex(b, sid[:])
	b = append(b, '"')
	b = appendStrField(b, "caller", h.caller, maxLogField)
	b = appendStrField(b, "route", h.r.info.Name, maxLogField)
	b = appendStrField(b, "upstream", h.r.info.Upstream, maxLogField)
	if r.endpoint != "" {
		b = appendStrField(b, "endpoint", r.endpoint, maxLogField)
	}
	b = appendStrField(b, "method", h.method, maxLogField)
	if x := h.ext.x; x != nil {
		p := x.path
		if a.cfg.IncludeQuery && x.query != "" {
			p += "?" + x.query
		}
		b = appendStrField(b, "path", p, maxLogPath)
	} else if h.r.info.GRPC || len(h.method) > 0 && h.method[0] == '/' {
		b = appendStrField(b, "path", h.method, maxLogPath)
	}
	b = appendStrField(b, "code", r.code, maxLogField)
	b = appendStrField(b, "outcome", string(r.outcome), maxLogField)
	b = append(b, `,"duration_ms":`...)
	b = appendMillis(b, r.d)
	if h.ttfb > 0 {
		b = append(b, `,"ttfb_ms":`...)
		b = appendMillis(b, h.ttfb)
	}
	if x := h.ext.x; x != nil {
		b = append(b, `,"bytes_in":`...)
		b = strconv.AppendInt(b, x.bytesIn.Load(), 10)
		b = append(b, `,"bytes_out":`...)
		b = strconv.AppendInt(b, x.bytesOut, 10)
	}
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(r.attempts), 10)
	if r.fallback != "" {
		b = appendStrField(b, "fallback", r.fallback, maxLogField)
	}
	if h.ext.session != "" {
		b = appendStrField(b, "session_id", h.ext.session, maxLogField)
	}
	if u := r.usage; u != nil {
		b = append(b, `,"genai":{"operation":`...)
		b = appendJSONString(b, u.Operation, maxLogField)
		b = appendStrField(b, "model", u.Model, maxLogField)
		if u.RequestModel != "" {
			b = appendStrField(b, "request_model", u.RequestModel, maxLogField)
		}
		if u.ResponseModel != "" {
			b = appendStrField(b, "response_model", u.ResponseModel, maxLogField)
		}
		b = append(b, `,"stream":`...)
		b = strconv.AppendBool(b, u.Stream)
		b = append(b, `,"input_tokens":`...)
		b = strconv.AppendInt(b, u.InputTokens, 10)
		b = append(b, `,"output_tokens":`...)
		b = strconv.AppendInt(b, u.OutputTokens, 10)
		b = appendStrField(b, "finish_reason", u.FinishReason, maxLogField)
		if u.TTFT > 0 {
			b = append(b, `,"ttft_ms":`...)
			b = appendMillis(b, u.TTFT)
		}
		if u.Replayed {
			b = append(b, `,"replayed":true`...)
		}
		if u.ParseError != "" {
			b = appendStrField(b, "parse_error", u.ParseError, maxLogField)
		}
		b = append(b, '}')
	}
	return append(b, "}\n"...)
}

func appendHex(b []byte, id []byte) []byte {
	const digits = "0123456789abcdef"
	for _, c := range id {
		b = append(b, digits[c>>4], digits[c&15])
	}
	return b
}

func appendMillis(b []byte, d time.Duration) []byte {
	return strconv.AppendFloat(b, float64(d)/float64(time.Millisecond), 'f', 3, 64)
}

func appendStrField(b []byte, key, v string, max int) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return appendJSONString(b, v, max)
}

// appendJSONString writes s as a JSON string of at most max bytes between
// its quotes (cut at a character boundary): control characters escaped,
// invalid UTF-8 replaced, so every line is valid JSON whatever a client
// sent, and bounded whatever its length.
func appendJSONString(b []byte, s string, max int) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := len(b)
	for i := 0; i < len(s); {
		c := s[i]
		var esc [6]byte
		var out []byte
		n := 1
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				esc[0], esc[1] = '\\', c
				out = esc[:2]
			case c < 0x20 || c == 0x7f:
				esc = [6]byte{'\\', 'u', '0', '0', hex[c>>4], hex[c&15]}
				out = esc[:]
			default:
				out = esc[:1]
				esc[0] = c
			}
		} else {
			var r rune
			r, n = utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				copy(esc[:], `\ufffd`)
				out = esc[:]
			}
		}
		need := len(out)
		if out == nil {
			need = n // a valid multi-byte character, as is
		}
		if len(b)-start+need > max {
			break
		}
		if out == nil {
			b = append(b, s[i:i+n]...)
		} else {
			b = append(b, out...)
		}
		i += n
	}
	return append(b, '"')
}
