package telemetry

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBucketOfBound(t *testing.T) {
	// Every latency in range maps to a bucket whose reported value is
	// within the documented bound, and buckets never go backwards.
	prev := 0
	for d := 93 * time.Microsecond; d < 62*time.Second; d += d/500 + 1 {
		b := bucketOf(d)
		if b < prev {
			t.Fatalf("bucketOf(%v) = %d after %d: not monotonic", d, b, prev)
		}
		prev = b
		if b == underflowIndex || b == overflowIndex {
			t.Fatalf("bucketOf(%v) = %d: in range but under/overflow", d, b)
		}
		got := bucketValue[b]
		if rel := math.Abs(got-d.Seconds()) / d.Seconds(); rel > QuantileRelativeError {
			t.Fatalf("bucketOf(%v) reports %gs: relative error %.4f > %.4f", d, got, rel, QuantileRelativeError)
		}
	}
	cases := []struct {
		name string
		d    time.Duration
		want int
	}{
		{"zero", 0, underflowIndex},
		{"negative", -time.Second, underflowIndex},
		{"below range", 50 * time.Microsecond, underflowIndex},
		{"above range", time.Hour, overflowIndex},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := bucketOf(tc.d); got != tc.want {
				t.Fatalf("bucketOf(%v) = %d, want %d", tc.d, got, tc.want)
			}
		})
	}
}

func TestStatsPercentiles(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	dist := func(n int, f func(i int) time.Duration) []time.Duration {
		out := make([]time.Duration, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	cases := []struct {
		name    string
		samples []time.Duration
	}{
		{"constant 250ms", dist(500, func(int) time.Duration { return ms(250) })},
		{"uniform 1ms..1s", dist(1000, func(i int) time.Duration { return ms(i + 1) })},
		{"exponential mean 40ms", dist(5000, func(int) time.Duration {
			return time.Duration(r.ExpFloat64() * float64(ms(40)))
		})},
		{"lognormal median 120ms", dist(5000, func(int) time.Duration {
			return time.Duration(math.Exp(r.NormFloat64()*0.8) * float64(ms(120)))
		})},
		{"bimodal: 96% fast, 4% slow", dist(2000, func(i int) time.Duration {
			if i%25 == 0 {
				return 2*time.Second + ms(i)
			}
			return ms(8) + time.Duration(i)*time.Microsecond
		})},
		{"sub-millisecond", dist(1000, func(i int) time.Duration { return 150*time.Microsecond + time.Duration(i)*time.Microsecond })},
	}
	key := HopKey{"gateway", "kb-search", "kb"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStats()
			// Spread over the last 50 s so both windows hold everything.
			for i, d := range tc.samples {
				s.Observe(key, d, OutcomeOK, t0.Add(time.Duration(i)*50*time.Second/time.Duration(len(tc.samples))))
			}
			now := t0.Add(50 * time.Second)
			snap := s.Snapshot(now)
			if len(snap) != 1 || snap[0].HopKey != key {
				t.Fatalf("snapshot = %+v", snap)
			}
			sorted := slices.Clone(tc.samples)
			slices.Sort(sorted)
			exact := func(q float64) float64 {
				rank := int(math.Ceil(q * float64(len(sorted))))
				return sorted[max(rank, 1)-1].Seconds()
			}
			for _, w := range []struct {
				name string
				ws   WindowStats
			}{{"1m", snap[0].Window1m}, {"5m", snap[0].Window5m}} {
				if w.ws.Count != int64(len(tc.samples)) {
					t.Fatalf("%s count %d, want %d", w.name, w.ws.Count, len(tc.samples))
				}
				for _, p := range []struct {
					q   float64
					got float64
				}{{0.50, w.ws.P50}, {0.95, w.ws.P95}, {0.99, w.ws.P99}} {
					want := exact(p.q)
					if rel := math.Abs(p.got-want) / want; rel > QuantileRelativeError {
						t.Errorf("%s p%g = %.6fs, exact %.6fs: relative error %.4f > %.4f", w.name, p.q*100, p.got, want, rel, QuantileRelativeError)
					}
				}
			}
			q, ok := s.Quantile("kb-search", 0.95, time.Minute, now)
			if want := exact(0.95); !ok || math.Abs(q.Seconds()-want)/want > QuantileRelativeError {
				t.Errorf("Quantile(0.95) = %v, %v; exact %.6fs", q, ok, want)
			}
		})
	}
}

func TestStatsWindows(t *testing.T) {
	key := HopKey{"client", "chat", "gateway"}
	// One observation at t0 (a slot start), looked at later.
	cases := []struct {
		name    string
		after   time.Duration
		want1m  int64
		want5m  int64
		present bool
	}{
		{"same instant", 0, 1, 1, true},
		{"59s later: still in 1m", 59 * time.Second, 1, 1, true},
		{"60s later: out of 1m", 60 * time.Second, 0, 1, true},
		{"299s later: still in 5m", 299 * time.Second, 0, 1, true},
		{"300s later: gone", 300 * time.Second, 0, 0, false},
		{"before the observation: not counted", -5 * time.Second, 0, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStats()
			s.Observe(key, ms(10), OutcomeOK, t0)
			snap := s.Snapshot(t0.Add(tc.after))
			if !tc.present {
				if len(snap) != 0 {
					t.Fatalf("snapshot = %+v, want empty", snap)
				}
				return
			}
			if len(snap) != 1 || snap[0].Window1m.Count != tc.want1m || snap[0].Window5m.Count != tc.want5m {
				t.Fatalf("snapshot = %+v, want 1m %d 5m %d", snap, tc.want1m, tc.want5m)
			}
		})
	}
}

func TestStatsRateAndErrors(t *testing.T) {
	key := HopKey{"gateway", "nlu", "nlu"}
	s := NewStats()
	// now is a slot start, so the 1m window covers [now-55s, now]: 110
	// requests every 0.5 s there are 2/s. 40 more, earlier, only count in 5m.
	now := t0.Add(5 * time.Minute)
	outcomes := []Outcome{OutcomeOK, OutcomeError, OutcomeTimeout, OutcomeRejected, OutcomeCanceled, OutcomeFallback, OutcomeOK, OutcomeOK, OutcomeOK, OutcomeOK}
	for i := range 110 {
		at := now.Add(-55*time.Second + time.Duration(i)*500*time.Millisecond)
		s.Observe(key, ms(20), outcomes[i%len(outcomes)], at)
	}
	for i := range 40 {
		s.Observe(key, ms(20), OutcomeOK, now.Add(-4*time.Minute+time.Duration(i)*time.Second))
	}
	snap := s.Snapshot(now)
	if len(snap) != 1 {
		t.Fatalf("snapshot = %+v", snap)
	}
	w1, w5 := snap[0].Window1m, snap[0].Window5m
	young := NewStats() // a hop first seen 10 s ago: its rate is over those 10 s
	for i := range 20 {
		young.Observe(key, ms(20), OutcomeOK, now.Add(-10*time.Second+time.Duration(i)*500*time.Millisecond))
	}
	ysnap := young.Snapshot(now)
	cases := []struct {
		name      string
		got, want float64
	}{
		{"young hop 1m rate", ysnap[0].Window1m.Rate, 2},
		{"young hop 5m rate", ysnap[0].Window5m.Rate, 2},
		{"1m count", float64(w1.Count), 110},
		{"1m rate", w1.Rate, 2},
		{"1m error ratio (error, timeout, rejected of every 10)", w1.ErrorRatio, 0.3},
		{"5m count", float64(w5.Count), 150},
		{"5m rate: over the 240 s since the hop was first seen", w5.Rate, 150.0 / 240},
		{"5m error ratio", w5.ErrorRatio, 33.0 / 150},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if math.Abs(tc.got-tc.want) > 1e-9 {
				t.Fatalf("got %v, want %v", tc.got, tc.want)
			}
		})
	}
}

func TestStatsLateObservationDropped(t *testing.T) {
	key := HopKey{"a", "r", "u"}
	s := NewStats()
	s.Observe(key, ms(10), OutcomeOK, t0.Add(5*time.Minute))
	s.Observe(key, ms(10), OutcomeOK, t0) // same slot index, five minutes older
	if snap := s.Snapshot(t0.Add(5 * time.Minute)); len(snap) != 1 || snap[0].Window5m.Count != 1 {
		t.Fatalf("snapshot = %+v, want the late observation ignored", snap)
	}
}

func TestStatsSnapshotOrderAndQuantileAggregate(t *testing.T) {
	s := NewStats()
	obs := []struct {
		key HopKey
		d   time.Duration
		n   int
	}{
		{HopKey{"gateway", "kb-search", "kb"}, ms(10), 90},
		{HopKey{"dm", "kb-search", "kb-mirror"}, ms(500), 10},
		{HopKey{"client", "chat", "gateway"}, ms(2000), 5},
		{HopKey{"dm", "kb-search", "kb"}, ms(10), 1},
	}
	for _, o := range obs {
		for i := range o.n {
			s.Observe(o.key, o.d, OutcomeOK, t0.Add(time.Duration(i)*time.Millisecond))
		}
	}
	now := t0.Add(time.Second)
	var keys []HopKey
	for _, h := range s.Snapshot(now) {
		keys = append(keys, h.HopKey)
	}
	wantKeys := []HopKey{{"client", "chat", "gateway"}, {"dm", "kb-search", "kb"}, {"dm", "kb-search", "kb-mirror"}, {"gateway", "kb-search", "kb"}}
	if !slices.Equal(keys, wantKeys) {
		t.Fatalf("snapshot order %v, want %v", keys, wantKeys)
	}
	cases := []struct {
		name   string
		route  string
		q      float64
		window time.Duration
		want   time.Duration
		ok     bool
	}{
		// 101 samples on kb-search: 91 at 10ms, 10 at 500ms.
		{"p50 over callers and upstreams", "kb-search", 0.5, time.Minute, ms(10), true},
		{"p95 lands in the slow upstream", "kb-search", 0.95, time.Minute, ms(500), true},
		{"p90 is the last fast one", "kb-search", 0.90, time.Minute, ms(10), true},
		{"other route", "chat", 0.95, 5 * time.Minute, ms(2000), true},
		{"window over five minutes is clamped", "chat", 0.95, time.Hour, ms(2000), true},
		{"unknown route", "nope", 0.95, time.Minute, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := s.Quantile(tc.route, tc.q, tc.window, now)
			if ok != tc.ok || math.Abs(float64(got-tc.want)) > QuantileRelativeError*float64(tc.want) {
				t.Fatalf("Quantile(%q, %g) = %v, %v; want %v, %v", tc.route, tc.q, got, ok, tc.want, tc.ok)
			}
		})
	}
	if _, ok := s.Quantile("chat", 0.95, time.Minute, t0.Add(2*time.Minute)); ok {
		t.Fatal("Quantile saw traffic older than its window")
	}
}

func TestStatsObserveAllocs(t *testing.T) {
	s := NewStats()
	key := HopKey{"gateway", "kb-search", "kb"}
	s.Observe(key, ms(1), OutcomeOK, t0)
	at := t0
	allocs := testing.AllocsPerRun(1000, func() {
		at = at.Add(10 * time.Millisecond)
		s.Observe(key, ms(12), OutcomeError, at)
	})
	if allocs != 0 {
		t.Fatalf("Observe on a known hop allocates %v times per call", allocs)
	}
}

func TestStatsConcurrent(t *testing.T) {
	s := NewStats()
	var wg sync.WaitGroup
	callers := []string{"a", "b", "c", "d"}
	for g := range 8 {
		wg.Go(func() {
			for i := range 5000 {
				k := HopKey{callers[(g+i)%len(callers)], "r", "u"}
				s.Observe(k, ms(i%100), OutcomeOK, t0.Add(time.Duration(i)*time.Millisecond))
			}
		})
	}
	wg.Go(func() {
		for range 100 {
			s.Snapshot(t0.Add(5 * time.Second))
			s.Quantile("r", 0.95, time.Minute, t0.Add(5*time.Second))
		}
	})
	wg.Wait()
	var total int64
	for _, h := range s.Snapshot(t0.Add(5 * time.Second)) {
		total += h.Window5m.Count
	}
	if total != 8*5000 {
		t.Fatalf("counted %d observations, want %d", total, 8*5000)
	}
}

func BenchmarkStatsObserve(b *testing.B) {
	key := HopKey{"gateway", "kb-search", "kb"}
	b.Run("serial", func(b *testing.B) {
		s := NewStats()
		s.Observe(key, ms(1), OutcomeOK, t0)
		b.ReportAllocs()
		at := t0
		for b.Loop() {
			at = at.Add(time.Millisecond)
			s.Observe(key, 37*time.Millisecond, OutcomeOK, at)
		}
	})
	b.Run("parallel same hop", func(b *testing.B) {
		s := NewStats()
		s.Observe(key, ms(1), OutcomeOK, t0)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			at := t0
			for pb.Next() {
				at = at.Add(time.Millisecond)
				s.Observe(key, 37*time.Millisecond, OutcomeOK, at)
			}
		})
	})
}

func BenchmarkStatsSnapshot(b *testing.B) {
	s := NewStats()
	for c := range 5 {
		for r := range 10 {
			k := HopKey{string(rune('a' + c)), string(rune('k' + r)), "u"}
			for i := range 60 {
				s.Observe(k, ms(i+1), OutcomeOK, t0.Add(time.Duration(i)*5*time.Second))
			}
		}
	}
	now := t0.Add(5 * time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		s.Snapshot(now)
	}
}
