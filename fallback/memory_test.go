package fallback_test

import (
	"sync"
	"testing"

	"github.com/hopwatch/hopwatch/fallback"
)

func TestMemory(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int64
		ops   []int64 // > 0 reserve, < 0 release
		want  []bool  // result of each reserve, in order
		used  int64
	}{
		{"fits", 10, []int64{4, 6}, []bool{true, true}, 10},
		{"over the limit is refused whole", 10, []int64{4, 7}, []bool{true, false}, 4},
		{"release makes room", 10, []int64{8, -8, 9}, []bool{true, true}, 9},
		{"zero always fits", 0, []int64{0}, []bool{true}, 0},
		{"nothing fits a zero budget", 0, []int64{1}, []bool{false}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var last int64 = -1
			m := fallback.NewMemory(tc.limit, func(u int64) { last = u })
			var got []bool
			for _, op := range tc.ops {
				if op < 0 {
					m.Release(-op)
					continue
				}
				got = append(got, m.Reserve(op))
			}
			for i := range tc.want {
				if got[i] != tc.want[i] {
					t.Fatalf("reserve results %v, want %v", got, tc.want)
				}
			}
			if m.Used() != tc.used {
				t.Errorf("Used() = %d, want %d", m.Used(), tc.used)
			}
			if tc.used > 0 && last != tc.used {
				t.Errorf("onChange last saw %d, want %d", last, tc.used)
			}
		})
	}
}

// TestMemoryConcurrent: however many reserve at once, the bound holds and
// everything given back returns the budget to zero.
func TestMemoryConcurrent(t *testing.T) {
	m := fallback.NewMemory(1000, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := int64(0)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2000 {
				if m.Reserve(7) {
					mu.Lock()
					peak = max(peak, m.Used())
					mu.Unlock()
					m.Release(7)
				}
			}
		}()
	}
	wg.Wait()
	if peak > 1000 {
		t.Errorf("peak %d over the limit 1000", peak)
	}
	if m.Used() != 0 {
		t.Errorf("Used() = %d after every release", m.Used())
	}
}
