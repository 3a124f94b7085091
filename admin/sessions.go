package admin

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/conversation"
)

// The conversation APIs: sessions and the good-session SLI. Same wire
// conventions as api.go. Without a conversation section they are not
// mounted (404), as /api/breakers without resilience: the dashboard reads
// 404 as "not available".

func (s *Server) mountSessions() {
	if s.opts.Sessions == nil {
		return
	}
	s.mux.HandleFunc("GET /api/sessions", s.apiSessions)
	s.mux.HandleFunc("GET /api/sessions/{id}", s.apiSession)
	s.mux.HandleFunc("GET /api/sli", s.apiSLI)
}

// turnJSON is one turn of a session. It carries no text: none is kept.
type turnJSON struct {
	Index    int                      `json:"index"`
	Start    time.Time                `json:"start"`
	Latency  float64                  `json:"latency"`  // seconds: time to first byte, else duration
	Duration float64                  `json:"duration"` // seconds
	Route    string                   `json:"route"`
	Code     string                   `json:"code"`
	Outcome  conversation.TurnOutcome `json:"outcome"`
	Signals  []string                 `json:"signals"`
	Verdict  string                   `json:"verdict,omitempty"`
	Blame    string                   `json:"blame,omitempty"`    // the hop (route) that made the turn bad
	Green    bool                     `json:"green"`              // 2xx/OK and within the turn SLO
	TraceID  string                   `json:"trace_id,omitempty"` // lowercase hex
}

type sessionJSON struct {
	ID          string                      `json:"id"`
	Active      bool                        `json:"active"`
	Start       time.Time                   `json:"start"`
	Last        time.Time                   `json:"last"` // end of the last turn
	Ended       *time.Time                  `json:"ended,omitempty"`
	Reason      conversation.EndReason      `json:"reason,omitempty"`
	Outcome     conversation.SessionOutcome `json:"outcome"` // "active" while going on
	Good        bool                        `json:"good"`
	Green       bool                        `json:"green"`
	Turns       int                         `json:"turns"`
	BadTurns    int                         `json:"bad_turns"`
	Repeats     int                         `json:"repeats"`
	Frustration int                         `json:"frustration"`
	Regenerates int                         `json:"regenerates"`
	Verdict     string                      `json:"verdict,omitempty"`
	Duration    float64                     `json:"duration"` // seconds, first turn's start to last turn's end
	LastTraceID string                      `json:"last_trace_id,omitempty"`
	// LastBad is the last bad turn kept: what the session ended after.
	LastBad *turnJSON  `json:"last_bad,omitempty"`
	TurnLog []turnJSON `json:"turns_detail,omitempty"`
}

func toTurnJSON(r conversation.TurnRecord) turnJSON {
	sig := r.Signals.Names()
	if sig == nil {
		sig = []string{}
	}
	return turnJSON{
		Index: r.Index, Start: r.Start, Latency: r.Latency.Seconds(), Duration: r.Duration.Seconds(),
		Route: r.Route, Code: r.Code, Outcome: r.Outcome, Signals: sig, Verdict: r.Verdict,
		Blame: r.Blame, Green: r.Green, TraceID: traceHex(r.TraceID),
	}
}

func toSessionJSON(r conversation.SessionResult) sessionJSON {
	j := sessionJSON{
		ID: r.ID, Active: r.Ended.IsZero(), Start: r.Start, Last: r.Last, Reason: r.Reason,
		Outcome: r.Outcome, Good: r.Good, Green: r.Green, Turns: r.Turns, BadTurns: r.Bad,
		Repeats: r.Repeats, Frustration: r.Frust, Regenerates: r.Regen, Verdict: r.Verdict,
		Duration: r.Last.Sub(r.Start).Seconds(), LastTraceID: traceHex(r.LastTrace),
	}
	if j.Active {
		j.Outcome = conversation.SessionActive
	} else {
		e := r.Ended
		j.Ended = &e
	}
	if lb, ok := r.LastBad(); ok {
		t := toTurnJSON(lb)
		j.LastBad = &t
	}
	return j
}

// GET /api/sessions?outcome=&good=&signal=&green=true&since=&limit=
//
// since is an RFC 3339 time or a Go duration back from now ("15m").
func (s *Server) apiSessions(w http.ResponseWriter, r *http.Request) {
	tr := s.opts.Sessions
	qs := r.URL.Query()
	var q conversation.SessionQuery
	switch o := conversation.SessionOutcome(qs.Get("outcome")); o {
	case "", conversation.SessionActive, conversation.SessionHandoff, conversation.SessionResolved, conversation.SessionEvicted,
		conversation.SessionAbandoned, conversation.SessionFrustrated, conversation.SessionCompleted:
		q.Outcome = o
	default:
		badRequest(w, "outcome: %q is not one of active, handoff, resolved, abandoned, frustrated, completed, evicted", o)
		return
	}
	for _, name := range []string{"good", "green"} {
		v := qs.Get(name)
		if v == "" {
			continue
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			badRequest(w, "%s: %q is not a boolean (true or false)", name, v)
			return
		}
		if name == "good" {
			q.Good = &b
		} else {
			q.Green = b
		}
	}
	if v := qs.Get("signal"); v != "" {
		sig, ok := conversation.ParseSignal(v)
		if !ok {
			badRequest(w, "signal: %q is not one of repeat, frustration, regenerate, truncated", v)
			return
		}
		q.Signal = sig
	}
	if v := qs.Get("since"); v != "" {
		since, err := sinceParam(v, s.opts.Now())
		if err != nil {
			badRequest(w, "since: %v", err)
			return
		}
		q.Since = since
	}
	if v := qs.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > conversation.MaxEndedKept {
			badRequest(w, "limit: %q is not a whole number from 1 to %d", v, conversation.MaxEndedKept)
			return
		}
		q.Limit = n
	}
	list := tr.Sessions(q)
	out := make([]sessionJSON, 0, len(list))
	for _, r := range list {
		out = append(out, toSessionJSON(r))
	}
	st := tr.Stats()
	writeJSON(w, http.StatusOK, struct {
		Sessions []sessionJSON `json:"sessions"`
		Active   int           `json:"active"`
		Evicted  uint64        `json:"evicted"`
	}{out, st.Active, st.Evicted})
}

// GET /api/sessions/{id}: the session with its turns (the last
// conversation.MaxTurnsKept). id is as shown by /api/sessions (the keyed
// hash when hash_ids is on).
func (s *Server) apiSession(w http.ResponseWriter, r *http.Request) {
	tr := s.opts.Sessions
	id := r.PathValue("id")
	res, ok := tr.Session(id)
	if !ok {
		writeJSON(w, http.StatusNotFound, apiError{fmt.Sprintf("session %q not found (unknown, or ended longer ago than the last %d sessions)", id, conversation.MaxEndedKept)})
		return
	}
	j := toSessionJSON(res)
	j.TurnLog = make([]turnJSON, 0, len(res.Records))
	for _, rec := range res.Records {
		j.TurnLog = append(j.TurnLog, toTurnJSON(rec))
	}
	writeJSON(w, http.StatusOK, j)
}

// GET /api/sli?window=1h&step=1m: the good-session ratio, turn error
// ratio and p95 turn latency on the same time buckets, oldest first, and
// their totals over the window.
func (s *Server) apiSLI(w http.ResponseWriter, r *http.Request) {
	tr := s.opts.Sessions
	qs := r.URL.Query()
	window, err := durationParam(qs.Get("window"))
	if err != nil {
		badRequest(w, "window: %v", err)
		return
	}
	if window == 0 {
		window = time.Hour
	}
	if window > conversation.SLIKeep {
		badRequest(w, "window: at most %v is kept", conversation.SLIKeep)
		return
	}
	step, err := durationParam(qs.Get("step"))
	if err != nil {
		badRequest(w, "step: %v", err)
		return
	}
	if step == 0 {
		step = conversation.SLIStep
	}
	if step%conversation.SLIStep != 0 || step > window {
		badRequest(w, "step: must be a whole number of minutes, at most the window")
		return
	}
	points, total := tr.SLI(s.opts.Now(), window, step)
	writeJSON(w, http.StatusOK, struct {
		Window  float64                 `json:"window"` // seconds
		Step    float64                 `json:"step"`   // seconds
		TurnSLO float64                 `json:"turn_slo"`
		Total   conversation.SLIPoint   `json:"total"`
		Points  []conversation.SLIPoint `json:"points"`
	}{window.Seconds(), step.Seconds(), tr.Config().TurnSLO.Seconds(), total, points})
}

func traceHex(id trace.TraceID) string {
	if !id.IsValid() {
		return ""
	}
	return id.String()
}

// sinceParam reads an RFC 3339 time or a duration back from now.
func sinceParam(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a positive duration (like 15m)", v)
	}
	return now.Add(-d), nil
}
