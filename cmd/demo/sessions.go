package main

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hopwatch/hopwatch/demo"
)

// metricsPath is where the conversation block reads hopwatch's session
// outcomes: the counters are unbounded in time, where /api/sessions keeps
// the last 1,000 sessions.
const metricsPath = "/metrics"

// hopwatchSessions is hopwatch's count of ended sessions by outcome, and
// of repeated questions, as its metrics say.
type hopwatchSessions struct {
	Outcomes map[string]int // by outcome label
	Good     int
	Repeats  int // turns flagged repeat
	Active   int
	NoMatch  int // turns the NLU did not understand (verdict no_match)
	Resolved int // turns with the resolved verdict
}

// Ended is the number of ended sessions, evicted ones included.
func (h hopwatchSessions) Ended() int {
	n := 0
	for _, c := range h.Outcomes {
		n += c
	}
	return n
}

// fetchSessions reads hopwatch's conversation metrics; a notServedError
// when there are none (no conversation section).
func fetchSessions(ctx context.Context, v *view) (hopwatchSessions, error) {
	body, err := getJSON(ctx, v.admin, v.adminURL, metricsPath)
	if err != nil {
		return hopwatchSessions{}, err
	}
	return parseSessions(bytes.NewReader(body))
}

// parseSessions picks the conversation series out of the Prometheus text
// format, parsed by the client library's own parser.
func parseSessions(r io.Reader) (hopwatchSessions, error) {
	h := hopwatchSessions{Outcomes: map[string]int{}}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return h, fmt.Errorf("%s: %w", metricsPath, err)
	}
	seen := false
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			n := int(m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue())
			switch name {
			case "hopwatch_conversation_sessions_total":
				seen = true
				h.Outcomes[labels["outcome"]] += n
				if labels["good"] == "true" {
					h.Good += n
				}
			case "hopwatch_conversation_turn_signals_total":
				if labels["signal"] == "repeat" {
					h.Repeats += n
				}
			case "hopwatch_conversation_active_sessions":
				seen = true
				h.Active = n
			case "hopwatch_conversation_verdicts_total":
				switch labels["verdict"] {
				case demo.VerdictNoMatch:
					h.NoMatch += n
				case demo.VerdictResolved:
					h.Resolved += n
				}
			}
		}
	}
	if !seen {
		return h, &notServedError{path: metricsPath, reason: "no conversation metrics: the configuration has no conversation section"}
	}
	return h, nil
}
