package telemetry

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Every hop span of a turn carries hopwatch.turn.index and
// hopwatch.turn.outcome (issue 10), but a turn is classified only when its
// entry hop ends, and by then the hops it called have ended, and their
// spans have gone to the exporter. The index is not known earlier either:
// the tracker assigns it when the turn ends (predicting it at the start
// would be wrong whenever the session expires, is evicted or takes another
// turn meanwhile). So instead of guessing at span start, the spans wait:
// turnHolder sits in front of the export queue and holds the ended spans
// (hopSpan, export.go) of every trace whose entry turn is in flight; when
// the turn is classified it passes them on with the turn's attributes
// added (hopSpan.turn). Spans of other traces pass straight through.
//
// It is bounded three ways, without a goroutine of its own: turns held at
// once (MaxHeldTurns: the oldest is let go when a new one comes), spans
// held in all (MaxHeldSpans: past it a span passes on at once), and time
// (MaxTurnHold: a turn open longer is let go at the next span or turn that
// comes, so a long stream or WebSocket does not delay its hops' export for
// its whole life). Spans let go that way pass on unmarked, counted in
// hopwatch_turn_spans_unmarked_total{reason}; nothing is dropped here.

const (
	// MaxHeldTurns bounds the entry turns whose spans are held at once,
	// about 200 bytes each: far more turns than a proxy has in flight.
	MaxHeldTurns = 16384
	// MaxHeldSpans bounds the ended spans held for turns in flight: the
	// export queue's default size. A hop span in its compact form holds
	// about 0.3 KiB (TestTurnHolderBounded measures it, turns included),
	// so at most about 3 MiB are held.
	MaxHeldSpans = DefaultQueueSize
	// MaxTurnHold is the longest a span waits for its turn's outcome.
	MaxTurnHold = 30 * time.Second
)

// Reasons a held span passed on without its turn's attributes (the reason
// label of hopwatch_turn_spans_unmarked_total).
const (
	unmarkedSpansFull = iota // MaxHeldSpans were held
	unmarkedTurnsFull        // MaxHeldTurns were open: the oldest was let go
	unmarkedTimeout          // the turn ran past MaxTurnHold
	unmarkedShutdown         // telemetry shut down first
	numUnmarkedReasons
)

var unmarkedReasonName = [numUnmarkedReasons]string{"spans_full", "turns_full", "timeout", "shutdown"}

// turnHolder is in front of next, the export queue.
type turnHolder struct {
	next     func(*hopSpan)
	now      func() time.Time
	maxTurns int
	maxSpans int
	hold     time.Duration
	unmarked [numUnmarkedReasons]prometheus.Counter

	mu   sync.Mutex // guards the fields below
	open map[trace.TraceID]*heldTurn
	// lru lists the open turns oldest first (lru.next): with one hold
	// time for all, also in order of their deadlines.
	lru  heldTurn
	held int // spans held by all open turns
}

// heldTurn is one entry turn in flight and the spans of its trace that
// ended meanwhile.
type heldTurn struct {
	prev, next *heldTurn
	id         trace.TraceID
	// session is the session id of the turn as known when its entry hop
	// started ("" for none), for the span of every hop that starts in
	// the turn's trace.
	session string
	opened  time.Time
	spans   []*hopSpan
}

func newTurnHolder(next func(*hopSpan), now func() time.Time, unmarked *prometheus.CounterVec) *turnHolder {
	h := &turnHolder{
		next: next, now: now, maxTurns: MaxHeldTurns, maxSpans: MaxHeldSpans, hold: MaxTurnHold,
		open: map[trace.TraceID]*heldTurn{},
	}
	h.lru.next, h.lru.prev = &h.lru, &h.lru
	for r := range h.unmarked {
		h.unmarked[r] = unmarked.WithLabelValues(unmarkedReasonName[r])
	}
	return h
}

// openTurn starts holding the spans of trace id until closeTurn; nil when
// a turn of that trace is open already (a client that reuses a trace for
// two turns at once: the spans go with the first turn's attributes).
func (h *turnHolder) openTurn(id trace.TraceID, session string) *heldTurn {
	now := h.now()
	h.mu.Lock()
	let := h.expireLocked(now, nil)
	var t *heldTurn
	if h.open[id] == nil {
		if len(h.open) >= h.maxTurns {
			let = h.releaseLocked(h.lru.next, unmarkedTurnsFull, let)
		}
		t = &heldTurn{id: id, session: session, opened: now}
		t.prev, t.next = h.lru.prev, &h.lru
		h.lru.prev.next = t
		h.lru.prev = t
		h.open[id] = t
	}
	h.mu.Unlock()
	h.pass(let)
	return t
}

// session returns the session id registered for trace id's open turn.
func (h *turnHolder) session(id trace.TraceID) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t := h.open[id]; t != nil {
		return t.session
	}
	return ""
}

// closeTurn passes t's held spans on with attrs (the turn's attributes)
// added. A turn let go meanwhile has passed its spans on already.
func (h *turnHolder) closeTurn(t *heldTurn, attrs []attribute.KeyValue) {
	if t == nil {
		return
	}
	h.mu.Lock()
	if h.open[t.id] != t {
		h.mu.Unlock()
		return
	}
	h.removeLocked(t)
	spans := t.spans
	h.mu.Unlock()
	for _, s := range spans {
		if len(attrs) > 0 {
			s.turn, s.turnMerge = attrs, false
		}
		h.next(s)
	}
}

func (h *turnHolder) removeLocked(t *heldTurn) {
	delete(h.open, t.id)
	t.prev.next, t.next.prev = t.next, t.prev
	t.prev, t.next = nil, nil
	h.held -= len(t.spans)
}

// releaseLocked lets t go: its spans are appended to let, to pass on
// unmarked once the lock is released, and counted.
func (h *turnHolder) releaseLocked(t *heldTurn, reason int, let []*hopSpan) []*hopSpan {
	h.removeLocked(t)
	if n := len(t.spans); n > 0 {
		h.unmarked[reason].Add(float64(n))
	}
	return append(let, t.spans...)
}

// expireLocked lets go the turns open for MaxTurnHold. The list is in
// deadline order, so the cost is the number let go.
func (h *turnHolder) expireLocked(now time.Time, let []*hopSpan) []*hopSpan {
	for t := h.lru.next; t != &h.lru && now.Sub(t.opened) >= h.hold; t = h.lru.next {
		let = h.releaseLocked(t, unmarkedTimeout, let)
	}
	return let
}

func (h *turnHolder) pass(spans []*hopSpan) {
	for _, s := range spans {
		h.next(s)
	}
}

// onEnd holds s if its trace has a turn open, else passes it on. (Only
// sampled spans are made for export: see Route.Start.)
func (h *turnHolder) onEnd(s *hopSpan) {
	now := h.now()
	h.mu.Lock()
	let := h.expireLocked(now, nil)
	if t := h.open[s.traceID]; t == nil {
		let = append(let, s)
	} else if h.held >= h.maxSpans {
		h.unmarked[unmarkedSpansFull].Inc()
		let = append(let, s)
	} else {
		t.spans = append(t.spans, s)
		h.held++
	}
	h.mu.Unlock()
	h.pass(let)
}

// shutdown passes every held span on, unmarked, before the export queue
// flushes and stops.
func (h *turnHolder) shutdown() {
	h.mu.Lock()
	var let []*hopSpan
	for h.lru.next != &h.lru {
		let = h.releaseLocked(h.lru.next, unmarkedShutdown, let)
	}
	h.mu.Unlock()
	h.pass(let)
}

// heldCounts reports the turns and spans held, for tests.
func (h *turnHolder) heldCounts() (turns, spans int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.open), h.held
}

// Turn attribute keys (design section 5).
const (
	attrSessionID      = attribute.Key("session.id")
	attrConversationID = attribute.Key("gen_ai.conversation.id")
	attrTurnIndex      = attribute.Key("hopwatch.turn.index")
	attrTurnOutcome    = attribute.Key("hopwatch.turn.outcome")
)

// appendSessionAttrs appends the session attributes of a span: the same
// id under both conventions (OpenTelemetry GenAI and general session
// attributes, both in development; Phoenix and Langfuse key on
// session.id).
func appendSessionAttrs(a []attribute.KeyValue, id string) []attribute.KeyValue {
	return append(a, attrSessionID.String(id), attrConversationID.String(id))
}

// turnAttrs are the attributes a turn's mark puts on every hop span of
// the turn: nil when the observer said nothing.
func turnAttrs(m TurnMark) []attribute.KeyValue {
	var attrs []attribute.KeyValue
	if m.SessionID != "" {
		attrs = append(appendSessionAttrs(attrs, m.SessionID), attrTurnIndex.Int(m.Index))
	}
	if m.Outcome != "" {
		attrs = append(attrs, attrTurnOutcome.String(m.Outcome))
	}
	return attrs
}
