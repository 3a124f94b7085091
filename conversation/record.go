package conversation

import (
	"time"

	"go.opentelemetry.io/otel/trace"
)

// A session keeps its last MaxTurnsKept turns for the drill-down API. At
// max_sessions sessions that is most of the tracker's memory, so each is
// kept compact (56 bytes instead of the 160 of a TurnRecord): times as
// Unix nanoseconds, strings as indexes into the tracker's name table,
// enumerations as bytes.

type turnRec struct {
	start    int64 // Unix nanoseconds
	latency  time.Duration
	duration time.Duration
	traceID  trace.TraceID
	index    uint32
	route    uint16 // names
	code     uint16 // names
	blame    uint16 // names
	outcome  uint8  // outcomes
	verdict  uint8  // verdicts
	signals  Signals
	green    bool
}

var (
	outcomes = [...]TurnOutcome{TurnGood, TurnError, TurnCanceled, TurnFallback, TurnSlow}
	verdicts = [...]string{"", VerdictNoMatch, VerdictHandoff, VerdictResolved}
)

// maxNames bounds the name table: route names and codes are bounded
// already (configuration, HTTP statuses, gRPC codes); the bound only
// guards against a caller handing the tracker arbitrary strings.
const maxNames = 4096

// names interns the strings of turn records. Index 0 is "", index 1
// "other", which every name past maxNames becomes.
type names struct {
	idx  map[string]uint16
	list []string
}

func (n *names) id(s string) uint16 {
	if s == "" {
		return 0
	}
	if i, ok := n.idx[s]; ok {
		return i
	}
	if n.idx == nil {
		n.idx = map[string]uint16{otherName: 1}
		n.list = []string{"", otherName}
		if s == otherName {
			return 1
		}
	}
	if len(n.list) >= maxNames {
		return 1 // otherName: it was interned first, so it is always there
	}
	i := uint16(len(n.list))
	n.idx[s] = i
	n.list = append(n.list, s)
	return i
}

// otherName stands for the names that did not fit.
const otherName = "other"

func (n *names) name(i uint16) string {
	if int(i) < len(n.list) {
		return n.list[i]
	}
	return ""
}

func indexOf[T comparable](list []T, v T) uint8 {
	for i, x := range list {
		if x == v {
			return uint8(i)
		}
	}
	return 0
}

// compact makes the kept form of r. Callers hold the tracker's mutex.
func (t *Tracker) compact(r *TurnRecord) turnRec {
	return turnRec{
		start: r.Start.UnixNano(), latency: r.Latency, duration: r.Duration, traceID: r.TraceID,
		index: uint32(r.Index), route: t.names.id(r.Route), code: t.names.id(r.Code), blame: t.names.id(r.Blame),
		outcome: indexOf(outcomes[:], r.Outcome), verdict: indexOf(verdicts[:], r.Verdict),
		signals: r.Signals, green: r.Green,
	}
}

// expand is the inverse of compact. Callers hold the tracker's mutex.
func (t *Tracker) expand(c *turnRec) TurnRecord {
	return TurnRecord{
		Index: int(c.index), Start: time.Unix(0, c.start).UTC(), Latency: c.latency, Duration: c.duration,
		Route: t.names.name(c.route), Code: t.names.name(c.code), Outcome: outcomes[c.outcome],
		Signals: c.signals, Verdict: verdicts[c.verdict], Blame: t.names.name(c.blame),
		TraceID: c.traceID, Green: c.green,
	}
}
