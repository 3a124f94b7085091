package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Options are the injected dependencies of New.
type Options struct {
	Config Config
	// Registry receives the metrics (required: no global registry).
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// Now is the clock of the trace store and hop statistics.
	Now func() time.Time
	// SpanClient, if set, receives the hop spans in OTLP instead of the
	// client of Config's OTLP exporter (which it replaces): for tests, and
	// programs that embed hopwatch with a collector client of their own.
	// Spans pass through the same bound, batching and turn holder.
	SpanClient otlptrace.Client
}

// Telemetry is the long-lived part: metrics, span export, propagation,
// trace store and hop statistics. It outlives configuration reloads; the
// per-route parts are rebuilt with each generation by Route.
type Telemetry struct {
	cfg    Config
	reg    *prometheus.Registry
	m      *metrics
	prop   propagation.TextMapPropagator
	fields []string // headers the propagator reads and writes
	// dropFields are removed from every upstream request before injection:
	// fields, or, when incoming context is not trusted, the headers of
	// every propagator the proxy knows.
	dropFields []string
	trust      bool
	// exp exports hop spans (export.go); nil without an OTLP exporter,
	// when spans are made for the built-in store only.
	exp *spanExporter
	// holder keeps the exported spans of turns in flight until the turn
	// is classified (turnhold.go); nil without an exporter.
	holder *turnHolder
	// sampler decides for traces the proxy starts, as the SDK's
	// ParentBased(TraceIDRatioBased) would (see spanContext).
	sampler sdktrace.Sampler
	now     func() time.Time
	log     *slog.Logger

	replay    replayMetrics
	listeners *listenerCollector
	x         extras // genai metrics and the access log
	disc      discoveryMetrics

	turns atomic.Pointer[turnHook] // see SetTurnObserver

	fbMu     sync.Mutex              // guards fbCounts
	fbCounts map[FallbackCount]int64 // keys have Count 0

	// Store keeps recent traces for /api/traces and /api/bottlenecks.
	Store *Store
	// Stats keeps per-hop rate, errors and latency for /api/hops.
	Stats *Stats
	// Receiver is the OTLP receiver for the admin server to serve (nil
	// unless telemetry.receive.otlp).
	Receiver *Receiver
}

// New builds telemetry from its configuration. It does not connect to the
// collector; see newExporter.
func New(opts Options) (*Telemetry, error) {
	if opts.Registry == nil {
		return nil, errors.New("telemetry: a Prometheus registry is required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	m := newMetrics(opts.Registry)
	exp, holder, err := newExportPipeline(opts.Config, opts.SpanClient, m, opts.Logger, opts.Now)
	if err != nil {
		return nil, err
	}
	prop := newPropagator(opts.Config.propagators())
	store := NewStoreLimits(StoreLimits{
		MaxTraces: opts.Config.Tracing.Store.MaxTraces,
		MaxBytes:  opts.Config.Tracing.Store.MaxBytes,
	})
	for r := range store.evicted {
		store.evicted[r] = m.storeEvictions.WithLabelValues(evictReasonName[r])
	}
	if err := opts.Registry.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hopwatch_trace_store_bytes",
		Help: "Estimated memory of the built-in trace store (bounded by telemetry.tracing.store.max_bytes).",
	}, func() float64 { return float64(store.Bytes()) })); err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	var recv *Receiver
	if opts.Config.Receive.OTLP {
		if recv, err = NewReceiver(store, opts.Registry); err != nil {
			return nil, err
		}
	}
	return &Telemetry{
		Receiver:   recv,
		cfg:        opts.Config,
		reg:        opts.Registry,
		m:          m,
		prop:       prop,
		fields:     prop.Fields(),
		dropFields: dropFields(prop, opts.Config.trustIncoming()),
		trust:      opts.Config.trustIncoming(),
		exp:        exp,
		holder:     holder,
		sampler:    sdktrace.TraceIDRatioBased(opts.Config.sampleRatio()),
		now:        opts.Now,
		log:        opts.Logger,
		replay:     newReplayMetrics(opts.Registry),
		listeners:  newListenerCollector(opts.Registry),
		x:          newExtras(opts.Registry),
		disc:       newDiscoveryMetrics(opts.Registry),
		Store:      store,
		Stats:      NewStats(),
	}, nil
}

// SetTurnSLOs sets the turn SLO of each entry route (route name → SLO),
// for the slow-turn rules of the bottleneck analysis: a turn over its
// route's SLO is slow. nil or a missing route: no SLO. Safe to call while
// requests are served (on every configuration reload, say).
func (t *Telemetry) SetTurnSLOs(slos map[string]time.Duration) {
	if t == nil {
		return
	}
	t.Store.SetTurnSLOs(slos)
}

// Shutdown flushes spans still queued for export, until ctx ends: the
// spans held for turns still in flight go unmarked (counted).
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t.Receiver != nil {
		t.Receiver.Close()
	}
	if t.exp == nil {
		return nil
	}
	t.holder.shutdown()
	return t.exp.shutdown(ctx)
}

// MetricsHandler serves /metrics: OpenMetrics (with exemplars) or the
// protobuf format (with native histograms) when the scraper asks for them,
// the classic text format otherwise.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		ErrorLog:          slog.NewLogLogger(t.log.Handler(), slog.LevelWarn),
	})
}

// ConfigReloaded records the outcome of a configuration load.
func (t *Telemetry) ConfigReloaded(ok bool) {
	if t == nil {
		return
	}
	if ok {
		t.m.reloads.WithLabelValues("success").Inc()
		t.m.reloadOK.Set(1)
		return
	}
	t.m.reloads.WithLabelValues("failure").Inc()
	t.m.reloadOK.Set(0)
}

// Unrouted counts a request that matched no route on listener.
func (t *Telemetry) Unrouted(listener string) {
	if t == nil {
		return
	}
	t.m.unrouted.WithLabelValues(listener).Inc()
}

// SameConfig reports whether c can replace the running configuration
// without a restart (the span exporter is built once).
func (t *Telemetry) SameConfig(c Config) bool {
	return equalConfig(t.cfg, c)
}
