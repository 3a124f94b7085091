package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

// BenchmarkSlowKBFallback replays the motivating case: a knowledge-base API
// answers in ~40 ms, but a share of its calls take 1.5–3 s. Each turn asks
// one of a few questions. Without a fallback every slow call is a slow turn;
// with `after: 300ms` and `use: [cache, static]` the turn is answered from
// the cache (or a static "degraded" answer) while the slow call finishes in
// the background and refreshes the cache. It reports the turn p50 and p95.
//
//	go test -run '^$' -bench SlowKB -benchtime 400x ./bench/
func BenchmarkSlowKBFallback(b *testing.B) {
	for _, tc := range []struct {
		name     string
		fallback *routes.Fallback
	}{
		{"without-fallback", nil},
		{"with-fallback", &routes.Fallback{
			After:      300 * time.Millisecond,
			Use:        []string{"cache", "static"},
			Cache:      &routes.FallbackCache{TTL: 10 * time.Minute, MaxEntries: 1000},
			Static:     &routes.FallbackStatic{Status: 200, ContentType: "application/json", Body: `{"results":[],"degraded":true}`},
			Background: &routes.FallbackBackground{MaxInflight: 64, Timeout: 10 * time.Second},
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 2)) // same slow calls in both runs
			var mu sync.Mutex
			kb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				slow := rng.Float64() < 0.2
				d := 40*time.Millisecond + time.Duration(rng.IntN(10))*time.Millisecond
				if slow {
					d = 1500*time.Millisecond + time.Duration(rng.IntN(1500))*time.Millisecond
				}
				mu.Unlock()
				io.Copy(io.Discard, r.Body)
				select {
				case <-time.After(d):
				case <-r.Context().Done():
					return
				}
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, `{"results":["doc"]}`)
			}))
			defer kb.Close()
			p := proxy.New(proxy.Options{Logger: slog.New(slog.DiscardHandler)})
			err := p.Apply(&routes.Spec{
				Listeners: []routes.Listener{{Name: "http", Address: "127.0.0.1:0", Protocol: "http"}},
				Routes: []routes.Route{{Name: "kb", Listener: "http", Match: routes.Match{PathPrefix: "/kb/"},
					Upstream: "kb", Timeout: 5 * time.Second, Fallback: tc.fallback}},
				Upstreams: []routes.Upstream{{Name: "kb", Protocol: "http", Endpoints: []string{kb.Listener.Addr().String()}}},
			})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Shutdown(context.Background())
			url := "http://" + p.Addr("http").String() + "/kb/search"
			client := &http.Client{}
			defer client.CloseIdleConnections()

			questions := []string{"opening hours", "refund policy", "shipping", "reset password", "talk to human"}
			var durations []time.Duration
			var dmu sync.Mutex
			sem := make(chan struct{}, 16) // 16 concurrent users
			var wg sync.WaitGroup
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				sem <- struct{}{}
				wg.Add(1)
				go func(q string) {
					defer func() { <-sem; wg.Done() }()
					start := time.Now()
					resp, err := client.Post(url, "application/json", strings.NewReader(`{"q":"`+q+`"}`))
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					dmu.Lock()
					durations = append(durations, time.Since(start))
					dmu.Unlock()
				}(questions[i%len(questions)])
			}
			wg.Wait()
			b.StopTimer()
			slices.Sort(durations)
			q := func(f float64) float64 {
				return float64(durations[int(f*float64(len(durations)-1))]) / float64(time.Millisecond)
			}
			b.ReportMetric(q(0.5), "p50-ms")
			b.ReportMetric(q(0.95), "p95-ms")
			b.ReportMetric(q(0.99), "p99-ms")
		})
	}
}
