package xds

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
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
