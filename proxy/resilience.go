package proxy

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// Limits of the buffered (resilient) path. A request larger than the
// route's replay limit (replay.max_request_bytes) is forwarded as a stream,
// without retries or fallback: replaying it would mean holding it in
// memory, and a body that size is rarely a bot turn.
const (
	maxCachedResponse   = 1 << 20
	retryBackoffBase    = 25 * time.Millisecond
	retryBackoffMax     = 250 * time.Millisecond
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
	// keyNames are the route's cache-key headers, canonical.
	keyNames []string
	// ident is what the cached answers depend on besides the policy: a
	// reload that changes it starts a fresh cache (and budget).
	ident resilienceIdent
	// mem is the proxy-wide replay budget; maxRequest the most one
	// request may keep for replay.
	mem        *fallback.Memory
	maxRequest int64
	// tel is the route's telemetry of the newest generation using this
	// state; Apply swaps it while older requests may still report.
	tel atomic.Pointer[telemetry.Route]
	now func() time.Time

	shared // generations holding this policy
}

func (res *resilience) telemetry() *telemetry.Route { return res.tel.Load() }

// needsResilience reports whether a route uses the buffered path.
func needsResilience(r routes.Route) bool { return r.Retry != nil || r.Fallback != nil }

// resilienceIdent is where a route's answers come from: its listener, its
// match and its upstream (by name and by what the name stands for). A
// cached answer is only good for the same question to the same service.
type resilienceIdent struct {
	listener  string
	match     routes.Match
	upstream  string
	protocol  string
	endpoints []string
}

func identOf(r routes.Route, up routes.Upstream) resilienceIdent {
	return resilienceIdent{listener: r.Listener, match: r.Match, upstream: r.Upstream, protocol: up.Protocol, endpoints: up.Endpoints}
}

func newResilience(r routes.Route, up routes.Upstream, now func() time.Time, mem *fallback.Memory, maxRequest int64) *resilience {
	res := &resilience{name: r.Name, retry: r.Retry, fb: r.Fallback, attempts: 1, now: now,
		ident: identOf(r, up), mem: mem, maxRequest: maxRequest}
	if r.Retry != nil {
		res.attempts = max(1, r.Retry.Attempts)
		res.on, _ = routes.ParseRetryOn(r.Retry.On) // validated
		res.budget = fallback.NewBudget(fallback.BudgetSettings{Ratio: r.Retry.Budget})
	}
	if fb := r.Fallback; fb != nil {
		if fb.Cache != nil || uses(fb, "cache") {
			res.cache = fallback.NewCache(fb.Cache.Settings())
			if fb.Cache != nil {
				for _, h := range fb.Cache.Headers {
					res.keyNames = append(res.keyNames, http.CanonicalHeaderKey(h))
				}
			}
		}
		res.bg = fallback.NewBackground(fb.Background.Settings(), func(n int) { res.telemetry().BackgroundInflight(n) })
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

// same reports whether this state can serve r's policy unchanged, for the
// same listener, match and upstream: a cache warmed by another upstream or
// other requests must not answer for this one.
func (res *resilience) same(r routes.Route, up routes.Upstream) bool {
	return reflect.DeepEqual(res.retry, r.Retry) && reflect.DeepEqual(res.fb, r.Fallback) &&
		reflect.DeepEqual(res.ident, identOf(r, up))
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
