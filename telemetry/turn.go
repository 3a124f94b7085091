package telemetry

import (
	"cmp"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Turns: a request on an entry route is one user turn of a conversation.
// telemetry does not know what a session is; it tells a TurnObserver (the
// conversation tracker, through Tracker.Observer) when an entry hop starts and
// ends, with the hops of its trace, and writes what the observer returns
// onto every hop span of the turn: the exported ones (held until then by
// the turn holder, turnhold.go) and the stored ones (Store.markTurn). The
// proxy never sees any of it.

// TurnObserver is told about turns. Its methods run on request goroutines
// and must be quick and safe for concurrent use.
type TurnObserver interface {
	// Entry reports whether requests on route are turns, and whether the
	// start of their JSON request bodies is wanted (Turn.Body).
	Entry(route string) (turn, body bool)
	// VerdictHeader names the response header, lowercase, in which a
	// service gives its verdict on a turn ("" for none). Any hop's
	// response may carry it; it is removed before the response leaves.
	VerdictHeader() string
	// HeaderKeys lists the request headers (lowercase) the observer reads
	// through Turn.Header: they are copied when the entry hop starts,
	// before the proxy writes its own propagation headers into the
	// request's metadata.
	HeaderKeys() []string
	// SessionID returns the session id a request's headers or metadata
	// carry (get takes lowercase names), as it may be exported; "" when
	// none does (it may still be found in the body at the turn's end).
	SessionID(get func(key string) string) string
	// TurnEnded classifies a finished turn. Header and Body are valid only
	// during the call.
	TurnEnded(Turn) TurnMark
}

// MaxTurnBodyBytes is how much of an entry request's JSON body is kept
// for the observer: the start of it, copied as it streams to the
// upstream; the rest passes unseen.
const MaxTurnBodyBytes = 64 << 10

// MaxTurnBodyBytesInFlight bounds the body bytes held by all entry
// requests in flight together: many slow uploads at once cannot make the
// copies grow without bound. A request that would pass it is not copied
// further (its turn may lack the id or text found in its body).
const MaxTurnBodyBytesInFlight = 64 << 20

// Verdicts a service may give in the verdict header; other values are
// removed and ignored.
var verdictRank = map[string]int{"no_match": 1, "resolved": 2, "handoff": 3}

// Turn is a finished entry hop and the hops of its trace.
type Turn struct {
	Route string
	// Header reads the request's headers or metadata (lowercase names).
	Header func(key string) string
	// Body is the start of a JSON request body (HTTP entry routes whose
	// observer wants it), at most MaxTurnBodyBytes; nil otherwise.
	Body []byte
	// BodyProto says Body is the start of a gRPC call's first request
	// message (protobuf wire format), not of a JSON body.
	BodyProto bool
	TraceID   trace.TraceID
	Start     time.Time
	Duration  time.Duration
	// FirstByte is the time to the first response byte; 0 if none came.
	FirstByte time.Duration
	Code      string
	Outcome   Outcome
	// Verdict is the strongest verdict any hop of the turn gave (handoff,
	// then resolved, then no_match), "" for none.
	Verdict string
	// Hops are the server spans of the turn's trace that ran within the
	// entry hop (it included, first), with their self times.
	Hops []TurnHop
}

// TurnHop is one hop of a turn.
type TurnHop struct {
	HopKey
	Code    string
	Outcome Outcome
	// Verdict is the verdict this hop's response carried, if any.
	Verdict string
	// FinishReason is a genai hop's (see Span.FinishReason), "" for
	// other hops: "length" is a truncated answer.
	FinishReason string
	Self         time.Duration
	// Depth counts hops from the entry hop (0).
	Depth int
}

// TurnMark is what the observer says about a turn, for its span: the
// session id as it may be exported (hashed if so configured; "" for
// none), the turn's index in its session (0: none) and its outcome.
type TurnMark struct {
	SessionID string
	Index     int
	Outcome   string
}

// turnHook is the installed observer.
type turnHook struct {
	o TurnObserver
	// verdict is o's verdict header, lowercase ("" for none), as gRPC
	// metadata keys it; verdictCanon and verdictTrailer are its keys in an
	// http.Header, as a header and as an unannounced trailer
	// (http.TrailerPrefix): worked out once, since every hop's response is
	// looked at.
	verdict, verdictCanon, verdictTrailer string
	// copied is the body bytes held by all entry hops in flight, bounded
	// by MaxTurnBodyBytesInFlight.
	copied atomic.Int64
}

// SetTurnObserver installs o (nil: none). Hops that started before keep
// the observer they started with.
func (t *Telemetry) SetTurnObserver(o TurnObserver) {
	if o == nil {
		t.turns.Store(nil)
		return
	}
	hook := &turnHook{o: o, verdict: strings.ToLower(o.VerdictHeader())}
	if hook.verdict != "" {
		hook.verdictCanon = http.CanonicalHeaderKey(hook.verdict)
		hook.verdictTrailer = http.TrailerPrefix + hook.verdictCanon
	}
	t.turns.Store(hook)
}

// turnState is an entry hop's turn in progress.
type turnState struct {
	o       TurnObserver
	hook    *turnHook
	carrier propagation.TextMapCarrier
	headers map[string]string // HeaderKeys as they arrived
	body    bool              // the observer wants the body
	capture *bodyCapture
	// held is the turn's registration with the turn holder (exported,
	// sampled turns): the session id for the spans of every hop of the
	// turn, and their spans until the turn is classified.
	held *heldTurn
}

// startTurn returns the turn state of a hop on r, nil when r is not an
// entry route (or no observer is set).
func (r *Route) startTurn(carrier propagation.TextMapCarrier) *turnState {
	hook := r.t.turns.Load()
	if hook == nil {
		return nil
	}
	turn, body := hook.o.Entry(r.info.Name)
	if !turn {
		return nil
	}
	ts := &turnState{o: hook.o, hook: hook, carrier: carrier, body: body}
	keys := hook.o.HeaderKeys()
	ts.headers = make(map[string]string, len(keys))
	for _, k := range keys {
		if v := carrier.Get(k); v != "" {
			ts.headers[k] = v
		}
	}
	return ts
}

// header reads the copy made at the start.
func (ts *turnState) header(key string) string { return ts.headers[key] }

// markSpan puts the session id on a new hop span: an entry hop's own, read
// from its headers, or, for the other hops, that of the turn in flight in
// the same trace, as registered with the turn holder by its entry hop
// (which also starts holding the trace's spans there, see turnhold.go).
// The id is kept on the hop for its client spans. Only exported spans
// carry attributes; the built-in store's spans get their turn when it is
// classified (Store.markTurn). Called by Start for a sampled hop with an
// exporter.
func (h *Hop) markSpan() {
	hold := h.r.t.holder
	if ts := h.turn; ts != nil {
		h.session = ts.o.SessionID(ts.header)
		if hold != nil {
			ts.held = hold.openTurn(h.sc.TraceID(), h.session)
		}
	} else if hold != nil {
		h.session = hold.session(h.sc.TraceID())
	}
	h.xs.session = h.session
}

// RequestBody returns what the proxy should forward as the request body:
// body itself, or, on an entry route whose observer reads JSON bodies, a
// reader that copies the first MaxTurnBodyBytes as they stream through.
// Nothing is read ahead: streaming and size limits are untouched.
func (h *Hop) RequestBody(body io.ReadCloser) io.ReadCloser {
	if h == nil || h.turn == nil || !h.turn.body || body == nil || body == http.NoBody ||
		!isJSON(h.turn.carrier.Get("content-type")) {
		return body
	}
	h.turn.capture = &bodyCapture{ReadCloser: body, budget: &h.turn.hook.copied}
	return h.turn.capture
}

// isJSON: application/json, or a +json structured syntax suffix (RFC 6839).
func isJSON(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// bodyCapture copies the start of a body as it is read. The transport may
// still be reading (on its own goroutine) when the hop ends, so the copy
// is guarded and stops when taken.
type bodyCapture struct {
	io.ReadCloser
	budget *atomic.Int64 // shared by all captures: see MaxTurnBodyBytesInFlight
	mu     sync.Mutex    // guards the fields below
	buf    []byte
	proto  bool // a gRPC request message, not a JSON body
	done   bool // nothing more is copied
	taken  bool // buf's bytes went back to the budget
}

func (c *bodyCapture) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	if n > 0 {
		c.keep(p[:n])
	}
	return n, err
}

// Write copies the start of a gRPC request message (see MessageCapture);
// it never fails and never blocks the call.
func (c *bodyCapture) Write(p []byte) (int, error) {
	c.keep(p)
	return len(p), nil
}

// keep copies what fits of p, within MaxTurnBodyBytes and the budget.
func (c *bodyCapture) keep(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if k := min(len(p), MaxTurnBodyBytes-len(c.buf)); !c.done && k > 0 {
		if c.budget.Add(int64(k)) > MaxTurnBodyBytesInFlight {
			c.budget.Add(-int64(k))
			c.done = true
		} else {
			c.buf = append(c.buf, p[:k]...)
		}
	}
}

// MessageCapture returns, on the entry hop of a gRPC call whose observer
// reads request bodies (proto: sources), a writer for the start of the
// call's first request message, as it goes upstream (protobuf wire
// format; the observer reads fields by number); nil otherwise. It must be
// called before the messages are forwarded; the writer may then be used
// from the forwarding goroutine, and takes at most MaxTurnBodyBytes.
func (h *Hop) MessageCapture() io.Writer {
	if h == nil || h.turn == nil || !h.turn.body || h.turn.capture != nil {
		return nil
	}
	c := &bodyCapture{budget: &h.turn.hook.copied, proto: true}
	h.turn.capture = c
	return c
}

// take ends the copy, gives its bytes back to the budget, and returns
// what was read so far.
func (c *bodyCapture) take() []byte {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = true
	if !c.taken {
		c.taken = true
		c.budget.Add(-int64(len(c.buf)))
	}
	return c.buf
}

// ResponseHeader looks for a service verdict in a hop's response headers
// (when they are written) or trailers (when the response has ended),
// records it as a "verdict" event on the hop and removes it: it is between
// the bot's services and hopwatch, not for the client.
func (h *Hop) ResponseHeader(hdr http.Header) {
	if h == nil {
		return
	}
	hook := h.r.t.turns.Load()
	if hook == nil {
		return
	}
	name := hook.verdictCanon
	if name == "" {
		return
	}
	h.verdictFrom(hdr, name, hook.verdictTrailer)
}

// VerdictKey is the metadata key (lowercase) in which services give
// their verdict on a turn, "" when no conversation observer reads one: a
// gRPC hop's response headers and trailers are looked at by the proxy,
// which calls Verdict with the value and removes the key.
func (h *Hop) VerdictKey() string {
	if h == nil {
		return ""
	}
	if hook := h.r.t.turns.Load(); hook != nil {
		return hook.verdict
	}
	return ""
}

// Verdict records a service verdict found in a hop's response as a
// "verdict" event on the hop, for the turn's classification; unknown
// values are ignored.
func (h *Hop) Verdict(v string) {
	if h == nil {
		return
	}
	v = strings.ToLower(strings.TrimSpace(v))
	if verdictRank[v] > 0 {
		h.Event("verdict", attribute.String("hopwatch.verdict", v))
	}
}

// verdictFrom reads and removes the verdict header name from hdr.
func (h *Hop) verdictFrom(hdr http.Header, name, trailer string) {
	// After the body the map holds the trailers too: announced ones under
	// their names, others with http.TrailerPrefix (see net/http).
	// Both keys are canonical already: indexed, not Get, so that looking
	// costs no allocation on hops without a verdict.
	var v string
	if vs := hdr[name]; len(vs) > 0 {
		v = vs[0]
	} else if vs := hdr[trailer]; len(vs) > 0 {
		v = vs[0]
	}
	if v == "" {
		return
	}
	delete(hdr, name)
	delete(hdr, trailer)
	h.Verdict(v)
}

// endTurn reports the finished entry hop to the observer and marks every
// hop span of the turn with what it says: the exported ones (its own, and
// those the turn holder kept for it) and the stored ones. It runs before
// the hop's own span is stored, so the entry span is added to the trace's
// stored spans here (and its turn kept for End).
func (h *Hop) endTurn(code string, outcome Outcome, d time.Duration, finish string, xs *hopSpan) {
	ts := h.turn
	if ts == nil {
		return
	}
	t := h.r.t
	entry := Span{
		TraceID: h.sc.TraceID(), SpanID: h.sc.SpanID(), ParentID: h.parent, Kind: KindServer,
		HopKey: HopKey{Caller: h.caller, Route: h.r.info.Name, Upstream: h.r.info.Upstream},
		Start:  h.start, Duration: d, Code: code, Outcome: outcome, FinishReason: finish,
	}
	h.mu.Lock()
	entry.Events = h.events
	h.mu.Unlock()
	hops, verdict := t.turnHops(entry)
	mark := ts.o.TurnEnded(Turn{
		Route: h.r.info.Name, Header: ts.header, Body: ts.capture.take(), BodyProto: ts.capture != nil && ts.capture.proto,
		TraceID: entry.TraceID, Start: h.start, Duration: d, FirstByte: h.ttfb,
		Code: code, Outcome: outcome, Verdict: verdict, Hops: hops,
	})
	// The access log line, written last in End, carries the session (as
	// the spans do: keyed-hashed when hash_ids is on).
	h.LogSession(mark.SessionID)
	if mark.SessionID != "" || mark.Outcome != "" {
		h.spanTurn = &SpanTurn{SessionID: mark.SessionID, Index: mark.Index, Outcome: mark.Outcome}
		t.Store.markTurn(entry.TraceID, entry.Start, entry.End(), h.spanTurn)
	}
	attrs := turnAttrs(mark)
	if t.holder != nil {
		t.holder.closeTurn(ts.held, attrs)
	}
	if xs != nil && len(attrs) > 0 {
		xs.turn, xs.turnMerge = attrs, true
	}
}

// turnHops returns the server spans of entry's trace that ran within it,
// entry first, with self times and depths below entry. A client that
// reuses one trace for several turns does not mix them: spans outside the
// entry hop's time are left out.
//
// Each hop is placed under the innermost hop whose time encloses it, not
// by its parent id: between two proxy hops the trace passes through the
// service's own spans (an instrumented service starts one per request),
// which the proxy never sees, so parent ids rarely link proxy hops
// directly.
func (t *Telemetry) turnHops(entry Span) ([]TurnHop, string) {
	var buf [8]Span // a turn's hops, without an allocation for most turns
	spans := t.Store.turnSpans(entry.TraceID, entry.Start, entry.End(), entry.SpanID, append(buf[:0], entry))
	// In start order, as a waterfall lists them (they were stored in the
	// order they ended).
	slices.SortStableFunc(spans[1:], func(a, b Span) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return cmp.Compare(b.Duration, a.Duration)
	})
	for i := 1; i < len(spans); i++ {
		parent := 0
		for j := 1; j < len(spans); j++ {
			if j != i && encloses(&spans[j], j, &spans[i], i) && spans[j].Start.After(spans[parent].Start) {
				parent = j
			}
		}
		spans[i].ParentID = spans[parent].SpanID
	}
	tr := buildTree(spans)
	hops := make([]TurnHop, len(spans))
	verdict := ""
	for i := range spans {
		v := verdictOf(spans[i].Events, "")
		hops[i] = TurnHop{HopKey: spans[i].HopKey, Code: spans[i].Code, Outcome: spans[i].Outcome, Verdict: v,
			FinishReason: spans[i].FinishReason, Self: tr.self[i], Depth: max(0, tr.depth[i]-tr.depth[0])}
		if verdictRank[v] > verdictRank[verdict] {
			verdict = v
		}
	}
	return hops, verdict
}

// verdictOf returns the stronger of v and the verdicts among events.
func verdictOf(events []SpanEvent, v string) string {
	for _, e := range events {
		if e.Name != "verdict" {
			continue
		}
		if got := e.Attrs["hopwatch.verdict"]; verdictRank[got] > verdictRank[v] {
			v = got
		}
	}
	return v
}

// encloses reports whether span a (index ai) may be the parent of b: its
// time contains b's, and equal intervals go to the earlier index, so that
// no two spans choose each other.
func encloses(a *Span, ai int, b *Span, bi int) bool {
	if a.Start.After(b.Start) || a.End().Before(b.End()) {
		return false
	}
	return !a.Start.Equal(b.Start) || !a.End().Equal(b.End()) || ai < bi
}
