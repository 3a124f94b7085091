package fallback_test

import (
	"sync"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
)

func TestEjectorMaxEjected(t *testing.T) {
	for _, tc := range []struct {
		n, percent, want int
	}{
		{1, 50, 0},   // a lone endpoint is never ejected
		{1, 100, 0},  // ...whatever the percentage
		{2, 50, 1},   //
		{2, 10, 1},   // a small pool may always lose one
		{2, 100, 1},  // and always keeps one
		{3, 50, 1},   //
		{4, 50, 2},   //
		{10, 0, 5},   // default 50%
		{10, 10, 1},  //
		{10, 100, 9}, //
		{0, 50, 0},   //
	} {
		if got := fallback.NewEjector(tc.n, fallback.EjectorSettings{ConsecutiveFailures: 0, BaseEjection: 0, MaxEjection: 0, MaxEjectedPercent: tc.percent}).MaxEjected(); got != tc.want {
			t.Errorf("n=%d percent=%d: MaxEjected() = %d, want %d", tc.n, tc.percent, got, tc.want)
		}
	}
}

func TestEjectorThresholdAndGrowth(t *testing.T) {
	const base, most = 10 * time.Second, 35 * time.Second
	clk := newClock()
	e := fallback.NewEjector(3, fallback.EjectorSettings{ConsecutiveFailures: 5, BaseEjection: base, MaxEjection: most, MaxEjectedPercent: 50})
	fail := func(times int) (last time.Duration) {
		for range times {
			last = e.Report(0, true, clk.Now())
		}
		return last
	}

	if d := fail(4); d != 0 || e.Ejected(0, clk.Now()) {
		t.Fatalf("ejected after 4 failures (threshold 5)")
	}
	e.Report(0, false, clk.Now()) // a success breaks the run
	if d := fail(4); d != 0 || e.Ejected(0, clk.Now()) {
		t.Fatalf("ejected after 4+4 failures with a success between")
	}
	if d := fail(1); d != base {
		t.Fatalf("5th consecutive failure ejected for %v, want %v", d, base)
	}
	if !e.Ejected(0, clk.Now()) || e.Ejected(1, clk.Now()) {
		t.Fatal("wrong endpoint ejected")
	}
	// Failures from calls sent before the ejection do not count.
	if d := fail(20); d != 0 {
		t.Fatalf("re-ejected while ejected")
	}
	clk.Advance(base - 1)
	if !e.Ejected(0, clk.Now()) {
		t.Fatal("back before the period ended")
	}
	clk.Advance(1)
	if e.Ejected(0, clk.Now()) {
		t.Fatal("still out after the period")
	}
	// Failing again right away: each ejection doubles, up to the cap.
	for _, want := range []time.Duration{2 * base, most, most} {
		if d := fail(5); d != want {
			t.Fatalf("next ejection for %v, want %v", d, want)
		}
		clk.Advance(want)
	}
	// A success after an ejection starts the growth over.
	e.Report(0, false, clk.Now())
	if d := fail(5); d != base {
		t.Fatalf("ejection after a success = %v, want %v", d, base)
	}
}

func TestEjectorCap(t *testing.T) {
	clk := newClock()
	e := fallback.NewEjector(4, fallback.EjectorSettings{ConsecutiveFailures: 1, BaseEjection: time.Second, MaxEjection: time.Minute, MaxEjectedPercent: 50}) // 2 of 4 at most
	for i := range 4 {
		e.Report(i, true, clk.Now())
	}
	if got := e.EjectedCount(clk.Now()); got != 2 {
		t.Fatalf("EjectedCount() = %d after every endpoint failed, want 2 (50%% of 4)", got)
	}
	if !e.Ejected(0, clk.Now()) || !e.Ejected(1, clk.Now()) || e.Ejected(2, clk.Now()) {
		t.Fatal("want the first two failing endpoints out")
	}
	// Endpoint 2 kept its failure run: once room frees up, its next
	// failure ejects it.
	clk.Advance(time.Second)
	if d := e.Report(2, true, clk.Now()); d != time.Second {
		t.Errorf("Report(2) with room = %v, want an ejection", d)
	}
}

func TestEjectorDefaults(t *testing.T) {
	clk := newClock()
	e := fallback.NewEjector(2, fallback.EjectorSettings{ConsecutiveFailures: 0, BaseEjection: 0, MaxEjection: 0, MaxEjectedPercent: 0})
	for i := range 5 {
		if d := e.Report(1, true, clk.Now()); (d != 0) != (i == 4) {
			t.Fatalf("failure %d: ejected for %v; want the 5th to eject", i+1, d)
		}
	}
	if !e.Ejected(1, clk.Now().Add(10*time.Second-1)) || e.Ejected(1, clk.Now().Add(10*time.Second)) {
		t.Error("default ejection period is not 10s")
	}
	// Growth stops at the default 5m.
	for range 10 {
		clk.Advance(10 * time.Minute)
		for range 5 {
			if d := e.Report(1, true, clk.Now()); d > 5*time.Minute {
				t.Fatalf("ejected for %v, above the default cap of 5m", d)
			}
		}
	}
}

func TestEjectorConcurrentCap(t *testing.T) {
	clk := newClock()
	e := fallback.NewEjector(10, fallback.EjectorSettings{ConsecutiveFailures: 3, BaseEjection: time.Hour, MaxEjection: time.Hour, MaxEjectedPercent: 30})
	var wg sync.WaitGroup
	for g := range 20 {
		wg.Go(func() {
			for i := range 300 {
				e.Report((g+i)%10, true, clk.Now())
				if n := e.EjectedCount(clk.Now()); n > 3 {
					t.Errorf("%d endpoints ejected, cap 3", n)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := e.EjectedCount(clk.Now()); n != 3 {
		t.Errorf("EjectedCount() = %d, want the cap, 3", n)
	}
}

func BenchmarkEjectorReport(b *testing.B) {
	e := fallback.NewEjector(8, fallback.EjectorSettings{ConsecutiveFailures: 5, BaseEjection: time.Second, MaxEjection: time.Minute, MaxEjectedPercent: 50})
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			e.Report(i%8, i%4 == 0, now)
			e.Ejected(i%8, now)
			i++
		}
	})
}
