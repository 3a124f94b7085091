package conversation

import (
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Turn is one finished request on an entry route, as telemetry saw it. It
// is handed to Tracker.Observe and not kept: Text in particular is reduced
// to a fingerprint and dropped.
type Turn struct {
	// Route is the entry route's name.
	Route string
	// SessionID and Source, when already known (Tracker.Identify);
	// otherwise Observe reads them from Header and Body. "" / SourceNone:
	// the turn belongs to no session.
	SessionID string
	Source    string
	// Header reads the request's headers (lowercase names); Body is the
	// start of its JSON body (at most MaxBodyBytes). Both may be nil and
	// neither is kept after Observe returns.
	Header func(key string) string
	Body   []byte
	// BodyProto says Body is the start of a gRPC call's first request
	// message (protobuf wire format) rather than of a JSON body.
	BodyProto bool
	TraceID   trace.TraceID
	Start     time.Time
	Duration  time.Duration
	// FirstByte is the time to the answer's first byte (response headers,
	// first message, first token), 0 if none came.
	FirstByte time.Duration
	// Code is the HTTP status or gRPC code name the client got.
	Code string
	// HopOutcome is the entry hop's outcome as telemetry recorded it: ok,
	// error, timeout, fallback, rejected, canceled.
	HopOutcome string
	// Verdict is the service's own verdict, if any: no_match, handoff,
	// resolved.
	Verdict string
	// Text is the user's message, if known (else read from Body with
	// text_from). Never stored.
	Text string
	// Hops are the hops of the turn's trace (the entry hop included), for
	// blame.
	Hops []Hop
}

// Hop is one hop of a turn, reduced to what blame needs.
type Hop struct {
	// Name is the hop's route name (a bounded label value).
	Name    string
	Outcome string
	Code    string
	// Verdict is the verdict this hop's response carried, if any.
	Verdict string
	// FinishReason is a genai hop's finish reason (stop, length, ...), ""
	// on other hops: "length" anywhere in the turn flags it truncated.
	FinishReason string
	// Self is the hop's own time: its duration minus its child hops'.
	Self time.Duration
	// Depth is 0 for the entry hop, 1 for the hops it called, ...
	Depth int
}

// TurnOutcome classifies a turn, first match wins, in this order.
type TurnOutcome string

const (
	// TurnError: the client got a 5xx, or a gRPC status other than OK and
	// CANCELLED, or the proxy failed the call (timeout, breaker, bulkhead).
	TurnError TurnOutcome = "error"
	// TurnCanceled: the client gave up before the answer ended.
	TurnCanceled TurnOutcome = "canceled"
	// TurnFallback: a hopwatch fallback answered on some hop of the turn,
	// or the service said no_match.
	TurnFallback TurnOutcome = "fallback"
	// TurnSlow: the answer started later than turn_slo.
	TurnSlow TurnOutcome = "slow"
	// TurnGood is everything else.
	TurnGood TurnOutcome = "good"
)

// Verdicts a service can give.
const (
	VerdictNoMatch  = "no_match"
	VerdictHandoff  = "handoff"
	VerdictResolved = "resolved"
)

// Signals flag a turn; they combine.
type Signals uint8

const (
	// SignalRepeat: the message is similar to one of the session's last
	// repeat.last messages.
	SignalRepeat Signals = 1 << iota
	// SignalFrustration: the message holds a frustration keyword.
	SignalFrustration
	// SignalRegenerate: the previous turn was canceled and this message is
	// near-identical to its message (the user asked again).
	SignalRegenerate
	// SignalTruncated: a model call of the turn (a genai hop) stopped at
	// its token limit (finish_reason "length"): the user got a cut
	// answer, though every hop said 200.
	SignalTruncated
)

// FinishLength is the finish reason of a model answer cut at its token
// limit (OpenAI's "length"; telemetry.FinishLength).
const FinishLength = "length"

var signalNames = [...]string{"repeat", "frustration", "regenerate", "truncated"}

// truncated reports whether some hop of t is a model answer cut at its
// token limit.
func truncated(t *Turn) bool {
	for i := range t.Hops {
		if t.Hops[i].FinishReason == FinishLength {
			return true
		}
	}
	return false
}

// Names lists the signals set, in a fixed order.
func (s Signals) Names() []string {
	var out []string
	for i, n := range signalNames {
		if s&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// Has reports whether every signal in o is set.
func (s Signals) Has(o Signals) bool { return s&o == o }

// ParseSignal returns the signal named n.
func ParseSignal(n string) (Signals, bool) {
	for i, name := range signalNames {
		if n == name {
			return 1 << i, true
		}
	}
	return 0, false
}

// latency is what the SLO is held against: the time to the answer's first
// byte when there was one (for a stream, the first token; for a unary
// answer, nearly its whole duration), else the whole turn.
func (t *Turn) latency() time.Duration {
	if t.FirstByte > 0 {
		return t.FirstByte
	}
	return t.Duration
}

// classify returns the turn's outcome and the hop it blames ("" for a
// good turn).
func classify(t *Turn, slo time.Duration) (TurnOutcome, string) {
	switch {
	case failed(t.HopOutcome, t.Code):
		return TurnError, blameDeepest(t, func(h *Hop) bool { return failed(h.Outcome, h.Code) })
	case t.HopOutcome == "canceled":
		return TurnCanceled, blameSlowest(t)
	case t.HopOutcome == "fallback" || t.Verdict == VerdictNoMatch || anyHop(t, "fallback"):
		return TurnFallback, blameDeepest(t, func(h *Hop) bool { return h.Outcome == "fallback" || h.Verdict == VerdictNoMatch })
	case t.latency() > slo:
		return TurnSlow, blameSlowest(t)
	}
	return TurnGood, ""
}

// failed: a hop outcome telemetry counts as an error, or a code that is a
// failure for the client: a 5xx, or a gRPC code other than OK and
// Canceled (a client's cancellation is not the bot's failure).
func failed(outcome, code string) bool {
	switch outcome {
	case "error", "timeout", "rejected":
		return true
	case "canceled":
		return false
	}
	if len(code) == 3 && code[0] >= '0' && code[0] <= '9' {
		return code[0] >= '5'
	}
	return code != "" && code != "OK" && code != "Canceled"
}

func anyHop(t *Turn, outcome string) bool {
	for i := range t.Hops {
		if t.Hops[i].Outcome == outcome {
			return true
		}
	}
	return false
}

// blameDeepest names the deepest hop that matches: a failure, fallback or
// no_match deep in the trace surfaces through every hop above it, and the
// deepest is where it happened. Without one, the entry route is to blame.
func blameDeepest(t *Turn, match func(*Hop) bool) string {
	best := -1
	for i := range t.Hops {
		if match(&t.Hops[i]) && (best < 0 || t.Hops[i].Depth > t.Hops[best].Depth) {
			best = i
		}
	}
	if best < 0 {
		return t.Route
	}
	return t.Hops[best].Name
}

// blameSlowest names the hop with the largest self time, the one that
// contributed most to the turn's latency (see telemetry's bottleneck
// analysis for why self time).
func blameSlowest(t *Turn) string {
	best := -1
	for i := range t.Hops {
		if best < 0 || t.Hops[i].Self > t.Hops[best].Self {
			best = i
		}
	}
	if best < 0 {
		return t.Route
	}
	return t.Hops[best].Name
}
