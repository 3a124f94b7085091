package proxy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
)

// Errors of the upstream gate. Both wrap errRejected: the request was not
// sent, so the upstream owes nothing and a fallback may answer instead.
var (
	errRejected    = errors.New("rejected")
	errBreakerOpen = fmt.Errorf("%w: circuit breaker open", errRejected)
	errOverloaded  = fmt.Errorf("%w: too many concurrent requests (bulkhead full)", errRejected)
)

// pass is one admitted exchange with an upstream: report its result to the
// breaker once the first response (or the failure) is known, release the
// bulkhead slot when the exchange is over. Both are idempotent; a nil pass
// (no breaker, no bulkhead) is fine.
type pass struct {
	done     func(fallback.Result)
	bulkhead *fallback.Bulkhead
	start    time.Time
	first    time.Time // first response, if seen: what "slow" measures
	now      func() time.Time
	reported bool
	released bool
}

// admit applies the upstream's circuit breaker and bulkhead before a
// request is sent. Neither ever queues: a full bulkhead or an open breaker
// answers at once, so a slow dependency cannot pile up waiting callers.
func (u *upstream) admit() (*pass, error) {
	if u.breaker == nil && u.bulkhead == nil {
		return nil, nil
	}
	p := &pass{now: u.now, start: u.now()}
	if u.bulkhead != nil {
		if !u.bulkhead.TryAcquire() {
			return nil, errOverloaded
		}
		p.bulkhead = u.bulkhead
	}
	if u.breaker != nil {
		done, err := u.breaker.Allow()
		if err != nil {
			p.release()
			return nil, errBreakerOpen
		}
		p.done = done
	}
	return p, nil
}

// firstResponse marks the first response (headers or message). A stream
// that answers at once and then runs for minutes is not a slow call.
func (p *pass) firstResponse() {
	if p != nil && p.first.IsZero() {
		p.first = p.now()
	}
}

// firstResponseAt is firstResponse for an answer that came at t (zero:
// now).
func (p *pass) firstResponseAt(t time.Time) {
	if p != nil && p.first.IsZero() {
		if t.IsZero() {
			t = p.now()
		}
		p.first = t
	}
}

// report tells the breaker how the exchange went. Slowness is the time to
// the first response, or to the end when there was none.
func (p *pass) report(c classified) {
	if p == nil || p.reported {
		return
	}
	p.reported = true
	if p.done != nil {
		end := p.first
		if end.IsZero() {
			end = p.now()
		}
		p.done(fallback.Result{Duration: end.Sub(p.start), Failure: c.failure, Excluded: c.excluded})
	}
}

// release frees the bulkhead slot.
func (p *pass) release() {
	if p == nil || p.released {
		return
	}
	p.released = true
	if p.bulkhead != nil {
		p.bulkhead.Release()
	}
}

// BreakerStatus is one upstream's circuit breaker, for the admin API.
type BreakerStatus struct {
	Upstream string `json:"upstream"`
	State    string `json:"state"` // closed, half_open, open
	// Requests, Failures and Slow are the breaker's rolling window.
	Requests int `json:"requests"`
	Failures int `json:"failures"`
	Slow     int `json:"slow"`
	// InFlight and MaxConcurrent describe the bulkhead (0: none).
	InFlight      int `json:"in_flight"`
	MaxConcurrent int `json:"max_concurrent"`
}

// Breakers reports the breakers and bulkheads of the current upstreams.
func (p *Proxy) Breakers() []BreakerStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []BreakerStatus
	for name, u := range p.ups {
		if u.breaker == nil && u.bulkhead == nil {
			continue
		}
		s := BreakerStatus{Upstream: name, State: "closed", MaxConcurrent: u.spec.MaxConcurrent}
		if u.breaker != nil {
			st := u.breaker.Stats()
			s.State = st.State.String()
			s.Requests, s.Failures, s.Slow = st.Requests, st.Failures, st.Slow
		}
		if u.bulkhead != nil {
			s.InFlight = u.bulkhead.InFlight()
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b BreakerStatus) int { return strings.Compare(a.Upstream, b.Upstream) })
	return out
}
