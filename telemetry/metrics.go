package telemetry

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
)

// durationBuckets are the classic buckets, 0.5 ms to 30 s: a bot hop ranges
// from a sub-millisecond cache answer to a long model generation. Native
// histograms are exported alongside for scrapers that ask for them.
var durationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// numBuckets is len(durationBuckets)+1 (the +Inf bucket), as a constant for
// array sizes; TestBucketCount keeps them in step.
const numBuckets = 16

// metrics are the proxy's Prometheus series (design section 5). Names are
// the contract with users' dashboards and alerts.
type metrics struct {
	requests       *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	firstByte      *prometheus.HistogramVec
	inflight       *prometheus.GaugeVec
	unrouted       *prometheus.CounterVec
	reloads        *prometheus.CounterVec
	reloadOK       prometheus.Gauge
	spansDropped   prometheus.Counter
	spansExported  prometheus.Counter
	exportFailures prometheus.Counter
	storeEvictions *prometheus.CounterVec
	// turnSpansUnmarked counts spans the turn holder let go before their
	// turn was classified (turnhold.go).
	turnSpansUnmarked *prometheus.CounterVec

	breakerState       *prometheus.GaugeVec
	breakerTransitions *prometheus.CounterVec
	fallbacks          *prometheus.CounterVec
	bgInflight         *prometheus.GaugeVec
	bgTotal            *prometheus.CounterVec
	retries            *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	native := func(o prometheus.HistogramOpts) prometheus.HistogramOpts {
		o.Buckets = durationBuckets
		o.NativeHistogramBucketFactor = 1.1
		o.NativeHistogramMaxBucketNumber = 160
		o.NativeHistogramMinResetDuration = 0
		return o
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_hop_requests_total",
			Help: "Requests per hop (caller → route → upstream), by gRPC method or HTTP method, status code and outcome.",
		}, []string{"caller", "route", "upstream", "method", "code", "outcome"}),
		duration: prometheus.NewHistogramVec(native(prometheus.HistogramOpts{
			Name: "hopwatch_hop_duration_seconds",
			Help: "Hop latency from request arrival to the end of the response or stream, with trace_id exemplars.",
		}), []string{"caller", "route", "upstream", "method", "outcome"}),
		firstByte: prometheus.NewHistogramVec(native(prometheus.HistogramOpts{
			Name: "hopwatch_hop_first_byte_seconds",
			Help: "Time to the first response byte (headers for HTTP, first message or headers for gRPC; the first token of a stream).",
		}), []string{"route", "upstream"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopwatch_hop_inflight",
			Help: "Requests and streams in flight per hop.",
		}, []string{"route", "upstream"}),
		unrouted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_unrouted_requests_total",
			Help: "Requests that matched no route (answered 404 / UNIMPLEMENTED, never forwarded).",
		}, []string{"listener"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_config_reloads_total",
			Help: "Configuration loads by result (success, failure).",
		}, []string{"result"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_config_last_reload_success",
			Help: "1 if the last configuration load succeeded, 0 if the previous configuration is still serving.",
		}),
		spansDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_spans_dropped_total",
			Help: "Spans dropped because the OTLP export queue was full (the collector is slow or down).",
		}),
		spansExported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_spans_exported_total",
			Help: "Spans handed to the OTLP exporter successfully.",
		}),
		exportFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_span_export_failures_total",
			Help: "OTLP export calls that failed (their spans are lost).",
		}),
		storeEvictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_trace_store_evictions_total",
			Help: "Traces evicted from the built-in trace store to make room, by the bound that was reached: max_traces or max_bytes.",
		}, []string{"reason"}),
		turnSpansUnmarked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_turn_spans_unmarked_total",
			Help: "Exported spans of a turn in flight that left without hopwatch.turn.index and hopwatch.turn.outcome, by reason: spans_full, turns_full (the turn holder's bounds), timeout (the turn ran past 30s), shutdown.",
		}, []string{"reason"}),
		breakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopwatch_breaker_state",
			Help: "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
		}, []string{"upstream"}),
		breakerTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_breaker_transitions_total",
			Help: "Circuit breaker state changes per upstream, by the state entered.",
		}, []string{"upstream", "to"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_fallback_total",
			Help: "Answers served from a fallback, by reason (slow, open, error, overload) and source (cache, static, upstream).",
		}, []string{"route", "reason", "source"}),
		bgInflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopwatch_background_inflight",
			Help: "Upstream calls still running in the background after their client was answered from a fallback.",
		}, []string{"route"}),
		bgTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_background_total",
			Help: "Background calls by result: cached (success, cache refreshed), ok, error, timeout, rejected (queue full: canceled instead).",
		}, []string{"route", "result"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_retries_total",
			Help: "Retry decisions per route and upstream: attempted, budget_exhausted.",
		}, []string{"route", "upstream", "result"}),
	}
	reg.MustRegister(m.requests, m.duration, m.firstByte, m.inflight, m.unrouted,
		m.reloads, m.reloadOK, m.spansDropped, m.spansExported, m.exportFailures, m.storeEvictions, m.turnSpansUnmarked,
		m.breakerState, m.breakerTransitions, m.fallbacks, m.bgInflight, m.bgTotal, m.retries)
	return m
}

// seriesKey selects one requests/duration series within a route.
type seriesKey struct {
	caller, method, code string
	outcome              Outcome
}

// series are the metric handles for one seriesKey, looked up once.
type series struct {
	requests prometheus.Counter
	duration prometheus.Observer
	// exemplarAt holds, per classic bucket, when it last got an exemplar
	// (unix nanoseconds). See observe.
	exemplarAt [numBuckets]atomic.Int64
}

// exemplarEvery is how often one bucket of one series takes a new exemplar.
const exemplarEvery = int64(time.Second)

// observe records a latency, with a trace_id exemplar when the trace is
// sampled and the bucket has had none for exemplarEvery. Prometheus keeps
// one exemplar per bucket anyway, so offering one per request only costs
// allocations; limiting per bucket (not per series) keeps the rare slow
// outliers, which land in buckets of their own, linked to their traces.
func (s *series) observe(d time.Duration, traceID trace.TraceID, sampled bool, now time.Time) {
	v := d.Seconds()
	if sampled {
		b := &s.exemplarAt[sort.SearchFloat64s(durationBuckets, v)]
		last, n := b.Load(), now.UnixNano()
		if n-last >= exemplarEvery && b.CompareAndSwap(last, n) {
			s.duration.(prometheus.ExemplarObserver).ObserveWithExemplar(v, prometheus.Labels{"trace_id": traceID.String()})
			return
		}
	}
	s.duration.Observe(v)
}

// maxMethodsPerRoute bounds the method label: a route matching a whole gRPC
// service would otherwise take any method name a client invents.
const maxMethodsPerRoute = 64

// otherMethod replaces methods beyond maxMethodsPerRoute.
const otherMethod = "other"

// routeSeries caches a route's handles. Lookups are a read-locked map access
// with a struct key (no allocation); the write path runs once per new label
// combination.
type routeSeries struct {
	m        *metrics
	route    string
	upstream string
	inflight prometheus.Gauge
	firstB   prometheus.Observer

	mu      sync.RWMutex // guards the maps below
	byKey   map[seriesKey]*series
	methods map[string]bool
}

func (m *metrics) route(route, upstream string) *routeSeries {
	return &routeSeries{
		m:        m,
		route:    route,
		upstream: upstream,
		inflight: m.inflight.WithLabelValues(route, upstream),
		firstB:   m.firstByte.WithLabelValues(route, upstream),
		byKey:    map[seriesKey]*series{},
		methods:  map[string]bool{},
	}
}

func (r *routeSeries) get(k seriesKey) *series {
	r.mu.RLock()
	s := r.byKey[k]
	r.mu.RUnlock()
	if s != nil {
		return s
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.byKey[k]; s != nil {
		return s
	}
	if !r.methods[k.method] {
		if len(r.methods) >= maxMethodsPerRoute {
			k.method = otherMethod
			if s := r.byKey[k]; s != nil {
				return s
			}
		} else {
			r.methods[k.method] = true
		}
	}
	s = &series{
		requests: r.m.requests.WithLabelValues(k.caller, r.route, r.upstream, k.method, k.code, string(k.outcome)),
		duration: r.m.duration.WithLabelValues(k.caller, r.route, r.upstream, k.method, string(k.outcome)),
	}
	r.byKey[k] = s
	return s
}
