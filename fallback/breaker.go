package fallback

import (
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// State is a circuit breaker state. The numbers are those of the
// hopwatch_breaker_state gauge: 0 closed, 1 half-open, 2 open.
type State int

// Breaker states.
const (
	StateClosed   State = 0 // calls pass; outcomes are counted
	StateHalfOpen State = 1 // a few trial calls pass
	StateOpen     State = 2 // calls are rejected
)

// String returns closed, half_open or open: snake case, like every other
// label value and config word of hopwatch.
func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half_open"
	case StateOpen:
		return "open"
	}
	return "unknown"
}

// Errors of Breaker.Allow. Callers branch on ErrRejected (the call was not
// made, so a fallback may answer); the two specific errors say why.
var (
	ErrRejected     = errors.New("rejected")
	ErrOpen         = &rejected{"circuit breaker is open"}
	ErrHalfOpenFull = &rejected{"circuit breaker is half-open and its trial calls are taken"}
)

// rejected reads as its own message (it may reach a client as a status
// message) and still matches ErrRejected.
type rejected struct{ msg string }

func (e *rejected) Error() string { return e.msg }
func (e *rejected) Unwrap() error { return ErrRejected }

// Result is the outcome of one admitted call, reported through the done
// func of Breaker.Allow.
type Result struct {
	// Duration is the time to the first response (or to the failure); at
	// or above the breaker's slow_call the call counts as slow.
	Duration time.Duration
	// Failure marks a call the upstream failed (see ClassifyGRPC and
	// ClassifyHTTP).
	Failure bool
	// Excluded marks a call that says nothing about the upstream: the
	// client went away, or sent a bad request. It counts as neither
	// success nor failure, and frees its half-open slot.
	Excluded bool
}

// BreakerOption adjusts a Breaker.
type BreakerOption func(*Breaker)

// BreakerClock sets the clock of the rolling window, for tests. The open
// timeout is gobreaker's and always follows time.Now.
func BreakerClock(now func() time.Time) BreakerOption {
	return func(b *Breaker) { b.now = now }
}

// BreakerStats is a breaker's view of its rolling window, for the admin API.
type BreakerStats struct {
	State State
	// Requests, Failures and Slow count the calls that finished in the
	// window while closed; excluded calls are in none of them. A slow
	// failure is in both Failures and Slow.
	Requests, Failures, Slow int
}

// Breaker is a circuit breaker for one upstream, on gobreaker's
// TwoStepCircuitBreaker. gobreaker runs the state machine: the open
// timeout, admission of exactly half_open_requests trial calls, closing
// after that many consecutive successes, reopening on any failure. It
// counts only successes and failures, so the breaker keeps its own rolling
// counts of failures and slow calls and decides in ReadyToTrip; slow calls
// are reported to gobreaker as failures so that ReadyToTrip runs for them
// and a slow trial call reopens the breaker.
type Breaker struct {
	name         string
	cb           *gobreaker.TwoStepCircuitBreaker[struct{}]
	now          func() time.Time
	minRequests  uint32
	failureRatio float64
	slowCall     time.Duration
	slowRatio    float64
	onState      func(name string, from, to State)

	// genState is the current generation (bumped on every transition)
	// shifted left by two, or'ed with the current state. Allow reads it
	// without a lock; it changes under mu. A result counts only in the
	// closed generation it was admitted in, as in gobreaker, so a slow call
	// from before a trip cannot land in the fresh window after recovery.
	genState atomic.Uint64

	mu      sync.Mutex // guards win and pending
	win     window
	pending []transition

	// Transitions happen inside gobreaker, under its lock, where calling
	// the hook could deadlock if the hook used the breaker. They are queued
	// and delivered after gobreaker returns, in order, one deliverer at a
	// time; see flush.
	hasPending atomic.Bool
	notifyMu   sync.Mutex
}

type transition struct{ from, to State }

// errFailure and errExcluded carry Result to gobreaker's done func, which
// classifies errors only.
var (
	errFailure  = errors.New("failure")
	errExcluded = errors.New("excluded")
)

// NewBreaker builds the breaker of one upstream (zero settings take the
// DefaultBreaker* values). onState,
// if not nil, is told of every transition, in order, after the breaker's
// locks are released, so it may call the breaker; it runs on the goroutine
// of the call that caused the transition, which includes an Allow or State
// that finds the open timeout over.
func NewBreaker(name string, s BreakerSettings, onState func(name string, from, to State), opts ...BreakerOption) *Breaker {
	cfg := s.withDefaults()
	b := &Breaker{
		name:         name,
		now:          time.Now,
		minRequests:  clampUint32(cfg.MinRequests),
		failureRatio: cfg.FailureRatio,
		slowCall:     cfg.SlowCall,
		slowRatio:    cfg.SlowRatio,
		onState:      onState,
	}
	for _, opt := range opts {
		opt(b)
	}
	span := cfg.Window
	b.win.width = max(int64(span)/windowBuckets, 1)
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        name,
		MaxRequests: clampUint32(cfg.HalfOpenRequests),
		// gobreaker's own counts only serve the half-open state; its
		// rolling window mirrors ours so that Counts() reads sensibly.
		Interval:      span,
		BucketPeriod:  time.Duration(b.win.width),
		Timeout:       cfg.OpenFor,
		ReadyToTrip:   b.readyToTrip,
		OnStateChange: b.stateChanged,
		IsExcluded:    func(err error) bool { return err == errExcluded },
	})
	return b
}

func clampUint32(n int) uint32 { return uint32(min(uint64(n), math.MaxUint32)) }

// Name returns the name given to NewBreaker (the upstream's).
func (b *Breaker) Name() string { return b.name }

// State returns the current state. An open breaker whose timeout is over
// turns half-open here, as in gobreaker.
func (b *Breaker) State() State {
	s := State(b.cb.State())
	b.flush()
	return s
}

// Stats returns the state and the rolling window's counts.
func (b *Breaker) Stats() BreakerStats {
	s := b.State()
	b.mu.Lock()
	total, failures, slow := b.win.sum(b.now())
	b.mu.Unlock()
	return BreakerStats{State: s, Requests: int(total), Failures: int(failures), Slow: int(slow)}
}

// Allow asks to make one call. It never blocks. On success, done must be
// called exactly once with the call's Result, once the first response or
// the failure is known; a call whose done is never called holds a
// half-open slot until the breaker changes state. Otherwise err is ErrOpen
// or ErrHalfOpenFull, both wrapping ErrRejected.
func (b *Breaker) Allow() (done func(Result), err error) {
	gbDone, err := b.cb.Allow()
	b.flush()
	if err != nil {
		if errors.Is(err, gobreaker.ErrOpenState) {
			return nil, ErrOpen
		}
		return nil, ErrHalfOpenFull
	}
	gs := b.genState.Load()
	return func(r Result) { b.done(gbDone, gs, r) }, nil
}

func (b *Breaker) done(gbDone func(error), genState uint64, r Result) {
	slow := b.slowCall > 0 && r.Duration >= b.slowCall
	var err error
	switch {
	case r.Excluded:
		err = errExcluded
	case r.Failure || slow:
		err = errFailure
	}
	// Count first, so that the ReadyToTrip which gbDone may run sees this
	// call. Only closed generations count: half-open is gobreaker's.
	if !r.Excluded && State(genState&3) == StateClosed {
		now := b.now()
		b.mu.Lock()
		if b.genState.Load() == genState {
			b.win.add(now, r.Failure, slow)
		}
		b.mu.Unlock()
	}
	gbDone(err)
	b.flush()
}

// readyToTrip runs under gobreaker's lock after a failure (or slow call)
// while closed. gobreaker's counts cannot tell slow from failed, so it
// reads ours.
func (b *Breaker) readyToTrip(gobreaker.Counts) bool {
	b.mu.Lock()
	total, failures, slow := b.win.sum(b.now())
	b.mu.Unlock()
	if total == 0 || total < b.minRequests {
		return false
	}
	t := float64(total)
	return float64(failures) >= b.failureRatio*t ||
		b.slowCall > 0 && float64(slow) >= b.slowRatio*t
}

// stateChanged runs under gobreaker's lock on every transition.
func (b *Breaker) stateChanged(_ string, from, to gobreaker.State) {
	b.mu.Lock()
	defer b.mu.Unlock()
	gen := b.genState.Load()>>2 + 1
	b.genState.Store(gen<<2 | uint64(to)&3)
	if to == gobreaker.StateClosed {
		// A fresh start: the calls that tripped the breaker must not
		// trip it again the moment it closes.
		b.win.reset()
	}
	if b.onState != nil {
		b.pending = append(b.pending, transition{State(from), State(to)})
		b.hasPending.Store(true)
	}
}

// flush delivers queued transitions to onState. Whoever holds notifyMu
// delivers everything queued, including transitions queued meanwhile by
// other goroutines (or by the hook itself, through State), whose own flush
// found notifyMu taken; the outer loop closes the gap between the last
// check and the Unlock.
func (b *Breaker) flush() {
	for b.hasPending.Load() {
		if !b.notifyMu.TryLock() {
			return
		}
		for {
			b.mu.Lock()
			ts := b.pending
			b.pending = nil
			b.hasPending.Store(false)
			b.mu.Unlock()
			if len(ts) == 0 {
				break
			}
			for _, t := range ts {
				b.onState(b.name, t.from, t.to)
			}
		}
		b.notifyMu.Unlock()
	}
}

// windowBuckets is how many steps the rolling window moves in: a tenth of
// the window drops out at a time.
const windowBuckets = 10

// window counts outcomes over the last windowBuckets buckets. Buckets are
// aligned to the clock rather than to the breaker's start; all that
// matters is that the window covers the last span, to within a bucket.
type window struct {
	width   int64 // bucket width, ns
	buckets [windowBuckets]bucket
}

type bucket struct {
	epoch                  int64 // clock time / width
	total, failures, slows uint32
}

func (w *window) add(now time.Time, failure, slow bool) {
	e := now.UnixNano() / w.width
	b := &w.buckets[uint64(e)%windowBuckets]
	if b.epoch != e {
		*b = bucket{epoch: e}
	}
	b.total++
	if failure {
		b.failures++
	}
	if slow {
		b.slows++
	}
}

func (w *window) sum(now time.Time) (total, failures, slow uint32) {
	e := now.UnixNano() / w.width
	for i := range w.buckets {
		b := &w.buckets[i]
		if b.epoch <= e && b.epoch > e-windowBuckets {
			total += b.total
			failures += b.failures
			slow += b.slows
		}
	}
	return total, failures, slow
}

func (w *window) reset() {
	w.buckets = [windowBuckets]bucket{}
}
