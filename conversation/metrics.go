package conversation

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the hopwatch_conversation_* series (design section 5). No
// label carries a session or user id or any text: route and hop are
// configured route names, outcome, signal, cause and source are from fixed
// sets.
type Metrics struct {
	turns     *prometheus.CounterVec
	signals   *prometheus.CounterVec
	sessions  *prometheus.CounterVec
	badTurns  *prometheus.CounterVec
	identity  *prometheus.CounterVec
	turnsPer  prometheus.Histogram
	duration  prometheus.Histogram
	activeNow prometheus.Gauge
	dropped   *prometheus.CounterVec
	verdicts  *prometheus.CounterVec
}

// NewMetrics registers the conversation series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		turns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_conversation_turns_total",
			Help: "User turns (requests on entry routes) by outcome: error, canceled, fallback, slow, good.",
		}, []string{"route", "outcome"}),
		signals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_conversation_turn_signals_total",
			Help: "Turns flagged by a signal: repeat, frustration, regenerate, truncated.",
		}, []string{"route", "signal"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_conversation_sessions_total",
			Help: "Ended sessions by outcome (handoff, resolved, evicted, abandoned, frustrated, completed) and whether they were good, with the last trace as exemplar.",
		}, []string{"outcome", "good"}),
		badTurns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_conversation_bad_turns_total",
			Help: "Turns that were not good, by the hop blamed (route name) and cause (the turn outcome).",
		}, []string{"hop", "cause"}),
		identity: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_conversation_identity_total",
			Help: "Turns by where their session id was found: header, baggage, json, none.",
		}, []string{"source"}),
		turnsPer: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hopwatch_conversation_session_turns",
			Help:    "Turns per ended session.",
			Buckets: []float64{1, 2, 3, 5, 8, 13, 21, 34, 55, 100},
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hopwatch_conversation_session_duration_seconds",
			Help:    "Ended sessions' length, from the first turn's start to the last turn's end.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400},
		}),
		activeNow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_conversation_active_sessions",
			Help: "Sessions tracked now (at most max_sessions).",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_conversation_events_dropped_total",
			Help: "Turn and session events not written: queue_full (the writer fell behind), write_error, encode.",
		}, []string{"reason"}),
	}
	m.verdicts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopwatch_conversation_verdicts_total",
		Help: "Turns a service gave a verdict on (the verdict header): no_match, handoff, resolved.",
	}, []string{"route", "verdict"})
	reg.MustRegister(m.turns, m.signals, m.sessions, m.badTurns, m.identity, m.turnsPer, m.duration, m.activeNow, m.dropped, m.verdicts)
	return m
}

func (m *Metrics) turn(r *TurnResult, active int) {
	if m == nil {
		return
	}
	m.turns.WithLabelValues(r.Route, string(r.Outcome)).Inc()
	for i, n := range signalNames {
		if r.Signals&(1<<i) != 0 {
			m.signals.WithLabelValues(r.Route, n).Inc()
		}
	}
	if r.Outcome != TurnGood {
		m.badTurns.WithLabelValues(r.Blame, string(r.Outcome)).Inc()
	}
	m.identity.WithLabelValues(r.Source).Inc()
	if v := r.Verdict; v == VerdictNoMatch || v == VerdictHandoff || v == VerdictResolved {
		m.verdicts.WithLabelValues(r.Route, v).Inc()
	}
	m.activeNow.Set(float64(active))
}

func (m *Metrics) active(n int) {
	if m == nil {
		return
	}
	m.activeNow.Set(float64(n))
}

func (m *Metrics) session(r *SessionResult) {
	if m == nil {
		return
	}
	c := m.sessions.WithLabelValues(string(r.Outcome), strconv.FormatBool(r.Good))
	if r.LastTrace.IsValid() {
		c.(prometheus.ExemplarAdder).AddWithExemplar(1, prometheus.Labels{"trace_id": r.LastTrace.String()})
	} else {
		c.Inc()
	}
	m.turnsPer.Observe(float64(r.Turns))
	m.duration.Observe(r.Last.Sub(r.Start).Seconds())
}

func (m *Metrics) eventDropped(reason string) {
	if m == nil {
		return
	}
	m.dropped.WithLabelValues(reason).Inc()
}
