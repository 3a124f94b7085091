package fallback

import (
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// Budget bounds retries to a share of first attempts over a sliding window,
// like Linkerd's retry budgets (and, with a token bucket instead of a
// window, gRPC's retry throttling, gRFC A6): per-call attempt limits alone
// let an outage multiply the load by the attempt count, while a budget caps
// it at (1 + ratio) times, plus a small floor so that a route with little
// traffic can still retry at all.
//
// Times are passed in: the window follows the caller's clock, which keeps
// tests exact. Safe for concurrent use.
type Budget struct {
	ratio float64
	floor float64 // retries the window always allows
	width int64   // bucket width, ns

	mu      sync.Mutex // guards head and buckets
	head    int64      // latest bucket epoch seen; time never moves back
	buckets [budgetBuckets]budgetBucket
}

// budgetBuckets is how many steps the window moves in (1s for 10s).
const budgetBuckets = 10

type budgetBucket struct {
	epoch             int64
	requests, retries uint32
}

// NewBudget returns a budget allowing, at any moment, fewer retries in the
// last window than max(MinRetriesPerSecond × window in seconds, Ratio ×
// first attempts in the window); zero settings take the defaults.
func NewBudget(s BudgetSettings) *Budget {
	s = s.withDefaults()
	return &Budget{
		ratio: s.Ratio,
		floor: s.MinRetriesPerSecond * s.Window.Seconds(),
		width: max(int64(s.Window)/budgetBuckets, 1),
	}
}

// Request records a first attempt, which earns the route ratio retries.
func (b *Budget) Request(now time.Time) {
	b.mu.Lock()
	b.at(now).requests++
	b.mu.Unlock()
}

// TryRetry reports whether one more retry fits the budget, and if so
// records it. Retries are not requests: they earn no budget, or a failing
// upstream would fund its own retries.
func (b *Budget) TryRetry(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.at(now)
	var requests, retries uint64
	for i := range b.buckets {
		if bk := &b.buckets[i]; bk.epoch > b.head-budgetBuckets {
			requests += uint64(bk.requests)
			retries += uint64(bk.retries)
		}
	}
	if float64(retries) >= max(b.floor, b.ratio*float64(requests)) {
		return false
	}
	cur.retries++
	return true
}

// at returns now's bucket, cleared if it last held an older epoch. A time
// before the latest seen counts as the latest: clocks may step back, and
// the window must not reopen old buckets.
func (b *Budget) at(now time.Time) *budgetBucket {
	e := max(now.UnixNano()/b.width, b.head)
	b.head = e
	bk := &b.buckets[uint64(e)%budgetBuckets]
	if bk.epoch != e {
		*bk = budgetBucket{epoch: e}
	}
	return bk
}

// Backoff returns how long to wait before retry number attempt (1 for the
// first retry): "full jitter" exponential backoff, uniform in
// [0, min(maxDelay, base × 2^(attempt-1))), which spreads the retries of
// many clients that failed together better than any fixed or partly
// jittered delay (AWS Architecture Blog, "Exponential Backoff And Jitter").
// random returns a number in [0, 1); nil means math/rand/v2's Float64.
// base <= 0 means no wait; maxDelay <= 0 means no cap.
func Backoff(attempt int, base, maxDelay time.Duration, random func() float64) time.Duration {
	if base <= 0 {
		return 0
	}
	if maxDelay <= 0 {
		maxDelay = math.MaxInt64
	}
	ceil := min(base, maxDelay)
	for i := 1; i < attempt && ceil < maxDelay; i++ {
		if ceil > maxDelay/2 {
			ceil = maxDelay
			break
		}
		ceil *= 2
	}
	if random == nil {
		random = rand.Float64
	}
	r := random()
	if !(r > 0) { // also NaN
		return 0
	}
	if r >= 1 {
		r = math.Nextafter(1, 0)
	}
	return time.Duration(r * float64(ceil))
}
