package telemetry

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/propagation"
)

// bigSpan is a span of trace tr with its own strings and events, as a hop
// with retries and a fallback records it: nothing shared with other spans,
// so the heap holds what the estimate counts.
func bigSpan(tr, id uint64, events int) Span {
	sp := span(tr, id, 0, KindServer, "gateway", "kb", "kb", time.Duration(tr)*time.Millisecond, ms(5), OutcomeOK)
	sp.Method = fmt.Sprintf("/bot.v1.KnowledgeBase/Search%0100d", id)
	sp.Endpoint = fmt.Sprintf("10.0.%d.%d:8443", id%250, tr%250)
	sp.Code = strings.Clone("OK")
	for i := range events {
		sp.Events = append(sp.Events, SpanEvent{Name: fmt.Sprintf("retry-%d", i), Time: t0,
			Attrs: map[string]string{"reason": fmt.Sprintf("unavailable-%d", id), "hopwatch.attempt": fmt.Sprint(i)}})
	}
	return sp
}

func TestStoreMaxBytes(t *testing.T) {
	cases := []struct {
		name        string
		limits      StoreLimits
		traces      int
		spans       int // per trace
		wantMax     int // MaxTraces after lowering
		wantByBytes bool
		wantLen     func(n int) bool
	}{
		{"small traces: the trace bound evicts", StoreLimits{MaxTraces: 50, MaxBytes: 4 << 20}, 500, 2, 50, false, func(n int) bool { return n == 50 }},
		{"large traces: the byte bound evicts", StoreLimits{MaxTraces: 5000, MaxBytes: 4 << 20}, 600, 64, 5000, true, func(n int) bool { return n > 10 && n < 400 }},
		{"max_traces lowered to what the bytes hold", StoreLimits{MaxTraces: 1 << 30, MaxBytes: 1 << 20}, 20, 1, int(1 << 20 / 2 / entrySize), false, func(n int) bool { return n == 20 }},
		{"one trace over the bound stays, alone", StoreLimits{MaxTraces: 100, MaxBytes: 64 << 10}, 3, MaxSpansPerTrace + 10, 100, true, func(n int) bool { return n == 1 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStoreLimits(tc.limits)
			byCount := prometheus.NewCounter(prometheus.CounterOpts{Name: "c"})
			byBytes := prometheus.NewCounter(prometheus.CounterOpts{Name: "b"})
			s.evicted[evictCount], s.evicted[evictBytes] = byCount, byBytes
			if s.MaxTraces() != tc.wantMax {
				t.Fatalf("MaxTraces %d, want %d", s.MaxTraces(), tc.wantMax)
			}
			peak := int64(0)
			for tr := 1; tr <= tc.traces; tr++ {
				for sp := range tc.spans {
					s.Add(bigSpan(uint64(tr), uint64(tr*10000+sp), 2))
					if tc.spans <= MaxSpansPerTrace {
						peak = max(peak, s.Bytes())
					}
				}
			}
			if tc.spans <= MaxSpansPerTrace && peak > tc.limits.MaxBytes {
				t.Errorf("estimate peaked at %d bytes, over the bound %d", peak, tc.limits.MaxBytes)
			}
			n := s.Len()
			if !tc.wantLen(n) {
				t.Errorf("Len %d", n)
			}
			if _, ok := s.Trace(tid(uint64(tc.traces))); !ok {
				t.Error("the newest trace was evicted")
			}
			gotBytes := testutil.ToFloat64(byBytes)
			if tc.wantByBytes != (gotBytes > 0) {
				t.Errorf("evictions for max_bytes %v, want some: %v", gotBytes, tc.wantByBytes)
			}
			evicted := testutil.ToFloat64(byCount) + gotBytes
			if _, ev := s.Dropped(); float64(ev) != evicted || int(evicted) != tc.traces-n {
				t.Errorf("evicted %v (counters) %d (store), want %d", evicted, ev, tc.traces-n)
			}
			list := s.Traces(TraceQuery{Limit: 1000})
			if len(list) != n {
				t.Errorf("Traces lists %d, Len %d", len(list), n)
			}
			t.Logf("%d traces of %d spans: kept %d, estimate %d of %d bytes, evicted %v for max_bytes, %v for max_traces",
				tc.traces, tc.spans, n, s.Bytes(), tc.limits.MaxBytes, gotBytes, testutil.ToFloat64(byCount))
		})
	}
}

// TestStoreHeapBounded: 128 MiB worth of traces (estimated) through a
// store bounded at 16 MiB leave the heap within the bound, with the
// estimate at or under it; the estimate is not below the real memory.
func TestStoreHeapBounded(t *testing.T) {
	const maxBytes = 16 << 20
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	s := NewStoreLimits(StoreLimits{MaxTraces: 100000, MaxBytes: maxBytes})
	const spansPerTrace = 32
	var added int64
	for tr := uint64(1); added < 128<<20; tr++ {
		for i := range spansPerTrace {
			sp := bigSpan(tr, tr*100+uint64(i), 3)
			added += spanSize + spanBytes(&sp)
			s.Add(sp)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	heap := int64(ms1.HeapAlloc) - int64(ms0.HeapAlloc)
	est := s.Bytes()
	_, evicted := s.Dropped()
	t.Logf("added ~%d MiB in spans; kept %d traces; estimate %.1f MiB; heap growth %.1f MiB; %d evicted",
		added>>20, s.Len(), float64(est)/(1<<20), float64(heap)/(1<<20), evicted)
	if est > maxBytes {
		t.Errorf("estimate %d over the bound %d", est, maxBytes)
	}
	if heap > maxBytes {
		t.Errorf("heap grew %d bytes, over the bound %d", heap, maxBytes)
	}
	// The estimate errs high, not low: heap within 1.25× of it (the GC
	// may leave a little garbage).
	if float64(heap) > 1.25*float64(est) {
		t.Errorf("heap %d bytes against an estimate of %d: the estimate is too low", heap, est)
	}
	runtime.KeepAlive(s)
}

// TestStoreEvictionMetrics: the counter and gauge on /metrics, and the
// max_bytes setting from the configuration.
func TestStoreEvictionMetrics(t *testing.T) {
	tel := newTestTelemetry(t, Config{Tracing: Tracing{Store: StoreConfig{MaxTraces: 1000, MaxBytes: 1 << 20}}})
	r := tel.Route(RouteInfo{Name: "nlu", Upstream: "nlu", GRPC: true}, nil)
	for range 300 {
		_, h := r.Start(t.Context(), propagation.HeaderCarrier(http.Header{}), "x", "/bot.v1.NLU/Parse")
		for i := range 40 { // a route with very many retries: events capped
			h.Retried(i+2, "unavailable")
		}
		for range 8 {
			_, a := h.Attempt(t.Context(), "127.0.0.1:1")
			a.End("Unavailable", OutcomeError)
		}
		h.End("OK", OutcomeOK)
	}
	if got := tel.Store.Bytes(); got > 1<<20 {
		t.Errorf("store estimate %d over 1 MiB", got)
	}
	for _, sum := range tel.Store.Traces(TraceQuery{Limit: 1}) {
		d, _ := tel.Store.Trace(sum.TraceID)
		for _, sp := range d.Spans {
			if len(sp.Events) > MaxEventsPerSpan {
				t.Errorf("span with %d events, want at most %d", len(sp.Events), MaxEventsPerSpan)
			}
		}
	}
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{`hopwatch_trace_store_evictions_total{reason="max_bytes"}`, "hopwatch_trace_store_bytes "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if v := testutil.ToFloat64(tel.m.storeEvictions.WithLabelValues("max_bytes")); v == 0 {
		t.Error("no evictions for max_bytes counted")
	}
	if errs := (&Config{Tracing: Tracing{Store: StoreConfig{MaxBytes: -1}}}).Validate(); errs["tracing.store.max_bytes"] == "" {
		t.Errorf("negative max_bytes accepted: %v", errs)
	}
}
