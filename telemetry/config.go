package telemetry

import (
	"strconv"
	"time"
)

// Config is the telemetry section of the configuration file, as written.
type Config struct {
	// ServiceName is the OpenTelemetry service.name (default "hopwatch").
	ServiceName string  `yaml:"service_name"`
	Tracing     Tracing `yaml:"tracing"`
	// Receive accepts the services' own telemetry (see receive.go).
	Receive Receive `yaml:"receive"`
}

// Receive configures what hopwatch accepts from the services themselves.
type Receive struct {
	// OTLP (default false) serves an OTLP trace receiver on the admin
	// address, over HTTP (POST /v1/traces) and gRPC, whose spans show in
	// the built-in store's waterfalls and nowhere else.
	OTLP bool `yaml:"otlp"`
}

// Tracing configures spans and propagation.
type Tracing struct {
	// SampleRatio applies to traces the proxy starts (default 1.0). A
	// trusted incoming parent's sampling decision is honoured.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// TrustIncoming (default true) continues the caller's trace. false
	// starts a new trace for every request and records the incoming
	// context as a span link, so outside callers cannot force sampling or
	// graft their spans onto ours.
	TrustIncoming *bool `yaml:"trust_incoming"`
	// Propagators lists the formats read from requests: tracecontext,
	// baggage, b3 (default tracecontext and baggage). Injection uses the
	// same list.
	Propagators []string `yaml:"propagators"`
	// OTLP exports spans to a collector; omitted: built-in store only.
	OTLP *OTLP `yaml:"otlp"`
	// Store bounds the built-in trace store.
	Store StoreConfig `yaml:"store"`
}

// OTLP is the span exporter.
type OTLP struct {
	// Endpoint is host:port of the collector.
	Endpoint string `yaml:"endpoint"`
	// Protocol is "grpc" (default, port 4317) or "http" (4318).
	Protocol string `yaml:"protocol"`
	// Timeout bounds one export (default 5s).
	Timeout time.Duration `yaml:"timeout"`
	// QueueSize bounds spans waiting for export (default 8192); when full,
	// spans are dropped and counted in hopwatch_spans_dropped_total rather
	// than slowing requests.
	QueueSize int `yaml:"queue_size"`
}

// StoreConfig bounds the built-in trace store.
type StoreConfig struct {
	// MaxTraces is how many recent traces are kept (default 10000).
	MaxTraces int `yaml:"max_traces"`
	// MaxBytes bounds the store's estimated memory, in bytes (default
	// 64 MiB): the oldest traces are evicted while it is over. The trace
	// slots count too, so max_traces is lowered to what half of it holds
	// (about 160,000 traces for 64 MiB).
	MaxBytes int64 `yaml:"max_bytes"`
}

// Defaults.
const (
	DefaultServiceName = "hopwatch"
	DefaultMaxTraces   = 10000
	// DefaultStoreMaxBytes holds the default 10,000 traces at up to about
	// 6 KiB each (a turn of a dozen hops with retries), and bounds the
	// store's memory whatever the traces look like.
	DefaultStoreMaxBytes = 64 << 20
	DefaultQueueSize     = 8192
	DefaultOTLPTimeout   = 5 * time.Second
)

func (c *Config) sampleRatio() float64 {
	if c.Tracing.SampleRatio == nil {
		return 1
	}
	return *c.Tracing.SampleRatio
}

func (c *Config) trustIncoming() bool {
	return c.Tracing.TrustIncoming == nil || *c.Tracing.TrustIncoming
}

func (c *Config) propagators() []string {
	if len(c.Tracing.Propagators) == 0 {
		return []string{"tracecontext", "baggage"}
	}
	return c.Tracing.Propagators
}

// Validate reports problems as field paths relative to "telemetry".
func (c *Config) Validate() map[string]string {
	errs := map[string]string{}
	if r := c.Tracing.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		errs["tracing.sample_ratio"] = "must be between 0 and 1"
	}
	seen := map[string]bool{}
	for i, p := range c.Tracing.Propagators {
		switch p {
		case "tracecontext", "baggage", "b3":
		default:
			errs[pathIndex("tracing.propagators", i)] = `unknown propagator "` + p + `" (known: tracecontext, baggage, b3)`
		}
		if seen[p] {
			errs[pathIndex("tracing.propagators", i)] = `duplicate propagator "` + p + `"`
		}
		seen[p] = true
	}
	if o := c.Tracing.OTLP; o != nil {
		if o.Endpoint == "" {
			errs["tracing.otlp.endpoint"] = "required (host:port of the collector)"
		}
		switch o.Protocol {
		case "", "grpc", "http":
		default:
			errs["tracing.otlp.protocol"] = `must be "grpc" or "http"`
		}
		if o.Timeout < 0 {
			errs["tracing.otlp.timeout"] = "must not be negative"
		}
		if o.QueueSize < 0 {
			errs["tracing.otlp.queue_size"] = "must not be negative"
		}
	}
	if c.Tracing.Store.MaxTraces < 0 {
		errs["tracing.store.max_traces"] = "must not be negative"
	}
	if c.Tracing.Store.MaxBytes < 0 {
		errs["tracing.store.max_bytes"] = "must not be negative"
	}
	return errs
}

func pathIndex(p string, i int) string {
	return p + "[" + strconv.Itoa(i) + "]"
}
