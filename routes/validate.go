package routes

import (
	"cmp"
	"fmt"
	"maps"
	"mime"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
)

// FieldError is one problem in a Spec, located by its field path as written
// in the file (routes[2].upstream, upstreams[1].endpoints[0]) so that a loader
// can map it back to a line.
type FieldError struct {
	Path string
	Msg  string
}

// Error returns "path: msg".
func (e FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Validate checks s and returns every problem it finds, not just the first
// (someone editing a config wants the whole list in one go), in a stable
// order: callers, listeners, upstreams, routes, each in file order.
// It is pure (no I/O, no clock), so it runs the same at startup, on reload
// and in `proxy -check`. A nil result means Compile will accept s.
func Validate(s *Spec) []FieldError {
	v := &validator{s: s}
	v.callers()
	v.listeners()
	v.upstreams()
	v.routes()
	v.replay()
	return v.errs
}

func (v *validator) replay() {
	r := v.s.Replay
	if r.MaxBytes < 0 {
		v.errorf("replay.max_bytes", "must not be negative (0 means the default, %d)", DefaultReplayMaxBytes)
	}
	if r.MaxRequestBytes < 0 {
		v.errorf("replay.max_request_bytes", "must not be negative (0 means the default, %d)", DefaultReplayMaxRequestBytes)
	}
	total := r.MaxBytes
	if total == 0 {
		total = DefaultReplayMaxBytes
	}
	if r.MaxRequestBytes > 0 && total > 0 && r.MaxRequestBytes > total {
		v.errorf("replay.max_request_bytes", "%d is more than replay.max_bytes (%d): no request could ever be kept", r.MaxRequestBytes, total)
	}
}

type validator struct {
	s    *Spec
	errs []FieldError
}

func (v *validator) errorf(path, format string, args ...any) {
	v.errs = append(v.errs, FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) callers() {
	first := make(map[string]int, len(v.s.Callers))
	for i, c := range v.s.Callers {
		p := fmt.Sprintf("callers[%d]", i)
		switch {
		case c == "":
			v.errorf(p, "caller name is empty")
			continue
		case c == OtherCaller:
			v.errorf(p, "%q is reserved for callers that are not in this list", OtherCaller)
		case !isLabelValue(c):
			// Callers become Prometheus label values and dashboard keys; a
			// narrow alphabet keeps them safe to put anywhere unescaped.
			v.errorf(p, "invalid caller %q: use lowercase letters, digits, '_', '.' and '-'", c)
		}
		if j, dup := first[c]; dup {
			v.errorf(p, "duplicate caller %q (first at callers[%d])", c, j)
			continue
		}
		first[c] = i
	}
}

func (v *validator) listeners() {
	names := make(map[string]int, len(v.s.Listeners))
	callers := make(map[string]bool, len(v.s.Callers))
	for _, c := range v.s.Callers {
		callers[c] = true
	}
	socks := newSockets()
	for i := range v.s.Listeners {
		l := &v.s.Listeners[i]
		p := fmt.Sprintf("listeners[%d]", i)

		if l.Name == "" {
			v.errorf(p+".name", "name is required")
		} else if j, dup := names[l.Name]; dup {
			v.errorf(p+".name", "duplicate listener name %q (first at listeners[%d])", l.Name, j)
		} else {
			names[l.Name] = i
		}

		if l.Address == "" {
			v.errorf(p+".address", "address is required, e.g. 127.0.0.1:7000")
		} else if err := CheckListenAddress(l.Address); err != nil {
			v.errorf(p+".address", "%v", err)
		} else if j := socks.claim(l.Address, i); j >= 0 {
			other := &v.s.Listeners[j]
			v.errorf(p+".address", "address %s clashes with listener %q (listeners[%d], %s)", l.Address, other.Name, j, other.Address)
		}

		switch l.Protocol {
		case ListenerGRPC, ListenerHTTP:
		case "":
			v.errorf(p+".protocol", "protocol is required (grpc or http)")
		default:
			v.errorf(p+".protocol", "unknown protocol %q (want grpc or http)", l.Protocol)
		}

		if l.Caller != "" && l.CallerHeader != "" {
			v.errorf(p+".caller", "caller and caller_header are mutually exclusive: name the caller for the whole listener, or read it from a header")
		}
		if l.Caller != "" && len(callers) > 0 && !callers[l.Caller] {
			v.errorf(p+".caller", "caller %q is not in callers (%s)", l.Caller, strings.Join(v.s.Callers, ", "))
		}
		if l.CallerHeader != "" && !isToken(l.CallerHeader) {
			v.errorf(p+".caller_header", "invalid header name %q", l.CallerHeader)
		}
		v.callerFrom(p, l)
		if l.TLS != nil {
			v.listenerTLS(p+".tls", l.TLS)
		}

		if len(l.TrustedProxies) > 0 && l.Protocol == ListenerGRPC {
			// X-Forwarded-* handling is an HTTP reverse-proxy concern; the
			// grpc listener passes metadata through untouched.
			v.errorf(p+".trusted_proxies", "trusted_proxies applies to http listeners only")
		}
		for j, tp := range l.TrustedProxies {
			if !isPrefixOrAddr(tp) {
				v.errorf(fmt.Sprintf("%s.trusted_proxies[%d]", p, j), "invalid CIDR or IP %q, e.g. 10.0.0.0/8 or 192.168.1.10", tp)
			}
		}

		v.relay(p, l)

		if l.MaxMessageBytes < 0 {
			v.errorf(p+".max_message_bytes", "must not be negative (0 means the default, %d)", DefaultMaxMessageBytes)
		}
		v.listenerLimits(p+".limits", &l.Limits)
	}
}

// relay checks a listener's relay mode (Listener.Relay).
func (v *validator) relay(p string, l *Listener) {
	switch l.Relay {
	case "":
		return
	case ListenerRelayFrames, ListenerRelayMessages:
	default:
		v.errorf(p+".relay", "unknown relay %q (want %s or %s, or leave it out for the frame relay)", l.Relay, ListenerRelayFrames, ListenerRelayMessages)
		return
	}
	if l.Protocol != ListenerGRPC {
		v.errorf(p+".relay", "relay applies to grpc listeners only (listener %q is %s)", l.Name, l.Protocol)
	}
}

// callerFrom checks where a listener reads its caller from.
func (v *validator) callerFrom(p string, l *Listener) {
	switch l.CallerFrom {
	case "":
		return
	case CallerFromClientCert:
	default:
		v.errorf(p+".caller_from", "unknown caller_from %q (want %s)", l.CallerFrom, CallerFromClientCert)
		return
	}
	if l.Caller != "" || l.CallerHeader != "" {
		v.errorf(p+".caller_from", "caller_from, caller and caller_header are mutually exclusive: name the caller one way")
	}
	if l.TLS == nil || l.TLS.ClientCAFile == "" {
		// Without mTLS there is no verified certificate to read: a
		// self-declared identity is no better than a header.
		v.errorf(p+".caller_from", "caller_from: client_cert needs tls.client_ca_file (mutual TLS), so that the certificate it reads is verified")
	}
}

// listenerTLS checks a listener's TLS block as written; the files
// themselves are read by the loader (config), since this package does
// no I/O.
func (v *validator) listenerTLS(p string, t *ListenerTLS) {
	if t.CertFile == "" {
		v.errorf(p+".cert_file", "cert_file is required with tls (a PEM certificate chain, leaf first)")
	}
	if t.KeyFile == "" {
		v.errorf(p+".key_file", "key_file is required with tls (the PEM private key of cert_file)")
	}
	switch t.MinVersion {
	case "", TLSVersion12, TLSVersion13:
	default:
		v.errorf(p+".min_version", "unknown min_version %q (want %q or %q; older versions are deprecated by RFC 8996)", t.MinVersion, TLSVersion12, TLSVersion13)
	}
}

// upstreamTLS checks an upstream's TLS block as written.
func (v *validator) upstreamTLS(p string, u *Upstream) {
	t := u.TLS
	tp := p + ".tls"
	if u.Protocol == UpstreamH2C {
		v.errorf(p+".protocol", "h2c is cleartext HTTP/2; for HTTP/2 over TLS write protocol: h2")
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		v.errorf(tp+".cert_file", "cert_file and key_file go together (the client certificate and its key)")
	}
	if t.InsecureSkipVerify && t.CAFile != "" {
		v.errorf(tp+".insecure_skip_verify", "insecure_skip_verify ignores ca_file: remove one of them")
	}
	if t.InsecureSkipVerify && t.ServerName != "" {
		v.errorf(tp+".insecure_skip_verify", "insecure_skip_verify ignores server_name: remove one of them")
	}
	if t.ServerName != "" && !isServerName(t.ServerName) {
		v.errorf(tp+".server_name", "invalid server_name %q: write a DNS name or IP address, without scheme or port", t.ServerName)
	}
}

// isServerName accepts a DNS name (letters, digits, '-', '_', '.') or an IP
// literal: what a certificate's SANs can name.
func isServerName(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	if len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func (v *validator) listenerLimits(p string, l *ListenerLimits) {
	v.intLimit(p+".max_header_bytes", l.MaxHeaderBytes, DefaultListenerMaxHeaderBytes, MaxHeaderBytesLimit)
	v.intLimit(p+".max_concurrent_streams", l.MaxConcurrentStreams, DefaultMaxConcurrentStreams, MaxConcurrentStreamsLimit)
	v.intLimit(p+".max_connections", l.MaxConnections, DefaultMaxConnections, MaxConnectionsLimit)
	v.durationLimit(p+".idle_timeout", l.IdleTimeout, DefaultIdleTimeout)
	v.durationLimit(p+".read_header_timeout", l.ReadHeaderTimeout, DefaultReadHeaderTimeout)
}

func (v *validator) upstreamLimits(p string, l *UpstreamLimits) {
	v.intLimit(p+".max_header_bytes", l.MaxHeaderBytes, DefaultUpstreamMaxHeaderBytes, MaxHeaderBytesLimit)
	v.durationLimit(p+".idle_timeout", l.IdleTimeout, DefaultUpstreamIdleTimeout)
}

// intLimit checks a count or size limit: 0 is the default, and a limit
// must be neither negative nor so large that it no longer limits.
func (v *validator) intLimit(p string, n, def, most int) {
	switch {
	case n < 0:
		v.errorf(p, "must not be negative (0 means the default, %d)", def)
	case n > most:
		v.errorf(p, "%d is above the most allowed, %d (0 means the default, %d)", n, most, def)
	}
}

func (v *validator) durationLimit(p string, d, def time.Duration) {
	if d < 0 {
		v.errorf(p, "must not be negative (0 means the default, %s)", def)
	}
}

// sockets indexes the listen addresses seen so far, so that clashes are
// found in one pass and reported once, on the later listener, naming the
// first one it clashes with. It agrees with AddressesClash.
type sockets struct {
	exact    map[string]int // canonical host and port → first listener
	wildcard map[int]int    // port → first wildcard listener
	any      map[int]int    // port → first listener
}

func newSockets() *sockets {
	return &sockets{exact: map[string]int{}, wildcard: map[int]int{}, any: map[int]int{}}
}

// claim records listener i on addr, a valid listen address, and returns the
// first earlier listener it clashes with, or -1.
func (s *sockets) claim(addr string, i int) int {
	host, portStr, _ := net.SplitHostPort(addr)
	port, err := parsePort(portStr)
	if err != nil {
		return -1 // port 0: each listener gets its own port
	}
	key := canonicalHost(host) + " " + strconv.Itoa(port)
	wild := isWildcard(host)
	first := -1
	if wild {
		if j, ok := s.any[port]; ok {
			first = j
		}
	} else {
		if j, ok := s.exact[key]; ok {
			first = j
		}
		if j, ok := s.wildcard[port]; ok && (first < 0 || j < first) {
			first = j
		}
	}
	if _, ok := s.any[port]; !ok {
		s.any[port] = i
	}
	if _, ok := s.exact[key]; !ok {
		s.exact[key] = i
	}
	if _, ok := s.wildcard[port]; wild && !ok {
		s.wildcard[port] = i
	}
	return first
}

func (v *validator) upstreams() {
	names := make(map[string]int, len(v.s.Upstreams))
	for i := range v.s.Upstreams {
		u := &v.s.Upstreams[i]
		p := fmt.Sprintf("upstreams[%d]", i)

		if u.Name == "" {
			v.errorf(p+".name", "name is required")
		} else if j, dup := names[u.Name]; dup {
			v.errorf(p+".name", "duplicate upstream name %q (first at upstreams[%d])", u.Name, j)
		} else {
			names[u.Name] = i
		}

		switch u.Protocol {
		case UpstreamGRPC, UpstreamHTTP, UpstreamH2C, UpstreamH2:
		case "":
			v.errorf(p+".protocol", "protocol is required (grpc, http, h2c or h2)")
		default:
			v.errorf(p+".protocol", "unknown protocol %q (want grpc, http, h2c or h2)", u.Protocol)
		}
		if u.TLS != nil {
			v.upstreamTLS(p, u)
		}

		if len(u.Endpoints) == 0 && !u.EndpointsFromEDS {
			v.errorf(p+".endpoints", "at least one endpoint (host:port) is required")
		}
		seen := make(map[string]int, len(u.Endpoints))
		for j, ep := range u.Endpoints {
			epPath := fmt.Sprintf("%s.endpoints[%d]", p, j)
			if err := u.endpointSyntax(ep); err != nil {
				v.errorf(epPath, "%v", err)
				continue
			}
			if k, dup := seen[ep]; dup {
				v.errorf(epPath, "duplicate endpoint %s (first at endpoints[%d])", ep, k)
				continue
			}
			seen[ep] = j
		}

		v.discovery(p, u)

		switch u.Balance {
		case "", BalanceP2CEWMA, BalanceRoundRobin:
		default:
			v.errorf(p+".balance", "unknown balance %q (want p2c_ewma or round_robin)", u.Balance)
		}
		if u.DialTimeout < 0 {
			v.errorf(p+".dial_timeout", "must not be negative (0 means the default, %s)", DefaultDialTimeout)
		}
		if u.MaxMessageBytes < 0 {
			v.errorf(p+".max_message_bytes", "must not be negative (0 means the default, %d)", DefaultMaxMessageBytes)
		}
		if u.MaxConcurrent < 0 {
			v.errorf(p+".max_concurrent", "must not be negative (0 means unlimited)")
		}
		if u.Breaker != nil {
			v.breaker(p+".breaker", u.Breaker)
		}
		if u.Outlier != nil {
			v.outlier(p+".outlier", u.Outlier)
		}
		v.upstreamLimits(p+".limits", &u.Limits)
	}
}

func (v *validator) routes() {
	listeners := make(map[string]*Listener, len(v.s.Listeners))
	for i := range v.s.Listeners {
		if _, dup := listeners[v.s.Listeners[i].Name]; !dup {
			listeners[v.s.Listeners[i].Name] = &v.s.Listeners[i]
		}
	}
	upstreams := make(map[string]*Upstream, len(v.s.Upstreams))
	for i := range v.s.Upstreams {
		if _, dup := upstreams[v.s.Upstreams[i].Name]; !dup {
			upstreams[v.s.Upstreams[i].Name] = &v.s.Upstreams[i]
		}
	}

	// Computed once: a file with many dangling references would otherwise
	// sort the name lists once per route.
	definedListeners, definedUpstreams := listenerNames(v.s.Listeners), upstreamNames(v.s.Upstreams)

	names := make(map[string]int, len(v.s.Routes))
	for i := range v.s.Routes {
		r := &v.s.Routes[i]
		p := fmt.Sprintf("routes[%d]", i)

		if r.Name == "" {
			v.errorf(p+".name", "name is required")
		} else if j, dup := names[r.Name]; dup {
			v.errorf(p+".name", "duplicate route name %q (first at routes[%d])", r.Name, j)
		} else {
			names[r.Name] = i
		}

		var l *Listener
		if r.Listener == "" {
			v.errorf(p+".listener", "listener is required (%s)", definedListeners)
		} else if l = listeners[r.Listener]; l == nil {
			v.errorf(p+".listener", "unknown listener %q (%s)", r.Listener, definedListeners)
		}

		var u *Upstream
		if r.Upstream == "" {
			v.errorf(p+".upstream", "upstream is required (%s)", definedUpstreams)
		} else if u = upstreams[r.Upstream]; u == nil {
			v.errorf(p+".upstream", "unknown upstream %q (%s)", r.Upstream, definedUpstreams)
		}

		if l != nil && u != nil && l.Protocol == ListenerGRPC && u.Protocol == UpstreamHTTP {
			v.errorf(p+".upstream", "upstream %q speaks http (HTTP/1.1) but listener %q is grpc: gRPC needs an HTTP/2 upstream (protocol grpc, h2c or h2)",
				u.Name, l.Name)
		}

		v.match(p+".match", &r.Match, l)

		if r.Retry != nil {
			v.retry(p+".retry", r.Retry, l)
		}
		if r.Fallback != nil {
			v.fallback(p+".fallback", r, l, upstreams, definedUpstreams)
		}
		if r.GenAI != nil {
			v.genai(p+".genai", r.GenAI, l)
		}
	}
}

// match checks one route's match block; l is its listener, nil when unknown.
func (v *validator) match(p string, m *Match, l *Listener) {
	if m.GRPCService != "" && m.GRPCMethod != "" {
		v.errorf(p+".grpc_method", "grpc_service and grpc_method are mutually exclusive: grpc_method already names the service")
	}
	if m.GRPCService != "" && strings.ContainsAny(m.GRPCService, "/ \t") {
		v.errorf(p+".grpc_service", "invalid service %q: write the service name only, e.g. bot.v1.NLU (use grpc_method for /bot.v1.NLU/Parse)", m.GRPCService)
	}
	if m.GRPCMethod != "" && !isFullMethod(m.GRPCMethod) {
		v.errorf(p+".grpc_method", "invalid method %q: want /package.Service/Method, e.g. /bot.v1.NLU/Parse", m.GRPCMethod)
	}
	if m.Host != "" {
		if msg := checkMatchHost(m.Host); msg != "" {
			v.errorf(p+".host", "%s", msg)
		}
	}
	if m.PathPrefix != "" && !strings.HasPrefix(m.PathPrefix, "/") {
		v.errorf(p+".path_prefix", "path_prefix %q must start with '/'", m.PathPrefix)
	} else if err := CheckPath(m.PathPrefix); m.PathPrefix != "" && err != nil {
		// Such paths are refused before matching, so the route could never
		// match (and "/kb/.." would suggest it reaches above /kb/).
		v.errorf(p+".path_prefix", "path_prefix %q can never match: %v", m.PathPrefix, err)
	}
	if m.Method != "" && (!isToken(m.Method) || strings.ToUpper(m.Method) != m.Method) {
		// Methods are case-sensitive (RFC 9110 §9.1), so "post" would never
		// match a real POST.
		v.errorf(p+".method", "invalid HTTP method %q: want an uppercase method such as GET or POST", m.Method)
	}
	for _, name := range slices.Sorted(maps.Keys(m.Headers)) {
		hp := p + ".headers." + name
		if !isToken(name) {
			v.errorf(hp, "invalid header name %q", name)
		}
		if !isFieldValue(m.Headers[name]) {
			v.errorf(hp, "header value must not contain control characters")
		}
	}
	if l != nil && l.Protocol == ListenerGRPC {
		// The grpc listener only sees gRPC calls: every request is a POST to
		// /pkg.Service/Method, so path and method matches are either always
		// true or never; matching the service says what is meant.
		if m.PathPrefix != "" {
			v.errorf(p+".path_prefix", "use grpc_service or grpc_method on grpc listeners")
		}
		if m.Method != "" {
			v.errorf(p+".method", "use grpc_service or grpc_method on grpc listeners")
		}
	}
}

// retry checks one route's retry policy; l is its listener, nil when
// unknown.
func (v *validator) retry(p string, r *Retry, l *Listener) {
	switch {
	case r.Attempts == 0:
		v.errorf(p+".attempts", "attempts is required: 1..%d, counting the first try (1 means no retry)", MaxRetryAttempts)
	case r.Attempts < 1 || r.Attempts > MaxRetryAttempts:
		v.errorf(p+".attempts", "attempts must be 1..%d, counting the first try (1 means no retry)", MaxRetryAttempts)
	}
	if len(r.On) == 0 {
		v.errorf(p+".on", "at least one condition is required, e.g. [unavailable] or [502, 503, %s]", RetryConnectFailure)
	}
	first := make(map[string]int, len(r.On))
	for i, tok := range r.On {
		tp := fmt.Sprintf("%s.on[%d]", p, i)
		if j, dup := first[tok]; dup {
			v.errorf(tp, "duplicate condition %q (first at on[%d])", tok, j)
			continue
		}
		first[tok] = i
		if _, err := ParseRetryOn([]string{tok}); err != nil {
			v.errorf(tp, "%v", err)
			continue
		}
		if l != nil && l.Protocol == ListenerGRPC && isHTTPRetryToken(tok) {
			// A gRPC call answers HTTP 200 and carries its status in the
			// trailers, so a status condition would never fire.
			v.errorf(tp, "HTTP status %q never ends a gRPC call: use gRPC codes such as unavailable on grpc listeners", tok)
		}
	}
	if r.Budget < 0 || r.Budget > 1 {
		v.errorf(p+".budget", "must be between 0 and 1 (0 means the default, %g)", DefaultRetryBudget)
	}
}

func isHTTPRetryToken(tok string) bool {
	return tok == "5xx" || tok != "" && tok[0] >= '0' && tok[0] <= '9'
}

// fallback checks route r's fallback policy; l is its listener, nil when
// unknown.
func (v *validator) fallback(p string, r *Route, l *Listener, upstreams map[string]*Upstream, defined string) {
	f := r.Fallback
	switch {
	case f.After == 0:
		v.errorf(p+".after", "after is required: the latency budget after which the fallback answers, e.g. 300ms")
	case f.After < 0:
		v.errorf(p+".after", "must be positive, e.g. 300ms")
	case r.Timeout > 0 && f.After >= r.Timeout:
		v.errorf(p+".after", "after (%s) must be shorter than the route timeout (%s), or the timeout always ends the call first",
			f.After, r.Timeout)
	case r.Timeout == 0 && f.After >= DefaultFirstResponseTimeout:
		v.errorf(p+".after", "after (%s) must be shorter than the default first-response timeout (%s) of a route without timeout, or the timeout always ends the call first; write a longer timeout",
			f.After, DefaultFirstResponseTimeout)
	}

	if len(f.Use) == 0 {
		v.errorf(p+".use", "at least one source is required (cache, static, upstream), tried in order")
	}
	used := make(map[string]int, len(f.Use))
	for i, src := range f.Use {
		up := fmt.Sprintf("%s.use[%d]", p, i)
		switch src {
		case FallbackSourceCache, FallbackSourceStatic, FallbackSourceUpstream:
		default:
			v.errorf(up, "unknown source %q (want cache, static or upstream)", src)
			continue
		}
		if j, dup := used[src]; dup {
			v.errorf(up, "duplicate source %q (first at use[%d]): a source that had no answer will not have one a moment later", src, j)
			continue
		}
		used[src] = i
	}
	_, usesCache := used[FallbackSourceCache]
	iStatic, usesStatic := used[FallbackSourceStatic]
	iUpstream, usesUpstream := used[FallbackSourceUpstream]

	// A block for a source that use does not list would be silently dead:
	// most likely the source was meant to be listed.
	if f.Cache != nil {
		if !usesCache {
			v.errorf(p+".cache", "cache is configured but use does not list cache")
		}
		v.fallbackCache(p+".cache", f.Cache)
	}
	switch {
	case f.Static != nil:
		if !usesStatic {
			v.errorf(p+".static", "static is configured but use does not list static")
		}
		v.fallbackStatic(p+".static", f.Static, l)
	case usesStatic:
		v.errorf(fmt.Sprintf("%s.use[%d]", p, iStatic), "static is listed but fallback.static is missing: write the answer, e.g. static: {status: 503, body: ...}")
	}
	switch {
	case f.Upstream != "":
		if !usesUpstream {
			v.errorf(p+".upstream", "upstream is set but use does not list upstream")
		}
		u := upstreams[f.Upstream]
		switch {
		case u == nil:
			v.errorf(p+".upstream", "unknown upstream %q (%s)", f.Upstream, defined)
		case f.Upstream == r.Upstream:
			v.errorf(p+".upstream", "the fallback upstream must differ from the route's own upstream %q: asking the late dependency again does not help", r.Upstream)
		case l != nil && l.Protocol == ListenerGRPC && u.Protocol == UpstreamHTTP:
			v.errorf(p+".upstream", "upstream %q speaks http (HTTP/1.1) but listener %q is grpc: gRPC needs an HTTP/2 upstream (protocol grpc, h2c or h2)",
				u.Name, l.Name)
		}
	case usesUpstream:
		v.errorf(fmt.Sprintf("%s.use[%d]", p, iUpstream), "upstream is listed but fallback.upstream does not name one (%s)", defined)
	}

	if b := f.Background; b != nil {
		if b.MaxInflight < 0 {
			v.errorf(p+".background.max_inflight", "must not be negative (0 means the default, %d)", DefaultBackgroundMaxInflight)
		}
		if b.Timeout < 0 {
			v.errorf(p+".background.timeout", "must not be negative (0 means the default, %s)", DefaultBackgroundTimeout)
		}
	}
}

func (v *validator) fallbackCache(p string, c *FallbackCache) {
	if c.TTL < 0 {
		v.errorf(p+".ttl", "must not be negative (0 means the default, %s)", DefaultCacheTTL)
	}
	if c.MaxEntries < 0 {
		v.errorf(p+".max_entries", "must not be negative (0 means the default, %d)", DefaultCacheMaxEntries)
	}
	if c.MaxBytes < 0 {
		v.errorf(p+".max_bytes", "must not be negative (0 means the default, %d)", DefaultCacheMaxBytes)
	}
	first := make(map[string]int, len(c.Headers))
	for i, h := range c.Headers {
		hp := fmt.Sprintf("%s.headers[%d]", p, i)
		if !isToken(h) {
			v.errorf(hp, "invalid header name %q", h)
			continue
		}
		// Header names are case-insensitive (RFC 9110 §5.1), so X-Tenant
		// and x-tenant are one header.
		key := strings.ToLower(h)
		if j, dup := first[key]; dup {
			v.errorf(hp, "duplicate header %q (first at headers[%d])", h, j)
			continue
		}
		first[key] = i
	}
}

func (v *validator) fallbackStatic(p string, s *FallbackStatic, l *Listener) {
	if l != nil && l.Protocol == ListenerGRPC {
		const msg = "%s applies to HTTP answers; a grpc listener answers with grpc_code and grpc_message"
		if s.Status != 0 {
			v.errorf(p+".status", msg, "status")
		}
		if s.ContentType != "" {
			v.errorf(p+".content_type", msg, "content_type")
		}
		if s.Body != "" {
			v.errorf(p+".body", msg, "body")
		}
	}
	if s.Status != 0 && (s.Status < 200 || s.Status > 599) {
		v.errorf(p+".status", "status must be 200..599 (0 means 200)")
	}
	if s.ContentType != "" {
		// ParseMediaType takes a bare token such as "json"; a media type
		// is type/subtype (RFC 9110 §8.3.1).
		mt, _, err := mime.ParseMediaType(s.ContentType)
		if typ, sub, ok := strings.Cut(mt, "/"); err != nil || !ok || typ == "" || sub == "" || !isFieldValue(s.ContentType) {
			v.errorf(p+".content_type", "invalid media type %q, e.g. application/json", s.ContentType)
		}
	}
	code := codes.OK
	if s.GRPCCode != "" {
		c, ok := GRPCCode(s.GRPCCode)
		if !ok {
			hint := ""
			if norm := normalizeToken(s.GRPCCode); norm != s.GRPCCode {
				if _, known := GRPCCode(norm); known {
					hint = "; write " + norm
				}
			}
			v.errorf(p+".grpc_code", "unknown gRPC code %q (e.g. ok, unavailable, resource_exhausted)%s", s.GRPCCode, hint)
			return
		}
		code = c
	}
	if s.GRPCMessage != "" && code == codes.OK {
		v.errorf(p+".grpc_message", "grpc_message needs a grpc_code other than ok: an OK answer is a message, not a status text")
	}
}

func (v *validator) breaker(p string, b *Breaker) {
	if b.Window < 0 {
		v.errorf(p+".window", "must not be negative (0 means the default, %s)", DefaultBreakerWindow)
	}
	if b.MinRequests < 0 {
		v.errorf(p+".min_requests", "must not be negative (0 means the default, %d)", DefaultBreakerMinRequests)
	}
	if b.FailureRatio < 0 || b.FailureRatio > 1 {
		v.errorf(p+".failure_ratio", "must be in (0, 1] (0 means the default, %g)", DefaultBreakerFailureRatio)
	}
	if b.SlowCall < 0 {
		v.errorf(p+".slow_call", "must not be negative (0 means calls are never judged slow)")
	}
	switch {
	case b.SlowRatio < 0 || b.SlowRatio > 1:
		v.errorf(p+".slow_ratio", "must be in (0, 1] (0 means the default, %g)", DefaultBreakerSlowRatio)
	case b.SlowRatio > 0 && b.SlowCall == 0:
		v.errorf(p+".slow_ratio", "slow_ratio needs slow_call: without it no call counts as slow")
	}
	if b.OpenFor < 0 {
		v.errorf(p+".open_for", "must not be negative (0 means the default, %s)", DefaultBreakerOpenFor)
	}
	if b.HalfOpenRequests < 0 {
		v.errorf(p+".half_open_requests", "must not be negative (0 means the default, %d)", DefaultBreakerHalfOpenRequests)
	}
}

func (v *validator) outlier(p string, o *Outlier) {
	if o.ConsecutiveFailures < 0 {
		v.errorf(p+".consecutive_failures", "must not be negative (0 means the default, %d)", DefaultOutlierConsecutiveFailures)
	}
	if o.BaseEjection < 0 {
		v.errorf(p+".base_ejection", "must not be negative (0 means the default, %s)", DefaultOutlierBaseEjection)
	}
	if o.MaxEjection < 0 {
		v.errorf(p+".max_ejection", "must not be negative (0 means the default, %s)", DefaultOutlierMaxEjection)
	}
	if o.BaseEjection >= 0 && o.MaxEjection >= 0 {
		base, most := cmp.Or(o.BaseEjection, DefaultOutlierBaseEjection), cmp.Or(o.MaxEjection, DefaultOutlierMaxEjection)
		if most < base {
			at := p + ".max_ejection"
			if o.MaxEjection == 0 {
				at = p + ".base_ejection"
			}
			v.errorf(at, "max_ejection (%s) is shorter than base_ejection (%s)", most, base)
		}
	}
	if o.MaxEjectedPercent < 0 || o.MaxEjectedPercent > 100 {
		v.errorf(p+".max_ejected_percent", "must be 1..100 (0 means the default, %d)", DefaultOutlierMaxEjectedPercent)
	}
}

// CheckListenAddress reports whether addr is a host:port the proxy can listen
// on: a host (IP or name; 0.0.0.0 or [::] for all interfaces) and a numeric
// port in 1..65535, or 0 for a kernel-chosen port. The admin server address
// follows the same rule.
func CheckListenAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid address %q: want host:port, e.g. 127.0.0.1:7000", addr)
	}
	if host == "" {
		// An empty host silently means "all interfaces"; make that a written
		// choice rather than an accident.
		return fmt.Errorf("address %q has no host: write 127.0.0.1:%s for loopback or 0.0.0.0:%s for all interfaces", addr, port, port)
	}
	if !isHost(host) {
		return fmt.Errorf("invalid host %q in address %q", host, addr)
	}
	// Port 0 asks the kernel for a free port: useless in production, but it
	// is how tests and the demo run several proxies side by side.
	if port != "0" {
		if _, err := parsePort(port); err != nil {
			return fmt.Errorf("invalid port in address %q: %w", addr, err)
		}
	}
	return nil
}

// checkEndpoint is CheckListenAddress for dialling, with hints for the usual
// mistake of writing a URL.
func checkEndpoint(ep string) error {
	if strings.Contains(ep, "://") {
		return fmt.Errorf("invalid endpoint %q: write host:port without a scheme; the upstream protocol says how to speak to it", ep)
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return fmt.Errorf("invalid endpoint %q: want host:port, e.g. 127.0.0.1:7101", ep)
	}
	if host == "" {
		return fmt.Errorf("endpoint %q has no host", ep)
	}
	if !isHost(host) {
		return fmt.Errorf("invalid host %q in endpoint %q", host, ep)
	}
	if _, err := parsePort(port); err != nil {
		return fmt.Errorf("invalid port in endpoint %q: %w", ep, err)
	}
	return nil
}

// AddressesClash reports whether two valid listen addresses would compete
// for one socket: the same host and port as written, or the same port when
// either is a wildcard (0.0.0.0, [::]), because a wildcard bind takes the
// port on every interface. Hosts are compared literally: localhost and
// 127.0.0.1 are not resolved, since Validate does no I/O. Port 0 never
// clashes: each such listener gets its own free port.
func AddressesClash(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	if errA != nil || errB != nil {
		return false
	}
	na, errA := parsePort(pa)
	nb, errB := parsePort(pb)
	if errA != nil || errB != nil || na != nb {
		return false
	}
	if isWildcard(ha) || isWildcard(hb) {
		return true
	}
	return canonicalHost(ha) == canonicalHost(hb)
}

func parsePort(p string) (int, error) {
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q is not a number in 1..65535", p)
	}
	return int(n), nil
}

func isWildcard(host string) bool {
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsUnspecified()
}

// canonicalHost makes "::1" and "0:0::1" (and IPv4 in any case) compare equal.
func canonicalHost(host string) string {
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap().String()
	}
	return strings.ToLower(host)
}

// isHost accepts an IP literal or a DNS-ish name. Names are not resolved.
func isHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, c := range []byte(h) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// checkMatchHost returns why h cannot be a match.host, or "".
func checkMatchHost(h string) string {
	if strings.HasPrefix(h, "[") {
		return fmt.Sprintf("invalid host %q: write IPv6 hosts without brackets", h)
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return ""
	}
	if strings.Contains(h, ":") {
		// Table.Match strips the port from the request's host before
		// comparing, so a host with a port would never match.
		return fmt.Sprintf("invalid host %q: hosts are matched without the port", h)
	}
	if !isHost(h) {
		return fmt.Sprintf("invalid host %q", h)
	}
	return ""
}

func isPrefixOrAddr(s string) bool {
	if _, err := netip.ParsePrefix(s); err == nil {
		return true
	}
	_, err := netip.ParseAddr(s)
	return err == nil
}

// isFullMethod reports whether m is "/service/method" with both parts
// non-empty, the :path form gRPC uses on the wire.
func isFullMethod(m string) bool {
	rest, ok := strings.CutPrefix(m, "/")
	if !ok {
		return false
	}
	svc, method, ok := strings.Cut(rest, "/")
	return ok && svc != "" && method != "" && !strings.Contains(method, "/") &&
		!strings.ContainsAny(rest, " \t")
}

func isLabelValue(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return s != ""
}

// isToken reports whether s is an RFC 9110 §5.6.2 token, the syntax of
// header names and methods. Header names are matched case-insensitively, so
// case is not checked here.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// isFieldValue rejects control characters other than HTAB (RFC 9110 §5.5);
// such a value could never arrive in a request, so the route would be dead.
func isFieldValue(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func listenerNames(ls []Listener) string {
	names := make([]string, 0, len(ls))
	for _, l := range ls {
		if l.Name != "" {
			names = append(names, l.Name)
		}
	}
	return definedList(names, "listeners")
}

func upstreamNames(us []Upstream) string {
	names := make([]string, 0, len(us))
	for _, u := range us {
		if u.Name != "" {
			names = append(names, u.Name)
		}
	}
	return definedList(names, "upstreams")
}

func definedList(names []string, what string) string {
	if len(names) == 0 {
		return "no " + what + " defined"
	}
	slices.Sort(names)
	names = slices.Compact(names)
	// A hint, not an inventory: keep the message readable in a big file.
	const show = 12
	if len(names) > show {
		return fmt.Sprintf("defined: %s and %d more", strings.Join(names[:show], ", "), len(names)-show)
	}
	return "defined: " + strings.Join(names, ", ")
}

// genai checks a route's genai section: a known API, on an HTTP listener
// (the usage is read from HTTP bodies).
func (v *validator) genai(p string, g *GenAI, l *Listener) {
	switch g.API {
	case GenAIOpenAI:
	case "":
		v.errorf(p+".api", "api is required (%s)", GenAIOpenAI)
	default:
		v.errorf(p+".api", "unknown api %q (known: %s)", g.API, GenAIOpenAI)
	}
	if l != nil && l.Protocol != ListenerHTTP {
		v.errorf(p, "genai routes must be on an http listener (listener %q is %s)", l.Name, l.Protocol)
	}
}
