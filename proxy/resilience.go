package proxy

import (
	"context"
	"errors"
	"math/rand/v2"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// Limits of the buffered (resilient) path. A request that is larger is
// forwarded as a stream, without retries or fallback: replaying it would
// mean holding it in memory, and a body that size is rarely a bot turn.
const (
	maxBufferedRequest  = 1 << 20
	maxCachedResponse   = 1 << 20
	retryBackoffBase    = 25 * time.Millisecond
	retryBackoffMax     = 250 * time.Millisecond
	retryBudgetWindow   = 10 * time.Second
	retryBudgetFloor    = 1.0 // retries per second always allowed, so low traffic can still retry
	defaultRetryBudget  = 0.2
	fallbackHeader      = "X-Hopwatch-Fallback"
	fallbackTrailerGRPC = "x-hopwatch-fallback"
)

// resilience is one route's retry and fallback state. It survives reloads
// that leave the route's policy unchanged, so the fallback cache stays warm
// and the retry budget keeps its history.
type resilience struct {
	name     string
	retry    *routes.Retry
	fb       *routes.Fallback
	attempts int
	on       routes.RetryOn
	budget   *fallback.Budget
	cache    *fallback.Cache
	bg       *fallback.Background
	// tel is the route's telemetry of the newest generation using this
	// state; Apply swaps it while older requests may still report.
	tel atomic.Pointer[telemetry.Route]
	now func() time.Time

	shared // generations holding this policy
}

func (res *resilience) telemetry() *telemetry.Route { return res.tel.Load() }

// needsResilience reports whether a route uses the buffered path.
func needsResilience(r routes.Route) bool { return r.Retry != nil || r.Fallback != nil }

func newResilience(r routes.Route, now func() time.Time) *resilience {
	res := &resilience{name: r.Name, retry: r.Retry, fb: r.Fallback, attempts: 1, now: now}
	if r.Retry != nil {
		res.attempts = max(1, r.Retry.Attempts)
		res.on, _ = routes.ParseRetryOn(r.Retry.On) // validated
		ratio := r.Retry.Budget
		if ratio <= 0 {
			ratio = defaultRetryBudget
		}
		res.budget = fallback.NewBudget(ratio, retryBudgetWindow, retryBudgetFloor)
	}
	if fb := r.Fallback; fb != nil {
		if fb.Cache != nil || uses(fb, "cache") {
			var ttl time.Duration
			var n int
			var opts []fallback.CacheOption
			if fb.Cache != nil {
				ttl, n = fb.Cache.TTL, fb.Cache.MaxEntries
				if fb.Cache.MaxBytes > 0 {
					opts = append(opts, fallback.CacheMaxBytes(fb.Cache.MaxBytes))
				}
			}
			res.cache = fallback.NewCache(ttl, n, opts...)
		}
		var maxIn int
		var timeout time.Duration
		if fb.Background != nil {
			maxIn, timeout = fb.Background.MaxInflight, fb.Background.Timeout
		}
		res.bg = fallback.NewBackground(maxIn, timeout, func(n int) { res.telemetry().BackgroundInflight(n) })
	}
	return res
}

func uses(fb *routes.Fallback, source string) bool {
	for _, s := range fb.Use {
		if s == source {
			return true
		}
	}
	return false
}

// same reports whether this state can serve r's policy unchanged.
func (res *resilience) same(r routes.Route) bool {
	return reflect.DeepEqual(res.retry, r.Retry) && reflect.DeepEqual(res.fb, r.Fallback)
}

func (res *resilience) close() {
	if res.bg != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		res.bg.Close(ctx)
	}
}

// retryAllowed spends from the budget for one more attempt.
func (res *resilience) retryAllowed() bool {
	if res.budget.TryRetry(res.now()) {
		res.telemetry().Retry("attempted")
		return true
	}
	res.telemetry().Retry("budget_exhausted")
	return false
}

// backoff waits before attempt n (2, 3, ...) unless ctx ends first.
func (res *resilience) backoff(ctx context.Context, n int) error {
	d := fallback.Backoff(n-1, retryBackoffBase, retryBackoffMax, rand.Float64)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reasonOf names why a fallback answers instead of the upstream.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, errBreakerOpen):
		return "open"
	case errors.Is(err, errOverloaded):
		return "overload"
	}
	return "error"
}
