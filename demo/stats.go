package demo

import (
	"math"
	"sync"
	"time"
)

// Outcome is how a turn ended, from the user's side.
type Outcome string

// Turn outcomes. A slow answer is still OK or Degraded; Turn.Slow says it
// was slow.
const (
	OutcomeOK       Outcome = "ok"
	OutcomeDegraded Outcome = "degraded" // answered, but without a real KB answer
	OutcomeError    Outcome = "error"    // no answer: an error status, a broken stream
	OutcomeCanceled Outcome = "canceled" // the run ended while the turn was in flight
)

// Turn is one question and its answer, as a simulated user saw it.
type Turn struct {
	User    int
	Session string
	Persona Persona
	Stream  bool
	// Text is the question asked. It stays with the simulated user; the
	// Recorder keeps only counts.
	Text string
	// Repeat is set when the user asked the previous question again.
	Repeat bool
	// Closing is set on the user's goodbye ("thanks, bye").
	Closing bool
	// Verdict is the bot's own verdict in its answer: no_match, resolved
	// or "".
	Verdict string
	// Latency is from sending the request to the complete answer;
	// FirstToken, on streamed turns, to the first token event.
	Latency    time.Duration
	FirstToken time.Duration
	// Slow: the answer started later than UsersConfig.SlowAfter (the
	// first token of a stream, the whole answer otherwise): what users
	// wait for, and what hopwatch holds turn_slo against.
	Slow    bool
	Outcome Outcome
	Err     error
}

// Summary is what a Recorder counted over a span of time.
type Summary struct {
	Span time.Duration
	// Turns counts answered and failed turns; turns cut by the end of the
	// run are not counted anywhere.
	Turns    int
	Errors   int
	Slow     int
	Degraded int
	Repeats  int
	// Conversations that ended: Completed all their turns, or Abandoned
	// (a quitter gave up).
	Completed int
	Abandoned int
	// Sessions are the same ended conversations judged by hopwatch's
	// rules from what went over the wire: the simulation's ground truth.
	Sessions SessionCounts
	// Turn latency percentiles (within about 2%).
	P50, P95, P99 time.Duration
}

// Rate is turns per second over the span.
func (s Summary) Rate() float64 {
	if s.Span <= 0 {
		return 0
	}
	return float64(s.Turns) / s.Span.Seconds()
}

// Recorder counts turns for the whole run and for a rolling window (since
// the last Window call). It is safe for concurrent use and its memory does
// not grow with the run's length: latencies go into fixed histograms.
type Recorder struct {
	now func() time.Time

	mu     sync.Mutex // guards the tallies
	total  tally
	window tally
}

type tally struct {
	start     time.Time
	s         Summary
	latencies histogram
}

// NewRecorder starts recording; now is the clock (nil: time.Now).
func NewRecorder(now func() time.Time) *Recorder {
	if now == nil {
		now = time.Now
	}
	t := now()
	return &Recorder{now: now, total: tally{start: t}, window: tally{start: t}}
}

// Record counts one turn.
func (r *Recorder) Record(t Turn) {
	if t.Outcome == OutcomeCanceled {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tl := range []*tally{&r.total, &r.window} {
		tl.s.Turns++
		switch t.Outcome {
		case OutcomeError:
			tl.s.Errors++
		case OutcomeDegraded:
			tl.s.Degraded++
		}
		if t.Slow {
			tl.s.Slow++
		}
		if t.Repeat {
			tl.s.Repeats++
		}
		tl.latencies.add(t.Latency)
	}
}

// EndConversation counts a conversation that ended.
func (r *Recorder) EndConversation(e Ending) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tl := range []*tally{&r.total, &r.window} {
		if e.GaveUp {
			tl.s.Abandoned++
		} else {
			tl.s.Completed++
		}
		tl.s.Sessions.add(e)
	}
}

// Ending is how a conversation ended, in terms the wire can show: what
// the user sent (a goodbye, the same question again) and what the bot
// answered (an error, a slow or degraded answer, a verdict). It is the
// simulation's ground truth for hopwatch's session outcomes.
type Ending struct {
	// Resolved: the user said goodbye and the bot answered with the
	// resolved verdict.
	Resolved bool
	// GaveUp: a quitter left right after a bad answer.
	GaveUp bool
	// LastBad: the last turn was bad as the wire shows it (an error, an
	// answer that started late, a degraded or no_match answer) or was a
	// repeated question.
	LastBad bool
	// Repeats counts the questions asked again.
	Repeats int
}

// Outcome applies hopwatch's session rules (first match wins) to what the
// wire showed: resolved, abandoned (left without a goodbye right after a
// bad turn), frustrated (two or more repeats), completed.
func (e Ending) Outcome() string {
	switch {
	case e.Resolved:
		return "resolved"
	case e.LastBad:
		return "abandoned"
	case e.Repeats >= 2:
		return "frustrated"
	}
	return "completed"
}

// Good is hopwatch's good session: resolved or completed, at most one
// repeat.
func (e Ending) Good() bool {
	o := e.Outcome()
	return (o == "resolved" || o == "completed") && e.Repeats <= 1
}

// SessionCounts count ended conversations by Ending.Outcome.
type SessionCounts struct {
	Ended      int
	Resolved   int
	Abandoned  int
	Frustrated int
	Completed  int
	Good       int
	// Of Abandoned: GaveUp users left because of a bad answer;
	// SilentAfterBad users were done and left without a goodbye, right
	// after a bad answer. On the wire the two look the same.
	GaveUp         int
	SilentAfterBad int
	// Repeats counts repeated questions in ended conversations.
	Repeats int
}

func (c *SessionCounts) add(e Ending) {
	c.Ended++
	c.Repeats += e.Repeats
	switch e.Outcome() {
	case "resolved":
		c.Resolved++
	case "abandoned":
		c.Abandoned++
		if e.GaveUp {
			c.GaveUp++
		} else {
			c.SilentAfterBad++
		}
	case "frustrated":
		c.Frustrated++
	default:
		c.Completed++
	}
	if e.Good() {
		c.Good++
	}
}

// Total summarizes the whole run so far.
func (r *Recorder) Total() Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total.summary(r.now())
}

// Window summarizes the turns since the previous Window call (or the
// start) and starts a new window.
func (r *Recorder) Window() Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	s := r.window.summary(now)
	r.window = tally{start: now}
	return s
}

func (t *tally) summary(now time.Time) Summary {
	s := t.s
	s.Span = now.Sub(t.start)
	s.P50 = t.latencies.quantile(0.50)
	s.P95 = t.latencies.quantile(0.95)
	s.P99 = t.latencies.quantile(0.99)
	return s
}

// histogram buckets durations on a log scale, each bucket 2% wider than
// the one before, from 100µs to over an hour: bounded memory whatever the
// run's length, with percentiles good to about 2%.
type histogram struct {
	counts   []uint64 // allocated on first add
	n        uint64
	min, max time.Duration
}

const (
	histFloor   = 100 * time.Microsecond
	histGrowth  = 1.02
	histBuckets = 900 // histFloor * 1.02^900 ≈ 15 h
)

var logGrowth = math.Log(histGrowth)

func bucketOf(d time.Duration) int {
	if d <= histFloor {
		return 0
	}
	i := int(math.Ceil(math.Log(float64(d)/float64(histFloor)) / logGrowth))
	return min(i, histBuckets-1)
}

func bucketUpper(i int) time.Duration {
	return time.Duration(float64(histFloor) * math.Pow(histGrowth, float64(i)))
}

func (h *histogram) add(d time.Duration) {
	if h.counts == nil {
		h.counts = make([]uint64, histBuckets)
	}
	if h.n == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.counts[bucketOf(d)]++
	h.n++
}

// quantile returns the nearest-rank q-quantile's bucket bound, clamped to
// what was observed (so one sample reads back as itself); 0 when empty.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(max(bucketUpper(i), h.min), h.max)
		}
	}
	return h.max
}
