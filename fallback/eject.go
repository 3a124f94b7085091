package fallback

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Ejector is passive outlier ejection for the endpoints of one upstream:
// an endpoint that fails consecutive times in a row is left out of load
// balancing for a period that doubles with each ejection, up to a cap, and
// starts over once the endpoint succeeds again. It learns only from real
// traffic (no probes), as Envoy's outlier detection does.
//
// At most maxEjected endpoints are out at once: the breaker protects the
// upstream as a whole, ejection only steers around a bad instance, and
// ejecting most of a pool would pile the load on the rest. With two or more
// endpoints one may always be ejected (a percentage of a small pool would
// round to none) and one always stays, so the balancer never runs out;
// a single endpoint is never ejected.
//
// Report and Ejected are lock-free except when an ejection happens. Times
// are passed in. Safe for concurrent use.
type Ejector struct {
	threshold    int32
	base, most   time.Duration
	maxEjected   int
	maxDoublings int32
	eps          []endpointHealth

	mu sync.Mutex // serializes ejections, so that the cap holds
}

type endpointHealth struct {
	consecutive atomic.Int32 // failures in a row
	until       atomic.Int64 // ejected while now < until (unix ns)
	ejections   atomic.Int32 // ejections since the last success, capped
}

// NewEjector returns an ejector for n endpoints, indexed 0..n-1. Zero or
// negative settings take the defaults; a max below base is raised to base.
func NewEjector(n int, s EjectorSettings) *Ejector {
	s = s.withDefaults()
	e := &Ejector{
		threshold: int32(s.ConsecutiveFailures),
		base:      s.BaseEjection,
		most:      s.MaxEjection,
		eps:       make([]endpointHealth, n),
	}
	for d := e.base; d < e.most && d <= math.MaxInt64/2; d *= 2 {
		e.maxDoublings++
	}
	pct := s.MaxEjectedPercent
	if n > 1 {
		e.maxEjected = min(max(n*pct/100, 1), n-1)
	}
	return e
}

// Report records the outcome of a call to endpoint i and returns the
// ejection period that this report started, or 0. What counts as a failure
// is the caller's choice; calls the endpoint cannot be blamed for
// (client cancellations, client errors) should not be reported at all.
// Outcomes that arrive while i is ejected come from calls sent before, and
// only a success among them counts (it resets the failure run).
func (e *Ejector) Report(i int, failure bool, now time.Time) (ejectedFor time.Duration) {
	ep := &e.eps[i]
	ejected := now.UnixNano() < ep.until.Load()
	if !failure {
		ep.consecutive.Store(0)
		if !ejected && ep.ejections.Load() != 0 {
			ep.ejections.Store(0)
		}
		return 0
	}
	if ejected || ep.consecutive.Add(1) < e.threshold {
		return 0
	}
	return e.eject(i, now)
}

func (e *Ejector) eject(i int, now time.Time) time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	ep := &e.eps[i]
	t := now.UnixNano()
	if t < ep.until.Load() {
		return 0 // another report ejected it just now
	}
	out := 0
	for j := range e.eps {
		if t < e.eps[j].until.Load() {
			out++
		}
	}
	if out >= e.maxEjected {
		// At the cap the run stays at the threshold: the next failure asks
		// again, and gets its turn once another endpoint comes back.
		return 0
	}
	k := ep.ejections.Load()
	period := min(e.base<<k, e.most)
	ep.until.Store(now.Add(period).UnixNano())
	if k < e.maxDoublings {
		ep.ejections.Add(1)
	}
	ep.consecutive.Store(0)
	return period
}

// Ejected reports whether endpoint i is out of balancing at now.
func (e *Ejector) Ejected(i int, now time.Time) bool {
	return now.UnixNano() < e.eps[i].until.Load()
}

// EjectedCount returns how many endpoints are out at now, for a gauge.
func (e *Ejector) EjectedCount(now time.Time) int {
	t, n := now.UnixNano(), 0
	for i := range e.eps {
		if t < e.eps[i].until.Load() {
			n++
		}
	}
	return n
}

// MaxEjected returns how many endpoints may be out at once.
func (e *Ejector) MaxEjected() int { return e.maxEjected }
