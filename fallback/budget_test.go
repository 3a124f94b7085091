package fallback_test

import (
	"math"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
)

// TestBudgetOutage replays a total outage with explicit times: every
// attempt fails and every caller wants up to retries more. The upstream
// must see at most (1 + ratio) × requests plus the floor, whatever the
// attempt count, and the budget must not starve retries below its ratio.
func TestBudgetOutage(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ratio     float64
		floor     float64 // retries per second
		perSecond int     // first attempts per second
		retries   int     // retries each request would like
		seconds   int
	}{
		{"default ratio, busy route", 0, 1, 100, 3, 60},
		{"ratio 0.1", 0.1, 1, 100, 9, 60},
		{"ratio 1", 1, 1, 50, 3, 30},
		{"quiet route lives on the floor", 0.2, 1, 1, 3, 60},
		{"no floor", 0.2, -1, 100, 3, 60},
		{"default floor", 0.2, 0, 1, 3, 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			b := fallback.NewBudget(fallback.BudgetSettings{Ratio: tc.ratio, Window: 10 * time.Second, MinRetriesPerSecond: tc.floor})
			ratio := tc.ratio
			if ratio == 0 {
				ratio = 0.2
			}
			requests, retries := 0, 0
			step := time.Second / time.Duration(tc.perSecond)
			for range tc.seconds * tc.perSecond {
				b.Request(clk.Now())
				requests++
				for range tc.retries {
					if !b.TryRetry(clk.Now()) {
						break
					}
					retries++
				}
				clk.Advance(step)
			}
			floor := tc.floor
			switch {
			case floor == 0:
				floor = fallback.DefaultBudgetMinRetriesPerSecond
			case floor < 0:
				floor = 0
			}
			limit := ratio*float64(requests) + floor*float64(tc.seconds)
			t.Logf("%d requests, %d retries: upstream load ×%.3f (limit %.0f retries)",
				requests, retries, float64(requests+retries)/float64(requests), limit)
			if float64(retries) > limit {
				t.Errorf("%d retries for %d requests, want at most %.0f", retries, requests, limit)
			}
			// Steady traffic earns its ratio (less a window's worth of
			// warm-up), so the budget does not starve retries either.
			if want := ratio * float64(requests-10*tc.perSecond); tc.retries > 0 && float64(retries) < want {
				t.Errorf("%d retries for %d requests, want at least %.0f", retries, requests, want)
			}
		})
	}
}

func TestBudgetWindowSlides(t *testing.T) {
	clk := newClock()
	b := fallback.NewBudget(fallback.BudgetSettings{Ratio: 0.5, Window: 10 * time.Second, MinRetriesPerSecond: -1})
	for range 10 {
		b.Request(clk.Now())
	}
	for i := range 5 {
		if !b.TryRetry(clk.Now()) {
			t.Fatalf("retry %d of 5 refused", i+1)
		}
	}
	if b.TryRetry(clk.Now()) {
		t.Fatal("6th retry for 10 requests at ratio 0.5 allowed")
	}
	clk.Advance(10 * time.Second) // the requests (and retries) leave the window
	if b.TryRetry(clk.Now()) {
		t.Fatal("retry allowed with no requests in the window and no floor")
	}
	b.Request(clk.Now())
	b.Request(clk.Now())
	if !b.TryRetry(clk.Now()) {
		t.Fatal("retry refused with 2 fresh requests at ratio 0.5")
	}
}

func TestBudgetFloor(t *testing.T) {
	clk := newClock()
	b := fallback.NewBudget(fallback.BudgetSettings{Ratio: 0.2, Window: 10 * time.Second, MinRetriesPerSecond: 1}) // 10 retries per window, always
	n := 0
	for b.TryRetry(clk.Now()) {
		n++
		if n > 100 {
			break
		}
	}
	if n != 10 {
		t.Errorf("floor allowed %d retries without traffic, want 10 (1/s over 10s)", n)
	}
}

func TestBudgetClockStepsBack(t *testing.T) {
	clk := newClock()
	b := fallback.NewBudget(fallback.BudgetSettings{Ratio: 1, Window: 10 * time.Second, MinRetriesPerSecond: -1})
	b.Request(clk.Now())
	// A time far in the past counts as the latest seen, so the request is
	// still in the window and earns its retry, and no more.
	past := clk.Now().Add(-time.Hour)
	if !b.TryRetry(past) {
		t.Error("retry refused")
	}
	if b.TryRetry(past) {
		t.Error("second retry allowed for one request at ratio 1")
	}
}

func TestBackoff(t *testing.T) {
	const (
		base = 25 * time.Millisecond
		most = 250 * time.Millisecond
	)
	top := func() float64 { return math.Nextafter(1, 0) }
	for _, tc := range []struct {
		name    string
		attempt int
		base    time.Duration
		max     time.Duration
		rand    func() float64
		want    time.Duration
	}{
		{"first retry, top of range", 1, base, most, top, base - 1},
		{"second retry doubles", 2, base, most, top, 2*base - 1},
		{"third retry doubles again", 3, base, most, top, 4*base - 1},
		{"capped", 5, base, most, top, most - 1},
		{"huge attempt stays capped", 1000, base, most, top, most - 1},
		{"no cap, huge attempt", 1000, base, 0, func() float64 { return 0.5 }, math.MaxInt64 / 2},
		{"half", 2, base, most, func() float64 { return 0.5 }, base},
		{"zero draw", 3, base, most, func() float64 { return 0 }, 0},
		{"draw of 1 is clamped", 1, base, most, func() float64 { return 1 }, base - 1},
		{"NaN draw", 1, base, most, func() float64 { return math.NaN() }, 0},
		{"attempt 0 is the first", 0, base, most, top, base - 1},
		{"no base, no wait", 3, 0, most, top, 0},
		{"base above max", 1, time.Second, most, top, most - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fallback.Backoff(tc.attempt, tc.base, tc.max, tc.rand)
			// Float rounding may shave a nanosecond off the top.
			if d := got - tc.want; d < -1 || d > 1 {
				t.Errorf("Backoff(%d, %v, %v) = %v, want %v", tc.attempt, tc.base, tc.max, got, tc.want)
			}
		})
	}
	for range 1000 {
		if d := fallback.Backoff(3, base, most, nil); d < 0 || d >= 4*base {
			t.Fatalf("Backoff with the default source = %v, want in [0, %v)", d, 4*base)
		}
	}
}
