package xds

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/routes"
)

// APIListenerPrefix names the API listeners built for proxyless gRPC
// clients: the listener for target xds:///bot-grpc is "grpc/bot-grpc"
// (their bootstrap sets client_default_listener_resource_name_template to
// "grpc/%s"), so that it does not clash with hopwatch's own listener of
// that name, which has an address.
const APIListenerPrefix = "grpc/"

// Resources are the xDS resources of a fleet, by kind.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
}

// Build turns a valid routing spec into xDS resources: per listener, a
// listener with an HTTP connection manager whose routes come by RDS under
// the listener's name, and an API listener for proxyless gRPC clients on
// the same routes; per upstream, an EDS cluster (STRICT_DNS with
// discovery: dns) and its load assignment. Settings only hopwatch has
// travel in metadata under MetadataKey.
func Build(spec *routes.Spec) (*Resources, error) {
	if errs := routes.Validate(spec); len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = e.Error()
		}
		return nil, errors.New(strings.Join(msgs, "; "))
	}
	out := &Resources{}
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	for i, l := range spec.Listeners {
		hcm := &hcmv3.HttpConnectionManager{
			StatPrefix: l.Name,
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
				ConfigSource: ads, RouteConfigName: l.Name}},
			HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router",
				ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
		}
		if l.Protocol == routes.ListenerGRPC {
			hcm.CodecType = hcmv3.HttpConnectionManager_HTTP2
		}
		hcmAny, err := anypb.New(hcm)
		if err != nil {
			return nil, err
		}
		apiHCM := proto.Clone(hcm).(*hcmv3.HttpConnectionManager)
		apiHCM.GetRds().RouteConfigName = APIListenerPrefix + l.Name
		apiAny, err := anypb.New(apiHCM)
		if err != nil {
			return nil, err
		}
		host, port, err := splitHostPort(l.Address)
		if err != nil {
			return nil, fmt.Errorf("listeners[%d].address: %w", i, err)
		}
		md, err := MetaStruct(ListenerMeta{Protocol: l.Protocol, Caller: l.Caller, CallerHeader: l.CallerHeader, CallerFrom: l.CallerFrom,
			TrustedProxies: l.TrustedProxies, MaxMessageBytes: l.MaxMessageBytes, Limits: l.Limits, Relay: l.Relay})
		if err != nil {
			return nil, err
		}
		chain := &listenerv3.FilterChain{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcmAny}}}}
		if l.TLS != nil {
			if chain.TransportSocket, err = buildListenerTLS(l.TLS); err != nil {
				return nil, fmt.Errorf("listeners[%d].tls: %w", i, err)
			}
		}
		out.Listeners = append(out.Listeners,
			&listenerv3.Listener{
				Name:         l.Name,
				Address:      socketAddress(host, port),
				Metadata:     md,
				FilterChains: []*listenerv3.FilterChain{chain},
			},
			&listenerv3.Listener{
				Name:        APIListenerPrefix + l.Name,
				ApiListener: &listenerv3.ApiListener{ApiListener: apiAny},
			})
		rc := &routev3.RouteConfiguration{Name: l.Name}
		vh := &routev3.VirtualHost{Name: l.Name, Domains: []string{"*"}}
		for j, r := range spec.Routes {
			if r.Listener != l.Name {
				continue
			}
			er, err := buildRoute(r)
			if err != nil {
				return nil, fmt.Errorf("routes[%d]: %w", j, err)
			}
			vh.Routes = append(vh.Routes, er)
		}
		rc.VirtualHosts = []*routev3.VirtualHost{vh}
		out.Routes = append(out.Routes, rc, apiRoutes(spec, rc))
	}
	for i, u := range spec.Upstreams {
		c, cla, err := buildCluster(u, ads)
		if err != nil {
			return nil, fmt.Errorf("upstreams[%d]: %w", i, err)
		}
		out.Clusters = append(out.Clusters, c)
		if cla != nil {
			out.Endpoints = append(out.Endpoints, cla)
		}
	}
	return out, nil
}

// WarmHeader is the header of the routes that keep every gRPC cluster
// referenced in the route configurations of proxyless gRPC clients. A
// grpc-go channel builds a cluster's balancer only once a route names it,
// and a call routed to a cluster whose balancer is not yet there fails
// UNAVAILABLE ("unknown cluster selected for RPC"): with every gRPC
// cluster named all along, a route moving between them never fails a call.
// No client sends this header; the routes exist only to be referenced.
const WarmHeader = "x-hopwatch-warm-cluster"

// apiRoutes is the route configuration of the API listener of rc's
// listener: rc's routes, then one never-matching route per gRPC cluster.
func apiRoutes(spec *routes.Spec, rc *routev3.RouteConfiguration) *routev3.RouteConfiguration {
	api := proto.Clone(rc).(*routev3.RouteConfiguration)
	api.Name = APIListenerPrefix + rc.GetName()
	vh := api.VirtualHosts[0]
	for _, u := range spec.Upstreams {
		if u.Protocol != routes.UpstreamGRPC {
			continue
		}
		vh.Routes = append(vh.Routes, &routev3.Route{Name: "warm-" + u.Name,
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				Headers: []*routev3.HeaderMatcher{exactHeader(WarmHeader, u.Name)}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: u.Name}}}})
	}
	return api
}

func splitHostPort(addr string) (string, uint32, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, err
	}
	return h, uint32(n), nil
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol: corev3.SocketAddress_TCP, Address: host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func exactHeader(name, value string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value}}}}
}

func buildRoute(r routes.Route) (*routev3.Route, error) {
	m := &routev3.RouteMatch{}
	switch {
	case r.Match.GRPCMethod != "":
		m.PathSpecifier = &routev3.RouteMatch_Path{Path: r.Match.GRPCMethod}
	case r.Match.GRPCService != "":
		m.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/" + r.Match.GRPCService + "/"}
	case r.Match.PathPrefix != "":
		m.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: r.Match.PathPrefix}
	default:
		m.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
	}
	if r.Match.Host != "" {
		m.Headers = append(m.Headers, exactHeader(":authority", r.Match.Host))
	}
	if r.Match.Method != "" {
		m.Headers = append(m.Headers, exactHeader(":method", r.Match.Method))
	}
	for _, k := range sortedKeys(r.Match.Headers) {
		m.Headers = append(m.Headers, exactHeader(strings.ToLower(k), r.Match.Headers[k]))
	}
	a := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: r.Upstream}}
	switch {
	case r.Timeout > 0:
		a.Timeout = durationpb.New(r.Timeout)
	case r.Timeout < 0:
		a.Timeout = durationpb.New(0) // Envoy: 0 disables the timeout
	}
	meta := RouteMeta{Fallback: r.Fallback, GenAI: r.GenAI}
	if r.Retry != nil {
		rp := &routev3.RetryPolicy{NumRetries: wrapperspb.UInt32(uint32(max(r.Retry.Attempts-1, 0)))}
		var on []string
		for _, tok := range r.Retry.On {
			switch {
			case tok == "5xx" || tok == "connect-failure":
				on = append(on, tok)
			case isStatus(tok):
				n, _ := strconv.Atoi(tok)
				rp.RetriableStatusCodes = append(rp.RetriableStatusCodes, uint32(n))
				if !containsStr(on, "retriable-status-codes") {
					on = append(on, "retriable-status-codes")
				}
			default: // a gRPC code in snake case
				on = append(on, strings.ReplaceAll(tok, "_", "-"))
			}
		}
		rp.RetryOn = strings.Join(on, ",")
		a.RetryPolicy = rp
		meta.RetryBudget = r.Retry.Budget
	}
	md, err := MetaStruct(meta)
	if err != nil {
		return nil, err
	}
	return &routev3.Route{Name: r.Name, Match: m, Action: &routev3.Route_Route{Route: a}, Metadata: md}, nil
}

func isStatus(tok string) bool {
	n, err := strconv.Atoi(tok)
	return err == nil && n >= 100 && n <= 599
}

func containsStr(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func buildCluster(u routes.Upstream, ads *corev3.ConfigSource) (*clusterv3.Cluster, *endpointv3.ClusterLoadAssignment, error) {
	md, err := MetaStruct(ClusterMeta{Protocol: u.Protocol, Breaker: u.Breaker, MaxMessageBytes: u.MaxMessageBytes, Limits: u.Limits})
	if err != nil {
		return nil, nil, err
	}
	c := &clusterv3.Cluster{Name: u.Name, Metadata: md,
		ConnectTimeout: durationpb.New(routes.DefaultDialTimeout), LbPolicy: clusterv3.Cluster_LEAST_REQUEST}
	if u.DialTimeout > 0 {
		c.ConnectTimeout = durationpb.New(u.DialTimeout)
	}
	if u.UsesTLS() {
		if c.TransportSocket, err = buildUpstreamTLS(u); err != nil {
			return nil, nil, err
		}
	}
	if u.Balance == routes.BalanceRoundRobin {
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	}
	if u.Protocol != routes.UpstreamHTTP {
		opts, err := anypb.New(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}}})
		if err != nil {
			return nil, nil, err
		}
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{HTTPProtocolOptionsKey: opts}
	}
	if u.MaxConcurrent > 0 {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority: corev3.RoutingPriority_DEFAULT, MaxRequests: wrapperspb.UInt32(uint32(u.MaxConcurrent))}}}
	}
	if o := u.Outlier; o != nil {
		od := &clusterv3.OutlierDetection{}
		if o.ConsecutiveFailures > 0 {
			od.Consecutive_5Xx = wrapperspb.UInt32(uint32(o.ConsecutiveFailures))
		}
		if o.BaseEjection > 0 {
			od.BaseEjectionTime = durationpb.New(o.BaseEjection)
		}
		if o.MaxEjection > 0 {
			od.MaxEjectionTime = durationpb.New(o.MaxEjection)
		}
		if o.MaxEjectedPercent > 0 {
			od.MaxEjectionPercent = wrapperspb.UInt32(uint32(o.MaxEjectedPercent))
		}
		c.OutlierDetection = od
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: u.Name}
	// grpc-go refuses localities without an ID, and ignores those
	// without a weight.
	loc := &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Region: "fleet"},
		LoadBalancingWeight: wrapperspb.UInt32(1)}
	for _, ep := range u.Endpoints {
		hp, _ := u.DNSEndpoint(ep)
		host, port, err := splitHostPort(hp)
		if err != nil {
			return nil, nil, err
		}
		if _, err := netip.ParseAddr(host); err != nil && !u.UsesDNS() {
			return nil, nil, fmt.Errorf("endpoint %s: EDS endpoints are IP addresses; for a name write discovery: dns", ep)
		}
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
			Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, port)}}})
	}
	cla.Endpoints = []*endpointv3.LocalityLbEndpoints{loc}
	if u.UsesDNS() {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
		c.LoadAssignment = cla
		if u.DNSRefresh > 0 {
			//lint:ignore SA1019 the replacement (the envoy.clusters.dns extension) is not read by older Envoys nor by grpc-go; the field still works
			c.DnsRefreshRate = durationpb.New(u.DNSRefresh)
		}
		return c, nil, nil
	}
	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
	c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads}
	return c, cla, nil
}

// all returns every resource, for validation in tests and for snapshots.
func (r *Resources) all() []proto.Message {
	var out []proto.Message
	for _, l := range r.Listeners {
		out = append(out, l)
	}
	for _, x := range r.Routes {
		out = append(out, x)
	}
	for _, x := range r.Clusters {
		out = append(out, x)
	}
	for _, x := range r.Endpoints {
		out = append(out, x)
	}
	return out
}
