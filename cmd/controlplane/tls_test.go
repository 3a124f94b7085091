package main

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/xds"
)

// TestFleetTLS: tls blocks of a fleet file are published as Envoy TLS
// transport sockets (a listener's DownstreamTlsContext, an upstream's
// UpstreamTlsContext, with the paths as written), and a fleet asking
// replicas not to verify an upstream is not published at all.
func TestFleetTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testkit.NewCA(t, "fleet")
	pair := ca.Issue(t, testkit.Leaf{CommonName: "bot", DNSNames: []string{"bot.local"}})
	caFile := testkit.WriteFile(t, dir, "ca.pem", ca.PEM)
	cert, key := testkit.WriteFile(t, dir, "tls.crt", pair.CertPEM), testkit.WriteFile(t, dir, "tls.key", pair.KeyPEM)
	fleet := func(upstreamTLS string) string {
		return fmt.Sprintf(`
callers: [client]
listeners:
  - {name: bot, address: 127.0.0.1:7443, protocol: grpc, caller_from: client_cert,
     tls: {cert_file: %[1]q, key_file: %[2]q, client_ca_file: %[3]q}}
routes:
  - {name: all, listener: bot, match: {grpc_service: bot.v1.Bot}, upstream: nlu}
upstreams:
  - {name: nlu, protocol: grpc, endpoints: [127.0.0.1:7101], tls: %[4]s}
`, cert, key, caFile, upstreamTLS)
	}
	for _, tc := range []struct {
		name, upstreamTLS, refused string
	}{
		{"mTLS listener and upstream", fmt.Sprintf("{ca_file: %q, server_name: nlu.local, cert_file: %q, key_file: %q}", caFile, cert, key), ""},
		{"insecure_skip_verify", "{insecure_skip_verify: true}", "insecure_skip_verify is not served over xDS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "fleet.yaml")
			writeFile(t, path, fleet(tc.upstreamTLS))
			cp, err := newControlPlane(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if tc.refused != "" {
				if err == nil || !strings.Contains(err.Error(), tc.refused) {
					t.Fatalf("load = %v, want %q", err, tc.refused)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s, err := cp.cache.GetSnapshot(fleetKey)
			if err != nil {
				t.Fatal(err)
			}
			l := s.GetResources(resourcev3.ListenerType)["bot"].(*listenerv3.Listener)
			var down tlsv3.DownstreamTlsContext
			ts := l.GetFilterChains()[0].GetTransportSocket()
			if ts.GetName() != xds.TLSTransportSocket || ts.GetTypedConfig().UnmarshalTo(&down) != nil {
				t.Fatalf("listener transport socket %v", ts)
			}
			if down.GetCommonTlsContext().GetTlsCertificates()[0].GetCertificateChain().GetFilename() != cert ||
				down.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename() != caFile ||
				!down.GetRequireClientCertificate().GetValue() {
				t.Errorf("listener TLS %v", &down)
			}
			c := s.GetResources(resourcev3.ClusterType)["nlu"].(*clusterv3.Cluster)
			var up tlsv3.UpstreamTlsContext
			if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&up); err != nil {
				t.Fatal(err)
			}
			if up.GetSni() != "nlu.local" || up.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename() != caFile ||
				up.GetCommonTlsContext().GetTlsCertificates()[0].GetPrivateKey().GetFilename() != key {
				t.Errorf("upstream TLS %v", &up)
			}
		})
	}
}
