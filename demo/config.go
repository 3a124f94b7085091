package demo

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Service names. They are also the upstream names in the demo's hopwatch
// configuration, so counts and hops line up by name.
const (
	ServiceGateway   = "gateway"
	ServiceNLU       = "nlu"
	ServiceDM        = "dm"
	ServiceInference = "inference"
	ServiceKB        = "kb"
	// ServiceLLM is the OpenAI-compatible model server that inference
	// calls (over HTTP, through hopwatch).
	ServiceLLM = "llm"
)

// Services lists the services in the order of a turn, for printing.
var Services = []string{ServiceGateway, ServiceNLU, ServiceDM, ServiceKB, ServiceInference, ServiceLLM}

// Headers (gRPC metadata keys) the demo speaks.
const (
	// HeaderCaller names the calling service; the demo's listeners read it
	// (caller_header) to label every hop with who called.
	HeaderCaller = "x-hop-caller"
	// HeaderSession carries the conversation's session ID.
	HeaderSession = "x-session-id"
	// HeaderVerdict carries a service's own verdict on the turn: the NLU
	// says no_match when it did not understand, the DM says resolved when
	// the user closed the conversation. hopwatch reads it (verdict_header)
	// and removes it before the answer leaves.
	HeaderVerdict = "x-bot-outcome"
)

// Verdicts the demo's services give, in HeaderVerdict and in the
// gateway's answer (ChatResponse.Outcome, the done event).
const (
	VerdictNoMatch  = "no_match"
	VerdictResolved = "resolved"
)

// Latency is a simulated service time: Base plus a uniformly drawn share of
// Jitter. Real services are never exactly on time, and a flat line would
// make percentiles meaningless.
type Latency struct {
	Base   time.Duration
	Jitter time.Duration
}

func (l Latency) draw(r *lockedRand) time.Duration {
	d := l.Base
	if l.Jitter > 0 {
		d += time.Duration(r.float64() * float64(l.Jitter))
	}
	return d
}

// Config sets the demo services' behaviour. The zero value is a stack with
// no simulated latency at all (what most tests want); DefaultConfig gives
// the realistic one.
type Config struct {
	NLU Latency
	DM  Latency
	// FirstToken is the inference time to the first token; TokenGap the
	// time between tokens after it. Together they make streaming visible:
	// the first token arrives long before the reply is complete.
	FirstToken Latency
	TokenGap   Latency
	// Tokens is the length of each reply (0: 12).
	Tokens int
	// LengthShare of the model's answers (0..1) finish with "length": cut
	// at max_tokens, which hopwatch reports as truncated.
	LengthShare float64
	// KB is the knowledge base's usual latency; on a KBSlowShare of calls
	// (0..1) it takes KBSlow instead: the intermittently slow external API
	// that hopwatch's fallbacks exist for.
	KB          Latency
	KBSlow      Latency
	KBSlowShare float64
	// NoMatchShare is the share of questions (0..1) the NLU does not
	// understand: it answers the no_match intent with the no_match
	// verdict, and the bot asks the user to rephrase.
	NoMatchShare float64
	// DegradeAfter, when set, is how long after the stack starts the NLU
	// gets worse: from then on it does not understand DegradedNoMatchShare
	// of questions, while every service stays as fast and as successful
	// as before. It stages the scenario hopwatch's conversation signals
	// are for: latency and error panels stay green while users repeat
	// themselves, get no_match answers and leave, and the good-session SLI
	// falls.
	DegradeAfter         time.Duration
	DegradedNoMatchShare float64
	// Seed makes the drawn latencies repeatable (0: a random seed).
	Seed uint64
	// OnCall, if set, is called as each service starts serving a call, from
	// that call's goroutine. Tests use it to see what arrived where.
	OnCall func(Call)
	// OTLP is the host:port of an OTLP/gRPC collector that the services
	// export their own spans to (see tracing.go). Empty: the services
	// still trace themselves, into no exporter.
	OTLP string
}

// DefaultConfig is the realistic stack of the demo: a turn takes about
// half a second, except when the knowledge base is slow. The slow share is
// well above 5% so that the turn p95 shows the slow KB in every run, not
// only in lucky ones.
func DefaultConfig() Config {
	return Config{
		NLU:         Latency{Base: 12 * time.Millisecond, Jitter: 6 * time.Millisecond},
		DM:          Latency{Base: 8 * time.Millisecond, Jitter: 4 * time.Millisecond},
		FirstToken:  Latency{Base: 130 * time.Millisecond, Jitter: 40 * time.Millisecond},
		TokenGap:    Latency{Base: 16 * time.Millisecond, Jitter: 8 * time.Millisecond},
		Tokens:      defaultTokens,
		LengthShare: 0.1,
		KB:          Latency{Base: 30 * time.Millisecond, Jitter: 20 * time.Millisecond},
		KBSlow:      Latency{Base: 1500 * time.Millisecond, Jitter: 1500 * time.Millisecond},
		KBSlowShare: 0.15,
		// Now and then, as real NLUs do; enough for a few per minute.
		NoMatchShare: 0.05,
	}
}

const defaultTokens = 12

// Call is one call a service received, as OnCall sees it.
type Call struct {
	Service string
	// Caller is the x-hop-caller value the call carried.
	Caller string
	// Session is the x-session-id value.
	Session string
	// Traceparent is the W3C traceparent header, if any.
	Traceparent string
}

// lockedRand is a random source shared by concurrent handlers; math/rand/v2
// generators are not safe for concurrent use.
type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func newLockedRand(seed uint64) *lockedRand {
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &lockedRand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (l *lockedRand) float64() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Float64()
}

// sleep waits d or until ctx ends, whichever is first: a canceled call
// must free its handler at once, not when the simulated work would have
// finished.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
