package xds

import (
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	testresource "github.com/envoyproxy/go-control-plane/pkg/test/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/hopwatch/hopwatch/routes"
)

func fleetSpec() *routes.Spec {
	return &routes.Spec{
		Callers: []string{"gateway"},
		Listeners: []routes.Listener{
			{Name: "bot-grpc", Address: "127.0.0.1:7000", Protocol: routes.ListenerGRPC, CallerHeader: "x-hop-caller"},
			{Name: "bot-http", Address: "127.0.0.1:7080", Protocol: routes.ListenerHTTP, Caller: "gateway"},
		},
		Routes: []routes.Route{
			{Name: "parse", Listener: "bot-grpc", Match: routes.Match{GRPCMethod: "/bot.v1.NLU/Parse"}, Upstream: "nlu",
				Timeout: 2 * time.Second, Retry: &routes.Retry{Attempts: 3, On: []string{"unavailable", "connect-failure"}, Budget: 0.1}},
			{Name: "nlu", Listener: "bot-grpc", Match: routes.Match{GRPCService: "bot.v1.NLU"}, Upstream: "nlu", Timeout: -time.Second},
			{Name: "kb", Listener: "bot-http", Upstream: "kb", Match: routes.Match{PathPrefix: "/kb/", Method: "POST",
				Host: "kb.example.com", Headers: map[string]string{"x-tenant": "acme"}},
				Retry: &routes.Retry{Attempts: 2, On: []string{"503", "5xx"}},
				Fallback: &routes.Fallback{After: 300 * time.Millisecond, Use: []string{"static"},
					Static: &routes.FallbackStatic{Status: 200, Body: `{"degraded":true}`}}},
		},
		Upstreams: []routes.Upstream{
			{Name: "kb", Protocol: routes.UpstreamHTTP, Endpoints: []string{"127.0.0.1:7201"}, Balance: routes.BalanceP2CEWMA,
				DialTimeout: time.Second, MaxConcurrent: 64,
				Breaker: &routes.Breaker{SlowCall: time.Second, SlowRatio: 0.5}},
			{Name: "nlu", Protocol: routes.UpstreamGRPC, Endpoints: []string{"127.0.0.1:7101", "[::1]:7102"},
				Balance: routes.BalanceRoundRobin, DialTimeout: routes.DefaultDialTimeout,
				Outlier: &routes.Outlier{ConsecutiveFailures: 3, BaseEjection: time.Second, MaxEjection: time.Minute, MaxEjectedPercent: 30}},
		},
	}
}

func resourcesOf(r *Resources) *resources {
	rs := &resources{listeners: map[string]*listenerv3.Listener{}, routes: map[string]*routev3.RouteConfiguration{},
		clusters: map[string]*clusterv3.Cluster{}, endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
	for _, x := range r.Listeners {
		rs.listeners[x.GetName()] = x
	}
	for _, x := range r.Routes {
		rs.routes[x.GetName()] = x
	}
	for _, x := range r.Clusters {
		rs.clusters[x.GetName()] = x
	}
	for _, x := range r.Endpoints {
		rs.endpoints[x.GetClusterName()] = x
	}
	return rs
}

// TestBuildTranslateRoundTrip: what the control plane builds from a fleet
// file is valid for Envoy's own rules (protoc-gen-validate) and translates
// back into the same routing.
func TestBuildTranslateRoundTrip(t *testing.T) {
	spec := fleetSpec()
	res, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range res.all() {
		if v, ok := m.(validator); ok {
			if err := v.ValidateAll(); err != nil {
				t.Errorf("%T %v: %v", m, m, err)
			}
		}
	}
	got, _, err := translate(resourcesOf(res), &routes.Spec{Callers: spec.Callers})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := yamlOf(t, got), yamlOf(t, spec); a != b {
		t.Errorf("round trip differs:\n--- got\n%s\n--- want\n%s", a, b)
	}
}

func yamlOf(t *testing.T, s *routes.Spec) string {
	t.Helper()
	c := *s
	if !specEqual(&c, &c) {
		t.Fatal("spec does not marshal")
	}
	b, _ := yamlMarshal(&c)
	return string(b)
}

// TestTranslateGoControlPlaneResources: resources built by
// go-control-plane's own test builders, as its examples serve them, are
// accepted.
func TestTranslateGoControlPlaneResources(t *testing.T) {
	res := &Resources{
		Listeners: []*listenerv3.Listener{testresource.MakeRouteHTTPListener(testresource.Ads, "listener_0", 10000, "local_route")},
		Routes:    []*routev3.RouteConfiguration{testresource.MakeRouteConfig("local_route", "example_cluster")},
		Clusters:  []*clusterv3.Cluster{testresource.MakeCluster(testresource.Ads, "example_cluster")},
		Endpoints: []*endpointv3.ClusterLoadAssignment{testresource.MakeEndpoint("example_cluster", 8080)},
	}
	spec, _, err := translate(resourcesOf(res), &routes.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	want := &routes.Spec{
		Listeners: []routes.Listener{{Name: "listener_0", Address: "127.0.0.1:10000", Protocol: routes.ListenerHTTP}},
		Routes:    []routes.Route{{Name: "local_route-0", Listener: "listener_0", Upstream: "example_cluster"}},
		Upstreams: []routes.Upstream{{Name: "example_cluster", Protocol: routes.UpstreamHTTP, Endpoints: []string{"127.0.0.1:8080"},
			Balance: routes.BalanceRoundRobin, DialTimeout: 5 * time.Second}},
	}
	if a, b := yamlOf(t, spec), yamlOf(t, want); a != b {
		t.Errorf("got\n%s\nwant\n%s", a, b)
	}
}

// TestTranslateRejects: what hopwatch cannot honour is refused with the
// resource and field path, and validation errors name the resource.
func TestTranslateRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(r *Resources)
		want   string
	}{
		{"regex path", func(r *Resources) {
			r.Routes[0].VirtualHosts[0].Routes[0].Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{}
		}, `route_configuration "bot-grpc".virtual_hosts[0].routes[0].match: only prefix and path matches are supported`},
		{"grpc listener prefix that is not a service", func(r *Resources) {
			r.Routes[0].VirtualHosts[0].Routes[1].Match.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/kb/"}
		}, `route_configuration "bot-grpc".virtual_hosts[0].routes[1].match.prefix: "/kb/": on a grpc listener a prefix is a gRPC service`},
		{"unsupported lb policy", func(r *Resources) { r.Clusters[0].LbPolicy = clusterv3.Cluster_RING_HASH },
			`cluster "kb".lb_policy: RING_HASH is not supported`},
		{"unknown metadata field", func(r *Resources) {
			md, _ := MetaStruct(map[string]any{"protocl": "grpc"})
			r.Clusters[1].Metadata = md
		}, `cluster "nlu".metadata.filter_metadata.hopwatch: protocl: unknown field`},
		{"bad fallback in metadata", func(r *Resources) {
			md, _ := MetaStruct(map[string]any{"fallback": map[string]any{"after": "soon"}})
			r.Routes[2].VirtualHosts[0].Routes[0].Metadata = md // bot-http
		}, `fallback.after`},
		{"validation names the resource", func(r *Resources) {
			r.Routes[0].VirtualHosts[0].Routes[0].Match.PathSpecifier = &routev3.RouteMatch_Path{Path: "/not-a-method"}
		}, `route_configuration "bot-grpc".virtual_hosts[0].routes[0] (routes[0].match.grpc_method)`},
		{"no endpoints", func(r *Resources) { r.Endpoints[0].Endpoints = nil },
			`cluster "kb" (upstreams[0].endpoints): at least one endpoint`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Build(fleetSpec())
			if err != nil {
				t.Fatal(err)
			}
			for i, x := range res.Routes { // mutate copies
				res.Routes[i] = proto.Clone(x).(*routev3.RouteConfiguration)
			}
			tc.mutate(res)
			_, _, err = translate(resourcesOf(res), &routes.Spec{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}
