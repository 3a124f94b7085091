package fallback_test

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
	"github.com/hopwatch/hopwatch/internal/testkit"
)

var (
	ok       = fallback.Result{Duration: 10 * time.Millisecond}
	failed   = fallback.Result{Duration: 10 * time.Millisecond, Failure: true}
	slowOK   = fallback.Result{Duration: 2 * time.Second}
	slowFail = fallback.Result{Duration: 2 * time.Second, Failure: true}
	canceled = fallback.Result{Duration: 3 * time.Second, Excluded: true}
)

// step is n calls with one result, after moving the clock by advance.
type step struct {
	advance time.Duration
	n       int
	r       fallback.Result
}

// call runs one admitted call through b, failing the test if it is
// rejected.
func call(t testing.TB, b *fallback.Breaker, r fallback.Result) {
	t.Helper()
	done, err := b.Allow()
	if err != nil {
		t.Fatalf("Allow() = %v in state %v", err, b.State())
	}
	done(r)
}

func TestBreakerTrips(t *testing.T) {
	base := fallback.BreakerSettings{MinRequests: 10, FailureRatio: 0.5, SlowCall: time.Second, SlowRatio: 0.8, OpenFor: time.Hour}
	for _, tc := range []struct {
		name  string
		cfg   fallback.BreakerSettings
		steps []step
		want  fallback.State
	}{
		{"failure ratio reached", base, []step{{n: 5, r: ok}, {n: 5, r: failed}}, fallback.StateOpen},
		{"failure ratio reached, interleaved", base, []step{
			{n: 1, r: ok}, {n: 1, r: failed}, {n: 1, r: ok}, {n: 1, r: failed}, {n: 1, r: ok},
			{n: 1, r: failed}, {n: 1, r: ok}, {n: 1, r: failed}, {n: 1, r: ok}, {n: 1, r: failed},
		}, fallback.StateOpen},
		{"failure ratio not reached", base, []step{{n: 6, r: ok}, {n: 4, r: failed}}, fallback.StateClosed},
		{"below min requests", base, []step{{n: 9, r: failed}}, fallback.StateClosed},
		{"min requests default is 20", fallback.BreakerSettings{}, []step{{n: 19, r: failed}}, fallback.StateClosed},
		{"defaults trip at 20", fallback.BreakerSettings{}, []step{{n: 10, r: ok}, {n: 10, r: failed}}, fallback.StateOpen},
		{"slow ratio reached", base, []step{{n: 2, r: ok}, {n: 8, r: slowOK}}, fallback.StateOpen},
		{"slow ratio not reached", base, []step{{n: 3, r: ok}, {n: 7, r: slowOK}}, fallback.StateClosed},
		{"slow calls are not failures", fallback.BreakerSettings{MinRequests: 10, FailureRatio: 0.5, SlowCall: time.Second, SlowRatio: 1},
			[]step{{n: 1, r: ok}, {n: 9, r: slowOK}}, fallback.StateClosed},
		{"slow failures count as both", fallback.BreakerSettings{MinRequests: 10, FailureRatio: 0.9, SlowCall: time.Second, SlowRatio: 0.5},
			[]step{{n: 5, r: ok}, {n: 5, r: slowFail}}, fallback.StateOpen},
		{"no slow_call, slowness ignored", fallback.BreakerSettings{MinRequests: 10}, []step{{n: 20, r: slowOK}}, fallback.StateClosed},
		{"failures leave the window", base, []step{{n: 9, r: failed}, {advance: 11 * time.Second, n: 1, r: failed}}, fallback.StateClosed},
		{"failures within the window", base, []step{{n: 9, r: failed}, {advance: 8 * time.Second, n: 1, r: failed}}, fallback.StateOpen},
		{"window rolls by tenths", fallback.BreakerSettings{Window: 10 * time.Second, MinRequests: 10, FailureRatio: 0.6}, []step{
			{n: 10, r: ok}, // bucket 0
			{advance: 5 * time.Second, n: 9, r: failed}, // 9 of 19: closed
			{advance: 5 * time.Second, n: 1, r: failed}, // bucket 0 gone: 10 of 10
		}, fallback.StateOpen},
		{"window keeps the last tenths", fallback.BreakerSettings{Window: 10 * time.Second, MinRequests: 10, FailureRatio: 0.6}, []step{
			{n: 10, r: ok},
			{advance: 5 * time.Second, n: 9, r: failed},
			{advance: 5*time.Second - time.Nanosecond, n: 1, r: failed}, // bucket 0 still in: 10 of 20
		}, fallback.StateClosed},
		{"excluded count as nothing", base, []step{{n: 1000, r: canceled}, {n: 9, r: failed}}, fallback.StateClosed},
		{"excluded do not dilute", base, []step{{n: 5, r: ok}, {n: 1000, r: canceled}, {n: 5, r: failed}}, fallback.StateOpen},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			b := fallback.NewBreaker("kb", tc.cfg, nil, fallback.BreakerClock(clk.Now))
			for _, s := range tc.steps {
				clk.Advance(s.advance)
				for range s.n {
					call(t, b, s.r)
				}
			}
			if got := b.State(); got != tc.want {
				t.Errorf("state = %v, want %v (stats %+v)", got, tc.want, b.Stats())
			}
		})
	}
}

// trip opens b with failures; b must have min_requests <= 100.
func trip(t *testing.T, b *fallback.Breaker) {
	t.Helper()
	for range 100 {
		if b.State() == fallback.StateOpen {
			return
		}
		call(t, b, failed)
	}
	t.Fatalf("state after 100 failures = %v, want open", b.State())
}

// halfOpen trips b and waits out its (short, real-time) open timeout.
func halfOpen(t *testing.T, b *fallback.Breaker) {
	t.Helper()
	trip(t, b)
	testkit.WaitFor(t, "half-open", func() bool { return b.State() == fallback.StateHalfOpen })
}

var quick = fallback.BreakerSettings{MinRequests: 10, OpenFor: 20 * time.Millisecond, HalfOpenRequests: 3}

func TestBreakerOpenRejects(t *testing.T) {
	b := fallback.NewBreaker("kb", fallback.BreakerSettings{MinRequests: 10, OpenFor: time.Hour}, nil)
	trip(t, b)
	done, err := b.Allow()
	if done != nil || !errors.Is(err, fallback.ErrOpen) || !errors.Is(err, fallback.ErrRejected) {
		t.Fatalf("Allow() when open = %v, %v; want ErrOpen wrapping ErrRejected", done != nil, err)
	}
	if got := err.Error(); got != "circuit breaker is open" {
		t.Errorf("error text = %q", got)
	}
}

func TestBreakerHalfOpenAdmitsExactlyN(t *testing.T) {
	for _, n := range []int{1, 3, 10} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			cfg := quick
			cfg.HalfOpenRequests = n
			b := fallback.NewBreaker("kb", cfg, nil)
			halfOpen(t, b)

			const callers = 1000
			var (
				admitted, full atomic.Int32
				dones          = make(chan func(fallback.Result), callers)
				start          = make(chan struct{})
				wg             sync.WaitGroup
			)
			for range callers {
				wg.Go(func() {
					<-start
					done, err := b.Allow()
					switch {
					case err == nil:
						admitted.Add(1)
						dones <- done
					case errors.Is(err, fallback.ErrHalfOpenFull) && errors.Is(err, fallback.ErrRejected):
						full.Add(1)
					default:
						t.Errorf("Allow() = %v", err)
					}
				})
			}
			close(start)
			wg.Wait()
			close(dones)
			if got := int(admitted.Load()); got != n {
				t.Fatalf("admitted %d of %d concurrent callers at half-open, want exactly %d", got, callers, n)
			}
			if got := int(full.Load()); got != callers-n {
				t.Errorf("rejected %d as half-open full, want %d", got, callers-n)
			}
			i := 0
			for done := range dones {
				if b.State() != fallback.StateHalfOpen {
					t.Fatalf("closed after %d of %d successes", i, n)
				}
				done(ok)
				i++
			}
			if s := b.State(); s != fallback.StateClosed {
				t.Errorf("state after %d successes = %v, want closed", n, s)
			}
		})
	}
}

func TestBreakerHalfOpenReopens(t *testing.T) {
	cfg := quick
	cfg.SlowCall = time.Second
	for _, tc := range []struct {
		name string
		r    fallback.Result
		want fallback.State
	}{
		{"failure", failed, fallback.StateOpen},
		{"slow success", slowOK, fallback.StateOpen},
		{"success", ok, fallback.StateHalfOpen}, // one of three
		{"excluded", canceled, fallback.StateHalfOpen},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := fallback.NewBreaker("kb", cfg, nil)
			halfOpen(t, b)
			call(t, b, ok)
			call(t, b, tc.r)
			if s := b.State(); s != tc.want {
				t.Errorf("state = %v, want %v", s, tc.want)
			}
		})
	}
}

func TestBreakerExcludedFreesHalfOpenSlot(t *testing.T) {
	b := fallback.NewBreaker("kb", quick, nil)
	halfOpen(t, b)
	var dones []func(fallback.Result)
	for range 3 {
		done, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		dones = append(dones, done)
	}
	if _, err := b.Allow(); !errors.Is(err, fallback.ErrHalfOpenFull) {
		t.Fatalf("4th Allow() = %v, want ErrHalfOpenFull", err)
	}
	dones[0](canceled) // the client went away: its slot is free again
	done, err := b.Allow()
	if err != nil {
		t.Fatalf("Allow() after an excluded result = %v", err)
	}
	for _, d := range append(dones[1:], done) {
		d(ok)
	}
	if s := b.State(); s != fallback.StateClosed {
		t.Errorf("state = %v, want closed", s)
	}
}

func TestBreakerCancellationsNeverTrip(t *testing.T) {
	b := fallback.NewBreaker("kb", fallback.BreakerSettings{MinRequests: 1, FailureRatio: 0.01, SlowCall: time.Millisecond, SlowRatio: 0.01}, nil)
	var wg sync.WaitGroup
	for range 1000 {
		wg.Go(func() {
			done, err := b.Allow()
			if err != nil {
				t.Errorf("Allow() = %v", err)
				return
			}
			done(canceled) // slow, too, and still nothing
		})
	}
	wg.Wait()
	if st := b.Stats(); st.State != fallback.StateClosed || st.Requests != 0 {
		t.Errorf("after 1,000 cancellations: %+v, want closed with nothing counted", st)
	}
}

func TestBreakerTransitionsHook(t *testing.T) {
	var (
		mu  sync.Mutex
		got []string
		b   *fallback.Breaker
	)
	b = fallback.NewBreaker("kb", quick, func(name string, from, to fallback.State) {
		// The hook may use the breaker: transitions are delivered after
		// its locks are released.
		_ = b.State()
		_ = b.Stats()
		mu.Lock()
		got = append(got, fmt.Sprintf("%s: %v→%v", name, from, to))
		mu.Unlock()
	})
	halfOpen(t, b)
	call(t, b, failed) // reopen
	testkit.WaitFor(t, "half-open again", func() bool { return b.State() == fallback.StateHalfOpen })
	for range 3 {
		call(t, b, ok)
	}
	want := []string{
		"kb: closed→open", "kb: open→half_open", "kb: half_open→open",
		"kb: open→half_open", "kb: half_open→closed",
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, want) {
		t.Errorf("transitions = %q, want %q", got, want)
	}
}

func TestBreakerClosesFresh(t *testing.T) {
	b := fallback.NewBreaker("kb", quick, nil)
	halfOpen(t, b)
	for range 3 {
		call(t, b, ok)
	}
	// The failures that tripped it are forgotten: one more does not
	// reopen it, nor do nine (below min_requests).
	for range 9 {
		call(t, b, failed)
	}
	if s := b.State(); s != fallback.StateClosed {
		t.Errorf("state = %v, want closed", s)
	}
}

func TestBreakerIgnoresResultsOfOldGenerations(t *testing.T) {
	b := fallback.NewBreaker("kb", quick, nil)
	late, err := b.Allow() // admitted while closed, answers after recovery
	if err != nil {
		t.Fatal(err)
	}
	halfOpen(t, b)
	for range 3 {
		call(t, b, ok)
	}
	late(slowFail)
	if st := b.Stats(); st.State != fallback.StateClosed || st.Requests != 0 || st.Failures != 0 {
		t.Errorf("stats = %+v, want a closed breaker that did not count the stale result", st)
	}
}

func TestBreakerStats(t *testing.T) {
	clk := newClock()
	b := fallback.NewBreaker("kb", fallback.BreakerSettings{SlowCall: time.Second}, nil, fallback.BreakerClock(clk.Now))
	for _, r := range []fallback.Result{ok, ok, failed, slowOK, slowFail, canceled} {
		call(t, b, r)
	}
	want := fallback.BreakerStats{State: fallback.StateClosed, Requests: 5, Failures: 2, Slow: 2}
	if got := b.Stats(); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
	clk.Advance(10 * time.Second)
	if got := b.Stats(); got.Requests != 0 {
		t.Errorf("Stats() after the window = %+v, want empty", got)
	}
	if b.Name() != "kb" {
		t.Errorf("Name() = %q", b.Name())
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[fallback.State]string{
		fallback.StateClosed: "closed", fallback.StateHalfOpen: "half_open", fallback.StateOpen: "open", 7: "unknown",
	} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

func BenchmarkBreakerAllowDone(b *testing.B) {
	br := fallback.NewBreaker("kb", fallback.BreakerSettings{SlowCall: time.Second}, nil)
	b.ReportAllocs()
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			done, err := br.Allow()
			if err != nil {
				b.Fatal(err)
			}
			done(ok)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				done, err := br.Allow()
				if err != nil {
					b.Fatal(err)
				}
				done(ok)
			}
		})
	})
}
