package routes

import (
	"time"

	"github.com/hopwatch/hopwatch/fallback"
)

// Spec is the routing part of the configuration, as written in the YAML file:
// listeners, the bounded caller list, routes and upstreams. It is plain data;
// Validate checks it and Compile turns it into a Table.
type Spec struct {
	Listeners []Listener `yaml:"listeners"`
	Callers   []string   `yaml:"callers"`
	Routes    []Route    `yaml:"routes"`
	Upstreams []Upstream `yaml:"upstreams"`
	// Replay bounds the memory kept for retries and fallbacks.
	Replay Replay `yaml:"replay"`
}

// Replay bounds what routes with a retry or fallback policy keep in memory
// to replay a request (another attempt, the fallback upstream) or to key
// the fallback cache. A request that does not fit is forwarded as a stream,
// without retry or fallback, and counted in
// hopwatch_replay_skipped_total: resilience degrades, the process does not.
type Replay struct {
	// MaxBytes is the process-wide budget for all requests together
	// (0: DefaultReplayMaxBytes).
	MaxBytes int64 `yaml:"max_bytes"`
	// MaxRequestBytes is the most one request may keep
	// (0: DefaultReplayMaxRequestBytes). An HTTP body is only kept when
	// its length is declared (Content-Length) and at most this; a gRPC
	// call's messages are kept until they add up to more.
	MaxRequestBytes int64 `yaml:"max_request_bytes"`
}

// Replay defaults. 128 MiB holds 128 requests at the per-request limit,
// or tens of thousands of typical bot turns of a few KiB, and is small
// next to what the Go runtime and the connection buffers take anyway.
const (
	DefaultReplayMaxBytes        = 128 << 20
	DefaultReplayMaxRequestBytes = 1 << 20
)

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
	// UpstreamH2 is HTTP/2 over TLS, negotiated with ALPN (RFC 9113
	// §3.2); it always uses TLS, with Upstream.TLS or, when that is not
	// written, the system roots.
	UpstreamH2 = "h2"
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
	// (0: DefaultMaxMessageBytes). On an http listener it applies to the
	// messages of gRPC requests that arrive there.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// Limits bounds what one client may hold of the proxy: header sizes,
	// streams, connections and time (zero fields: safe defaults).
	Limits ListenerLimits `yaml:"limits"`
	// TLS serves the listener over TLS (nil: cleartext; an http listener
	// then speaks HTTP/1.1 and h2c, with TLS HTTP/1.1 and h2 by ALPN).
	TLS *ListenerTLS `yaml:"tls"`
	// CallerFrom reads the caller from the connection instead:
	// "client_cert" takes the verified client certificate's identity
	// (see CallerFromClientCert). Empty: Caller or CallerHeader.
	CallerFrom string `yaml:"caller_from"`
	// Relay selects how a grpc listener carries calls: "" (the default)
	// and ListenerRelayFrames forward HTTP/2 frames as they arrive
	// (headers decoded to route and trace, DATA passed on, flow control end
	// to end, so a call holds at most its flow-control windows);
	// ListenerRelayMessages terminates each call in grpc-go's server and
	// opens a grpc-go client stream upstream. grpc listeners only.
	Relay string `yaml:"relay"`
}

// ListenerRelayFrames is the frame relay (Listener.Relay), also what the
// empty value means. It serves every route, resilient ones (retry,
// fallback) through its message adapter, in cleartext or TLS on either
// side (HTTP/2 by ALPN).
const ListenerRelayFrames = "frames"

// ListenerRelayMessages is grpc-go's path (Listener.Relay): each call is
// terminated in grpc-go's server and forwarded whole messages at a time on
// a grpc-go client stream; the default until 2026-12-02.
const ListenerRelayMessages = "messages"

// CallerFromClientCert names the caller by the client certificate that
// tls.client_ca_file verified: the last path segment of its SPIFFE ID (the
// first URI SAN with the spiffe scheme, e.g. spiffe://bot.local/ns/bot/sa/nlu
// gives nlu, the Kubernetes service account), else its subject common
// name. Like any caller value it is bounded by Spec.Callers.
const CallerFromClientCert = "client_cert"

// TLS protocol versions that may be written; older ones are refused
// (RFC 8996 deprecates TLS 1.0 and 1.1).
const (
	TLSVersion12         = "1.2"
	TLSVersion13         = "1.3"
	DefaultTLSMinVersion = TLSVersion12
)

// ListenerTLS is a listener's server certificate and, for mutual TLS, the
// CAs its clients' certificates must chain to. The files are PEM and are
// read again when they change (checked at most every second, on a new
// handshake): a renewed certificate is served without a restart, and the
// connections already open are untouched. A file that fails to load then
// leaves the previous certificate in service (logged, and counted in
// hopwatch_listener_cert_reloads_total{result="error"}).
type ListenerTLS struct {
	// CertFile is the certificate chain, leaf first. Required.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the leaf's private key. Required.
	KeyFile string `yaml:"key_file"`
	// ClientCAFile, when written, makes the listener require a client
	// certificate that chains to one of these CAs (mTLS); a client
	// without one, or with one from another CA, fails the handshake.
	ClientCAFile string `yaml:"client_ca_file"`
	// MinVersion is "1.2" or "1.3" (empty: DefaultTLSMinVersion).
	MinVersion string `yaml:"min_version"`
}

// UpstreamTLS is how the proxy connects to an upstream over TLS. Every
// zero field is the safe default: the system roots, the endpoint's host
// as the name to verify, no client certificate.
type UpstreamTLS struct {
	// CAFile holds the CAs the upstream's certificate must chain to
	// (empty: the system roots).
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the proxy's client certificate, for
	// upstreams that require mTLS; both or neither. Reloaded like a
	// listener's when they change.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name the upstream's certificate must carry, and
	// the SNI sent (empty: the endpoint's host).
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any certificate the upstream shows: the
	// traffic is encrypted but the upstream is not authenticated. For
	// tests and bootstrapping only; not with CAFile or ServerName.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// ListenerLimits are a listener's protection against clients that hold
// memory, goroutines or sockets without doing useful work (header-list
// bombs, stream floods, rapid reset, slowloris). Every zero field takes its
// documented default; none of them can be switched off. Worst-case memory
// held by streams is about MaxConnections x MaxConcurrentStreams x
// max_message_bytes, so lower one of them when a host has little memory.
type ListenerLimits struct {
	// MaxHeaderBytes bounds one request's header block: HTTP/1 header
	// bytes, and the HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113
	// §6.5.2: decoded size, 32 bytes of overhead per field), which also
	// caps HPACK amplification (RFC 7541 §7.3) (0:
	// DefaultListenerMaxHeaderBytes, at most MaxHeaderBytesLimit).
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxConcurrentStreams is the HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS
	// of each connection (RFC 9113 §5.1.2), and the most calls one
	// connection may have in progress in the proxy (0:
	// DefaultMaxConcurrentStreams, at most MaxConcurrentStreamsLimit).
	MaxConcurrentStreams int `yaml:"max_concurrent_streams"`
	// IdleTimeout closes a connection that has had no call in progress for
	// this long (0: DefaultIdleTimeout).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxConnections caps the connections open at once on the listener;
	// beyond it a new connection is accepted and closed at once (0:
	// DefaultMaxConnections, at most MaxConnectionsLimit).
	MaxConnections int `yaml:"max_connections"`
	// ReadHeaderTimeout bounds how long a client may take to send a
	// request's headers (http) or to complete the connection handshake,
	// the HTTP/2 preface and SETTINGS (grpc): the slowloris bound (0:
	// DefaultReadHeaderTimeout).
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
}

// Listener and upstream limit defaults: what a zero (unwritten) field of
// ListenerLimits or UpstreamLimits means, and the most that may be written.
const (
	// DefaultListenerMaxHeaderBytes leaves room for large trace context,
	// baggage and a few binary metadata entries while keeping one stream's
	// decoded headers small; Envoy's default is 60 KiB.
	DefaultListenerMaxHeaderBytes = 64 << 10
	// DefaultMaxConcurrentStreams is the floor RFC 9113 §6.5.2 recommends
	// (no less than 100) and grpc-go's and Go's order of magnitude.
	DefaultMaxConcurrentStreams = 100
	// DefaultIdleTimeout closes connections without calls after two
	// minutes, as net/http's servers commonly do.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultMaxConnections caps a listener's open connections.
	DefaultMaxConnections = 1024
	// DefaultReadHeaderTimeout is the slowloris bound.
	DefaultReadHeaderTimeout = 10 * time.Second

	// DefaultUpstreamMaxHeaderBytes bounds the response headers (and
	// trailers) hopwatch accepts from an upstream: upstreams are trusted
	// more than clients, so the bound is net/http's server default.
	DefaultUpstreamMaxHeaderBytes = 1 << 20
	// DefaultUpstreamIdleTimeout closes pooled upstream connections that
	// carried nothing for this long.
	DefaultUpstreamIdleTimeout = 90 * time.Second

	// Largest values that may be written: beyond them a "limit" no
	// longer limits anything.
	MaxHeaderBytesLimit       = 16 << 20
	MaxConcurrentStreamsLimit = 10000
	MaxConnectionsLimit       = 1 << 20
)

// DefaultFirstResponseTimeout is how long a route without a written timeout
// waits for the upstream's response to start. It bounds no stream once
// begun. 30s is above any healthy time to first byte of the bot's hops,
// slow model inference included, and below the point where a client would
// rather get an error than keep waiting.
const DefaultFirstResponseTimeout = 30 * time.Second

// Route sends matching requests on one listener to one upstream.
type Route struct {
	Name     string `yaml:"name"`
	Listener string `yaml:"listener"`
	Match    Match  `yaml:"match"`
	Upstream string `yaml:"upstream"`
	// Timeout bounds the whole upstream call, streams included, when it is
	// written (> 0). Unwritten (0), DefaultFirstResponseTimeout bounds only
	// the wait for the response to start (HTTP: its status and headers;
	// gRPC: its headers, first message or status), counted from the
	// client's last request bytes or message, so that a black-holed
	// upstream cannot hold a client forever while a healthy long stream
	// (SSE tokens, gRPC server streams, WebSockets) runs as long as the
	// client keeps it. Negative (e.g. -1s): no proxy timeout at all, only
	// the client's deadline (long polls that answer late).
	Timeout time.Duration `yaml:"timeout"`
	// Retry re-sends a failed call under a budget (nil: no retries).
	Retry *Retry `yaml:"retry"`
	// Fallback answers the client from another source when the upstream is
	// late, failing, open-circuited or overloaded (nil: no fallback).
	Fallback *Fallback `yaml:"fallback"`
	// GenAI reads token usage, model, finish reason and time to first
	// token from the route's request and response bodies, as they pass
	// (nil: the bodies are not looked at). HTTP listeners only.
	GenAI *GenAI `yaml:"genai"`
}

// GenAI marks a route as a call to a generative AI API.
type GenAI struct {
	// API is the wire format: openai (chat completions, completions and
	// embeddings, as OpenAI, vLLM, Ollama and llama.cpp serve them).
	API string `yaml:"api"`
}

// GenAI APIs.
const GenAIOpenAI = "openai"

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

// Resilience defaults: what a zero (unwritten) field means. The numbers
// belong to the fallback package, whose primitives apply them (zero settings
// mean the default there); they are named here too so that the
// documentation and the validator speak of the same constants.
const (
	// DefaultRetryBudget is Retry.Budget when 0: one retry per five first
	// attempts, Linkerd's default retry ratio.
	DefaultRetryBudget = fallback.DefaultBudgetRatio
	// MaxRetryAttempts bounds Retry.Attempts: beyond a few attempts a
	// retry only adds load to a dependency that is already failing.
	MaxRetryAttempts = 10

	DefaultCacheTTL        = fallback.DefaultCacheTTL
	DefaultCacheMaxEntries = fallback.DefaultCacheMaxEntries
	DefaultCacheMaxBytes   = fallback.DefaultCacheMaxBytes

	DefaultBackgroundMaxInflight = fallback.DefaultBackgroundMaxInflight
	DefaultBackgroundTimeout     = fallback.DefaultBackgroundTimeout

	DefaultBreakerWindow           = fallback.DefaultBreakerWindow
	DefaultBreakerMinRequests      = fallback.DefaultBreakerMinRequests
	DefaultBreakerFailureRatio     = fallback.DefaultBreakerFailureRatio
	DefaultBreakerSlowRatio        = fallback.DefaultBreakerSlowRatio
	DefaultBreakerOpenFor          = fallback.DefaultBreakerOpenFor
	DefaultBreakerHalfOpenRequests = fallback.DefaultBreakerHalfOpenRequests

	DefaultOutlierConsecutiveFailures = fallback.DefaultEjectorConsecutiveFailures
	DefaultOutlierBaseEjection        = fallback.DefaultEjectorBaseEjection
	DefaultOutlierMaxEjection         = fallback.DefaultEjectorMaxEjection
	DefaultOutlierMaxEjectedPercent   = fallback.DefaultEjectorMaxEjectedPercent
)

// Fallback sources, in the words of Fallback.Use.
const (
	FallbackSourceCache    = "cache"
	FallbackSourceStatic   = "static"
	FallbackSourceUpstream = "upstream"
)

// Retry is the route retry policy. A retry is only ever sent when it is
// safe (nothing reached the upstream, or an idempotent HTTP method, or no
// gRPC response headers yet) and when the route's retry budget allows it.
type Retry struct {
	// Attempts counts every try, the first included: 1..MaxRetryAttempts,
	// where 1 means no retry. It must be written.
	Attempts int `yaml:"attempts"`
	// On lists what is worth retrying, at least one of: gRPC codes in
	// snake case (unavailable, resource_exhausted, deadline_exceeded,
	// internal, ...), HTTP statuses (502, 503, 504; 400..599) or the class
	// 5xx, and connect-failure (no connection could be made, so nothing
	// was sent). See ParseRetryOn.
	On []string `yaml:"on"`
	// Budget caps retries at this fraction of first attempts over a
	// sliding 10s window, plus a small floor, so that during an outage
	// retries cannot multiply the load (0: DefaultRetryBudget; at most 1).
	Budget float64 `yaml:"budget"`
}

// Fallback is the route fallback policy: when the upstream has not
// answered After the request started, or the breaker is open, or the
// bulkhead is full, or the call failed, the client is answered from the
// sources in Use, in order. A late call keeps running in a bounded
// background queue and its success refreshes the cache.
type Fallback struct {
	// After is the latency budget: late by this much, the client gets the
	// fallback answer. Required, > 0, and shorter than the route timeout
	// when one is set (otherwise the timeout would always end the call
	// first and After would never apply).
	After time.Duration `yaml:"after"`
	// Use lists the sources to try in order, each at most once: cache,
	// static, upstream. The first that has an answer gives it.
	Use []string `yaml:"use"`
	// Cache configures the cache source (nil: defaults). Only written
	// when Use lists cache.
	Cache *FallbackCache `yaml:"cache"`
	// Static is the fixed answer of the static source; required when Use
	// lists static, and only then.
	Static *FallbackStatic `yaml:"static"`
	// Upstream names the upstream of the upstream source; required when
	// Use lists upstream, and only then. It must differ from the route's
	// own upstream (asking the late dependency again would not help).
	Upstream string `yaml:"upstream"`
	// Background bounds the late calls left running after a fallback
	// answer (nil: defaults).
	Background *FallbackBackground `yaml:"background"`
}

// FallbackCache configures the last-good-response cache. Entries are keyed
// by route, method, path with query, a hash of the body and the values of
// Headers; only successful responses are stored.
type FallbackCache struct {
	// TTL is how long an entry may answer (0: DefaultCacheTTL).
	TTL time.Duration `yaml:"ttl"`
	// MaxEntries bounds the entry count; the least recently used entry
	// goes first (0: DefaultCacheMaxEntries).
	MaxEntries int `yaml:"max_entries"`
	// MaxBytes bounds the size of the stored responses (0:
	// DefaultCacheMaxBytes).
	MaxBytes int64 `yaml:"max_bytes"`
	// Headers are request headers (gRPC metadata keys) whose values join
	// the key, for answers that differ by tenant or language. Names are
	// case-insensitive and must be distinct.
	Headers []string `yaml:"headers"`
}

// FallbackStatic is a fixed answer. HTTP requests get Status, ContentType
// and Body; gRPC calls (always, on grpc listeners; on http listeners, those
// that arrive there) get GRPCCode and GRPCMessage, since an HTTP status has
// no meaning to a gRPC client.
type FallbackStatic struct {
	// Status is the HTTP status, 200..599 (0: 200). 1xx are interim
	// responses (RFC 9110 §15.2) and cannot be an answer.
	Status int `yaml:"status"`
	// ContentType is the media type of Body (empty: no Content-Type).
	ContentType string `yaml:"content_type"`
	// Body is sent as written.
	Body string `yaml:"body"`
	// GRPCCode is the status code name in snake case, e.g. unavailable
	// (empty: ok). With ok, the answer is one empty message, which every
	// protobuf message type decodes as its default value; with any other
	// code, the call ends with that status and no message.
	GRPCCode string `yaml:"grpc_code"`
	// GRPCMessage is the status message; only with a code other than ok.
	GRPCMessage string `yaml:"grpc_message"`
}

// FallbackBackground bounds the calls left running after a fallback answer.
type FallbackBackground struct {
	// MaxInflight caps them; when full, a late call is canceled instead
	// of left running (0: DefaultBackgroundMaxInflight).
	MaxInflight int `yaml:"max_inflight"`
	// Timeout bounds each of them (0: DefaultBackgroundTimeout).
	Timeout time.Duration `yaml:"timeout"`
}

// Upstream is a named set of endpoints of one service.
type Upstream struct {
	Name string `yaml:"name"`
	// Protocol is "grpc", "http" (HTTP/1.1), "h2c" (cleartext HTTP/2) or
	// "h2" (HTTP/2 over TLS). grpc and http use TLS when TLS is written.
	Protocol  string   `yaml:"protocol"`
	Endpoints []string `yaml:"endpoints"`
	// Balance is "p2c_ewma" (default) or "round_robin".
	Balance string `yaml:"balance"`
	// DialTimeout bounds connecting to one endpoint (0: DefaultDialTimeout).
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// MaxMessageBytes limits one gRPC message (0: DefaultMaxMessageBytes).
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// MaxConcurrent is the bulkhead: at most this many calls in flight to
	// the upstream, across all routes that use it (0: unlimited). A call
	// beyond it is never queued, since a queue in front of a slow
	// dependency only turns its latency into ours: it gets the route's
	// fallback, or 503 / RESOURCE_EXHAUSTED.
	MaxConcurrent int `yaml:"max_concurrent"`
	// Breaker is the upstream's circuit breaker (nil: none).
	Breaker *Breaker `yaml:"breaker"`
	// Outlier tunes passive outlier ejection of endpoints that fail
	// repeatedly (nil: ejection runs with the defaults).
	Outlier *Outlier `yaml:"outlier"`
	// Limits bounds what an upstream's answers may hold of the proxy
	// (zero fields: safe defaults).
	Limits UpstreamLimits `yaml:"limits"`
	// TLS connects to the endpoints over TLS (nil: cleartext, except for
	// h2, which is always TLS).
	TLS *UpstreamTLS `yaml:"tls"`
	// Discovery is how endpoints are found: empty, each endpoint is one
	// address, dialed as written (a host name is resolved by the dialer
	// on each connection); "dns", every endpoint whose host is a name is
	// re-resolved every DNSRefresh and each A/AAAA address it has becomes
	// an endpoint of its own (Kubernetes headless services). A single
	// endpoint may ask for this alone by its "dns:///" prefix.
	Discovery string `yaml:"discovery"`
	// DNSRefresh is how often DNS endpoints are re-resolved
	// (0: DefaultDNSRefresh); sooner when the answer's TTL says so, never
	// sooner than MinDNSRefresh unless written lower. Only with DNS
	// endpoints.
	DNSRefresh time.Duration `yaml:"dns_refresh"`
	// EndpointsFromEDS: the endpoints are an xDS load assignment's, which
	// may list none (a service scaled to zero, every endpoint unhealthy
	// or draining). The upstream then fails its calls at once (503 /
	// UNAVAILABLE "no endpoint available", or the route's fallback), as
	// Envoy does, rather than the update being refused and the previous
	// endpoints kept: their addresses may by then be other pods'. Set by
	// the xDS translation only, never from a file.
	EndpointsFromEDS bool `yaml:"-"`
}

// Discovery modes and the per-endpoint DNS prefix.
const (
	DiscoveryDNS = "dns"
	// DNSEndpointPrefix marks one endpoint for DNS discovery, as in
	// grpc-go's target syntax: dns:///nlu.bot.svc.cluster.local:7101.
	DNSEndpointPrefix = "dns:///"
	// DefaultDNSRefresh re-resolves DNS endpoints twice a minute: pods
	// that come and go are followed within that, and the resolver is not
	// loaded (Kubernetes' CoreDNS answers with a TTL of 30 s too).
	DefaultDNSRefresh = 30 * time.Second
	// MinDNSRefresh is the floor a TTL may bring the refresh down to: a
	// TTL of 0 must not turn into a resolution loop.
	MinDNSRefresh = time.Second
)

// UsesTLS reports whether the proxy connects to u over TLS.
func (u *Upstream) UsesTLS() bool { return u.TLS != nil || u.Protocol == UpstreamH2 }

// UpstreamLimits bound the proxy's client side of one upstream. Every zero
// field takes its documented default. The number of calls in flight is
// bounded by Upstream.MaxConcurrent (the bulkhead); the streams per
// connection are the upstream server's to set (its
// SETTINGS_MAX_CONCURRENT_STREAMS), and both grpc-go and net/http honour
// them.
type UpstreamLimits struct {
	// MaxHeaderBytes bounds the response headers and trailers accepted
	// from the upstream (HTTP/1 header bytes, HTTP/2 header list size,
	// advertised to the upstream as SETTINGS_MAX_HEADER_LIST_SIZE)
	// (0: DefaultUpstreamMaxHeaderBytes, at most MaxHeaderBytesLimit).
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// IdleTimeout closes pooled connections to the upstream that carried
	// no call for this long (0: DefaultUpstreamIdleTimeout).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// Breaker is the per-upstream circuit breaker. It trips when, over the
// rolling Window and with at least MinRequests calls, the share of failures
// reaches FailureRatio or the share of slow calls reaches SlowRatio; it then
// rejects calls for OpenFor, lets HalfOpenRequests through, and closes when
// they all succeed in time. Client cancellations and client errors (HTTP
// 4xx but 429, gRPC INVALID_ARGUMENT, NOT_FOUND, ...) count as neither.
// Every zero field takes its documented default.
type Breaker struct {
	// Window is the rolling window the ratios are measured over
	// (0: DefaultBreakerWindow). It moves in tenths.
	Window time.Duration `yaml:"window"`
	// MinRequests is the fewest calls in the window for the breaker to
	// judge: a handful of calls says nothing about a ratio
	// (0: DefaultBreakerMinRequests).
	MinRequests int `yaml:"min_requests"`
	// FailureRatio trips the breaker, in (0, 1] (0: DefaultBreakerFailureRatio).
	FailureRatio float64 `yaml:"failure_ratio"`
	// SlowCall is the time to the first response from which a call counts
	// as slow (0: slowness is not judged).
	SlowCall time.Duration `yaml:"slow_call"`
	// SlowRatio trips the breaker on slow calls, in (0, 1]
	// (0: DefaultBreakerSlowRatio). Only written with SlowCall.
	SlowRatio float64 `yaml:"slow_ratio"`
	// OpenFor is how long the breaker rejects before it tries again
	// (0: DefaultBreakerOpenFor).
	OpenFor time.Duration `yaml:"open_for"`
	// HalfOpenRequests is how many trial calls pass after OpenFor; that
	// many consecutive successes close the breaker, one failure or slow
	// call opens it again (0: DefaultBreakerHalfOpenRequests).
	HalfOpenRequests int `yaml:"half_open_requests"`
}

// Settings are the breaker's settings as the fallback package takes them
// (zero fields: its defaults).
func (b *Breaker) Settings() fallback.BreakerSettings {
	if b == nil {
		return fallback.BreakerSettings{}
	}
	return fallback.BreakerSettings{Window: b.Window, MinRequests: b.MinRequests, FailureRatio: b.FailureRatio,
		SlowCall: b.SlowCall, SlowRatio: b.SlowRatio, OpenFor: b.OpenFor, HalfOpenRequests: b.HalfOpenRequests}
}

// Outlier is passive outlier ejection: an endpoint that fails
// ConsecutiveFailures times in a row is left out of load balancing for
// BaseEjection, twice that on its next ejection, and so on up to
// MaxEjection; a success after an ejection resets the growth. At most
// MaxEjectedPercent of the endpoints are out at once, and never all of
// them. Every zero field takes its documented default.
type Outlier struct {
	// ConsecutiveFailures ejects an endpoint (0: DefaultOutlierConsecutiveFailures).
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// BaseEjection is the first ejection period (0: DefaultOutlierBaseEjection).
	BaseEjection time.Duration `yaml:"base_ejection"`
	// MaxEjection caps the doubling (0: DefaultOutlierMaxEjection).
	MaxEjection time.Duration `yaml:"max_ejection"`
	// MaxEjectedPercent of the endpoints may be out at once, 1..100
	// (0: DefaultOutlierMaxEjectedPercent). One endpoint of two or more
	// may always be ejected, and one always stays.
	MaxEjectedPercent int `yaml:"max_ejected_percent"`
}

// Settings are the ejector's settings (nil: all defaults).
func (o *Outlier) Settings() fallback.EjectorSettings {
	if o == nil {
		return fallback.EjectorSettings{}
	}
	return fallback.EjectorSettings{ConsecutiveFailures: o.ConsecutiveFailures, BaseEjection: o.BaseEjection,
		MaxEjection: o.MaxEjection, MaxEjectedPercent: o.MaxEjectedPercent}
}

// Settings are the cache's settings (nil: all defaults).
func (c *FallbackCache) Settings() fallback.CacheSettings {
	if c == nil {
		return fallback.CacheSettings{}
	}
	return fallback.CacheSettings{TTL: c.TTL, MaxEntries: c.MaxEntries, MaxBytes: c.MaxBytes}
}

// Settings are the background queue's settings (nil: all defaults).
func (b *FallbackBackground) Settings() fallback.BackgroundSettings {
	if b == nil {
		return fallback.BackgroundSettings{}
	}
	return fallback.BackgroundSettings{MaxInflight: b.MaxInflight, Timeout: b.Timeout}
}
