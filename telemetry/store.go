package telemetry

import (
	"cmp"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.opentelemetry.io/otel/trace"
)

const (
	// MaxSpansPerTrace caps the spans kept for one trace, so that a client
	// that reuses one trace for a whole long session cannot grow an entry
	// without bound. Spans past the cap are counted, not kept.
	MaxSpansPerTrace = 512
	// MaxServiceSpansPerTrace caps the services' own spans (KindService,
	// from the OTLP receiver) kept for one trace, on top of the hop spans:
	// they can never crowd a hop out of its trace.
	MaxServiceSpansPerTrace = 256
	// serviceBytesShare: the services' spans may take at most this share
	// (1/serviceBytesShare) of the store's byte bound, so a flood of them
	// cannot evict the hops' traces early.
	serviceBytesShare = 4

	// spanSliceRecycleCap is the largest span slice an evicted trace hands
	// on to the trace that takes its slot. Recycling makes Add allocation
	// free in the steady state; the limit stops one huge trace from pinning
	// a large array in a slot for ever.
	spanSliceRecycleCap = 32
	// initialSpanCap is the first allocation for a new trace: a bot turn is
	// a handful of hops, each a server span and one client span per attempt.
	initialSpanCap = 8

	defaultTraceLimit = 50
	maxTraceLimit     = 1000
)

// Store is the built-in trace store: a bounded ring of the most recent
// traces, each grouping the proxy's own spans for it. Every hop of a turn
// passes through the proxy, so those spans alone draw the turn's waterfall
// without any tracing backend.
//
// It is bounded three ways: in traces (max_traces), in spans per trace
// (MaxSpansPerTrace) and in bytes (max_bytes): each trace's memory is
// estimated as its spans arrive (see spanBytes) and the oldest traces are
// evicted while the estimate is over the bound, so a burst of large traces
// (many retries, long fan-outs) cannot grow the store past it.
//
// Add is on the request path: one mutex, held for well under a
// microsecond, and no allocation once the ring is full (evicted entries
// hand their span slices on). Queries never hold the mutex for long: they
// scan in chunks (see scan), copy what they need and work outside it. A
// single mutex measured fast enough (see BenchmarkStoreAdd); sharding would
// cost the global age order the ring gives for free.
type Store struct {
	max      int
	maxBytes int64
	// evicted counts evictions by reason (hopwatch_trace_store_evictions_total);
	// nil entries count nothing.
	evicted [numEvictReasons]counter

	mu sync.Mutex // guards the fields below
	// ring holds the traces in the order their first span arrived: the
	// trace with sequence number k is at ring[k % max]. The live traces are
	// those numbered oldest to total-1. The ring grows to max entries, then
	// each new trace takes the slot of the oldest.
	ring   []traceEntry
	total  uint64                // traces ever inserted: the next sequence number
	oldest uint64                // sequence number of the oldest live trace
	index  map[trace.TraceID]int // trace ID → position in ring
	// bytes is the estimated memory of the live traces, not counting the
	// ring's own slots (see Bytes).
	bytes int64

	droppedSpans  uint64
	evictedTraces uint64

	// svcBytes is the part of bytes held by service spans; svcRefused
	// counts service spans refused (see AddService). svcTraces are the
	// sequence numbers of the traces holding service spans, oldest first:
	// when the hops need room, these traces lose their service spans
	// before any trace is evicted.
	svcBytes   int64
	svcRefused uint64
	svcTraces  []uint64

	// slos are the entry routes' turn SLOs (see SetTurnSLOs), swapped whole.
	slos atomic.Pointer[map[string]time.Duration]
}

// counter is the part of a Prometheus counter the store uses.
type counter interface{ Inc() }

// Eviction reasons, the reason label of hopwatch_trace_store_evictions_total.
const (
	evictCount = iota // the store held max_traces traces
	evictBytes        // the store's estimate was over max_bytes
	numEvictReasons
)

var evictReasonName = [numEvictReasons]string{"max_traces", "max_bytes"}

// traceEntry is one trace in the ring. Its summary is computed when a query
// first needs it after a change, not on Add.
type traceEntry struct {
	id      trace.TraceID
	seq     uint64 // sequence number, see Store.ring
	spans   []Span // in arrival order
	dropped int    // spans refused because of MaxSpansPerTrace
	bytes   int64  // estimated memory held by the entry (not its ring slot)
	// svcSpans of spans are service spans, holding svcBytes of bytes.
	svcSpans int
	svcBytes int64
	sum      TraceSummary
	fresh    bool // sum reflects spans and dropped
}

// Memory estimates. Strings that come from the configuration or are
// constants (hop names, kinds, outcomes) are shared by every span and not
// counted; the rest is counted in full even where it might be shared, and
// every allocation is rounded up as the allocator's size classes do (by up
// to 1/8 for spans slices, to 16 bytes for strings), so the estimate errs
// high: TestStoreHeapBounded measures the heap within it.
var (
	spanSize  = int64(unsafe.Sizeof(Span{}))
	eventSize = int64(unsafe.Sizeof(SpanEvent{}))
	entrySize = int64(unsafe.Sizeof(traceEntry{}))
	// spanTurnSize is a SpanTurn's allocation (its size class).
	spanTurnSize = int64(unsafe.Sizeof(SpanTurn{})+15) &^ 15
)

const (
	// indexEntryBytes is a trace's share of the ID index: a map entry of
	// a 16-byte key and an int, with the map's load factor and overhead.
	indexEntryBytes = 64
	// attrMapBytes and attrEntryBytes estimate an event's attribute map:
	// header and first group of eight slots, then each further entry's
	// key and value headers and slot share.
	attrMapBytes   = 320
	attrEntryBytes = 48
)

// spanSliceBytes is the allocation of a span slice of capacity n.
func spanSliceBytes(n int) int64 {
	b := int64(n) * spanSize
	return b + b/8
}

// stringBytes is the allocation of a string of n bytes (none when empty).
func stringBytes(n int) int64 { return int64(n+15) &^ 15 }

// turnBytes is a span's share of its turn's SpanTurn: counted in full for
// every span that points to it (the spans of a turn share one), which errs
// high. Outcomes are constants.
func turnBytes(t *SpanTurn) int64 {
	if t == nil {
		return 0
	}
	return spanTurnSize + stringBytes(len(t.SessionID))
}

// spanBytes is the estimated memory a stored span holds beyond its slot in
// the trace's span slice. FinishReason is one of the Finish* constants.
func spanBytes(sp *Span) int64 {
	n := stringBytes(len(sp.Method)) + stringBytes(len(sp.Code)) + stringBytes(len(sp.Endpoint)) +
		stringBytes(len(sp.Service)) + stringBytes(len(sp.Name)) + turnBytes(sp.Turn)
	if cap(sp.Events) > 0 {
		n += int64(cap(sp.Events)) * eventSize
	}
	for i := range sp.Events {
		e := &sp.Events[i]
		n += stringBytes(len(e.Name))
		if e.Attrs != nil {
			n += attrMapBytes + int64(max(0, len(e.Attrs)-8))*attrEntryBytes
			for k, v := range e.Attrs {
				n += stringBytes(len(k)) + stringBytes(len(v))
			}
		}
	}
	return n
}

// StoreLimits bounds a Store; zero fields take the defaults.
type StoreLimits struct {
	MaxTraces int   // DefaultMaxTraces
	MaxBytes  int64 // DefaultStoreMaxBytes
}

// NewStore returns a store that keeps the maxTraces most recent traces
// (DefaultMaxTraces when maxTraces ≤ 0) within DefaultStoreMaxBytes.
func NewStore(maxTraces int) *Store {
	return NewStoreLimits(StoreLimits{MaxTraces: maxTraces})
}

// NewStoreLimits returns a store bounded by l. The ring of trace slots is
// itself counted against MaxBytes: max_traces is lowered, if need be, so
// that the slots take at most half of it.
func NewStoreLimits(l StoreLimits) *Store {
	if l.MaxTraces <= 0 {
		l.MaxTraces = DefaultMaxTraces
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultStoreMaxBytes
	}
	l.MaxTraces = int(max(1, min(int64(l.MaxTraces), l.MaxBytes/2/entrySize)))
	return &Store{max: l.MaxTraces, maxBytes: l.MaxBytes, index: make(map[trace.TraceID]int)}
}

// Add records a finished span. It is safe for concurrent use and cheap: the
// span is copied into its trace's entry (the Events slice is kept, not
// copied, so the caller must not change it afterwards). A span for a trace
// not yet in the store starts a new entry, evicting the oldest trace when
// the store is full. A span arriving after its trace was evicted starts a
// new, partial entry. Spans without a valid trace ID are ignored. Then the
// oldest traces are evicted while the store is over its byte bound (never
// the trace just added to: one trace is bounded by MaxSpansPerTrace).
func (s *Store) Add(sp Span) {
	if !sp.TraceID.IsValid() {
		return
	}
	s.mu.Lock()
	i, ok := s.index[sp.TraceID]
	if !ok {
		i = s.insertLocked(sp.TraceID)
	}
	e := &s.ring[i]
	e.fresh = false
	if len(e.spans)-e.svcSpans >= MaxSpansPerTrace {
		e.dropped++
		s.droppedSpans++
	} else {
		oldCap := cap(e.spans)
		e.spans = append(e.spans, sp)
		grown := spanSliceBytes(cap(e.spans)) - spanSliceBytes(oldCap) + spanBytes(&sp)
		e.bytes += grown
		s.bytes += grown
		for s.bytes+s.ringBytesLocked() > s.maxBytes && s.oldest < e.seq {
			if !s.dropServiceSpansLocked() {
				s.evictOldestLocked(evictBytes)
			}
		}
	}
	s.mu.Unlock()
}

// noteServiceTraceLocked queues a trace that just got its first service
// span. Entries of traces evicted since are dropped as they reach the
// front, and all at once when the queue holds twice as many entries as
// there are trace slots, which bounds it.
func (s *Store) noteServiceTraceLocked(seq uint64) {
	for len(s.svcTraces) > 0 && s.svcTraces[0] < s.oldest {
		s.svcTraces = s.svcTraces[1:]
	}
	if len(s.svcTraces) >= 2*s.max {
		s.svcTraces = slices.DeleteFunc(slices.Clone(s.svcTraces), func(q uint64) bool { return q < s.oldest })
	}
	s.svcTraces = append(s.svcTraces, seq)
}

// dropServiceSpansLocked removes the service spans of the oldest trace
// that has any, and reports whether there was one: the services' spans
// give way to the hops, so that they never shorten how long hop traces
// are kept.
func (s *Store) dropServiceSpansLocked() bool {
	for len(s.svcTraces) > 0 {
		seq := s.svcTraces[0]
		s.svcTraces = s.svcTraces[1:]
		if seq < s.oldest {
			continue // evicted meanwhile, its bytes with it
		}
		e := &s.ring[seq%uint64(s.max)]
		if e.seq != seq || e.svcSpans == 0 {
			continue
		}
		// A new slice sized for the hops, so that the room the service
		// spans took in the old one is given back too; the entry's bytes
		// are counted afresh, as insertLocked and Add count them.
		kept := make([]Span, 0, max(initialSpanCap, len(e.spans)-e.svcSpans))
		bytes := int64(indexEntryBytes)
		for i := range e.spans {
			if sp := &e.spans[i]; sp.Kind != KindService {
				kept = append(kept, *sp)
				bytes += spanBytes(sp)
			}
		}
		bytes += spanSliceBytes(cap(kept))
		e.spans = kept
		s.bytes += bytes - e.bytes
		e.bytes = bytes
		s.svcBytes -= e.svcBytes
		e.svcSpans, e.svcBytes, e.fresh = 0, 0, false
		return true
	}
	return false
}

func (s *Store) ringBytesLocked() int64 { return int64(cap(s.ring)) * entrySize }

// AddService records a span a service made itself (KindService), for the
// waterfall. Service spans never cost the hops anything: AddService never
// starts a trace (the span is kept only if hopwatch has seen the trace,
// its hops' spans are in the store) and never evicts one (the span is
// refused when the store has no room for it), and when the hops need
// room, traces lose their service spans, oldest first, before any trace
// is evicted (see Add). It is refused, and false returned, too when the
// trace holds MaxServiceSpansPerTrace of them or the services' spans hold
// their share of the byte bound (1/4).
func (s *Store) AddService(sp Span) bool {
	sp.Kind = KindService
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.index[sp.TraceID]
	if !ok || !sp.TraceID.IsValid() {
		s.svcRefused++
		return false
	}
	e := &s.ring[i]
	// A span id the trace already holds (a hop's, or a service span sent
	// twice) would take that span's place in the tree: refused.
	for j := range e.spans {
		if e.spans[j].SpanID == sp.SpanID {
			s.svcRefused++
			return false
		}
	}
	// Grown before the check, so that the check counts the slice's real
	// growth; a refused span leaves the new array to the collector.
	spans := slices.Grow(e.spans, 1)
	grown := spanSliceBytes(cap(spans)) - spanSliceBytes(cap(e.spans)) + spanBytes(&sp)
	if e.svcSpans >= MaxServiceSpansPerTrace || s.svcBytes+grown > s.maxBytes/serviceBytesShare ||
		s.bytes+s.ringBytesLocked()+grown > s.maxBytes {
		s.svcRefused++
		return false
	}
	if e.svcSpans == 0 {
		s.noteServiceTraceLocked(e.seq)
	}
	e.spans = append(spans, sp)
	e.fresh = false
	e.svcSpans++
	e.svcBytes += grown
	e.bytes += grown
	s.svcBytes += grown
	s.bytes += grown
	return true
}

// ServiceSpans reports the bytes held by service spans and how many were
// refused since the store was created.
func (s *Store) ServiceSpans() (bytes int64, refused uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svcBytes, s.svcRefused
}

// insertLocked makes room for a new trace and returns its ring position.
func (s *Store) insertLocked(id trace.TraceID) int {
	seq := s.total
	if s.total-s.oldest >= uint64(s.max) {
		s.evictOldestLocked(evictCount)
	}
	s.total++
	i := int(seq % uint64(s.max))
	if i == len(s.ring) {
		if len(s.ring) == cap(s.ring) {
			// Grow towards max without overshooting it: the slots are
			// counted against the byte bound.
			s.ring = slices.Grow(s.ring, min(s.max, max(16, 2*len(s.ring)))-len(s.ring))
		}
		s.ring = append(s.ring, traceEntry{})
	}
	e := &s.ring[i]
	spans := e.spans // empty: left by evictOldestLocked for reuse, or nil
	if spans == nil {
		spans = make([]Span, 0, initialSpanCap)
	}
	*e = traceEntry{id: id, seq: seq, spans: spans, bytes: spanSliceBytes(cap(spans)) + indexEntryBytes}
	s.bytes += e.bytes
	s.index[id] = i
	return i
}

// evictOldestLocked drops the oldest live trace. Its span slice stays in
// the slot for the next trace when small and evicted for count (the slot
// is about to be reused); otherwise it is released.
func (s *Store) evictOldestLocked(reason int) {
	e := &s.ring[s.oldest%uint64(s.max)]
	delete(s.index, e.id)
	s.bytes -= e.bytes
	s.svcBytes -= e.svcBytes
	s.oldest++
	s.evictedTraces++
	if c := s.evicted[reason]; c != nil {
		c.Inc()
	}
	spans := e.spans
	if reason == evictCount && cap(spans) <= spanSliceRecycleCap {
		clear(spans) // drop references (events) held by the evicted trace
		spans = spans[:0]
	} else {
		spans = nil
	}
	*e = traceEntry{spans: spans}
}

// Bytes is the store's estimated memory: the live traces (spans, their
// strings and events, index entries) and the ring's slots. It stays at or
// under the byte bound, except for a single trace bigger than the bound.
func (s *Store) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes + s.ringBytesLocked()
}

// MaxBytes is the byte bound, MaxTraces the trace bound (after lowering).
func (s *Store) MaxBytes() int64 { return s.maxBytes }
func (s *Store) MaxTraces() int  { return s.max }

// Len is the number of traces held.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.total - s.oldest)
}

// Dropped reports the spans refused because their trace was at
// MaxSpansPerTrace and the traces evicted to make room (for either bound),
// since the store was created.
func (s *Store) Dropped() (spans, traces uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.droppedSpans, s.evictedTraces
}

// scanChunk bounds the traces a scan visits per hold of the mutex. With a
// stale summary costing about half a microsecond, Add waits behind a scan
// for a fraction of a millisecond (0.1–0.2 ms measured for a chunk of
// stale summaries) rather than milliseconds for a full store.
const scanChunk = 256

// scan calls f with the mutex held for each trace, newest first. It lets go
// of the mutex every scanChunk traces so that Add is never stuck behind a
// whole scan. Traces inserted meanwhile are not visited (the scan is a
// view of the moment it started, minus what was evicted); reaching a trace
// evicted meanwhile ends the scan, since everything older went first.
func (s *Store) scan(f func(e *traceEntry)) {
	s.mu.Lock()
	k := s.total // one past the sequence number to visit next
	for n := 1; k > s.oldest; n++ {
		k--
		f(&s.ring[k%uint64(s.max)])
		if n%scanChunk == 0 {
			s.mu.Unlock()
			runtime.Gosched() // let waiting Adds in before taking it back
			s.mu.Lock()
		}
	}
	s.mu.Unlock()
}

// TraceQuery selects traces. Zero fields do not filter.
type TraceQuery struct {
	Route       string        // the root hop's route
	MinDuration time.Duration // traces at least this long
	ErrorOnly   bool          // traces with a failed hop
	Limit       int           // at most this many (default 50, at most 1000)
	Since       time.Time     // traces that started at or after this
	// Slow keeps only the turns that the bottleneck analysis would call
	// slow (see slow.go) among those whose root started within Window
	// (default 5m) before Now (default: the time of the call).
	Slow   bool
	Window time.Duration
	Now    time.Time
}

// TraceSummary describes a trace in a list.
type TraceSummary struct {
	TraceID trace.TraceID
	// Root is the entry hop: the server span with no hopwatch span above
	// it (its parent is not in the trace, and it is not stitched to one of
	// hopwatch's client spans, see stitch.go), the earliest if there are
	// several. While that span has not ended yet (or was refused by the
	// span cap) it is the earliest span without a parent, of either kind.
	Root HopKey
	// Start is the earliest span start; Duration runs from there to the
	// latest span end (the extent of everything the proxy saw).
	Start    time.Time
	Duration time.Duration
	Spans    int
	// DroppedSpans were refused by MaxSpansPerTrace.
	DroppedSpans int
	// Error: some server span (hop) ended with an outcome that IsError.
	Error bool
	// Outcome is the root span's.
	Outcome Outcome
}

// Traces returns summaries of the stored traces that match q, newest start
// first.
func (s *Store) Traces(q TraceQuery) []TraceSummary {
	limit := q.Limit
	if limit <= 0 {
		limit = defaultTraceLimit
	}
	limit = min(limit, maxTraceLimit)

	var rules map[string]*SlowRule
	var from time.Time
	if q.Slow {
		if q.Window <= 0 {
			q.Window = defaultBottleneckWindow
		}
		if q.Now.IsZero() {
			q.Now = time.Now()
		}
		from = q.Now.Add(-q.Window)
		_, rules = s.judge(from, q.Now, 0)
	}

	var out []TraceSummary
	s.scan(func(e *traceEntry) {
		sum := e.summary()
		if q.Slow {
			// The same turns as the analysis: in the window, not canceled,
			// slow by their root route's rule (a trace that arrived since
			// is judged by the rule of the others).
			r := rules[sum.Root.Route]
			if r == nil || sum.Outcome == OutcomeCanceled || sum.Start.Before(from) || sum.Start.After(q.Now) || !r.IsSlow(sum.Duration) {
				return
			}
		}
		if q.Route != "" && sum.Root.Route != q.Route ||
			sum.Duration < q.MinDuration ||
			q.ErrorOnly && !sum.Error ||
			!q.Since.IsZero() && sum.Start.Before(q.Since) {
			return
		}
		out = append(out, *sum)
	})

	// The scan is in first-arrival order, which is close to start order
	// (the first span to arrive is the first leaf to end), so this sort
	// has little to do; sort on the real start so the list reads newest
	// first. Ties go to the newer arrival, which the scan put first.
	slices.SortStableFunc(out, func(a, b TraceSummary) int { return b.Start.Compare(a.Start) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

// SpanNode is a span placed in its trace's tree.
type SpanNode struct {
	Span
	// Parent is the index of the parent span in TraceDetail.Spans, -1 for a
	// root (no parent, or a parent the proxy did not see).
	Parent int
	// Children are the indexes of the spans whose parent this is, in start
	// order.
	Children []int
	// Depth is 0 for roots and parent's depth + 1 otherwise.
	Depth int
	// Stitched: the span's propagated parent is a span hopwatch did not
	// see (a service's own client span), and Parent is the hopwatch client
	// span that carried the request into that service instead (see
	// stitch.go).
	Stitched bool
	// SelfTime, for server spans, is the hop's own time: its duration minus
	// the union of its child hops' intervals (server spans whose nearest
	// server-span ancestor is this one). Zero for client spans, whose time
	// is already inside their hop's.
	SelfTime time.Duration
}

// TraceDetail is one trace with its span tree, for a waterfall.
type TraceDetail struct {
	Summary TraceSummary
	// Spans are sorted by start (parents before children on equal starts).
	Spans []SpanNode
}

// turnSpans appends to dst copies of the server spans of trace id that ran
// within [from, to], but the one with span ID skip (the entry hop's):
// what a turn's classification needs, without copying, sorting and
// linking the whole stored trace as Trace does.
func (s *Store) turnSpans(id trace.TraceID, from, to time.Time, skip trace.SpanID, dst []Span) []Span {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.index[id]
	if !ok {
		return dst
	}
	for _, sp := range s.ring[i].spans {
		if sp.Kind == KindServer && sp.SpanID != skip && within(&sp, from, to) {
			dst = append(dst, sp)
		}
	}
	return dst
}

// within reports whether sp ran within [from, to]: a span of a turn, when
// these are its entry hop's start and end. A client that reuses one trace
// for several turns does not mix them.
func within(sp *Span, from, to time.Time) bool {
	return !sp.Start.Before(from) && !sp.End().After(to)
}

// markTurn sets turn on the stored spans of trace id (server and client)
// that ran within [from, to] and carry no turn yet: the hops of a turn,
// which ended before it was classified. Their estimated memory grows by
// turnBytes each, and the oldest other traces are evicted if that passes
// the byte bound.
func (s *Store) markTurn(id trace.TraceID, from, to time.Time, turn *SpanTurn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.index[id]
	if !ok {
		return
	}
	e := &s.ring[i]
	var grown int64
	for k := range e.spans {
		// Hop spans only: the turn's attributes are hopwatch's, and a
		// service span's bytes are counted in the services' share.
		if sp := &e.spans[k]; sp.Kind != KindService && sp.Turn == nil && within(sp, from, to) {
			sp.Turn = turn
			grown += turnBytes(turn)
		}
	}
	e.bytes += grown
	s.bytes += grown
	// As in Add: services' spans give way before any hop trace does.
	for s.bytes+s.ringBytesLocked() > s.maxBytes && s.oldest < e.seq {
		if !s.dropServiceSpansLocked() {
			s.evictOldestLocked(evictBytes)
		}
	}
}

// Trace returns the trace with the given ID.
func (s *Store) Trace(id trace.TraceID) (TraceDetail, bool) {
	s.mu.Lock()
	i, ok := s.index[id]
	if !ok {
		s.mu.Unlock()
		return TraceDetail{}, false
	}
	e := &s.ring[i]
	sum := *e.summary()
	spans := slices.Clone(e.spans)
	s.mu.Unlock()

	slices.SortStableFunc(spans, func(a, b Span) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		// Equal starts: the longer span encloses the shorter, and a
		// server span precedes the client spans it makes.
		if c := cmp.Compare(b.Duration, a.Duration); c != 0 {
			return c
		}
		return cmp.Compare(kindOrder(a.Kind), kindOrder(b.Kind))
	})
	t := buildTree(spans)
	nodes := make([]SpanNode, len(spans))
	for i := range spans {
		nodes[i] = SpanNode{Span: spans[i], Parent: t.parent[i], Depth: t.depth[i], SelfTime: t.self[i], Stitched: t.stitched[i]}
	}
	for i, p := range t.parent {
		if p >= 0 {
			nodes[p].Children = append(nodes[p].Children, i)
		}
	}
	return TraceDetail{Summary: sum, Spans: nodes}, true
}

func kindOrder(k SpanKind) int {
	if k == KindServer {
		return 0
	}
	return 1
}

// summary returns the entry's summary, recomputing it after a change.
// Callers hold the store's mutex.
func (e *traceEntry) summary() *TraceSummary {
	if !e.fresh {
		e.sum = summarize(e.id, e.spans, e.dropped)
		e.fresh = true
	}
	return &e.sum
}

func summarize(id trace.TraceID, spans []Span, dropped int) TraceSummary {
	sum := TraceSummary{TraceID: id, Spans: len(spans), DroppedSpans: dropped}
	if len(spans) == 0 {
		return sum
	}
	var buf stitchBuf
	parent, stitched := buf.slices(len(spans))
	linkParents(spans, newSpanSet(spans), parent, stitched)
	var end time.Time
	root, anyRoot := -1, -1
	for i := range spans {
		sp := &spans[i]
		if i == 0 || sp.Start.Before(sum.Start) {
			sum.Start = sp.Start
		}
		if e := sp.End(); i == 0 || e.After(end) {
			end = e
		}
		if sp.Kind == KindServer && sp.Outcome.IsError() {
			sum.Error = true
		}
		if sp.Kind == KindServer && isTurnRoot(spans, parent, i) && (root < 0 || sp.Start.Before(spans[root].Start)) {
			root = i
		}
		if parent[i] < 0 && (anyRoot < 0 || sp.Start.Before(spans[anyRoot].Start)) {
			anyRoot = i
		}
	}
	if root < 0 {
		root = anyRoot
	}
	if root < 0 { // every span has a parent in the trace: a cycle, keep going
		root = 0
	}
	sum.Root = spans[root].HopKey
	sum.Outcome = spans[root].Outcome
	sum.Duration = end.Sub(sum.Start)
	if r := &spans[root]; r.Kind == KindServer {
		// The turn lasted as long as its entry hop: spans that end later
		// are calls finishing in the background after a fallback answered
		// the client, which the user did not wait for.
		sum.Start, sum.Duration = r.Start, r.Duration
	}
	return sum
}

// spanSet answers "is this span ID in the trace". Small traces (the usual
// bot turn) are scanned; large ones get a map.
type spanSet struct {
	spans []Span
	m     map[trace.SpanID]int
}

const spanSetScanMax = 32

func newSpanSet(spans []Span) spanSet {
	set := spanSet{spans: spans}
	if len(spans) > spanSetScanMax {
		set.m = make(map[trace.SpanID]int, len(spans))
		for i := range spans {
			set.m[spans[i].SpanID] = i
		}
	}
	return set
}

// find returns the index of the span with the given ID, or -1.
func (s spanSet) find(id trace.SpanID) int {
	if !id.IsValid() {
		return -1
	}
	if s.m != nil {
		if i, ok := s.m[id]; ok {
			return i
		}
		return -1
	}
	for i := range s.spans {
		if s.spans[i].SpanID == id {
			return i
		}
	}
	return -1
}

// tree is the parent structure of a trace's spans, by index.
type tree struct {
	parent   []int           // -1: root
	stitched []bool          // parent is a stitched hopwatch client span, see linkParents
	depth    []int           //
	hop      []int           // nearest server-span ancestor (excluding self), -1: none
	self     []time.Duration // server spans: own time; client spans: 0
}

// buildTree links spans by ParentID, stitching hops whose parent hopwatch
// did not see (see linkParents), and computes each server span's self
// time. It tolerates duplicate IDs and parent cycles (which a buggy or
// hostile caller could produce through propagated headers): a span on a
// cycle is made a root.
func buildTree(spans []Span) tree {
	n := len(spans)
	t := tree{
		parent:   make([]int, n),
		stitched: make([]bool, n),
		depth:    make([]int, n),
		hop:      make([]int, n),
		self:     make([]time.Duration, n),
	}
	linkParents(spans, newSpanSet(spans), t.parent, t.stitched)
	// Depths by walking up. A parent cycle (possible only through broken
	// or forged trace headers) is cut where the walk meets itself, making
	// that span a root.
	const (
		unseen = iota
		onPath
		done
	)
	state := make([]uint8, n)
	var path []int
	for i := range spans {
		for {
			path = path[:0]
			j := i
			for j >= 0 && state[j] == unseen {
				state[j] = onPath
				path = append(path, j)
				j = t.parent[j]
			}
			if j >= 0 && state[j] == onPath {
				t.parent[j], t.stitched[j] = -1, false
				for _, k := range path {
					state[k] = unseen
				}
				continue
			}
			d := -1
			if j >= 0 {
				d = t.depth[j]
			}
			for k := len(path) - 1; k >= 0; k-- {
				d++
				t.depth[path[k]] = d
				state[path[k]] = done
			}
			break
		}
	}
	// Nearest server ancestor: parent if it is a server span, else the
	// parent's nearest server ancestor. Process in depth order so parents
	// are done first.
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(t.depth[a], t.depth[b]) })
	for _, i := range order {
		p := t.parent[i]
		switch {
		case p < 0:
			t.hop[i] = -1
		case spans[p].Kind == KindServer:
			t.hop[i] = p
		default:
			t.hop[i] = t.hop[p]
		}
	}
	// Self time: a server span's duration minus the union of its child
	// hops' intervals, clipped to its own.
	children := make([][]interval, n)
	for i := range spans {
		if spans[i].Kind != KindServer {
			continue
		}
		if h := t.hop[i]; h >= 0 {
			children[h] = append(children[h], interval{spans[i].Start, spans[i].End()})
		}
	}
	for i := range spans {
		if spans[i].Kind != KindServer {
			continue
		}
		own := interval{spans[i].Start, spans[i].End()}
		t.self[i] = max(0, spans[i].Duration-covered(own, children[i]))
	}
	return t
}

type interval struct{ start, end time.Time }

// covered is the length of the union of ivs clipped to within. It sorts
// ivs in place.
func covered(within interval, ivs []interval) time.Duration {
	slices.SortFunc(ivs, func(a, b interval) int { return a.start.Compare(b.start) })
	var total time.Duration
	var cur interval
	open := false
	for _, iv := range ivs {
		if iv.start.Before(within.start) {
			iv.start = within.start
		}
		if iv.end.After(within.end) {
			iv.end = within.end
		}
		if !iv.end.After(iv.start) {
			continue
		}
		switch {
		case !open:
			cur, open = iv, true
		case !iv.start.After(cur.end): // overlaps or touches: extend
			if iv.end.After(cur.end) {
				cur.end = iv.end
			}
		default:
			total += cur.end.Sub(cur.start)
			cur = iv
		}
	}
	if open {
		total += cur.end.Sub(cur.start)
	}
	return total
}
