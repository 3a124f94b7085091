package xds

import (
	"errors"
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/routes"
)

// MetadataKey is the filter_metadata key under which xDS resources carry
// the settings only hopwatch has (listener protocol and caller, async
// fallbacks, the slow-call breaker, ...), written in the file's schema.
const MetadataKey = "hopwatch"

// HTTPProtocolOptionsKey is the typed_extension_protocol_options key of
// a cluster's HTTP protocol options.
const HTTPProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// ListenerMeta is a listener's hopwatch metadata.
type ListenerMeta struct {
	// Protocol is grpc or http (empty: http, which also carries gRPC).
	Protocol     string `yaml:"protocol"`
	Caller       string `yaml:"caller"`
	CallerHeader string `yaml:"caller_header"`
	// CallerFrom is the listener's caller_from (client_cert: the caller
	// is the verified client certificate's identity).
	CallerFrom      string                `yaml:"caller_from"`
	TrustedProxies  []string              `yaml:"trusted_proxies"`
	MaxMessageBytes int                   `yaml:"max_message_bytes"`
	Limits          routes.ListenerLimits `yaml:"limits"`
	// Relay is a grpc listener's relay (empty: the frame relay; messages:
	// grpc-go's server), so that a fleet can keep grpc-go's path.
	Relay string `yaml:"relay"`
}

// RouteMeta is a route's hopwatch metadata.
type RouteMeta struct {
	Fallback *routes.Fallback `yaml:"fallback"`
	GenAI    *routes.GenAI    `yaml:"genai"`
	// RetryBudget is the route's retry budget (Envoy keeps budgets on the
	// cluster's circuit breakers; hopwatch per route).
	RetryBudget float64 `yaml:"retry_budget"`
}

// ClusterMeta is a cluster's hopwatch metadata.
type ClusterMeta struct {
	// Protocol is grpc, http, h2c or h2 (empty: from the cluster's HTTP
	// protocol options: h2c with HTTP/2, http otherwise).
	Protocol        string                `yaml:"protocol"`
	Breaker         *routes.Breaker       `yaml:"breaker"`
	MaxMessageBytes int                   `yaml:"max_message_bytes"`
	Limits          routes.UpstreamLimits `yaml:"limits"`
}

// resources is one consistent set of xDS resources, by name.
type resources struct {
	listeners map[string]*listenerv3.Listener
	routes    map[string]*routev3.RouteConfiguration
	clusters  map[string]*clusterv3.Cluster
	endpoints map[string]*endpointv3.ClusterLoadAssignment
}

// fieldErrs collects translation problems as "resource path: message".
type fieldErrs []string

func (e *fieldErrs) add(path, format string, args ...any) {
	*e = append(*e, path+": "+fmt.Sprintf(format, args...))
}

func (e fieldErrs) err() error {
	if len(e) == 0 {
		return nil
	}
	return errors.New(strings.Join(e, "; "))
}

// decodeMeta decodes md's hopwatch entry into v, strictly.
func decodeMeta(path string, md *corev3.Metadata, v any, errs *fieldErrs) {
	s := md.GetFilterMetadata()[MetadataKey]
	if s == nil {
		return
	}
	b, err := yaml.Marshal(integral(s.AsMap()))
	if err != nil {
		errs.add(path, "%v", err)
		return
	}
	if err := config.DecodeFragment(path+".metadata.filter_metadata.hopwatch", b, v); err != nil {
		var ce config.Errors
		if errors.As(err, &ce) {
			for _, e := range ce {
				errs.add(path+".metadata.filter_metadata.hopwatch", "%s: %s", e.Path, e.Msg)
			}
			return
		}
		errs.add(path, "%v", err)
	}
}

// integral turns the whole numbers of a protobuf Struct (all float64 on
// the wire) back into integers, so that integer fields decode.
func integral(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = integral(x)
		}
	case []any:
		for i, x := range v {
			v[i] = integral(x)
		}
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
			return int64(v)
		}
	}
	return v
}

// MetaStruct builds the metadata that carries v (a *Meta struct, or any
// value of the file's schema) under MetadataKey, for control planes.
func MetaStruct(v any) (*corev3.Metadata, error) {
	b, err := yaml.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	s, err := structpb.NewStruct(normalize(m).(map[string]any))
	if err != nil {
		return nil, err
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: s}}, nil
}

// normalize turns what yaml.Unmarshal gives into what structpb takes.
func normalize(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = normalize(x)
		}
		if v == nil {
			return map[string]any{}
		}
		return v
	case []any:
		for i, x := range v {
			v[i] = normalize(x)
		}
		return v
	case int:
		return float64(v)
	case int64:
		return float64(v)
	case uint64:
		return float64(v)
	}
	return v
}

// origin says where a spec element came from, for error messages.
type origin struct {
	listeners, routes, upstreams []string
}

// translate builds the routing spec of rs on top of base (callers and
// replay from the file). It returns every problem found. Inline
// certificates are written to files (nil: they are an error).
func translate(rs *resources, base *routes.Spec, files *inlineFiles) (*routes.Spec, *origin, error) {
	spec := &routes.Spec{Callers: base.Callers, Replay: base.Replay}
	or := &origin{}
	var errs fieldErrs
	routeNames := map[string]bool{}
	for _, name := range sortedKeys(rs.listeners) {
		l := rs.listeners[name]
		path := fmt.Sprintf("listener %q", name)
		sa := l.GetAddress().GetSocketAddress()
		if sa == nil {
			continue // an API listener (proxyless gRPC clients), or not TCP
		}
		var meta ListenerMeta
		decodeMeta(path, l.GetMetadata(), &meta, &errs)
		hl := routes.Listener{Name: name, Address: net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))),
			Protocol: meta.Protocol, Caller: meta.Caller, CallerHeader: meta.CallerHeader, CallerFrom: meta.CallerFrom, TrustedProxies: meta.TrustedProxies,
			MaxMessageBytes: meta.MaxMessageBytes, Limits: meta.Limits, Relay: meta.Relay}
		if hl.Protocol == "" {
			hl.Protocol = routes.ListenerHTTP
		}
		hcm, chain, err := listenerChain(l)
		if err == nil && chain.GetTransportSocket() != nil {
			hl.TLS = translateListenerTLS(chain.GetTransportSocket(), path+".filter_chain.transport_socket", files, &errs)
		}
		spec.Listeners = append(spec.Listeners, hl)
		or.listeners = append(or.listeners, path)
		if err != nil {
			errs.add(path, "%v", err)
			continue
		}
		rc := hcm.GetRouteConfig()
		rcPath := path + ".route_config"
		if rds := hcm.GetRds(); rds != nil {
			rc = rs.routes[rds.GetRouteConfigName()]
			rcPath = fmt.Sprintf("route_configuration %q", rds.GetRouteConfigName())
		}
		if rc == nil {
			errs.add(path, "the HTTP connection manager has no route configuration")
			continue
		}
		translateRoutes(spec, or, &errs, hl, rc, rcPath, routeNames)
	}
	for _, name := range sortedKeys(rs.clusters) {
		c := rs.clusters[name]
		path := fmt.Sprintf("cluster %q", name)
		u, ok := translateCluster(c, rs, path, files, &errs)
		if ok {
			spec.Upstreams = append(spec.Upstreams, u)
			or.upstreams = append(or.upstreams, path)
		}
	}
	if err := errs.err(); err != nil {
		return nil, nil, err
	}
	if verrs := routes.Validate(spec); len(verrs) > 0 {
		msgs := make([]string, len(verrs))
		for i, e := range verrs {
			msgs[i] = or.locate(e)
		}
		return nil, nil, errors.New(strings.Join(msgs, "; "))
	}
	return spec, or, nil
}

// locate rewrites a validation error's spec path (routes[3].timeout) to
// the resource it came from.
func (o *origin) locate(e routes.FieldError) string {
	for _, k := range []struct {
		prefix string
		from   []string
	}{{"listeners[", o.listeners}, {"routes[", o.routes}, {"upstreams[", o.upstreams}} {
		rest, ok := strings.CutPrefix(e.Path, k.prefix)
		if !ok {
			continue
		}
		i := strings.IndexByte(rest, ']')
		n, err := strconv.Atoi(rest[:max(i, 0)])
		if i < 0 || err != nil || n >= len(k.from) {
			break
		}
		return fmt.Sprintf("%s (%s%s): %s", k.from[n], e.Path[:len(k.prefix)+i+1], rest[i+1:], e.Msg)
	}
	return e.Error()
}

// listenerHCM finds the HTTP connection manager of a listener's filter
// chain (the first chain that has one, then the default chain).
func listenerHCM(l *listenerv3.Listener) (*hcmv3.HttpConnectionManager, error) {
	hcm, _, err := listenerChain(l)
	return hcm, err
}

// listenerChain is listenerHCM with the filter chain it is in, whose
// transport socket is the listener's TLS.
func listenerChain(l *listenerv3.Listener) (*hcmv3.HttpConnectionManager, *listenerv3.FilterChain, error) {
	chains := append(append([]*listenerv3.FilterChain{}, l.GetFilterChains()...), l.GetDefaultFilterChain())
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			tc := f.GetTypedConfig()
			if tc == nil {
				continue
			}
			var hcm hcmv3.HttpConnectionManager
			if tc.MessageIs(&hcm) {
				if err := tc.UnmarshalTo(&hcm); err != nil {
					return nil, nil, fmt.Errorf("filter %q: %w", f.GetName(), err)
				}
				return &hcm, fc, nil
			}
		}
	}
	return nil, nil, errors.New("no HTTP connection manager filter: hopwatch serves HTTP and gRPC listeners only")
}

func translateRoutes(spec *routes.Spec, or *origin, errs *fieldErrs, l routes.Listener, rc *routev3.RouteConfiguration, rcPath string, names map[string]bool) {
	for vi, vh := range rc.GetVirtualHosts() {
		vPath := fmt.Sprintf("%s.virtual_hosts[%d]", rcPath, vi)
		var hosts []string
		all := false
		for _, d := range vh.GetDomains() {
			switch {
			case d == "*":
				all = true
			case strings.Contains(d, "*"):
				errs.add(vPath+".domains", "wildcard domain %q: hopwatch matches exact hosts or all (*)", d)
			default:
				h := d
				if hh, _, err := net.SplitHostPort(d); err == nil {
					h = hh
				}
				hosts = append(hosts, h)
			}
		}
		if all || len(hosts) == 0 {
			hosts = []string{""}
		}
		for ri, r := range vh.GetRoutes() {
			rPath := fmt.Sprintf("%s.routes[%d]", vPath, ri)
			hr, ok := translateRoute(r, l, rPath, errs)
			if !ok {
				continue
			}
			for hi, h := range hosts {
				out := hr
				if h != "" {
					out.Match.Host = h
				}
				base := r.GetName()
				if base == "" {
					base = fmt.Sprintf("%s-%d", vh.GetName(), ri)
				}
				if len(hosts) > 1 {
					base = fmt.Sprintf("%s-%d", base, hi)
				}
				out.Name = base
				if names[out.Name] {
					out.Name = l.Name + "/" + base
				}
				names[out.Name] = true
				spec.Routes = append(spec.Routes, out)
				or.routes = append(or.routes, rPath)
			}
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func translateRoute(r *routev3.Route, l routes.Listener, path string, errs *fieldErrs) (routes.Route, bool) {
	hr := routes.Route{Listener: l.Name}
	n := len(*errs)
	m := r.GetMatch()
	grpcListener := l.Protocol == routes.ListenerGRPC
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		switch p := ps.Prefix; {
		case p == "" || p == "/":
		case grpcListener:
			if !isGRPCServicePrefix(p) {
				errs.add(path+".match.prefix", "%q: on a grpc listener a prefix is a gRPC service, /package.Service/", p)
			}
			hr.Match.GRPCService = strings.Trim(p, "/")
		default:
			hr.Match.PathPrefix = p
		}
	case *routev3.RouteMatch_Path:
		hr.Match.GRPCMethod = ps.Path // validation checks it is /package.Service/Method
	case nil:
	default:
		errs.add(path+".match", "only prefix and path matches are supported (%T)", ps)
	}
	if len(m.GetQueryParameters()) > 0 {
		errs.add(path+".match.query_parameters", "query parameter matches are not supported")
	}
	if m.GetRuntimeFraction() != nil || len(m.GetDynamicMetadata()) > 0 || m.GetFilterState() != nil {
		errs.add(path+".match", "runtime, metadata and filter state matches are not supported")
	}
	for hi, h := range m.GetHeaders() {
		hPath := fmt.Sprintf("%s.match.headers[%d]", path, hi)
		exact, ok := headerExact(h)
		if !ok || h.GetInvertMatch() {
			errs.add(hPath, "only exact, non-inverted header matches are supported")
			continue
		}
		switch name := strings.ToLower(h.GetName()); name {
		case ":method":
			hr.Match.Method = exact
		case ":authority", "host":
			hr.Match.Host = exact
		default:
			if hr.Match.Headers == nil {
				hr.Match.Headers = map[string]string{}
			}
			hr.Match.Headers[name] = exact
		}
	}
	a := r.GetRoute()
	if a == nil {
		errs.add(path, "only route actions to a cluster are supported (no redirect or direct response)")
		return hr, false
	}
	hr.Upstream = a.GetCluster()
	if hr.Upstream == "" {
		errs.add(path+".route", "route to one cluster by name (weighted clusters and cluster headers are not supported)")
	}
	if t := a.GetTimeout(); t != nil {
		hr.Timeout = t.AsDuration()
		if hr.Timeout == 0 {
			hr.Timeout = -time.Second // Envoy: 0 disables the timeout; hopwatch: negative
		}
	}
	if rp := a.GetRetryPolicy(); rp != nil {
		hr.Retry = translateRetry(rp, path+".route.retry_policy", errs)
	}
	var meta RouteMeta
	decodeMeta(path, r.GetMetadata(), &meta, errs)
	hr.Fallback, hr.GenAI = meta.Fallback, meta.GenAI
	if hr.Retry != nil {
		hr.Retry.Budget = meta.RetryBudget
	}
	return hr, len(*errs) == n
}

func isGRPCServicePrefix(p string) bool {
	svc := strings.Trim(p, "/")
	return strings.HasPrefix(p, "/") && strings.HasSuffix(p, "/") && strings.Contains(svc, ".") && !strings.Contains(svc, "/")
}

func headerExact(h *routev3.HeaderMatcher) (string, bool) {
	if sm := h.GetStringMatch(); sm != nil {
		if x := sm.GetExact(); x != "" && !sm.GetIgnoreCase() {
			return x, true
		}
		return "", false
	}
	//lint:ignore SA1019 the deprecated form is still sent by control planes
	if x := h.GetExactMatch(); x != "" {
		return x, true
	}
	return "", false
}

// retryOn maps Envoy's retry_on conditions to hopwatch's words.
var retryOn = map[string][]string{
	"5xx":                []string{"5xx"},
	"gateway-error":      []string{"502", "503", "504"},
	"connect-failure":    []string{"connect-failure"},
	"cancelled":          []string{"cancelled"},
	"deadline-exceeded":  []string{"deadline_exceeded"},
	"internal":           []string{"internal"},
	"resource-exhausted": []string{"resource_exhausted"},
	"unavailable":        []string{"unavailable"},
}

func translateRetry(rp *routev3.RetryPolicy, path string, errs *fieldErrs) *routes.Retry {
	r := &routes.Retry{Attempts: 2} // Envoy's num_retries defaults to 1
	if n := rp.GetNumRetries(); n != nil {
		r.Attempts = int(n.GetValue()) + 1
	}
	for _, c := range strings.Split(rp.GetRetryOn(), ",") {
		c = strings.TrimSpace(c)
		switch {
		case c == "":
		case c == "retriable-status-codes":
			for _, s := range rp.GetRetriableStatusCodes() {
				r.On = append(r.On, strconv.Itoa(int(s)))
			}
		case retryOn[c] != nil:
			r.On = append(r.On, retryOn[c]...)
		default:
			errs.add(path+".retry_on", "%q is not supported (5xx, gateway-error, connect-failure, retriable-status-codes and gRPC codes are)", c)
		}
	}
	return r
}

func translateCluster(c *clusterv3.Cluster, rs *resources, path string, files *inlineFiles, errs *fieldErrs) (routes.Upstream, bool) {
	n := len(*errs)
	var meta ClusterMeta
	decodeMeta(path, c.GetMetadata(), &meta, errs)
	u := routes.Upstream{Name: c.GetName(), Protocol: meta.Protocol, Breaker: meta.Breaker,
		MaxMessageBytes: meta.MaxMessageBytes, Limits: meta.Limits}
	if ts := c.GetTransportSocket(); ts != nil {
		u.TLS = translateUpstreamTLS(ts, path+".transport_socket", files, errs)
	}
	if len(c.GetTransportSocketMatches()) > 0 {
		errs.add(path+".transport_socket_matches", "per-endpoint transport sockets are not supported: one transport_socket per cluster")
	}
	if u.Protocol == "" {
		u.Protocol = routes.UpstreamHTTP
		switch {
		case clusterHTTP2(c) && u.TLS != nil:
			u.Protocol = routes.UpstreamH2
		case clusterHTTP2(c):
			u.Protocol = routes.UpstreamH2C
		}
	}
	if u.Protocol == routes.UpstreamH2 && u.TLS != nil && *u.TLS == (routes.UpstreamTLS{}) {
		u.TLS = nil // h2 is TLS with the system roots already
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		u.Balance = routes.BalanceRoundRobin
	case clusterv3.Cluster_LEAST_REQUEST:
		u.Balance = routes.BalanceP2CEWMA
	default:
		errs.add(path+".lb_policy", "%s is not supported (ROUND_ROBIN, LEAST_REQUEST)", c.GetLbPolicy())
	}
	if t := c.GetConnectTimeout(); t != nil {
		u.DialTimeout = t.AsDuration()
	}
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() == corev3.RoutingPriority_DEFAULT && th.GetMaxRequests() != nil {
			u.MaxConcurrent = int(th.GetMaxRequests().GetValue())
		}
	}
	if od := c.GetOutlierDetection(); od != nil {
		u.Outlier = &routes.Outlier{ConsecutiveFailures: int(od.GetConsecutive_5Xx().GetValue()),
			BaseEjection: od.GetBaseEjectionTime().AsDuration(), MaxEjection: od.GetMaxEjectionTime().AsDuration(),
			MaxEjectedPercent: int(od.GetMaxEjectionPercent().GetValue())}
	}
	var cla *endpointv3.ClusterLoadAssignment
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		name := c.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = c.GetName()
		}
		cla = rs.endpoints[name]
		u.EndpointsFromEDS = true
	case clusterv3.Cluster_STATIC:
		cla = c.GetLoadAssignment()
	case clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		cla = c.GetLoadAssignment()
		u.Discovery = routes.DiscoveryDNS
		//lint:ignore SA1019 control planes (ours included) still send the field
		if r := c.GetDnsRefreshRate(); r != nil {
			u.DNSRefresh = r.AsDuration()
		}
	default:
		errs.add(path+".type", "%s is not supported (EDS, STATIC, STRICT_DNS, LOGICAL_DNS)", c.GetType())
	}
	u.Endpoints = claEndpoints(cla)
	return u, len(*errs) == n
}

// clusterHTTP2 reports whether the cluster speaks HTTP/2 to its endpoints.
func clusterHTTP2(c *clusterv3.Cluster) bool {
	//lint:ignore SA1019 older control planes still send the deprecated field
	if c.GetHttp2ProtocolOptions() != nil {
		return true
	}
	a := c.GetTypedExtensionProtocolOptions()[HTTPProtocolOptionsKey]
	if a == nil {
		return false
	}
	var o httpv3.HttpProtocolOptions
	if a.UnmarshalTo(&o) != nil {
		return false
	}
	return o.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
}

// claEndpoints lists the endpoints of a load assignment that may take
// traffic (not unhealthy, draining or timed out).
func claEndpoints(cla *endpointv3.ClusterLoadAssignment) []string {
	var eps []string
	for _, loc := range cla.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			switch lb.GetHealthStatus() {
			case corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_DRAINING, corev3.HealthStatus_TIMEOUT:
				continue
			}
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				continue
			}
			ep := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
			if !slicesContains(eps, ep) {
				eps = append(eps, ep)
			}
		}
	}
	return eps
}

// specEqual reports whether two translated specs are the same, so that a
// response that changes nothing hopwatch uses is not applied again.
func specEqual(a, b *routes.Spec) bool {
	ya, errA := yaml.Marshal(a)
	yb, errB := yaml.Marshal(b)
	return errA == nil && errB == nil && string(ya) == string(yb)
}

func yamlMarshal(v any) ([]byte, error) { return yaml.Marshal(v) }
