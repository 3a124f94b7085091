package telemetry

import (
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// extras is the state of the genai metrics and the access log, kept apart
// from the hop metrics so that neither changes their code.
type extras struct {
	genai    *genaiMetrics
	genaiTab atomic.Pointer[genaiTable]
	alog     atomic.Pointer[AccessLog]
	alogM    *accessLogMetrics
}

func newExtras(reg prometheus.Registerer) extras {
	return extras{genai: newGenAIMetrics(reg), alogM: newAccessLogMetrics(reg)}
}

// hopExt is what a hop keeps for the genai metrics and the access log.
type hopExt struct {
	endpoint string // the last attempt's
	session  string
	x        *Exchange // HTTP listeners, when something observes the body
}

// Exchange observes one HTTP request body as the upstream transport reads
// it and the response as it is written to the client: byte counts for the
// access log and, on genai routes, the usage parser. It never holds a byte
// back: each slice is looked at after it was passed on.
type Exchange struct {
	h        *Hop
	path     string
	query    string
	bytesIn  atomic.Int64 // the transport reads the body on its own goroutine
	bytesOut int64
	gen      *GenAICall
	body     reqBody
}

// ObserveHTTP sets up the observation of an HTTP exchange: it returns the
// body the upstream request must read (r.Body itself when nothing needs
// to see it) and the observer of the response (nil-safe). Nothing is
// observed unless the route is a genai route or the access log is on.
func (h *Hop) ObserveHTTP(r *http.Request) (io.ReadCloser, *Exchange) {
	if h == nil {
		return r.Body, nil
	}
	t := h.r.t
	if h.r.genai == nil && t.x.alog.Load() == nil {
		return r.Body, nil
	}
	e := &Exchange{h: h, path: r.URL.Path, query: r.URL.RawQuery}
	if h.r.genai != nil {
		e.gen = newGenAICall(h.r.genai, r.URL.Path, h.start)
	}
	h.ext.x = e
	if r.Body == nil || r.Body == http.NoBody {
		return r.Body, e
	}
	e.body = reqBody{rc: r.Body, e: e}
	return &e.body, e
}

// WriteHeader notes the final response status and its framing.
func (e *Exchange) WriteHeader(code int, h http.Header) {
	if e == nil || e.gen == nil {
		return
	}
	e.gen.header(code, h.Get("Content-Type"), h.Get("Content-Encoding"))
}

// Write observes response bytes already written to the client.
func (e *Exchange) Write(p []byte) {
	if e == nil {
		return
	}
	e.bytesOut += int64(len(p))
	if e.gen != nil {
		e.gen.response(p)
	}
}

type reqBody struct {
	rc io.ReadCloser
	e  *Exchange
}

func (b *reqBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.e.bytesIn.Add(int64(n))
		if b.e.gen != nil {
			b.e.gen.request(p[:n])
		}
	}
	return n, err
}

func (b *reqBody) Close() error { return b.rc.Close() }

// LogSession names the hop's conversation session in its access log line
// (the conversation hook knows it; the line leaves it out otherwise).
func (h *Hop) LogSession(id string) {
	if h == nil {
		return
	}
	h.ext.session = id
}

// GenAI returns what the hop's genai call said, once the hop has ended
// (for the conversation signals: a "length" finish is a truncated answer).
func (h *Hop) GenAI() (GenAIUsage, bool) {
	if h == nil || h.ext.x == nil || h.ext.x.gen == nil || h.ext.x.gen.result == nil {
		return GenAIUsage{}, false
	}
	return *h.ext.x.gen.result, true
}

// endGenAI finishes the hop's genai call, if any, and puts its gen_ai.*
// attributes on the server span. Called by End before the span ends.
func (h *Hop) endGenAI(end time.Time) *GenAIUsage {
	if h.ext.x == nil || h.ext.x.gen == nil {
		return nil
	}
	// A cached or static fallback answer spent no tokens: it is counted
	// as a request, not as usage.
	var fallback string
	h.mu.Lock()
	for _, ev := range h.events {
		if ev.Name == "fallback" {
			fallback = ev.Attrs["source"]
		}
	}
	h.mu.Unlock()
	return h.ext.x.gen.finish(end, fallback == "cache" || fallback == "static")
}
