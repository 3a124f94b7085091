package fallback_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
	"github.com/hopwatch/hopwatch/internal/testkit"
)

// peak keeps the highest value it was shown.
type peak struct{ v atomic.Int64 }

func (p *peak) see(n int64) {
	for cur := p.v.Load(); n > cur && !p.v.CompareAndSwap(cur, n); cur = p.v.Load() {
	}
}

func TestBackgroundBound(t *testing.T) {
	for _, tc := range []struct {
		name        string
		maxInflight int
		want        int
	}{
		{"four", 4, 4},
		{"one", 1, 1},
		{"default", 0, 64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				running, hookPeak, runPeak peak
				live                       atomic.Int64
				started                    atomic.Int64
				release                    = make(chan struct{})
			)
			bg := fallback.NewBackground(fallback.BackgroundSettings{MaxInflight: tc.maxInflight, Timeout: time.Minute}, func(n int) {
				hookPeak.see(int64(n))
				running.v.Store(int64(n))
			})
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for range 50 {
						ok := bg.TryStart(func(ctx context.Context) {
							runPeak.see(live.Add(1))
							defer live.Add(-1)
							select {
							case <-release:
							case <-ctx.Done():
							}
						})
						if ok {
							started.Add(1)
						}
					}
				})
			}
			wg.Wait()
			if got := int(started.Load()); got != tc.want {
				t.Errorf("started %d of 400 while all block, want %d", got, tc.want)
			}
			if got := bg.InFlight(); got != tc.want {
				t.Errorf("InFlight() = %d, want %d", got, tc.want)
			}
			close(release)
			if err := bg.Close(context.Background()); err != nil {
				t.Fatalf("Close() = %v", err)
			}
			if p := runPeak.v.Load(); p > int64(tc.want) {
				t.Errorf("%d tasks ran at once, max_inflight %d", p, tc.want)
			}
			if p := hookPeak.v.Load(); p > int64(tc.want) {
				t.Errorf("onChange saw %d, max_inflight %d", p, tc.want)
			}
			if n := running.v.Load(); n != 0 || bg.InFlight() != 0 {
				t.Errorf("after Close: onChange last said %d, InFlight() = %d; want 0", n, bg.InFlight())
			}
		})
	}
}

func TestBackgroundSlotsFreeUp(t *testing.T) {
	bg := fallback.NewBackground(fallback.BackgroundSettings{MaxInflight: 2, Timeout: time.Minute}, nil)
	defer bg.Close(context.Background())
	for i := range 100 {
		done := make(chan struct{})
		if !bg.TryStart(func(context.Context) { close(done) }) {
			t.Fatalf("TryStart %d refused with nothing running", i)
		}
		<-done
		testkit.WaitFor(t, "the task to end", func() bool { return bg.InFlight() == 0 })
	}
}

func TestBackgroundTimeout(t *testing.T) {
	bg := fallback.NewBackground(fallback.BackgroundSettings{MaxInflight: 1, Timeout: 20 * time.Millisecond}, nil)
	defer bg.Close(context.Background())
	errc := make(chan error, 1)
	bg.TryStart(func(ctx context.Context) {
		if _, ok := ctx.Deadline(); !ok {
			errc <- errors.New("no deadline")
			return
		}
		<-ctx.Done() // a call that never answers
		errc <- ctx.Err()
	})
	if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("task ended with %v, want the queue's timeout", err)
	}
}

func TestBackgroundCloseCancelsAndWaits(t *testing.T) {
	bg := fallback.NewBackground(fallback.BackgroundSettings{MaxInflight: 8, Timeout: time.Hour}, nil)
	var finished atomic.Int32
	started := make(chan struct{}, 8)
	for range 8 {
		bg.TryStart(func(ctx context.Context) {
			started <- struct{}{}
			<-ctx.Done()
			time.Sleep(5 * time.Millisecond) // cleanup after cancellation
			if errors.Is(ctx.Err(), context.Canceled) {
				finished.Add(1)
			}
		})
	}
	for range 8 {
		<-started
	}
	if err := bg.Close(context.Background()); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if n := finished.Load(); n != 8 {
		t.Errorf("Close returned with %d of 8 tasks finished (canceled)", n)
	}
	if bg.TryStart(func(context.Context) { t.Error("ran after Close") }) {
		t.Error("TryStart after Close = true")
	}
	if err := bg.Close(context.Background()); err != nil {
		t.Errorf("second Close() = %v", err)
	}
}

func TestBackgroundCloseBoundedByContext(t *testing.T) {
	bg := fallback.NewBackground(fallback.BackgroundSettings{MaxInflight: 1, Timeout: time.Hour}, nil)
	release := make(chan struct{})
	bg.TryStart(func(context.Context) { <-release }) // ignores cancellation
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := bg.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close() = %v, want the context's error", err)
	}
	close(release)
	if err := bg.Close(context.Background()); err != nil {
		t.Errorf("Close() after the task ended = %v", err)
	}
}
