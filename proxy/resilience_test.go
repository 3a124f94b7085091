package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// resEnv is a proxy with telemetry in front of test upstreams.
type resEnv struct {
	reg      *prometheus.Registry
	httpAddr string
	grpcAddr string
}

func startResEnv(t *testing.T, spec *routes.Spec) *resEnv {
	t.Helper()
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(telemetry.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	p := proxy.New(proxy.Options{Telemetry: tel})
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, p) })
	env := &resEnv{reg: reg}
	if a := p.Addr("http"); a != nil {
		env.httpAddr = a.String()
	}
	if a := p.Addr("grpc"); a != nil {
		env.grpcAddr = a.String()
	}
	return env
}

func (e *resEnv) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	return testkit.Metric(t, e.reg, name, labels)
}

func httpSpec(up string, route routes.Route, upstream routes.Upstream) *routes.Spec {
	route.Name, route.Listener, route.Upstream = "kb", "http", "kb"
	upstream.Name, upstream.Protocol, upstream.Endpoints = "kb", "http", []string{up}
	return &routes.Spec{
		Listeners: []routes.Listener{{Name: "http", Address: "127.0.0.1:0", Protocol: "http"}},
		Routes:    []routes.Route{route},
		Upstreams: []routes.Upstream{upstream},
	}
}

type httpResult struct {
	status   int
	body     string
	fallback string
	err      error
	took     time.Duration
}

func post(client *http.Client, url, body string) httpResult {
	start := time.Now()
	resp, err := client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return httpResult{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpResult{status: resp.StatusCode, body: string(b), fallback: resp.Header.Get("X-Hopwatch-Fallback"), took: time.Since(start)}
}

// TestBreaker drives an HTTP upstream through failure, open, half-open and
// recovery, and checks what the upstream sees at each step.
func TestBreaker(t *testing.T) {
	var failing atomic.Bool
	var hits atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if failing.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "ok")
	}))
	defer up.Close()
	env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{Match: routes.Match{PathPrefix: "/"}},
		routes.Upstream{Breaker: &routes.Breaker{Window: 10 * time.Second, MinRequests: 5, FailureRatio: 0.5, OpenFor: 300 * time.Millisecond, HalfOpenRequests: 2}}))
	client := &http.Client{}
	defer client.CloseIdleConnections()
	url := "http://" + env.httpAddr + "/q"

	failing.Store(true)
	for range 5 {
		if r := post(client, url, "{}"); r.status != 500 {
			t.Fatalf("while closed, want the upstream's 500, got %+v", r)
		}
	}
	before := hits.Load()
	r := post(client, url, "{}")
	if r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "circuit breaker open") {
		t.Fatalf("open breaker: want 503 naming the breaker, got %+v", r)
	}
	if hits.Load() != before {
		t.Fatal("an open breaker let a request through")
	}
	if got := env.metric(t, "hopwatch_breaker_state", map[string]string{"upstream": "kb"}); got != 2 {
		t.Fatalf("hopwatch_breaker_state = %v, want 2 (open)", got)
	}
	if got := env.metric(t, "hopwatch_hop_requests_total", map[string]string{"outcome": "rejected"}); got != 1 {
		t.Fatalf("rejected requests = %v, want 1", got)
	}

	failing.Store(false)
	// half_open_requests (2) successes close it again.
	testkit.WaitFor(t, "half-open and closed again", func() bool {
		for range 2 {
			if post(client, url, "{}").status != 200 {
				return false
			}
		}
		return env.metric(t, "hopwatch_breaker_state", map[string]string{"upstream": "kb"}) == 0
	})
	if got := env.metric(t, "hopwatch_breaker_transitions_total", map[string]string{"upstream": "kb", "to": "half_open"}); got < 1 {
		t.Fatalf("no transition to half_open recorded")
	}
}

// TestBreakerHalfOpenAdmitsFew: with 1,000 concurrent callers at half-open,
// the upstream sees at most half_open_requests calls; and 1,000 client
// cancellations do not trip the breaker.
func TestBreakerHalfOpenAdmitsFew(t *testing.T) {
	forGRPCListeners(t, func(t *testing.T, relay string) {
		backend := startEcho(t)
		spec := &routes.Spec{
			Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}},
			Routes:    []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo"}},
			Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr},
				Breaker: &routes.Breaker{MinRequests: 10, FailureRatio: 0.5, OpenFor: 500 * time.Millisecond, HalfOpenRequests: 3}}},
		}
		env := startResEnv(t, spec)
		cc := dial(t, env.grpcAddr)
		m := "/" + echoService + "/Unary"
		ctx := context.Background()

		t.Run("cancellations never trip it", func(t *testing.T) {
			var wg sync.WaitGroup
			for range 1000 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					// An explicit cancel, as when a user closes the chat: not a
					// deadline, which would be the upstream's slowness.
					cctx, cancel := context.WithCancel(ctx)
					timer := time.AfterFunc(20*time.Millisecond, cancel)
					defer timer.Stop()
					if o := unary(cctx, cc, m, metadata.Pairs("x-block", "1"), nil); o.Code != codes.Canceled {
						t.Errorf("want Canceled, got %v", o)
					}
				}()
			}
			wg.Wait()
			for len(backend.canceled) > 0 {
				<-backend.canceled
			}
			if o := unary(ctx, cc, m, nil, []byte("x")); o.Code != codes.OK {
				t.Fatalf("after 1,000 cancellations the breaker rejects: %v", o)
			}
		})

		t.Run("half-open admits exactly the configured number", func(t *testing.T) {
			for range 10 {
				unary(ctx, cc, m, metadata.Pairs("x-status", "14"), nil) // UNAVAILABLE: failures
			}
			if o := unary(ctx, cc, m, nil, nil); o.Code != codes.Unavailable || !strings.Contains(o.Message, "circuit breaker open") {
				t.Fatalf("want the breaker open, got %v", o)
			}
			time.Sleep(600 * time.Millisecond) // open_for passes: half-open
			// Admitted means reached the upstream: with the listener's stream
			// cap (100 per connection) most calls wait in the client, and some
			// of those run out of deadline there without ever reaching the
			// proxy.
			arrivedBefore := backend.arrived.Load()
			var rejected atomic.Int64
			var wg sync.WaitGroup
			start := make(chan struct{})
			// Admitted calls block at the upstream and hold their half-open
			// slot until every other call has either been rejected or reached
			// the upstream too; only then are they released. A fixed deadline
			// instead lets admitted calls end while others are still queued in
			// a loaded client, freeing slots the late ones then take.
			release, releaseAll := context.WithTimeout(ctx, 30*time.Second)
			defer releaseAll()
			const calls = 1000
			for range calls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					o := unary(release, cc, m, metadata.Pairs("x-block", "1"), nil)
					if strings.Contains(o.Message, "circuit breaker open") {
						rejected.Add(1)
					}
				}()
			}
			close(start)
			for rejected.Load()+backend.arrived.Load()-arrivedBefore < calls && release.Err() == nil {
				time.Sleep(5 * time.Millisecond)
			}
			releaseAll()
			wg.Wait()
			if admitted := backend.arrived.Load() - arrivedBefore; admitted > 3 || admitted == 0 {
				t.Fatalf("half-open let %d calls through to the upstream, want 1..3 (rejected %d)", admitted, rejected.Load())
			}
			for len(backend.canceled) > 0 {
				<-backend.canceled
			}
		})
	})
}

// TestSlowCallsTrip: calls slower than slow_call count towards slow_ratio.
func TestSlowCallsTrip(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(60 * time.Millisecond)
		fmt.Fprint(w, "slow but fine")
	}))
	defer up.Close()
	env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{},
		routes.Upstream{Breaker: &routes.Breaker{MinRequests: 4, SlowCall: 20 * time.Millisecond, SlowRatio: 0.5, OpenFor: time.Minute}}))
	client := &http.Client{}
	defer client.CloseIdleConnections()
	for range 4 {
		if r := post(client, "http://"+env.httpAddr+"/", ""); r.status != 200 {
			t.Fatalf("got %+v", r)
		}
	}
	if r := post(client, "http://"+env.httpAddr+"/", ""); r.status != 503 {
		t.Fatalf("after 4 slow calls the breaker should be open, got %+v", r)
	}
}

// TestBulkhead: beyond max_concurrent, requests are refused at once.
func TestBulkhead(t *testing.T) {
	release := make(chan struct{})
	var inside atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inside.Add(1)
		<-release
		fmt.Fprint(w, "ok")
	}))
	defer up.Close()
	defer close(release)
	env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{}, routes.Upstream{MaxConcurrent: 2}))
	client := &http.Client{}
	defer client.CloseIdleConnections()
	url := "http://" + env.httpAddr + "/"
	results := make(chan httpResult, 2)
	for range 2 {
		go func() { results <- post(client, url, "") }()
	}
	testkit.WaitFor(t, "two requests at the upstream", func() bool { return inside.Load() == 2 })
	if r := post(client, url, ""); r.status != 503 || !strings.Contains(r.body, "bulkhead") {
		t.Fatalf("third concurrent request: want 503 (bulkhead full), got %+v", r)
	}
	release <- struct{}{}
	release <- struct{}{}
	for range 2 {
		if r := <-results; r.status != 200 {
			t.Fatalf("admitted request: %+v", r)
		}
	}
}

// TestAsyncFallbackHTTP is the motivating case: an upstream where a share
// of calls take 2 s, route after 200ms. Every client gets an answer well
// before the slow call ends, nobody gets an error, the slow calls finish in
// the background (never more than max_inflight at once) and refresh the
// cache, which later answers for them.
func TestAsyncFallbackHTTP(t *testing.T) {
	var n atomic.Int64
	var slowInside, slowPeak atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if n.Add(1)%5 == 0 { // 20% slow
			cur := slowInside.Add(1)
			for p := slowPeak.Load(); cur > p && !slowPeak.CompareAndSwap(p, cur); p = slowPeak.Load() {
			}
			defer slowInside.Add(-1)
			select {
			case <-time.After(2 * time.Second):
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"answer":%q}`, b)
	}))
	defer up.Close()
	const maxInflight = 4
	env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{Timeout: 5 * time.Second, Fallback: &routes.Fallback{
		After:      200 * time.Millisecond,
		Use:        []string{"cache", "static"},
		Cache:      &routes.FallbackCache{TTL: time.Minute, MaxEntries: 100},
		Static:     &routes.FallbackStatic{Status: 200, ContentType: "application/json", Body: `{"degraded":true}`},
		Background: &routes.FallbackBackground{MaxInflight: maxInflight, Timeout: 5 * time.Second},
	}}, routes.Upstream{}))
	client := &http.Client{}
	defer client.CloseIdleConnections()
	url := "http://" + env.httpAddr + "/kb/search"

	var bgPeak atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if v := int64(env.metric(t, "hopwatch_background_inflight", nil)); v > bgPeak.Load() {
				bgPeak.Store(v)
			}
		}
	}()

	var mu sync.Mutex
	var results []httpResult
	var wg sync.WaitGroup
	sem := make(chan struct{}, 10)
	for i := range 100 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			r := post(client, url, fmt.Sprintf(`{"q":"question %d"}`, i%10))
			mu.Lock()
			results = append(results, r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	fromFallback := 0
	for _, r := range results {
		if r.err != nil || r.status != 200 {
			t.Fatalf("client error: %+v", r)
		}
		// 2 s is the slow call; an answer near it means no fallback came.
		if r.took >= 1500*time.Millisecond {
			t.Fatalf("a client waited %v (after is 200ms, slow calls take 2s)", r.took)
		}
		if r.fallback != "" {
			fromFallback++
		}
	}
	if fromFallback == 0 {
		t.Fatal("no answer came from a fallback although 20% of calls were slow")
	}
	// The slow calls finish in the background and refresh the cache.
	testkit.WaitFor(t, "background calls to finish", func() bool {
		return env.metric(t, "hopwatch_background_inflight", nil) == 0 &&
			env.metric(t, "hopwatch_background_total", map[string]string{"result": "cached"}) > 0
	})
	close(stopSampling)
	<-sampled
	if bgPeak.Load() > maxInflight {
		t.Fatalf("background queue reached %d, max_inflight is %d", bgPeak.Load(), maxInflight)
	}
	if got := env.metric(t, "hopwatch_fallback_total", map[string]string{"reason": "slow"}); got != float64(fromFallback) {
		t.Fatalf("hopwatch_fallback_total{reason=slow} = %v, want %d", got, fromFallback)
	}
	// Now every question is cached: a slow call answers from the cache.
	for i := 0; i < 10; i++ {
		r := post(client, url, fmt.Sprintf(`{"q":"question %d"}`, i))
		if r.fallback == "static" {
			t.Fatalf("question %d answered statically after its slow call refreshed the cache: %+v", i, r)
		}
		if r.fallback == "cache" && (!strings.Contains(r.body, "question") || r.status != 200) {
			t.Fatalf("cache answer: %+v", r)
		}
	}
	t.Logf("%d of 100 answers from a fallback; background peak %d", fromFallback, bgPeak.Load())
}

// TestAsyncFallbackGRPC: a unary call on a slow gRPC upstream is answered
// from the static fallback after `after`, marked in a trailer; the slow
// call finishes in the background and the next one is served from cache.
func TestAsyncFallbackGRPC(t *testing.T) {
	forGRPCListeners(t, func(t *testing.T, relay string) {
		backend := startEcho(t)
		spec := &routes.Spec{
			Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}},
			Routes: []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo", Fallback: &routes.Fallback{
				After:  150 * time.Millisecond,
				Use:    []string{"cache", "static"},
				Cache:  &routes.FallbackCache{Headers: []string{"x-sleep-ms"}},
				Static: &routes.FallbackStatic{GRPCCode: "unavailable", GRPCMessage: "kb degraded"},
			}}},
			Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
		}
		env := startResEnv(t, spec)
		cc := dial(t, env.grpcAddr)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		m := "/" + echoService + "/Unary"
		slow := metadata.Pairs("x-sleep-ms", "1000")

		// First call: nothing cached, the upstream is late: static answer.
		o := unary(ctx, cc, m, slow, []byte("what are your opening hours"))
		if o.Code != codes.Unavailable || o.Message != "kb degraded" || o.Trailer.Get("x-hopwatch-fallback")[0] != "static" {
			t.Fatalf("first slow call: want the static fallback, got %v", o)
		}
		// The slow call completes in the background and fills the cache.
		testkit.WaitFor(t, "background refresh", func() bool {
			return env.metric(t, "hopwatch_background_total", map[string]string{"result": "cached"}) == 1
		})
		o = unary(ctx, cc, m, slow, []byte("what are your opening hours"))
		if o.Code != codes.OK || len(o.Msgs) != 1 || o.Msgs[0] != summarize([]byte("what are your opening hours")) ||
			o.Trailer.Get("x-hopwatch-fallback")[0] != "cache" {
			t.Fatalf("second slow call: want the cached answer, got %v", o)
		}
		// A fast call is not touched.
		o = unary(ctx, cc, m, nil, []byte("hi"))
		if o.Code != codes.OK || len(o.Trailer.Get("x-hopwatch-fallback")) != 0 {
			t.Fatalf("fast call: %v", o)
		}
		// Streams pass through the resilient route unchanged.
		so := stream(ctx, cc, "/"+echoService+"/Bidi", nil, [][]byte{[]byte("a"), []byte("b")})
		if so.Code != codes.OK || len(so.Msgs) != 2 {
			t.Fatalf("bidi on a fallback route: %v", so)
		}
	})
}

// TestRetry: a failed attempt is retried on another endpoint, and during a
// total outage the retry budget bounds what the upstream receives.
func TestRetry(t *testing.T) {
	t.Run("a retry turns a failure into a success", func(t *testing.T) {
		var n atomic.Int64
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) == 1 {
				http.Error(w, "try again", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprint(w, "ok")
		}))
		defer up.Close()
		env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{Retry: &routes.Retry{Attempts: 3, On: []string{"503"}}}, routes.Upstream{}))
		resp, err := http.Get("http://" + env.httpAddr + "/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		http.DefaultClient.CloseIdleConnections()
		if resp.StatusCode != 200 || n.Load() != 2 {
			t.Fatalf("status %d after %d upstream calls, want 200 after 2", resp.StatusCode, n.Load())
		}
		if got := env.metric(t, "hopwatch_retries_total", map[string]string{"result": "attempted"}); got != 1 {
			t.Fatalf("retries attempted = %v", got)
		}
	})
	t.Run("POST is not retried on a status", func(t *testing.T) {
		var n atomic.Int64
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			http.Error(w, "try again", http.StatusServiceUnavailable)
		}))
		defer up.Close()
		env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{Retry: &routes.Retry{Attempts: 3, On: []string{"503"}}}, routes.Upstream{}))
		client := &http.Client{}
		defer client.CloseIdleConnections()
		if r := post(client, "http://"+env.httpAddr+"/x", "{}"); r.status != 503 || n.Load() != 1 {
			t.Fatalf("POST: %+v after %d upstream calls, want 503 after 1", r, n.Load())
		}
	})
	t.Run("budget bounds retries during an outage", func(t *testing.T) {
		var n atomic.Int64
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			http.Error(w, "down", http.StatusServiceUnavailable)
		}))
		defer up.Close()
		const budget = 0.2
		env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{Retry: &routes.Retry{Attempts: 5, On: []string{"5xx"}, Budget: budget}}, routes.Upstream{}))
		client := &http.Client{}
		defer client.CloseIdleConnections()
		const calls = 300
		var wg sync.WaitGroup
		for range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range calls / 10 {
					resp, err := client.Get("http://" + env.httpAddr + "/x")
					if err == nil {
						resp.Body.Close()
					}
				}
			}()
		}
		wg.Wait()
		// The floor is 1 retry/s over the 10 s window: at most 10 extra.
		limit := int64((1+budget)*calls) + 10
		if n.Load() > limit {
			t.Fatalf("upstream received %d requests for %d client calls, budget allows %d", n.Load(), calls, limit)
		}
		if n.Load() <= calls {
			t.Fatalf("no retry at all (%d upstream requests)", n.Load())
		}
		t.Logf("%d client calls → %d upstream requests (limit %d)", calls, n.Load(), limit)
	})
	t.Run("gRPC unary is retried when no headers came", func(t *testing.T) {
		forGRPCListeners(t, func(t *testing.T, relay string) {
			backend := startEcho(t)
			spec := &routes.Spec{
				Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}},
				Routes: []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo",
					Retry: &routes.Retry{Attempts: 2, On: []string{"unavailable"}}}},
				Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
			}
			env := startResEnv(t, spec)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			o := unary(ctx, dial(t, env.grpcAddr), "/"+echoService+"/Unary", metadata.Pairs("x-fail-first", "1"), []byte("q"))
			if o.Code != codes.OK {
				t.Fatalf("want the retry to succeed, got %v", o)
			}
			if got := env.metric(t, "hopwatch_retries_total", map[string]string{"result": "attempted"}); got != 1 {
				t.Fatalf("retries attempted = %v", got)
			}
		})
	})
}

// TestOutlierEjection: an endpoint that keeps failing is taken out of
// rotation; the healthy one takes the traffic meanwhile.
func TestOutlierEjection(t *testing.T) {
	var badHits, goodHits atomic.Int64
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		badHits.Add(1)
		http.Error(w, "broken", http.StatusInternalServerError)
	}))
	defer bad.Close()
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		goodHits.Add(1)
		fmt.Fprint(w, "ok")
	}))
	defer good.Close()
	spec := httpSpec(bad.Listener.Addr().String(), routes.Route{}, routes.Upstream{
		Balance: routes.BalanceRoundRobin,
		Outlier: &routes.Outlier{ConsecutiveFailures: 3, BaseEjection: time.Minute},
	})
	spec.Upstreams[0].Endpoints = append(spec.Upstreams[0].Endpoints, good.Listener.Addr().String())
	env := startResEnv(t, spec)
	client := &http.Client{}
	defer client.CloseIdleConnections()
	for range 6 { // round robin: 3 to each, so the bad one fails 3 times in a row
		post(client, "http://"+env.httpAddr+"/", "")
	}
	if badHits.Load() != 3 {
		t.Fatalf("warm-up: bad endpoint got %d requests, want 3", badHits.Load())
	}
	for range 20 {
		if r := post(client, "http://"+env.httpAddr+"/", ""); r.status != 200 {
			t.Fatalf("after ejection: %+v", r)
		}
	}
	if badHits.Load() != 3 {
		t.Fatalf("ejected endpoint still got traffic: %d requests", badHits.Load())
	}
}

// TestBreakerFaults: upstreams that hang (past the route timeout) or drop
// connections count as failures and open the breaker; while it is open,
// the fallback answers with reason "open".
func TestBreakerFaults(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		timeout time.Duration
	}{
		{"hanging upstream", func(w http.ResponseWriter, r *http.Request) {
			// Read the body first: net/http only notices a client that
			// went away once the request body is consumed.
			io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
			// Far past fallback.after (40ms): on a loaded machine a timeout
			// only 20ms later could end the call before the fallback's turn.
		}, 500 * time.Millisecond},
		{"dropped connections", func(w http.ResponseWriter, r *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		}, 0},
		{"failing upstream", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusBadGateway) }, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				tc.handler(w, r)
			}))
			defer up.Close()
			env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{Timeout: tc.timeout, Fallback: &routes.Fallback{
				After:  40 * time.Millisecond,
				Use:    []string{"static"},
				Static: &routes.FallbackStatic{Status: 200, Body: "degraded"},
			}}, routes.Upstream{Breaker: &routes.Breaker{MinRequests: 4, FailureRatio: 0.5, OpenFor: time.Minute}}))
			client := &http.Client{}
			defer client.CloseIdleConnections()
			url := "http://" + env.httpAddr + "/"
			for range 4 {
				if r := post(client, url, "{}"); r.fallback != "static" || r.body != "degraded" {
					t.Fatalf("a failed call should be answered by the fallback: %+v", r)
				}
			}
			// Late calls finish in the background before the breaker counts
			// them.
			testkit.WaitFor(t, "background calls", func() bool { return env.metric(t, "hopwatch_background_inflight", nil) == 0 })
			before := hits.Load()
			r := post(client, url, "{}")
			if r.status != 200 || r.fallback != "static" || hits.Load() != before {
				t.Fatalf("open breaker: want the static fallback without calling the upstream, got %+v (upstream calls %d → %d)", r, before, hits.Load())
			}
			if got := env.metric(t, "hopwatch_fallback_total", map[string]string{"reason": "open", "source": "static"}); got != 1 {
				t.Fatalf("fallback{reason=open} = %v, want 1", got)
			}
			failed := env.metric(t, "hopwatch_fallback_total", map[string]string{"reason": "error", "source": "static"}) +
				env.metric(t, "hopwatch_fallback_total", map[string]string{"reason": "slow", "source": "static"})
			if failed != 4 {
				t.Fatalf("fallbacks for the 4 failed calls = %v, want 4", failed)
			}
		})
	}
}

// TestBulkheadFallbackGRPC: a gRPC call refused by a full bulkhead is
// answered from the static fallback with reason "overload".
func TestBulkheadFallbackGRPC(t *testing.T) {
	forGRPCListeners(t, func(t *testing.T, relay string) {
		backend := startEcho(t)
		spec := &routes.Spec{
			Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}},
			Routes: []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo", Fallback: &routes.Fallback{
				After: 5 * time.Second, Use: []string{"static"},
				Static: &routes.FallbackStatic{GRPCCode: "unavailable", GRPCMessage: "busy, try later"},
			}}},
			Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}, MaxConcurrent: 1}},
		}
		env := startResEnv(t, spec)
		cc := dial(t, env.grpcAddr)
		m := "/" + echoService + "/Unary"
		blocked, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			unary(blocked, cc, m, metadata.Pairs("x-block", "1"), nil)
		}()
		testkit.WaitFor(t, "the first call to hold the only slot", func() bool {
			// At the upstream, not only in the proxy: the test waits below
			// for the upstream to see it canceled.
			return env.metric(t, "hopwatch_hop_inflight", nil) == 1 && backend.arrived.Load() == 1
		})
		ctx, c2 := context.WithTimeout(context.Background(), 10*time.Second)
		defer c2()
		o := unary(ctx, cc, m, nil, []byte("q"))
		if o.Code != codes.Unavailable || o.Message != "busy, try later" || o.Trailer.Get("x-hopwatch-fallback")[0] != "static" {
			t.Fatalf("second call: want the static fallback, got %v", o)
		}
		if got := env.metric(t, "hopwatch_fallback_total", map[string]string{"reason": "overload"}); got != 1 {
			t.Fatalf("fallback{reason=overload} = %v", got)
		}
		cancel()
		<-done
		<-backend.canceled
	})
}

// TestResilientRouteEdges: what the buffered path must not break.
func TestResilientRouteEdges(t *testing.T) {
	forGRPCListeners(t, func(t *testing.T, relay string) {
		t.Run("a streamed body over the replay limit still arrives whole", func(t *testing.T) {
			var got atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n, _ := io.Copy(io.Discard, r.Body)
				got.Store(n)
				fmt.Fprint(w, "ok")
			}))
			defer up.Close()
			env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{Retry: &routes.Retry{Attempts: 2, On: []string{"503"}}}, routes.Upstream{}))
			const size = 3 << 20
			pr, pw := io.Pipe()
			go func() {
				chunk := make([]byte, 64<<10)
				for sent := 0; sent < size; sent += len(chunk) {
					pw.Write(chunk)
				}
				pw.Close()
			}()
			req, _ := http.NewRequest(http.MethodPost, "http://"+env.httpAddr+"/upload", pr) // no length: chunked
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			http.DefaultClient.CloseIdleConnections()
			if resp.StatusCode != 200 || got.Load() != size {
				t.Fatalf("status %d, upstream got %d bytes, want 200 and %d", resp.StatusCode, got.Load(), size)
			}
		})
		t.Run("a gRPC stream that waits for headers gets them", func(t *testing.T) {
			backend := startEcho(t)
			env := startResEnv(t, &routes.Spec{
				Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}},
				Routes: []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo", Fallback: &routes.Fallback{
					After: 100 * time.Millisecond, Use: []string{"static"}, Static: &routes.FallbackStatic{},
				}}},
				Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cs, err := dial(t, env.grpcAddr).NewStream(metadata.AppendToOutgoingContext(ctx, "x-block-after-header", "1"),
				&grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/"+echoService+"/Bidi")
			if err != nil {
				t.Fatal(err)
			}
			md, err := cs.Header() // the client sends nothing until it has the headers
			if err != nil || md.Get("arrived") == nil {
				t.Fatalf("headers: %v %v", md, err)
			}
			cancel()
			<-backend.canceled
		})
	})
}

// TestFallbackUpstream: when the primary fails, another upstream answers.
func TestFallbackUpstream(t *testing.T) {
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "primary down", http.StatusServiceUnavailable)
	}))
	defer primary.Close()
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "mirror answers %s", b)
	}))
	defer mirror.Close()
	spec := httpSpec(primary.Listener.Addr().String(), routes.Route{Fallback: &routes.Fallback{
		After: time.Second, Use: []string{"upstream"}, Upstream: "mirror",
	}}, routes.Upstream{})
	spec.Upstreams = append(spec.Upstreams, routes.Upstream{Name: "mirror", Protocol: "http", Endpoints: []string{mirror.Listener.Addr().String()}})
	env := startResEnv(t, spec)
	client := &http.Client{}
	defer client.CloseIdleConnections()
	r := post(client, "http://"+env.httpAddr+"/kb/search", `{"q":"hours"}`)
	if r.status != 200 || r.body != `mirror answers {"q":"hours"}` || r.fallback != "upstream" {
		t.Fatalf("want the mirror's answer marked as an upstream fallback, got %+v", r)
	}
	if got := env.metric(t, "hopwatch_fallback_total", map[string]string{"reason": "error", "source": "upstream"}); got != 1 {
		t.Fatalf("fallback{reason=error,source=upstream} = %v", got)
	}
}

// TestReloadKeepsResilience: reloads under traffic keep a route's fallback
// cache (its policy did not change) and race with nothing.
func TestReloadKeepsResilience(t *testing.T) {
	var slow atomic.Bool
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if slow.Load() {
			select {
			case <-time.After(time.Second):
			case <-r.Context().Done():
				return
			}
		}
		fmt.Fprint(w, "fresh")
	}))
	defer up.Close()
	spec := func(callers ...string) *routes.Spec {
		s := httpSpec(up.Listener.Addr().String(), routes.Route{Retry: &routes.Retry{Attempts: 2, On: []string{"503"}}, Fallback: &routes.Fallback{
			After: 100 * time.Millisecond, Use: []string{"cache"},
		}}, routes.Upstream{})
		s.Callers = callers
		return s
	}
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(telemetry.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	p := proxy.New(proxy.Options{Telemetry: tel})
	if err := p.Apply(spec("a")); err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, p)
	url := "http://" + p.Addr("http").String() + "/kb"
	client := &http.Client{}
	defer client.CloseIdleConnections()
	if r := post(client, url, "q"); r.body != "fresh" {
		t.Fatalf("warm-up: %+v", r)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if r := post(client, url, "q"); r.status != 200 {
					t.Errorf("during reloads: %+v", r)
					return
				}
			}
		}()
	}
	for i := range 20 {
		if err := p.Apply(spec("a", fmt.Sprint("caller-", i))); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	slow.Store(true)
	if r := post(client, url, "q"); r.fallback != "cache" || r.body != "fresh" {
		t.Fatalf("after 20 reloads the cache should still answer: %+v", r)
	}
}

// TestBackgroundQueueFull: with the background queue full, a late call is
// canceled instead of left running, and counted as rejected.
func TestBackgroundQueueFull(t *testing.T) {
	var canceled atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		select {
		case <-time.After(10 * time.Second):
			fmt.Fprint(w, "late")
		case <-r.Context().Done():
			canceled.Add(1)
		}
	}))
	t.Cleanup(up.Close) // after the proxy's shutdown, which cancels the call still running
	env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{Fallback: &routes.Fallback{
		After: 50 * time.Millisecond, Use: []string{"static"}, Static: &routes.FallbackStatic{Body: "degraded"},
		Background: &routes.FallbackBackground{MaxInflight: 1, Timeout: 20 * time.Second},
	}}, routes.Upstream{}))
	client := &http.Client{}
	defer client.CloseIdleConnections()
	url := "http://" + env.httpAddr + "/kb"
	for i := range 2 { // one after the other: the first holds the only slot
		if r := post(client, url, fmt.Sprint(i)); r.fallback != "static" {
			t.Fatalf("call %d: %+v", i, r)
		}
	}
	testkit.WaitFor(t, "the second late call to be canceled", func() bool { return canceled.Load() >= 1 })
	if canceled.Load() != 1 {
		t.Fatalf("%d late calls canceled, want only the one the full queue refused", canceled.Load())
	}
	if got := env.metric(t, "hopwatch_background_total", map[string]string{"result": "rejected"}); got != 1 {
		t.Fatalf("background rejected = %v, want 1", got)
	}
	if got := env.metric(t, "hopwatch_background_inflight", nil); got != 1 {
		t.Fatalf("background in flight = %v, want 1 (the first call)", got)
	}
}

// TestBackgroundRetry: a late call answered from a fallback goes on under
// the same policy in the background: an attempt that fails there with a
// retryable outcome is retried (within the budget), on both listeners.
func TestBackgroundRetry(t *testing.T) {
	fallbackOf := func(static *routes.FallbackStatic) *routes.Fallback {
		return &routes.Fallback{After: 100 * time.Millisecond, Use: []string{"static"}, Static: static}
	}
	grpcCase := func(relay string) func(t *testing.T) (*resEnv, func() int64, string) {
		return func(t *testing.T) (*resEnv, func() int64, string) {
			// Late, then UNAVAILABLE without headers (the echo backend
			// echoes its x-sleep-ms as a header, which rules a retry out).
			var n atomic.Int64
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
				n.Add(1)
				time.Sleep(300 * time.Millisecond)
				return status.Error(codes.Unavailable, "late and down")
			}))
			go srv.Serve(ln)
			t.Cleanup(srv.Stop)
			env := startResEnv(t, &routes.Spec{
				Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}},
				Routes: []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo",
					Retry:    &routes.Retry{Attempts: 2, On: []string{"unavailable"}},
					Fallback: fallbackOf(&routes.FallbackStatic{}),
				}},
				Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{ln.Addr().String()}}},
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			o := unary(ctx, dial(t, env.grpcAddr), "/"+echoService+"/Unary", nil, []byte("q"))
			src := ""
			if v := o.Trailer.Get("x-hopwatch-fallback"); len(v) == 1 {
				src = v[0]
			}
			return env, n.Load, src
		}
	}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T) (env *resEnv, arrived func() int64, fallback string)
	}{
		{"http", func(t *testing.T) (*resEnv, func() int64, string) {
			var n atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n.Add(1)
				time.Sleep(300 * time.Millisecond)
				w.WriteHeader(http.StatusServiceUnavailable)
			}))
			t.Cleanup(up.Close)
			env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{
				Retry:    &routes.Retry{Attempts: 2, On: []string{"503"}},
				Fallback: fallbackOf(&routes.FallbackStatic{Body: "degraded"}),
			}, routes.Upstream{}))
			client := &http.Client{}
			defer client.CloseIdleConnections()
			resp, err := client.Get("http://" + env.httpAddr + "/kb")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return env, n.Load, resp.Header.Get("X-Hopwatch-Fallback")
		}},
		{"grpc", grpcCase(routes.ListenerRelayMessages)},
		{"grpc on a relay listener", grpcCase(routes.ListenerRelayFrames)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, arrived, src := tc.run(t)
			if src != "static" {
				t.Fatalf("the late call was answered by %q, want the static fallback", src)
			}
			testkit.WaitFor(t, "the background call to end", func() bool {
				return env.metric(t, "hopwatch_background_total", map[string]string{"result": "error"}) == 1
			})
			if got := arrived(); got != 2 {
				t.Errorf("the upstream saw %d attempts, want 2 (the late one and its retry)", got)
			}
			if got := env.metric(t, "hopwatch_retries_total", map[string]string{"result": "attempted"}); got != 1 {
				t.Errorf("retries attempted = %v, want 1", got)
			}
		})
	}
}

// forGRPCListeners runs f on both kinds of gRPC listener: grpc-go's server
// (relay: messages) and the frame relay (the default, relay ""), whose resilient routes are served
// through its message adapter (relaymsg.go).
func forGRPCListeners(t *testing.T, f func(t *testing.T, relay string)) {
	t.Helper()
	for _, k := range []struct{ name, relay string }{{"grpc-go", routes.ListenerRelayMessages}, {"relay", ""}} {
		t.Run(k.name, func(t *testing.T) { f(t, k.relay) })
	}
}

// TestResilientCallEndsAtRouteTimeout: calls on a retry route whose
// upstream stalls after its first message end at the route's timeout, all
// of them. The attempt's reader drops its last event once the call's
// context is done; the call used to wait for that event only, so under
// concurrency some calls (found by the fault soak on the relay) held their
// client until the client's own deadline.
func TestResilientCallEndsAtRouteTimeout(t *testing.T) {
	forGRPCListeners(t, func(t *testing.T, relay string) {
		backend := startEcho(t)
		// The route's timeout leaves every call time to get its first
		// message on a loaded machine (with 300ms, 80 of 100 calls on the
		// relay met it before their first message under CPU load); the
		// client's is far longer, so that a call it ends is told apart.
		const routeTimeout, clientTimeout = 2 * time.Second, 15 * time.Second
		spec := &routes.Spec{
			Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}},
			Routes: []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo", Timeout: routeTimeout,
				Retry: &routes.Retry{Attempts: 2, On: []string{"unavailable"}}}},
			Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
		}
		env := startResEnv(t, spec)
		cc := dial(t, env.grpcAddr)
		const calls = 100
		var wg sync.WaitGroup
		var late, wrong atomic.Int64
		var firstWrong atomic.Value
		for range calls {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
				defer cancel()
				md := metadata.Pairs("x-count", "1", "x-size", "3", "x-sleep-ms", "30000")
				o := stream(ctx, cc, "/"+echoService+"/ServerStream", md, [][]byte{nil})
				if ctx.Err() != nil {
					late.Add(1) // ended by the client's deadline, not the route's
				}
				if o.Code != codes.DeadlineExceeded || len(o.Msgs) != 1 {
					wrong.Add(1)
					firstWrong.CompareAndSwap(nil, o.String())
				}
			})
		}
		wg.Wait()
		if late.Load() > 0 || wrong.Load() > 0 {
			t.Fatalf("of %d stalled calls, %d ended only at the client's deadline, %d not with DEADLINE_EXCEEDED after the first message (first: %v)",
				calls, late.Load(), wrong.Load(), firstWrong.Load())
		}
	})
}

// TestResilientRouteMessageEdges: what the relay's message adapter does
// with the messages themselves (compressed ones, ones over the listener's
// max_message_bytes, in a request or a response) is what grpc-go's server
// does on a grpc-go listener: the client observes the same on both.
func TestResilientRouteMessageEdges(t *testing.T) {
	backend := startEcho(t)
	const maxMsg = 64 << 10
	retry := &routes.Retry{Attempts: 2, On: []string{"unavailable"}}
	p := startProxy(t, &routes.Spec{
		Listeners: []routes.Listener{
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", MaxMessageBytes: maxMsg, Relay: routes.ListenerRelayMessages},
			{Name: "relay", Address: "127.0.0.1:0", Protocol: "grpc", Relay: routes.ListenerRelayFrames, MaxMessageBytes: maxMsg},
		},
		Routes: []routes.Route{
			{Name: "grpc", Listener: "grpc", Upstream: "echo", Retry: retry},
			{Name: "relay", Listener: "relay", Upstream: "echo", Retry: retry},
		},
		Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
	})
	const m = "/" + echoService + "/"
	cases := []struct {
		name string
		call func(ctx context.Context, cc *grpc.ClientConn) observed
		code codes.Code
	}{
		{"gzip-compressed request", func(ctx context.Context, cc *grpc.ClientConn) observed {
			var hdr, trl metadata.MD
			out := new(wrapperspb.BytesValue)
			err := cc.Invoke(ctx, m+"Unary", wrapperspb.Bytes(bigPayload(10<<10)), out, grpc.Header(&hdr), grpc.Trailer(&trl), grpc.UseCompressor(gzip.Name))
			var msgs []string
			if err == nil {
				msgs = []string{summarize(out.Value)}
			}
			return observe(hdr, trl, msgs, err)
		}, codes.OK},
		{"request message over max_message_bytes", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return unary(ctx, cc, m+"Unary", nil, bigPayload(maxMsg))
		}, codes.ResourceExhausted},
		{"second request message over max_message_bytes", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return stream(ctx, cc, m+"ClientStream", nil, [][]byte{[]byte("a"), bigPayload(maxMsg)})
		}, codes.ResourceExhausted},
		{"response message over max_message_bytes", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return stream(ctx, cc, m+"ServerStream", metadata.Pairs("x-count", "2", "x-size", strconv.Itoa(maxMsg)), [][]byte{nil})
		}, codes.ResourceExhausted},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]observed{}
			for _, l := range []string{"grpc", "relay"} {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				got[l] = tc.call(ctx, dial(t, p.Addr(l).String()))
				cancel()
			}
			if got["grpc"].Code != tc.code {
				t.Fatalf("grpc-go listener: want %v, got %s", tc.code, got["grpc"])
			}
			if !reflect.DeepEqual(got["relay"], got["grpc"]) {
				t.Errorf("relay listener differs from grpc-go's:\n got: %s\nwant: %s", got["relay"], got["grpc"])
			}
		})
	}
}

// TestBackgroundCallEndsAtRouteTimeout: a late call that the fallback
// answered finishes in the background; when the route's timeout ends it
// there, its attempt ends with it (the breaker hears of the failure, the
// bulkhead slot is free again) before the background task counts as done.
// The task used to return at the timeout without ending its attempt: on
// gRPC the breaker's report and the bulkhead slot were lost for good (the
// next call was refused as overloaded, the breaker never opened); on HTTP
// they came a moment after the task was done (TestBreakerFaults then saw
// the breaker still closed, now and then).
func TestBackgroundCallEndsAtRouteTimeout(t *testing.T) {
	// Far past fallback.after, so that the fallback answers first, and
	// time for the call to reach the upstream on a loaded machine.
	const routeTimeout = time.Second
	fb := func(static routes.FallbackStatic) *routes.Fallback {
		return &routes.Fallback{After: 20 * time.Millisecond, Use: []string{"static"}, Static: &static}
	}
	gate := func(u routes.Upstream) routes.Upstream {
		// Two failures open the breaker; one slot makes a lost one visible.
		u.MaxConcurrent = 1
		u.Breaker = &routes.Breaker{MinRequests: 2, FailureRatio: 0.5, OpenFor: time.Minute}
		return u
	}
	cases := []struct {
		name string
		// start serves a spec; call makes one call the upstream holds until
		// it is canceled, and returns the fallback's header.
		start func(t *testing.T) (env *resEnv, call func() string, reached func() int64)
	}{
		{"http", func(t *testing.T) (*resEnv, func() string, func() int64) {
			var hits atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				io.Copy(io.Discard, r.Body)
				<-r.Context().Done()
			}))
			t.Cleanup(up.Close)
			env := startResEnv(t, httpSpec(up.Listener.Addr().String(),
				routes.Route{Timeout: routeTimeout, Fallback: fb(routes.FallbackStatic{Status: 200, Body: "degraded"})},
				gate(routes.Upstream{})))
			client := &http.Client{}
			t.Cleanup(client.CloseIdleConnections)
			return env, func() string {
				r := post(client, "http://"+env.httpAddr+"/", "{}")
				if r.err != nil || r.status != 200 {
					t.Fatalf("got %+v, want the static fallback", r)
				}
				return r.fallback
			}, hits.Load
		}},
	}
	for _, l := range []struct{ name, relay string }{{"grpc-go", routes.ListenerRelayMessages}, {"relay", ""}} {
		cases = append(cases, struct {
			name  string
			start func(t *testing.T) (*resEnv, func() string, func() int64)
		}{"grpc, " + l.name + " listener", func(t *testing.T) (*resEnv, func() string, func() int64) {
			backend := startEcho(t)
			env := startResEnv(t, &routes.Spec{
				Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: l.relay}},
				Routes: []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo", Timeout: routeTimeout,
					Fallback: fb(routes.FallbackStatic{GRPCCode: "unavailable", GRPCMessage: "degraded"})}},
				Upstreams: []routes.Upstream{gate(routes.Upstream{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}})},
			})
			cc := dial(t, env.grpcAddr)
			return env, func() string {
				ctx, cancel := context.WithTimeout(context.Background(), waitLong)
				defer cancel()
				o := unary(ctx, cc, "/"+echoService+"/Unary", metadata.Pairs("x-block", "1"), []byte("q"))
				if o.Code != codes.Unavailable || o.Message != "degraded" || len(o.Trailer.Get("x-hopwatch-fallback")) != 1 {
					t.Fatalf("got %v, want the static fallback", o)
				}
				return o.Trailer.Get("x-hopwatch-fallback")[0]
			}, backend.arrived.Load
		}})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env, call, reached := tc.start(t)
			for i := range 2 {
				if src := call(); src != "static" {
					t.Fatalf("call %d: fallback %q, want static", i+1, src)
				}
				// The late call ends in the background at the route's timeout.
				testkit.WaitFor(t, "the background call", func() bool { return env.metric(t, "hopwatch_background_inflight", nil) == 0 })
				if n := reached(); n != int64(i+1) {
					t.Fatalf("call %d: the upstream saw %d calls, want %d (overload: %v)", i+1, n, i+1,
						env.metric(t, "hopwatch_fallback_total", map[string]string{"reason": "overload"}))
				}
			}
			// Both calls failed: the breaker is open now, without waiting.
			call()
			if n := reached(); n != 2 {
				t.Fatalf("the upstream saw a third call: the breaker did not hear of the first two")
			}
			if got := env.metric(t, "hopwatch_fallback_total", map[string]string{"reason": "open"}); got != 1 {
				t.Fatalf("fallback{reason=open} = %v, want 1 (overload: %v)", got,
					env.metric(t, "hopwatch_fallback_total", map[string]string{"reason": "overload"}))
			}
		})
	}
}
