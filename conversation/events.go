package conversation

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"time"
)

// Events are turn and session records as JSON lines, for fleets: with
// several replicas a session's turns land on different replicas, and the
// events (one per turn, one per session a replica ended) let a log store
// rebuild whole sessions. They carry ids, times, outcomes and trace ids,
// never text.
//
// The caller only fills in the event and queues it; JSON encoding and
// writing happen in Run, from a bounded queue, so a turn's end costs the
// request goroutine one small struct and a channel send. A full queue drops
// the event and counts it (hopwatch_conversation_events_dropped_total): a
// slow disk must never slow a request.
type Events struct {
	w  io.Writer
	ch chan any // *TurnEvent or *SessionEvent
	m  *Metrics

	buf bytes.Buffer  // Run's encoding buffer
	enc *json.Encoder // writes into buf, one line per event
}

// DefaultEventQueue bounds events waiting to be written.
const DefaultEventQueue = 4096

// NewEvents writes to w (Run must be running); queue ≤ 0 means
// DefaultEventQueue. m (may be nil) counts drops.
func NewEvents(w io.Writer, queue int, m *Metrics) *Events {
	if queue <= 0 {
		queue = DefaultEventQueue
	}
	e := &Events{w: w, ch: make(chan any, queue), m: m}
	e.enc = json.NewEncoder(&e.buf)
	return e
}

// TurnEvent is the schema of a turn line.
type TurnEvent struct {
	Type      string      `json:"type"` // "turn"
	Time      time.Time   `json:"time"` // end of the turn
	Start     time.Time   `json:"start"`
	SessionID string      `json:"session_id,omitempty"`
	Source    string      `json:"session_source"`
	Index     int         `json:"turn_index,omitempty"`
	Route     string      `json:"route"`
	Latency   float64     `json:"latency"`  // seconds: first byte, else duration
	Duration  float64     `json:"duration"` // seconds
	Code      string      `json:"code"`
	Outcome   TurnOutcome `json:"outcome"`
	Signals   []string    `json:"signals"`
	Verdict   string      `json:"verdict,omitempty"`
	Blame     string      `json:"blame,omitempty"`
	Green     bool        `json:"green"`
	TraceID   string      `json:"trace_id,omitempty"`
}

// SessionEvent is the schema of a session line, written by the replica
// that ended the session (it saw the turns that came to it).
type SessionEvent struct {
	Type        string         `json:"type"` // "session"
	Time        time.Time      `json:"time"` // when it ended
	SessionID   string         `json:"session_id"`
	Start       time.Time      `json:"start"`
	Last        time.Time      `json:"last"`
	Reason      EndReason      `json:"reason"`
	Outcome     SessionOutcome `json:"outcome"`
	Good        bool           `json:"good"`
	Green       bool           `json:"green"`
	Turns       int            `json:"turns"`
	BadTurns    int            `json:"bad_turns"`
	Repeats     int            `json:"repeats"`
	Frustration int            `json:"frustration"`
	Regenerates int            `json:"regenerates"`
	Verdict     string         `json:"verdict,omitempty"`
	LastTraceID string         `json:"last_trace_id,omitempty"`
}

// Turn queues a turn event.
func (e *Events) Turn(r TurnResult) {
	sig := r.Signals.Names()
	if sig == nil {
		sig = []string{}
	}
	ev := TurnEvent{
		Type: "turn", Time: r.Start.Add(r.Duration), Start: r.Start, SessionID: r.SessionID, Source: r.Source,
		Index: r.Index, Route: r.Route, Latency: r.Latency.Seconds(), Duration: r.Duration.Seconds(),
		Code: r.Code, Outcome: r.Outcome, Signals: sig, Verdict: r.Verdict, Blame: r.Blame, Green: r.Green,
	}
	if r.TraceID.IsValid() {
		ev.TraceID = r.TraceID.String()
	}
	e.queue(&ev)
}

// Session queues a session event.
func (e *Events) Session(r SessionResult) {
	ev := SessionEvent{
		Type: "session", Time: r.Ended, SessionID: r.ID, Start: r.Start, Last: r.Last, Reason: r.Reason,
		Outcome: r.Outcome, Good: r.Good, Green: r.Green, Turns: r.Turns, BadTurns: r.Bad,
		Repeats: r.Repeats, Frustration: r.Frust, Regenerates: r.Regen, Verdict: r.Verdict,
	}
	if r.LastTrace.IsValid() {
		ev.LastTraceID = r.LastTrace.String()
	}
	e.queue(&ev)
}

func (e *Events) queue(v any) {
	select {
	case e.ch <- v:
	default:
		e.m.eventDropped("queue_full")
	}
}

// Run writes queued events until ctx ends, then writes what is still
// queued and returns.
func (e *Events) Run(ctx context.Context) {
	for {
		select {
		case v := <-e.ch:
			e.write(v)
		case <-ctx.Done():
			for {
				select {
				case v := <-e.ch:
					e.write(v)
				default:
					return
				}
			}
		}
	}
}

// write encodes one event into buf (reused across events: Run is the only
// writer) and writes it as one line.
func (e *Events) write(v any) {
	e.buf.Reset()
	if err := e.enc.Encode(v); err != nil { // not reachable with these types
		e.m.eventDropped("encode")
		return
	}
	if _, err := e.w.Write(e.buf.Bytes()); err != nil {
		e.m.eventDropped("write_error")
	}
}
