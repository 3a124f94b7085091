package routes

import "time"

// Spec is the routing part of the configuration, as written in the YAML file:
// listeners, the bounded caller list, routes and upstreams. It is plain data;
// Validate checks it and Compile turns it into a Table.
type Spec struct {
	Listeners []Listener `yaml:"listeners"`
	Callers   []string   `yaml:"callers"`
	Routes    []Route    `yaml:"routes"`
	Upstreams []Upstream `yaml:"upstreams"`
}

// Protocols a listener speaks.
const (
	ListenerGRPC = "grpc"
	ListenerHTTP = "http"
)

// Protocols an upstream speaks.
const (
	UpstreamGRPC = "grpc"
	UpstreamHTTP = "http"
	UpstreamH2C  = "h2c"
)

// Balancing policies.
const (
	BalanceP2CEWMA    = "p2c_ewma"
	BalanceRoundRobin = "round_robin"
)

// OtherCaller is the label value for callers that are not in Spec.Callers, so
// that label cardinality stays bounded whatever clients send.
const OtherCaller = "other"

// DefaultMaxMessageBytes is the gRPC message size limit when none is written:
// large enough for 8 MiB payloads with room to spare, small enough that one
// call cannot take the proxy's memory.
const DefaultMaxMessageBytes = 16 << 20

// DefaultDialTimeout bounds connection establishment to an endpoint.
const DefaultDialTimeout = 2 * time.Second

// Listener is one address the proxy accepts traffic on.
type Listener struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	// Protocol is "grpc" (grpc-go server transport) or "http" (HTTP/1.1 and h2c,
	// which also carries gRPC).
	Protocol string `yaml:"protocol"`
	// Caller names the calling service for every request on this listener.
	// Mutually exclusive with CallerHeader.
	Caller string `yaml:"caller"`
	// CallerHeader names a request header (gRPC metadata key) that carries the
	// caller; values not in Spec.Callers become "other".
	CallerHeader string `yaml:"caller_header"`
	// TrustedProxies lists CIDRs whose X-Forwarded-* headers are kept (http
	// only). From anyone else they are dropped and set afresh by the proxy.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// MaxMessageBytes limits one gRPC message in either direction
	// (0: DefaultMaxMessageBytes).
	MaxMessageBytes int `yaml:"max_message_bytes"`
}

// Route sends matching requests on one listener to one upstream.
type Route struct {
	Name     string `yaml:"name"`
	Listener string `yaml:"listener"`
	Match    Match  `yaml:"match"`
	Upstream string `yaml:"upstream"`
	// Timeout bounds the upstream call (0: none beyond the client's deadline).
	Timeout time.Duration `yaml:"timeout"`
	// Retry and Fallback are parsed so that a file using them gets a clear
	// "not supported yet" error instead of being silently ignored.
	Retry    *Retry    `yaml:"retry"`
	Fallback *Fallback `yaml:"fallback"`
}

// Match selects requests. Every field that is set must match; an empty Match
// matches everything on the route's listener.
type Match struct {
	// GRPCService matches "/<service>/" paths, e.g. bot.v1.NLU.
	GRPCService string `yaml:"grpc_service"`
	// GRPCMethod matches one full method, e.g. /bot.v1.NLU/Parse.
	GRPCMethod string `yaml:"grpc_method"`
	// Host matches the request host (:authority), without port, case-insensitive.
	Host string `yaml:"host"`
	// PathPrefix matches the URL path prefix (http listeners).
	PathPrefix string `yaml:"path_prefix"`
	// Method matches the HTTP method (http listeners).
	Method string `yaml:"method"`
	// Headers must all be present with exactly these values.
	Headers map[string]string `yaml:"headers"`
}

// Retry is the route retry policy (not supported yet).
type Retry struct {
	Attempts int      `yaml:"attempts"`
	On       []string `yaml:"on"`
	Budget   float64  `yaml:"budget"`
}

// Fallback is the route fallback policy (not supported yet).
type Fallback struct {
	After      time.Duration       `yaml:"after"`
	Use        []string            `yaml:"use"`
	Cache      *FallbackCache      `yaml:"cache"`
	Static     *FallbackStatic     `yaml:"static"`
	Upstream   string              `yaml:"upstream"`
	Background *FallbackBackground `yaml:"background"`
}

// FallbackCache configures the last-good-response cache.
type FallbackCache struct {
	TTL        time.Duration `yaml:"ttl"`
	MaxEntries int           `yaml:"max_entries"`
}

// FallbackStatic is a fixed answer.
type FallbackStatic struct {
	Status      int    `yaml:"status"`
	ContentType string `yaml:"content_type"`
	Body        string `yaml:"body"`
}

// FallbackBackground bounds the calls left running after a fallback answer.
type FallbackBackground struct {
	MaxInflight int           `yaml:"max_inflight"`
	Timeout     time.Duration `yaml:"timeout"`
}

// Upstream is a named set of endpoints of one service.
type Upstream struct {
	Name string `yaml:"name"`
	// Protocol is "grpc", "http" (HTTP/1.1) or "h2c" (cleartext HTTP/2).
	Protocol  string   `yaml:"protocol"`
	Endpoints []string `yaml:"endpoints"`
	// Balance is "p2c_ewma" (default) or "round_robin".
	Balance string `yaml:"balance"`
	// DialTimeout bounds connecting to one endpoint (0: DefaultDialTimeout).
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// MaxMessageBytes limits one gRPC message (0: DefaultMaxMessageBytes).
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// MaxConcurrent and Breaker are parsed so that a file using them gets a
	// clear "not supported yet" error.
	MaxConcurrent int      `yaml:"max_concurrent"`
	Breaker       *Breaker `yaml:"breaker"`
}

// Breaker is the per-upstream circuit breaker (not supported yet).
type Breaker struct {
	Window           time.Duration `yaml:"window"`
	MinRequests      int           `yaml:"min_requests"`
	FailureRatio     float64       `yaml:"failure_ratio"`
	SlowCall         time.Duration `yaml:"slow_call"`
	SlowRatio        float64       `yaml:"slow_ratio"`
	OpenFor          time.Duration `yaml:"open_for"`
	HalfOpenRequests int           `yaml:"half_open_requests"`
}
