package fallback

import (
	"cmp"
	"time"
)

// Settings of the primitives, gobreaker.Settings style: one struct per
// primitive, whose zero value (and any zero or negative field) means the
// default below. The defaults live here, with the primitives they tune;
// the configuration (routes/) documents and validates the same numbers by
// referring to these constants, and proxy/ passes what was written through
// unchanged, so a default is applied in exactly one place.

// Breaker defaults.
const (
	DefaultBreakerWindow           = 10 * time.Second
	DefaultBreakerMinRequests      = 20
	DefaultBreakerFailureRatio     = 0.5
	DefaultBreakerSlowRatio        = 0.8
	DefaultBreakerOpenFor          = 5 * time.Second
	DefaultBreakerHalfOpenRequests = 3
)

// BreakerSettings tune a Breaker.
type BreakerSettings struct {
	// Window is the rolling window of the counts (DefaultBreakerWindow).
	Window time.Duration
	// MinRequests is how many calls the window needs before it may trip
	// (DefaultBreakerMinRequests).
	MinRequests int
	// FailureRatio trips the breaker when failures reach it
	// (DefaultBreakerFailureRatio).
	FailureRatio float64
	// SlowCall is the time to first response at or above which a call is
	// slow (0: slowness is not counted).
	SlowCall time.Duration
	// SlowRatio trips the breaker when slow calls reach it
	// (DefaultBreakerSlowRatio).
	SlowRatio float64
	// OpenFor is how long it stays open (DefaultBreakerOpenFor).
	OpenFor time.Duration
	// HalfOpenRequests is how many trial calls pass when half-open
	// (DefaultBreakerHalfOpenRequests).
	HalfOpenRequests int
}

func (s BreakerSettings) withDefaults() BreakerSettings {
	s.Window = cmp.Or(max(s.Window, 0), DefaultBreakerWindow)
	s.MinRequests = cmp.Or(max(s.MinRequests, 0), DefaultBreakerMinRequests)
	s.FailureRatio = cmp.Or(max(s.FailureRatio, 0), DefaultBreakerFailureRatio)
	s.SlowCall = max(s.SlowCall, 0)
	s.SlowRatio = cmp.Or(max(s.SlowRatio, 0), DefaultBreakerSlowRatio)
	s.OpenFor = cmp.Or(max(s.OpenFor, 0), DefaultBreakerOpenFor)
	s.HalfOpenRequests = cmp.Or(max(s.HalfOpenRequests, 0), DefaultBreakerHalfOpenRequests)
	return s
}

// Cache defaults. The byte bound matters as much as the count: a few large
// bodies would otherwise hold the memory that MaxEntries was meant to bound.
const (
	DefaultCacheTTL        = 10 * time.Minute
	DefaultCacheMaxEntries = 10000
	DefaultCacheMaxBytes   = 64 << 20
)

// CacheSettings tune a Cache.
type CacheSettings struct {
	TTL        time.Duration // how long an entry may answer (DefaultCacheTTL)
	MaxEntries int           // entry count bound (DefaultCacheMaxEntries)
	MaxBytes   int64         // estimated memory bound (DefaultCacheMaxBytes)
}

func (s CacheSettings) withDefaults() CacheSettings {
	s.TTL = cmp.Or(max(s.TTL, 0), DefaultCacheTTL)
	s.MaxEntries = cmp.Or(max(s.MaxEntries, 0), DefaultCacheMaxEntries)
	s.MaxBytes = cmp.Or(max(s.MaxBytes, 0), DefaultCacheMaxBytes)
	return s
}

// Background defaults.
const (
	DefaultBackgroundMaxInflight = 64
	DefaultBackgroundTimeout     = 10 * time.Second
)

// BackgroundSettings tune a Background queue.
type BackgroundSettings struct {
	MaxInflight int           // concurrent tasks (DefaultBackgroundMaxInflight)
	Timeout     time.Duration // bound of each task (DefaultBackgroundTimeout)
}

func (s BackgroundSettings) withDefaults() BackgroundSettings {
	s.MaxInflight = cmp.Or(max(s.MaxInflight, 0), DefaultBackgroundMaxInflight)
	s.Timeout = cmp.Or(max(s.Timeout, 0), DefaultBackgroundTimeout)
	return s
}

// Budget defaults: one retry per five first attempts (Linkerd's default
// ratio) over 10 s, and always 1 retry per second, so that low traffic can
// still retry.
const (
	DefaultBudgetRatio               = 0.2
	DefaultBudgetWindow              = 10 * time.Second
	DefaultBudgetMinRetriesPerSecond = 1.0
)

// BudgetSettings tune a Budget.
type BudgetSettings struct {
	// Ratio of retries to first attempts over the window
	// (DefaultBudgetRatio).
	Ratio float64
	// Window is the sliding window (DefaultBudgetWindow).
	Window time.Duration
	// MinRetriesPerSecond is the floor always allowed
	// (DefaultBudgetMinRetriesPerSecond; negative: none).
	MinRetriesPerSecond float64
}

func (s BudgetSettings) withDefaults() BudgetSettings {
	s.Ratio = cmp.Or(max(s.Ratio, 0), DefaultBudgetRatio)
	s.Window = cmp.Or(max(s.Window, 0), DefaultBudgetWindow)
	if s.MinRetriesPerSecond == 0 {
		s.MinRetriesPerSecond = DefaultBudgetMinRetriesPerSecond
	}
	s.MinRetriesPerSecond = max(s.MinRetriesPerSecond, 0)
	return s
}

// Ejector defaults.
const (
	DefaultEjectorConsecutiveFailures = 5
	DefaultEjectorBaseEjection        = 10 * time.Second
	DefaultEjectorMaxEjection         = 5 * time.Minute
	DefaultEjectorMaxEjectedPercent   = 50
)

// EjectorSettings tune an Ejector.
type EjectorSettings struct {
	// ConsecutiveFailures in a row eject an endpoint
	// (DefaultEjectorConsecutiveFailures).
	ConsecutiveFailures int
	// BaseEjection is the first ejection's length, doubled for each
	// ejection since the last success (DefaultEjectorBaseEjection).
	BaseEjection time.Duration
	// MaxEjection caps the doubling (DefaultEjectorMaxEjection; raised to
	// BaseEjection if below it).
	MaxEjection time.Duration
	// MaxEjectedPercent of the endpoints may be out at once; one always
	// stays in (DefaultEjectorMaxEjectedPercent; at most 100).
	MaxEjectedPercent int
}

func (s EjectorSettings) withDefaults() EjectorSettings {
	s.ConsecutiveFailures = min(cmp.Or(max(s.ConsecutiveFailures, 0), DefaultEjectorConsecutiveFailures), 1<<30)
	s.BaseEjection = cmp.Or(max(s.BaseEjection, 0), DefaultEjectorBaseEjection)
	s.MaxEjection = max(cmp.Or(max(s.MaxEjection, 0), DefaultEjectorMaxEjection), s.BaseEjection)
	s.MaxEjectedPercent = min(cmp.Or(max(s.MaxEjectedPercent, 0), DefaultEjectorMaxEjectedPercent), 100)
	return s
}
