package proxy

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// endpoint is one address of an upstream with the state load balancing needs:
// requests in flight, a peak-EWMA of response latency, and a passive "down"
// mark set when connecting fails, so that requests not yet sent go elsewhere.
type endpoint struct {
	addr     string
	idx      int // position in the upstream's endpoint list
	inflight atomic.Int64

	// authority is the host:port as written when addr is one of its
	// resolved addresses (DNS discovery), "" otherwise.
	authority string

	mu        sync.Mutex // guards the fields below
	ewma      float64    // nanoseconds
	lastObs   time.Time
	downUntil time.Time
	failures  int // consecutive connect failures, for the down backoff
}

const (
	// ewmaDecay is the time constant of the latency average: old samples
	// weigh 1/e after this long. The average also decays while no
	// sample comes (cost), so an endpoint avoided after one slow answer
	// is tried again: without that it would keep its peak for as long as
	// it gets no traffic, which is for ever once it costs more than the
	// others (tower's and Linkerd's peak-EWMA decay it the same way).
	ewmaDecay = 10 * time.Second
	// downBase and downMax bound how long an endpoint that refused a
	// connection is skipped; the period doubles per consecutive failure.
	downBase = 250 * time.Millisecond
	downMax  = 30 * time.Second
)

// observe records one response latency. Peak-EWMA (as in Finagle and
// Linkerd): a sample above the average replaces it at once, so a slowing
// endpoint is avoided immediately and forgiven gradually.
func (e *endpoint) observe(now time.Time, rtt time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := float64(rtt)
	if e.lastObs.IsZero() || s > e.ewma {
		e.ewma = s
	} else {
		w := math.Exp(-float64(now.Sub(e.lastObs)) / float64(ewmaDecay))
		e.ewma = e.ewma*w + s*(1-w)
	}
	e.lastObs = now
	e.failures = 0
	e.downUntil = time.Time{}
}

// markDown records a failed connection attempt.
func (e *endpoint) markDown(now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d := downBase << min(e.failures, 10)
	if d > downMax {
		d = downMax
	}
	e.failures++
	e.downUntil = now.Add(d)
}

func (e *endpoint) isDown(now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return now.Before(e.downUntil)
}

// cost is the p2c_ewma score at now: expected latency scaled by queue
// depth. The latency average decays towards zero from the last sample on
// (see ewmaDecay).
func (e *endpoint) cost(now time.Time) float64 {
	e.mu.Lock()
	ewma := e.ewma
	if d := now.Sub(e.lastObs); !e.lastObs.IsZero() && d > 0 {
		ewma *= math.Exp(-float64(d) / float64(ewmaDecay))
	}
	e.mu.Unlock()
	return (ewma + 1) * float64(e.inflight.Load()+1)
}

// balancer picks an endpoint for one attempt. tried is a bitmask of endpoint
// indexes already attempted for this request (only the first 64 endpoints can
// be excluded; more is far beyond what one upstream has).
type balancer interface {
	pick(eps []*endpoint, tried uint64, usable func(i int) bool) int
}

// candidates fills buf with the indexes worth trying: not tried and usable,
// or, if every untried endpoint is down, all untried ones (an endpoint marked
// down may have recovered; failing fast on all of them helps no one).
func candidates(buf []int, eps []*endpoint, tried uint64, usable func(i int) bool) []int {
	buf = buf[:0]
	for i := range eps {
		if i < 64 && tried&(1<<i) != 0 {
			continue
		}
		if usable(i) {
			buf = append(buf, i)
		}
	}
	if len(buf) > 0 {
		return buf
	}
	for i := range eps {
		if i >= 64 || tried&(1<<i) == 0 {
			buf = append(buf, i)
		}
	}
	return buf
}

// p2cEWMA is "power of two choices" over peak-EWMA cost: two random
// candidates, the cheaper wins. It avoids both herding (unlike least-loaded)
// and slow endpoints (unlike round robin).
type p2cEWMA struct {
	now func() time.Time // the proxy's clock (nil: time.Now)
}

func (p p2cEWMA) pick(eps []*endpoint, tried uint64, usable func(i int) bool) int {
	var arr [16]int
	c := candidates(arr[:0], eps, tried, usable)
	switch len(c) {
	case 0:
		return -1
	case 1:
		return c[0]
	}
	i := rand.IntN(len(c))
	j := rand.IntN(len(c) - 1)
	if j >= i {
		j++
	}
	a, b := c[i], c[j]
	now := time.Now
	if p.now != nil {
		now = p.now
	}
	t := now()
	if eps[b].cost(t) < eps[a].cost(t) {
		return b
	}
	return a
}

// roundRobin cycles through candidates.
type roundRobin struct{ next atomic.Uint64 }

func (r *roundRobin) pick(eps []*endpoint, tried uint64, usable func(i int) bool) int {
	var arr [16]int
	c := candidates(arr[:0], eps, tried, usable)
	if len(c) == 0 {
		return -1
	}
	return c[(r.next.Add(1)-1)%uint64(len(c))]
}
