package conversation

import (
	"slices"
	"time"
)

// Session returns a session by id (as kept: hashed with hash_ids): the
// active one, or else the most recently ended one with that id among the
// last MaxEndedKept.
func (t *Tracker) Session(id string) (SessionResult, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.byID[id]; s != nil {
		return s.result(t), true
	}
	var best *SessionResult
	for i := range t.ended {
		if r := &t.ended[i]; r.ID == id && (best == nil || r.Ended.After(best.Ended)) {
			best = r
		}
	}
	if best == nil {
		return SessionResult{}, false
	}
	r := *best
	r.Records = slices.Clone(r.Records)
	return r, true
}

// SessionQuery selects sessions. Zero fields do not filter.
type SessionQuery struct {
	// Outcome: ended sessions with this outcome ("active": only active
	// sessions).
	Outcome SessionOutcome
	// Good, if set, selects ended sessions that were (not) good.
	Good *bool
	// Signal: sessions with at least one turn flagged so.
	Signal Signals
	// Green: sessions whose every turn was 2xx/OK and within the SLO, yet
	// ended not good — the ones latency and error dashboards miss.
	Green bool
	// Since: sessions whose last turn ended at or after this.
	Since time.Time
	// Limit bounds the answer (default 50, at most MaxEndedKept).
	Limit int
}

// SessionActive is the Outcome a query uses for sessions still going.
const SessionActive SessionOutcome = "active"

// Sessions returns the sessions that match q, ended ones (newest end
// first) before active ones (most recently active first). Records hold
// only the last bad turn, if one is kept: what the session ended after, as
// a list of sessions shows it; Session has them all.
func (t *Tracker) Sessions(q SessionQuery) []SessionResult {
	limit := q.Limit
	if limit <= 0 {
		limit = 50
	}
	limit = min(limit, MaxEndedKept)
	match := func(r *SessionResult, active bool) bool {
		switch {
		case q.Outcome == SessionActive && !active,
			q.Outcome != "" && q.Outcome != SessionActive && (active || r.Outcome != q.Outcome),
			q.Good != nil && (active || r.Good != *q.Good),
			q.Green && (active || !r.Green || r.Good),
			!q.Since.IsZero() && r.Last.Before(q.Since):
			return false
		}
		if q.Signal != 0 {
			return r.Repeats > 0 && q.Signal.Has(SignalRepeat) ||
				r.Frust > 0 && q.Signal.Has(SignalFrustration) ||
				r.Regen > 0 && q.Signal.Has(SignalRegenerate)
		}
		return true
	}
	var out []SessionResult
	t.mu.Lock()
	for i := range t.ended {
		r := t.ended[i]
		if match(&r, false) {
			r.Records = nil
			if lb, ok := t.ended[i].LastBad(); ok {
				r.Records = []TurnRecord{lb}
			}
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b SessionResult) int { return b.Ended.Compare(a.Ended) })
	if len(out) < limit {
		for s := t.lru.next; s != &t.lru && len(out) < limit; s = s.next {
			r := s.summary()
			if match(&r, true) {
				if lb, ok := s.lastBad(t); ok {
					r.Records = []TurnRecord{lb}
				}
				out = append(out, r)
			}
		}
	}
	t.mu.Unlock()
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

// summary is result without the turn records.
func (s *session) summary() SessionResult {
	return SessionResult{
		ID: s.id, Start: s.start, Last: s.last, Turns: s.turns, Bad: s.bad,
		Repeats: s.repeats, Frust: s.frust, Regen: s.regen, Green: s.green,
		Verdict: s.verdict, LastTrace: s.lastTrace,
	}
}

// lastBad is the most recent kept turn that was not good.
func (s *session) lastBad(t *Tracker) (TurnRecord, bool) {
	for i := len(s.records) - 1; i >= 0; i-- {
		rec := &s.records[(s.recAt+i)%len(s.records)]
		if r := t.expand(rec); r.Outcome != TurnGood {
			return r, true
		}
	}
	return TurnRecord{}, false
}
