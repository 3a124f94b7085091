package xds

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/routes"
)

// TestClientOverTLS: the client's own connection to the management server
// (xds.tls) verifies the server against ca_file and server_name and shows
// a client certificate for mTLS; a wrong CA, a wrong name or a missing
// client certificate is refused, with the reason in /config's last_error,
// hopwatch_xds_connected at 0 and nothing applied.
func TestClientOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca, other := testkit.NewCA(t, "xds-ca"), testkit.NewCA(t, "another-ca")
	srv := ca.Issue(t, testkit.Leaf{CommonName: "xds", DNSNames: []string{"xds.local"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	cli := ca.Issue(t, testkit.Leaf{Serial: 3, CommonName: "replica-1"})
	caFile, otherFile := testkit.WriteFile(t, dir, "ca.pem", ca.PEM), testkit.WriteFile(t, dir, "other.pem", other.PEM)
	certFile, keyFile := testkit.WriteFile(t, dir, "cli.pem", cli.CertPEM), testkit.WriteFile(t, dir, "cli-key.pem", cli.KeyPEM)
	serverCert, err := tls.X509KeyPair(srv.CertPEM, srv.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	clients := x509.NewCertPool()
	clients.AddCert(ca.Cert)

	for _, tc := range []struct {
		name    string
		mtls    bool // the server requires a client certificate
		tls     routes.UpstreamTLS
		refused string // "": connects and applies
	}{
		{"server verified by ca_file and server_name", false, routes.UpstreamTLS{CAFile: caFile, ServerName: "xds.local"}, ""},
		{"server verified by its IP", false, routes.UpstreamTLS{CAFile: caFile}, ""},
		{"mutual TLS", true, routes.UpstreamTLS{CAFile: caFile, ServerName: "xds.local", CertFile: certFile, KeyFile: keyFile}, ""},
		{"wrong CA", false, routes.UpstreamTLS{CAFile: otherFile, ServerName: "xds.local"}, "certificate signed by unknown authority"},
		{"wrong server name", false, routes.UpstreamTLS{CAFile: caFile, ServerName: "cp.example"}, "not cp.example"},
		// Over TLS 1.3 the server refuses after the client's handshake
		// is done, and the client may see the broken pipe first; over
		// 1.2 the handshake itself fails, with the server's alert.
		{"no client certificate for an mTLS server", true, routes.UpstreamTLS{CAFile: caFile, ServerName: "xds.local"}, "authentication handshake failed: remote error: tls: handshake failure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := &tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}
			if tc.mtls {
				conf.ClientAuth, conf.ClientCAs = tls.RequireAndVerifyClientCert, clients
				if tc.tls.CertFile == "" {
					conf.MaxVersion = tls.VersionTLS12
				}
			}
			ts := startTestServer(t, false, grpc.Creds(credentials.NewTLS(conf)))
			ts.set(t, "n", "1", fleetSpec(), nil)
			rec := &recorder{}
			x := tc.tls
			c, reg := runClient(t, config.XDS{Server: ts.addr, NodeID: "n", TLS: &x}, rec.apply)
			if tc.refused == "" {
				waitFor(t, "the configuration over TLS", func() bool { return rec.count() == 1 })
				if g := testkit.Metric(t, reg, "hopwatch_xds_connected", nil); g != 1 {
					t.Errorf("hopwatch_xds_connected = %v", g)
				}
				return
			}
			waitFor(t, "the refusal", func() bool { return c.Status().LastError != "" })
			time.Sleep(100 * time.Millisecond)
			st := c.Status()
			if !strings.Contains(st.LastError, tc.refused) || st.Connected || rec.count() != 0 {
				t.Errorf("status %+v, %d applies; want refused with %q", st, rec.count(), tc.refused)
			}
			if g := testkit.Metric(t, reg, "hopwatch_xds_connected", nil); g != 0 {
				t.Errorf("hopwatch_xds_connected = %v", g)
			}
		})
	}
}
