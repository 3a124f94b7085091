package xds

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
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
	for _, tc := range []struct {
		name string
		spec *routes.Spec
	}{
		{"cleartext fleet", fleetSpec()},
		{"TLS listeners and upstreams", tlsFleetSpec()},
		{"grpc-go's path (relay: messages)", func() *routes.Spec {
			s := fleetSpec()
			s.Listeners[0].Relay = routes.ListenerRelayMessages
			return s
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec
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
			got, _, err := translate(resourcesOf(res), &routes.Spec{Callers: spec.Callers}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if a, b := yamlOf(t, got), yamlOf(t, spec); a != b {
				t.Errorf("round trip differs:\n--- got\n%s\n--- want\n%s", a, b)
			}
		})
	}
}

// tlsFleetSpec is fleetSpec with TLS everywhere it goes: an mTLS listener
// naming callers by their certificates, a TLS 1.3 listener, an upstream
// with its CA, client certificate and name, and an h2 upstream on the
// system roots.
func tlsFleetSpec() *routes.Spec {
	s := fleetSpec()
	s.Listeners[0].TLS = &routes.ListenerTLS{CertFile: "/etc/hopwatch/tls.crt", KeyFile: "/etc/hopwatch/tls.key", ClientCAFile: "/etc/hopwatch/clients.pem"}
	s.Listeners[0].CallerFrom, s.Listeners[0].CallerHeader = routes.CallerFromClientCert, ""
	s.Listeners[1].TLS = &routes.ListenerTLS{CertFile: "/etc/hopwatch/tls.crt", KeyFile: "/etc/hopwatch/tls.key", MinVersion: routes.TLSVersion13}
	s.Upstreams[1].TLS = &routes.UpstreamTLS{CAFile: "/etc/hopwatch/nlu-ca.pem", CertFile: "/etc/hopwatch/client.crt",
		KeyFile: "/etc/hopwatch/client.key", ServerName: "nlu.bot.svc"}
	s.Upstreams[0].Protocol = routes.UpstreamH2
	return s
}

func mustSocket(t *testing.T, m proto.Message) *corev3.TransportSocket {
	t.Helper()
	ts, err := tlsSocket(m)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// TestTranslateInlineTLS: inline PEM (bytes or string) becomes private
// files named by content: the same certificate, the same path, so an
// unchanged configuration translates the same; keys are not readable by
// others.
func TestTranslateInlineTLS(t *testing.T) {
	files := &inlineFiles{base: t.TempDir()}
	defer files.Close()
	res, err := Build(fleetSpec())
	if err != nil {
		t.Fatal(err)
	}
	res.Clusters[1].TransportSocket = mustSocket(t, &tlsv3.UpstreamTlsContext{Sni: "nlu.bot.svc", CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificates: []*tlsv3.TlsCertificate{{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "CHAIN"}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("KEY")}}}},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("CA")}}}}}})
	first, _, err := translate(resourcesOf(res), &routes.Spec{}, files)
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := translate(resourcesOf(res), &routes.Spec{}, files)
	if err != nil {
		t.Fatal(err)
	}
	if !specEqual(first, again) {
		t.Errorf("the same inline certificates translate differently")
	}
	u := first.Upstreams[1].TLS
	for _, tc := range []struct{ name, path, content string }{
		{"trusted_ca", u.CAFile, "CA"}, {"certificate_chain", u.CertFile, "CHAIN"}, {"private_key", u.KeyFile, "KEY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := os.ReadFile(tc.path)
			if err != nil || string(b) != tc.content {
				t.Fatalf("%s: %q, %v", tc.path, b, err)
			}
			fi, _ := os.Stat(tc.path)
			di, _ := os.Stat(filepath.Dir(tc.path))
			if fi.Mode().Perm() != 0o600 || di.Mode().Perm() != 0o700 {
				t.Errorf("modes %v %v", fi.Mode(), di.Mode())
			}
		})
	}
	if u.ServerName != "nlu.bot.svc" {
		t.Errorf("server name %q", u.ServerName)
	}
	// Envoy's smallest TLS cluster: no common context at all. The
	// upstream is verified against the system roots.
	res.Clusters[1].TransportSocket = mustSocket(t, &tlsv3.UpstreamTlsContext{})
	bare, _, err := translate(resourcesOf(res), &routes.Spec{}, files)
	if err != nil {
		t.Fatal(err)
	}
	if got := bare.Upstreams[1].TLS; got == nil || *got != (routes.UpstreamTLS{}) {
		t.Errorf("an empty UpstreamTlsContext gives tls %+v, want TLS on the system roots", got)
	}
	dir := filepath.Dir(u.CAFile)
	if err := files.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s left behind: %v", dir, err)
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
	spec, _, err := translate(resourcesOf(res), &routes.Spec{}, nil)
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
		// A static cluster is configuration: one without endpoints is a
		// mistake (an EDS assignment with none is a fleet scaled to
		// zero: TestTranslateEmptyAssignment).
		{"static cluster without endpoints", func(r *Resources) {
			r.Clusters[0] = proto.Clone(r.Clusters[0]).(*clusterv3.Cluster)
			r.Clusters[0].ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
			r.Clusters[0].EdsClusterConfig = nil
			r.Clusters[0].LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: r.Clusters[0].Name}
		}, `cluster "kb" (upstreams[0].endpoints): at least one endpoint`},
		{"SDS certificate", func(r *Resources) {
			r.Clusters[1].TransportSocket = mustSocket(t, &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
				TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "client"}}}})
		}, `cluster "nlu".transport_socket.common_tls_context: tls_certificate_sds_secret_configs not supported: hopwatch takes certificates as files or inline PEM`},
		{"SDS validation context", func(r *Resources) {
			r.Clusters[1].TransportSocket = mustSocket(t, &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "ca"}}}})
		}, `validation_context_sds_secret_config not supported`},
		{"untrusted chains are never accepted", func(r *Resources) {
			r.Clusters[1].TransportSocket = mustSocket(t, &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustChainVerification: tlsv3.CertificateValidationContext_ACCEPT_UNTRUSTED}}}})
		}, `cluster "nlu".transport_socket.common_tls_context.validation_context: trust_chain_verification not supported`},
		{"CA from an environment variable", func(r *Resources) {
			r.Clusters[1].TransportSocket = mustSocket(t, &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_EnvironmentVariable{EnvironmentVariable: "CA"}}}}}})
		}, `validation_context.trusted_ca: *corev3.DataSource_EnvironmentVariable is not supported`},
		{"another transport socket", func(r *Resources) {
			r.Clusters[1].TransportSocket = mustSocket(t, &tlsv3.DownstreamTlsContext{})
		}, `cluster "nlu".transport_socket: transport socket "envoy.transport_sockets.tls": only envoy.transport_sockets.tls with a UpstreamTlsContext`},
		{"client CAs without requiring client certificates", func(r *Resources) {
			r.Listeners[0].FilterChains[0].TransportSocket = mustSocket(t, &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
				TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: fileSource("c.pem"), PrivateKey: fileSource("k.pem")}},
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa: fileSource("ca.pem")}}}})
		}, `listener "bot-grpc".filter_chain.transport_socket.common_tls_context.validation_context: hopwatch verifies client certificates only when it requires them`},
		{"TLS listener without a certificate", func(r *Resources) {
			r.Listeners[0].FilterChains[0].TransportSocket = mustSocket(t, &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{}})
		}, `a TLS listener needs its certificate`},
		{"TLS 1.0", func(r *Resources) {
			r.Listeners[0].FilterChains[0].TransportSocket = mustSocket(t, &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
				TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: fileSource("c.pem"), PrivateKey: fileSource("k.pem")}},
				TlsParams:       &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_0}}})
		}, `tls_minimum_protocol_version: TLSv1_0: hopwatch speaks TLS 1.2 and 1.3 only`},
		{"inline certificates without a directory", func(r *Resources) {
			r.Clusters[1].TransportSocket = mustSocket(t, &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "PEM"}}}}}})
		}, `inline certificates need a directory`},
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
			_, _, err = translate(resourcesOf(res), &routes.Spec{}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

// TestTranslateEmptyAssignment: an EDS assignment that lists no endpoint
// that may take traffic (scaled to zero, or all unhealthy or draining) is
// applied, not NACKed: the upstream has no endpoints and fails its calls
// at once. Before, it was refused and the replica kept the previous
// endpoints, whose addresses may by then be other pods'.
func TestTranslateEmptyAssignment(t *testing.T) {
	for _, tc := range []struct {
		name string
		lbs  []*endpointv3.LbEndpoint
	}{
		{"scaled to zero", nil},
		{"every endpoint draining or unhealthy", []*endpointv3.LbEndpoint{
			{HealthStatus: corev3.HealthStatus_DRAINING, HostIdentifier: testEndpoint("127.0.0.1", 7201)},
			{HealthStatus: corev3.HealthStatus_UNHEALTHY, HostIdentifier: testEndpoint("127.0.0.2", 7201)},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Build(fleetSpec())
			if err != nil {
				t.Fatal(err)
			}
			res.Endpoints[0] = &endpointv3.ClusterLoadAssignment{ClusterName: res.Endpoints[0].GetClusterName()}
			if tc.lbs != nil {
				res.Endpoints[0].Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: tc.lbs}}
			}
			spec, _, err := translate(resourcesOf(res), &routes.Spec{}, nil)
			if err != nil {
				t.Fatalf("an empty assignment was refused: %v", err)
			}
			var kb *routes.Upstream
			for i := range spec.Upstreams {
				if spec.Upstreams[i].Name == res.Endpoints[0].GetClusterName() {
					kb = &spec.Upstreams[i]
				}
			}
			if kb == nil || len(kb.Endpoints) != 0 || !kb.EndpointsFromEDS {
				t.Fatalf("upstream %+v, want %q with no endpoints, from EDS", kb, res.Endpoints[0].GetClusterName())
			}
		})
	}
}

func testEndpoint(ip string, port uint32) *endpointv3.LbEndpoint_Endpoint {
	return &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}}
}
