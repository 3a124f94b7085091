package xds

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
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
			var log syncBuffer
			c, reg := runClientLog(t, config.XDS{Server: ts.addr, NodeID: "n", TLS: &x}, rec.apply, &log)
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
			if l := log.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "xDS stream ended") || !strings.Contains(l, tc.refused) {
				t.Errorf("log does not say why:\n%s", l)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestTLSOverXDS: a TLS listener and an mTLS upstream arrive over xDS
// (built from the fleet schema's tls blocks, with the CA as a file or
// inline in the resource) and traffic flows: the client verifies the
// listener's certificate, the proxy verifies the upstream's and shows its
// client certificate, which the upstream requires.
func TestTLSOverXDS(t *testing.T) {
	dir := t.TempDir()
	ca := testkit.NewCA(t, "fleet-ca")
	local := []net.IP{net.IPv4(127, 0, 0, 1)}
	srvPair := ca.Issue(t, testkit.Leaf{CommonName: "backend", DNSNames: []string{"backend.local"}})
	lisPair := ca.Issue(t, testkit.Leaf{Serial: 3, CommonName: "hopwatch", IPs: local})
	cliPair := ca.Issue(t, testkit.Leaf{Serial: 4, CommonName: "hopwatch-client"})
	caFile := testkit.WriteFile(t, dir, "ca.pem", ca.PEM)
	lisCert, lisKey := testkit.WriteFile(t, dir, "lis.pem", lisPair.CertPEM), testkit.WriteFile(t, dir, "lis-key.pem", lisPair.KeyPEM)
	cliCert, cliKey := testkit.WriteFile(t, dir, "cli.pem", cliPair.CertPEM), testkit.WriteFile(t, dir, "cli-key.pem", cliPair.KeyPEM)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)

	backendCert, err := tls.X509KeyPair(srvPair.CertPEM, srvPair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "backend saw "+r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	backend.TLS = &tls.Config{Certificates: []tls.Certificate{backendCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	backend.StartTLS()
	defer backend.Close()

	for _, tc := range []struct {
		name     string
		inlineCA bool
	}{
		{"CA as a file", false},
		{"CA inline in the cluster", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t)
			spec := &routes.Spec{
				Listeners: []routes.Listener{{Name: "edge", Address: "127.0.0.1:" + strconv.Itoa(int(port)), Protocol: routes.ListenerHTTP,
					TLS: &routes.ListenerTLS{CertFile: lisCert, KeyFile: lisKey}}},
				Routes: []routes.Route{{Name: "all", Listener: "edge", Upstream: "backend"}},
				Upstreams: []routes.Upstream{{Name: "backend", Protocol: routes.UpstreamHTTP, Endpoints: []string{backend.Listener.Addr().String()},
					TLS: &routes.UpstreamTLS{CAFile: caFile, ServerName: "backend.local", CertFile: cliCert, KeyFile: cliKey}}},
			}
			ts := startTestServer(t, false)
			ts.set(t, "n", "1", spec, func(r *Resources) {
				if !tc.inlineCA {
					return
				}
				// As a control plane that ships the CA itself would.
				r.Clusters[0].TransportSocket = mustSocket(t, &tlsv3.UpstreamTlsContext{Sni: "backend.local", CommonTlsContext: &tlsv3.CommonTlsContext{
					TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: fileSource(cliCert), PrivateKey: fileSource(cliKey)}},
					ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
						TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: ca.PEM}}}}}})
			})
			p := proxy.New(proxy.Options{Logger: testkit.Discard()})
			defer func() {
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				p.Shutdown(sctx)
			}()
			c, _ := runClient(t, config.XDS{Server: ts.addr, NodeID: "n"}, p.Apply)
			waitFor(t, "the TLS listener", func() bool { return p.Addr("edge") != nil })
			hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
			defer hc.CloseIdleConnections()
			resp, err := hc.Get("https://" + p.Addr("edge").String() + "/hello")
			if err != nil {
				t.Fatalf("%v (xDS status %+v, last NACK %+v)", err, c.Status(), c.Status().LastNACK)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || string(b) != "backend saw hopwatch-client" {
				t.Errorf("through hopwatch: %d %q", resp.StatusCode, b)
			}
		})
	}
}
