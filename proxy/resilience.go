package proxy

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"slices"
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
// and the retry budget keeps its history. A change of the upstream's
// endpoints alone (an xDS endpoint push, a DNS or file edit) gives a
// successor with a fresh cache (answers from other endpoints are other
// answers) and the same budget and background queue (the route's retry
// history and work in progress are not the endpoints').
type resilience struct {
	name     string
	retry    *routes.Retry
	fb       *routes.Fallback
	attempts int
	on       routes.RetryOn
	budget   *fallback.Budget
	cache    *fallback.Cache
	bg       *fallback.Background
	// bgUsers counts the states sharing bg (a state and its successors);
	// the last one to close closes it.
	bgUsers *atomic.Int32
	// keyNames are the route's cache-key headers, canonical.
	keyNames []string
	// ident is what the whole state depends on besides the policy: a
	// reload that changes it starts afresh. endpoints is what only the
	// cache depends on besides: a reload that changes them alone starts a
	// fresh cache (successor).
	ident     resilienceIdent
	endpoints []string
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

// resilienceIdent is which service a route's state is about: its
// listener, its match and its upstream (by name and protocol). The
// upstream's endpoints are apart (resilience.endpoints): a cached answer
// is only good for the same question to the same endpoints, but a retry
// budget is the route's whatever endpoints serve it.
type resilienceIdent struct {
	listener string
	match    routes.Match
	upstream string
	protocol string
}

func identOf(r routes.Route, up routes.Upstream) resilienceIdent {
	return resilienceIdent{listener: r.Listener, match: r.Match, upstream: r.Upstream, protocol: up.Protocol}
}

func newResilience(r routes.Route, up routes.Upstream, now func() time.Time, mem *fallback.Memory, maxRequest int64) *resilience {
	res := &resilience{name: r.Name, retry: r.Retry, fb: r.Fallback, attempts: 1, now: now,
		ident: identOf(r, up), endpoints: slices.Clone(up.Endpoints), mem: mem, maxRequest: maxRequest}
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
		res.bgUsers = new(atomic.Int32)
		res.bgUsers.Store(1)
	}
	return res
}

// successor is the state of the same route over other endpoints (same
// reports true, sameEndpoints false): a fresh cache, the same budget and
// background queue.
func (res *resilience) successor(up routes.Upstream) *resilience {
	next := &resilience{name: res.name, retry: res.retry, fb: res.fb, attempts: res.attempts, on: res.on,
		budget: res.budget, bg: res.bg, bgUsers: res.bgUsers, keyNames: res.keyNames,
		ident: res.ident, endpoints: slices.Clone(up.Endpoints), mem: res.mem, maxRequest: res.maxRequest, now: res.now}
	if res.cache != nil {
		next.cache = fallback.NewCache(res.fb.Cache.Settings())
	}
	if next.bgUsers != nil {
		next.bgUsers.Add(1)
	}
	return next
}

func uses(fb *routes.Fallback, source string) bool {
	for _, s := range fb.Use {
		if s == source {
			return true
		}
	}
	return false
}

// same reports whether this state (or a successor) can serve r's policy
// unchanged, for the same listener, match and upstream.
func (res *resilience) same(r routes.Route, up routes.Upstream) bool {
	return reflect.DeepEqual(res.retry, r.Retry) && reflect.DeepEqual(res.fb, r.Fallback) &&
		reflect.DeepEqual(res.ident, identOf(r, up))
}

// sameEndpoints reports whether the cache may keep answering for up: a
// cache warmed by other endpoints must not answer for these (issue 8).
func (res *resilience) sameEndpoints(up routes.Upstream) bool {
	return slices.Equal(res.endpoints, up.Endpoints)
}

func (res *resilience) close() {
	if res.bg != nil && res.bgUsers.Add(-1) == 0 {
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
