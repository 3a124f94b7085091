package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

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
// format. It reads only hopwatch's own names and labels, so a line parser
// is enough (no exposition-format dependency for a demo table).
func parseSessions(r io.Reader) (hopwatchSessions, error) {
	h := hopwatchSessions{Outcomes: map[string]int{}}
	seen := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "hopwatch_conversation_") {
			continue
		}
		name, labels, value, ok := splitSample(line)
		if !ok {
			continue
		}
		n := int(value)
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
	if err := sc.Err(); err != nil {
		return h, fmt.Errorf("%s: %w", metricsPath, err)
	}
	if !seen {
		return h, &notServedError{path: metricsPath, reason: "no conversation metrics: the configuration has no conversation section"}
	}
	return h, nil
}

// splitSample splits `name{k="v",...} value` (label values without
// escapes, as hopwatch's bounded labels are).
func splitSample(line string) (name string, labels map[string]string, value float64, ok bool) {
	head, val, found := strings.Cut(line, " ")
	if !found {
		return "", nil, 0, false
	}
	if f := strings.Fields(val); len(f) > 0 {
		val = f[0] // a timestamp may follow
	}
	v, err := strconv.ParseFloat(val, 64)
	if err != nil {
		return "", nil, 0, false
	}
	name, rest, hasLabels := strings.Cut(head, "{")
	labels = map[string]string{}
	if hasLabels {
		for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
			k, v, _ := strings.Cut(kv, "=")
			labels[k] = strings.Trim(v, `"`)
		}
	}
	return name, labels, v, true
}
