package xds

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/routes"
)

// FuzzTLSContext: whatever bytes a control plane sends as a TLS context,
// on a cluster or a listener, translating them returns a result or field
// errors, never a panic (a crash would take the proxy down with it).
func FuzzTLSContext(f *testing.F) {
	for _, m := range []proto.Message{
		&tlsv3.UpstreamTlsContext{},
		&tlsv3.DownstreamTlsContext{},
		&tlsv3.UpstreamTlsContext{Sni: "x", CommonTlsContext: &tlsv3.CommonTlsContext{TlsParams: &tlsv3.TlsParameters{}}},
		&tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true), CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: fileSource("c"), PrivateKey: &corev3.DataSource{}}},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{}}}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true)
		f.Add(b, false)
	}
	files := &inlineFiles{base: f.TempDir()}
	f.Cleanup(func() { files.Close() })
	f.Fuzz(func(t *testing.T, b []byte, upstream bool) {
		var m proto.Message = &tlsv3.DownstreamTlsContext{}
		if upstream {
			m = &tlsv3.UpstreamTlsContext{}
		}
		if proto.Unmarshal(b, m) != nil {
			return
		}
		a, err := anypb.New(m)
		if err != nil {
			return
		}
		ts := &corev3.TransportSocket{Name: TLSTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
		var errs fieldErrs
		if upstream {
			translateUpstreamTLS(ts, "cluster", files, &errs)
		} else {
			translateListenerTLS(ts, "listener", files, &errs)
		}
	})
}

// FuzzTranslate: any listener, route configuration, cluster or assignment
// (replacing one of a valid fleet's) translates to a spec or to field
// errors, never a panic.
func FuzzTranslate(f *testing.F) {
	res, err := Build(tlsFleetSpec())
	if err != nil {
		f.Fatal(err)
	}
	for kind, ms := range [][]proto.Message{
		{res.Listeners[0], res.Listeners[1]}, {res.Routes[0]}, {res.Clusters[0], res.Clusters[1]}, {res.Endpoints[0]},
	} {
		for _, m := range ms {
			b, err := proto.Marshal(m)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b, uint8(kind))
		}
	}
	files := &inlineFiles{base: f.TempDir()}
	f.Cleanup(func() { files.Close() })
	f.Fuzz(func(t *testing.T, b []byte, kind uint8) {
		res, err := Build(tlsFleetSpec())
		if err != nil {
			t.Fatal(err)
		}
		rs := resourcesOf(res)
		var m proto.Message
		switch kind % 4 {
		case 0:
			m = &listenerv3.Listener{}
		case 1:
			m = &routev3.RouteConfiguration{}
		case 2:
			m = &clusterv3.Cluster{}
		default:
			m = &endpointv3.ClusterLoadAssignment{}
		}
		if proto.Unmarshal(b, m) != nil {
			return
		}
		switch x := m.(type) {
		case *listenerv3.Listener:
			rs.listeners[x.GetName()] = x
		case *routev3.RouteConfiguration:
			rs.routes[x.GetName()] = x
		case *clusterv3.Cluster:
			rs.clusters[x.GetName()] = x
		case *endpointv3.ClusterLoadAssignment:
			rs.endpoints[x.GetClusterName()] = x
		}
		routeNames(rs)
		endpointNames(rs)
		missingClusters(rs)
		translate(rs, &routes.Spec{}, files)
	})
}
