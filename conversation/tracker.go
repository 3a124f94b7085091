package conversation

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// SessionOutcome classifies an ended session, first match wins, in this
// order (evicted aside: it says the tracker, not the user, ended it).
type SessionOutcome string

const (
	// SessionHandoff: a turn carried the handoff verdict.
	SessionHandoff SessionOutcome = "handoff"
	// SessionResolved: a turn carried the resolved verdict.
	SessionResolved SessionOutcome = "resolved"
	// SessionEvicted: max_sessions was reached and this session was the
	// least recently active.
	SessionEvicted SessionOutcome = "evicted"
	// SessionAbandoned: ended by idle_timeout right after a bad (error,
	// canceled, fallback, slow) or flagged (repeat, frustration) turn.
	SessionAbandoned SessionOutcome = "abandoned"
	// SessionFrustrated: FrustratedSignals or more repeat and frustration
	// signals.
	SessionFrustrated SessionOutcome = "frustrated"
	// SessionCompleted: none of the above.
	SessionCompleted SessionOutcome = "completed"
)

// EndReason says what ended a session.
type EndReason string

const (
	EndIdle        EndReason = "idle"
	EndMaxDuration EndReason = "max_duration"
	EndVerdict     EndReason = "verdict"
	EndEvicted     EndReason = "evicted"
)

// MaxTurnsKept is how many turn records a session keeps for the
// drill-down API (the most recent ones); its counters cover every turn.
const MaxTurnsKept = 16

// MaxEndedKept is how many ended sessions are kept for the drill-down API.
const MaxEndedKept = 1000

// TurnRecord is one turn as the drill-down API shows it. No text.
type TurnRecord struct {
	Index    int // in its session, from 1; 0 without a session
	Start    time.Time
	Latency  time.Duration // what the SLO is held against: first byte, else duration
	Duration time.Duration
	Route    string
	Code     string
	Outcome  TurnOutcome
	Signals  Signals
	Verdict  string
	Blame    string // the hop (route name) that made it bad
	TraceID  trace.TraceID
	Green    bool // 2xx/OK and within the SLO
}

// TurnResult is what Observe returns and the turn hook receives.
type TurnResult struct {
	TurnRecord
	// SessionID is the id as kept (hashed with hash_ids); "" without one.
	SessionID string
	Source    string
}

// SessionResult describes an ended session (the session hook's argument),
// or an active one (Ended zero) in queries.
type SessionResult struct {
	ID        string
	Start     time.Time
	Last      time.Time // end of the last turn
	Ended     time.Time
	Reason    EndReason
	Outcome   SessionOutcome
	Good      bool
	Turns     int
	Bad       int // turns not good
	Repeats   int
	Frust     int
	Regen     int
	Green     bool // every turn was 2xx/OK and within the SLO
	Verdict   string
	LastTrace trace.TraceID
	Records   []TurnRecord // oldest first, at most MaxTurnsKept
}

// Options are Tracker's dependencies.
type Options struct {
	// Config is the conversation section (required, validated).
	Config *Config
	// HashKey is the HMAC key (required with hash_ids, at least
	// MinHashKeyBytes).
	HashKey []byte
	// Now is the clock of idle expiry (default time.Now). Turn times come
	// from the turns themselves.
	Now func() time.Time
	// Metrics, if set, records every turn and ended session.
	Metrics *Metrics
	// OnTurn and OnSession, if set, see every turn and ended session,
	// called outside the tracker's lock on the goroutine that caused them.
	OnTurn    func(TurnResult)
	OnSession func(SessionResult)
}

// Tracker groups turns into sessions and classifies them. It is safe for
// concurrent use; Observe costs one fingerprint and one short critical
// section.
type Tracker struct {
	cfg   Config // with defaults
	slo   time.Duration
	sim   float64
	last  int
	kws   keywords
	ids   *identifier
	now   func() time.Time
	m     *Metrics
	onT   func(TurnResult)
	onS   func(SessionResult)
	mu    sync.Mutex // guards the fields below
	peak  int
	byID  map[string]*session
	lru   session // sentinel: lru.next is the most recently active
	ended []SessionResult
	endAt int // next slot in ended once it is full
	sli   sliSeries
	names names // interned strings of turn records
	count struct {
		evicted uint64
	}
}

// session is one tracked session. It holds counters, fingerprints and the
// last turn records, never text.
type session struct {
	prev, next *session
	id         string
	start      time.Time
	last       time.Time
	turns      int
	bad        int
	repeats    int
	frust      int
	regen      int
	green      bool
	flagged    bool // the last turn was bad or flagged
	canceled   bool // the last turn was canceled
	verdict    string
	fps        [MaxRepeatLast]uint64
	nfp        int // fingerprints held (≤ last)
	fpAt       int // next slot
	prevFP     fingerprint
	lastTrace  trace.TraceID
	records    []turnRec // a ring once full: records[recAt] is the oldest
	recAt      int
}

// New builds a tracker.
func New(opts Options) (*Tracker, error) {
	if opts.Config == nil {
		return nil, errors.New("conversation: a config is required")
	}
	if errs := opts.Config.Validate(); len(errs) > 0 {
		for path, msg := range errs {
			return nil, fmt.Errorf("conversation: %s: %s", path, msg)
		}
	}
	cfg := opts.Config.WithDefaults()
	var key []byte
	if cfg.HashIDs {
		if len(opts.HashKey) < MinHashKeyBytes {
			return nil, fmt.Errorf("conversation: hash_ids needs a key of at least %d bytes, got %d", MinHashKeyBytes, len(opts.HashKey))
		}
		key = append([]byte(nil), opts.HashKey...)
	}
	var srcs []source
	for _, s := range cfg.SessionFrom {
		src, err := parseSource(s)
		if err != nil {
			return nil, fmt.Errorf("conversation: session_from: %w", err)
		}
		srcs = append(srcs, src)
	}
	var textPath jsonPath
	var textField int
	if cfg.TextFrom != "" {
		p, n, err := parseTextFrom(cfg.TextFrom)
		if err != nil {
			return nil, fmt.Errorf("conversation: text_from: %w", err)
		}
		textPath, textField = p, n
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	t := &Tracker{
		cfg:  cfg,
		slo:  cfg.TurnSLO,
		sim:  cfg.Repeat.Similarity,
		last: cfg.Repeat.Last,
		kws:  compileKeywords(cfg.FrustrationKeywords),
		ids:  newIdentifier(srcs, textPath, textField, key),
		now:  opts.Now,
		m:    opts.Metrics,
		onT:  opts.OnTurn,
		onS:  opts.OnSession,
		byID: map[string]*session{},
	}
	t.lru.next, t.lru.prev = &t.lru, &t.lru
	return t, nil
}

// IsEntry reports whether route's requests are turns.
func (t *Tracker) IsEntry(route string) bool {
	for _, r := range t.cfg.EntryRoutes {
		if r == route {
			return true
		}
	}
	return false
}

// HeaderKeys lists the request headers (lowercase) session_from reads.
func (t *Tracker) HeaderKeys() []string { return t.ids.headerKeys() }

// ReadsBody reports whether entry requests' JSON bodies are read (json:
// session sources or text_from).
func (t *Tracker) ReadsBody() bool { return t.ids.readsBody() }

// VerdictHeader is the response header that carries service verdicts,
// lowercase.
func (t *Tracker) VerdictHeader() string { return strings.ToLower(t.cfg.VerdictHeader) }

// Config is the configuration in effect, defaults written out.
func (t *Tracker) Config() Config { return t.cfg }

// Observe classifies a finished turn, adds it to its session (starting,
// ending or evicting sessions as needed) and returns its result.
func (t *Tracker) Observe(turn Turn) TurnResult {
	if turn.Header != nil || len(turn.Body) > 0 {
		id, src, text := t.ids.read(turn.Header, turn.Body, turn.BodyProto)
		if turn.SessionID == "" {
			turn.SessionID, turn.Source = id, src
		}
		if turn.Text == "" {
			turn.Text = text
		}
	}
	fp := fingerprintOf(turn.Text, t.kws)
	outcome, blame := classify(&turn, t.slo)
	rec := TurnRecord{
		Start: turn.Start, Latency: turn.latency(), Duration: turn.Duration,
		Route: turn.Route, Code: turn.Code, Outcome: outcome, Verdict: turn.Verdict,
		Blame: blame, TraceID: turn.TraceID, Green: greenCode(turn.Code) && turn.latency() <= t.slo,
	}
	if fp.keyword {
		rec.Signals |= SignalFrustration
	}
	if truncated(&turn) {
		rec.Signals |= SignalTruncated
	}
	res := TurnResult{SessionID: turn.SessionID, Source: turn.Source}
	if res.Source == "" {
		res.Source = SourceNone
	}
	var ended []SessionResult
	now := t.now()
	t.mu.Lock()
	ended = t.expireLocked(now, ended)
	t.sli.turn(turn.Start.Add(turn.Duration), rec.Latency, outcome == TurnError)
	if turn.SessionID != "" {
		s := t.byID[turn.SessionID]
		if s != nil && turn.Start.Sub(s.start) >= t.cfg.MaxDuration {
			ended = append(ended, t.endLocked(s, EndMaxDuration, now))
			s = nil
		}
		if s == nil {
			for len(t.byID) >= t.cfg.MaxSessions {
				ended = append(ended, t.endLocked(t.lru.prev, EndEvicted, now))
			}
			s = &session{id: turn.SessionID, start: turn.Start, green: true}
			t.byID[s.id] = s
			t.peak = max(t.peak, len(t.byID))
		} else {
			t.unlink(s)
		}
		t.pushFront(s)
		t.addTurnLocked(s, &rec, fp)
		if turn.Verdict == VerdictHandoff || turn.Verdict == VerdictResolved {
			s.verdict = turn.Verdict
			ended = append(ended, t.endLocked(s, EndVerdict, now))
		}
	}
	active := len(t.byID)
	t.mu.Unlock()

	res.TurnRecord = rec
	t.m.turn(&res, active)
	if t.onT != nil {
		t.onT(res)
	}
	t.report(ended, active)
	return res
}

// addTurnLocked updates s with a turn: signals, counters, records.
func (t *Tracker) addTurnLocked(s *session, rec *TurnRecord, fp fingerprint) {
	s.turns++
	rec.Index = s.turns
	if fp.comparable() {
		for i := 0; i < s.nfp; i++ {
			if Similarity(fp.hash, s.fps[i]) >= t.sim {
				rec.Signals |= SignalRepeat
				break
			}
		}
		if s.canceled && s.prevFP.comparable() && Similarity(fp.hash, s.prevFP.hash) >= t.sim {
			rec.Signals |= SignalRegenerate
		}
		s.fps[s.fpAt] = fp.hash
		s.fpAt = (s.fpAt + 1) % t.last
		s.nfp = min(s.nfp+1, t.last)
	}
	s.prevFP = fp
	end := rec.Start.Add(rec.Duration)
	if end.After(s.last) {
		s.last = end
	}
	if rec.Signals.Has(SignalRepeat) {
		s.repeats++
	}
	if rec.Signals.Has(SignalFrustration) {
		s.frust++
	}
	if rec.Signals.Has(SignalRegenerate) {
		s.regen++
	}
	bad := rec.Outcome != TurnGood
	if bad {
		s.bad++
	}
	s.green = s.green && rec.Green
	s.flagged = bad || rec.Signals&(SignalRepeat|SignalFrustration) != 0
	s.canceled = rec.Outcome == TurnCanceled
	s.lastTrace = rec.TraceID
	if len(s.records) < MaxTurnsKept {
		s.records = append(s.records, t.compact(rec))
	} else {
		s.records[s.recAt] = t.compact(rec)
		s.recAt = (s.recAt + 1) % MaxTurnsKept
	}
}

// greenCode: what a latency/error dashboard counts as success.
func greenCode(code string) bool {
	return code == "OK" || len(code) == 3 && code[0] == '2'
}

// expireLocked ends the sessions idle for idle_timeout at now. The LRU
// list is in order of last activity, so it stops at the first one still
// active: the cost is the number of sessions ended.
func (t *Tracker) expireLocked(now time.Time, ended []SessionResult) []SessionResult {
	for s := t.lru.prev; s != &t.lru; s = t.lru.prev {
		if now.Sub(s.last) < t.cfg.IdleTimeout {
			break
		}
		ended = append(ended, t.endLocked(s, EndIdle, s.last.Add(t.cfg.IdleTimeout)))
	}
	return ended
}

// Sweep ends the sessions that have been idle for idle_timeout. Run calls
// it periodically; Observe does too, so a tracker without Run stays right
// whenever turns arrive.
func (t *Tracker) Sweep() {
	now := t.now()
	t.mu.Lock()
	ended := t.expireLocked(now, nil)
	active := len(t.byID)
	t.mu.Unlock()
	t.report(ended, active)
}

// Run sweeps every interval until ctx ends.
func (t *Tracker) Run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.Sweep()
		}
	}
}

// endLocked removes s and classifies it.
func (t *Tracker) endLocked(s *session, reason EndReason, at time.Time) SessionResult {
	t.unlink(s)
	delete(t.byID, s.id)
	r := s.result(t)
	r.Ended, r.Reason = at, reason
	r.Outcome = sessionOutcome(s, reason)
	r.Good = (r.Outcome == SessionResolved || r.Outcome == SessionCompleted) && s.frust == 0 && s.repeats <= 1
	if reason == EndEvicted {
		// The tracker ended it, not the user: not a valid event for the
		// SLI (Google SRE's "good events / valid events").
		t.count.evicted++
	} else {
		t.sli.session(at, r.Good)
	}
	if len(t.ended) < MaxEndedKept {
		t.ended = append(t.ended, r)
	} else {
		t.ended[t.endAt] = r
		t.endAt = (t.endAt + 1) % MaxEndedKept
	}
	return r
}

func sessionOutcome(s *session, reason EndReason) SessionOutcome {
	switch {
	case s.verdict == VerdictHandoff:
		return SessionHandoff
	case s.verdict == VerdictResolved:
		return SessionResolved
	case reason == EndEvicted:
		return SessionEvicted
	case reason == EndIdle && s.flagged:
		return SessionAbandoned
	case s.repeats+s.frust >= FrustratedSignals:
		return SessionFrustrated
	}
	return SessionCompleted
}

func (s *session) result(t *Tracker) SessionResult {
	r := s.summary()
	r.Records = make([]TurnRecord, 0, len(s.records))
	for i := range s.records {
		r.Records = append(r.Records, t.expand(&s.records[(s.recAt+i)%len(s.records)]))
	}
	return r
}

// LastBad is the most recent kept turn that was not good.
func (r *SessionResult) LastBad() (TurnRecord, bool) {
	for i := len(r.Records) - 1; i >= 0; i-- {
		if r.Records[i].Outcome != TurnGood {
			return r.Records[i], true
		}
	}
	return TurnRecord{}, false
}

// report hands ended sessions to the metrics and the hook, outside the
// lock.
func (t *Tracker) report(ended []SessionResult, active int) {
	t.m.active(active)
	for i := range ended {
		t.m.session(&ended[i])
		if t.onS != nil {
			t.onS(ended[i])
		}
	}
}

func (t *Tracker) pushFront(s *session) {
	s.prev, s.next = &t.lru, t.lru.next
	t.lru.next.prev = s
	t.lru.next = s
}

func (t *Tracker) unlink(s *session) {
	s.prev.next, s.next.prev = s.next, s.prev
	s.prev, s.next = nil, nil
}

// Stats are the tracker's counters.
type Stats struct {
	Active  int
	Peak    int
	Evicted uint64
}

// Stats returns the tracker's counters.
func (t *Tracker) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return Stats{Active: len(t.byID), Peak: t.peak, Evicted: t.count.evicted}
}
