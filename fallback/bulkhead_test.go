package fallback_test

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hopwatch/hopwatch/fallback"
)

func TestBulkhead(t *testing.T) {
	for _, tc := range []struct {
		name    string
		max     int
		callers int
		want    int // admitted while every admitted caller holds its slot
	}{
		{"limited", 8, 1000, 8},
		{"one", 1, 1000, 1},
		{"more room than callers", 2000, 1000, 1000},
		{"unlimited", 0, 1000, 1000},
		{"negative is unlimited", -1, 1000, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bh := fallback.NewBulkhead(tc.max)
			var (
				admitted, peak, running atomic.Int64
				hold                    = make(chan struct{})
				wg, tried               sync.WaitGroup
			)
			tried.Add(tc.callers)
			for range tc.callers {
				wg.Go(func() {
					ok := bh.TryAcquire() // never blocks
					tried.Done()
					if !ok {
						return
					}
					admitted.Add(1)
					n := running.Add(1)
					for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
					}
					<-hold
					running.Add(-1)
					bh.Release()
				})
			}
			tried.Wait()
			if got := bh.InFlight(); got != tc.want {
				t.Errorf("InFlight() = %d, want %d", got, tc.want)
			}
			close(hold)
			wg.Wait()
			if got := int(admitted.Load()); got != tc.want {
				t.Errorf("admitted %d, want %d", got, tc.want)
			}
			if tc.max > 0 && peak.Load() > int64(tc.max) {
				t.Errorf("peak concurrency %d exceeds max %d", peak.Load(), tc.max)
			}
			if got := bh.InFlight(); got != 0 {
				t.Errorf("InFlight() after release = %d", got)
			}
			if !bh.TryAcquire() {
				t.Error("TryAcquire() after every release = false")
			}
			bh.Release()
		})
	}
}

func TestBulkheadReleaseWithoutAcquirePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Release without TryAcquire did not panic")
		}
	}()
	fallback.NewBulkhead(1).Release()
}

func BenchmarkBulkhead(b *testing.B) {
	bh := fallback.NewBulkhead(1 << 20)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !bh.TryAcquire() {
				b.Fatal("full")
			}
			bh.Release()
		}
	})
}
