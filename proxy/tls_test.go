package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// tlsFiles is a test CA and a server certificate for 127.0.0.1 written to
// a directory, as a listener's tls block names them.
type tlsFiles struct {
	dir        string
	ca         *testkit.CA
	cert, key  string // paths
	caFile     string // path of ca's certificate
	serverPair testkit.KeyPair
}

func newTLSFiles(t *testing.T) *tlsFiles {
	t.Helper()
	f := &tlsFiles{dir: t.TempDir(), ca: testkit.NewCA(t, "test CA")}
	f.serverPair = f.ca.Issue(t, testkit.Leaf{Serial: 10, CommonName: "hopwatch", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	f.cert = testkit.WriteFile(t, f.dir, "server.crt", f.serverPair.CertPEM)
	f.key = testkit.WriteFile(t, f.dir, "server.key", f.serverPair.KeyPEM)
	f.caFile = testkit.WriteFile(t, f.dir, "ca.crt", f.ca.PEM)
	return f
}

func (f *tlsFiles) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(f.ca.Cert)
	return p
}

// clientTLS trusts f's CA and presents pair, if any.
func (f *tlsFiles) clientTLS(t *testing.T, pair *testkit.KeyPair) *tls.Config {
	t.Helper()
	c := &tls.Config{RootCAs: f.pool()}
	if pair != nil {
		cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c
}

func dialTLS(t *testing.T, addr string, conf *tls.Config) *grpc.ClientConn {
	t.Helper()
	creds := insecure.NewCredentials()
	if conf != nil {
		creds = credentials.NewTLS(conf)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func tlsHTTPClient(t *testing.T, h2 bool, conf *tls.Config) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: conf, Protocols: new(http.Protocols), DisableCompression: true}
	if h2 {
		tr.Protocols.SetHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// getText returns "status proto body" of one request, or the error.
func getText(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%d %s %s", resp.StatusCode, resp.Proto, strings.TrimSpace(string(b))), nil
}

// certRecheck is the tests' Options.CertRecheck: rotations are seen fast.
const certRecheck = 50 * time.Millisecond

func startTLSProxy(t *testing.T, spec *routes.Spec) (*proxy.Proxy, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(telemetry.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	p := proxy.New(proxy.Options{Telemetry: tel, Logger: testkit.Logger(t), CertRecheck: certRecheck})
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, p) })
	return p, reg
}

// okHandler answers with the protocol it was reached with.
var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	cn := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		cn = " cn=" + r.TLS.PeerCertificates[0].Subject.CommonName
	}
	fmt.Fprintf(w, "upstream saw %s tls=%v%s", r.Proto, r.TLS != nil, cn)
})

// TestTLSListener: both listener kinds serve over TLS; the HTTP listener
// offers HTTP/1.1 and h2 by ALPN (gRPC included) and no cleartext; the
// gRPC listener speaks h2; min_version 1.3 refuses a TLS 1.2 client.
func TestTLSListener(t *testing.T) {
	f := newTLSFiles(t)
	backend := startEcho(t)
	web := startHTTPUpstream(t, protoHTTP1, okHandler, nil)
	lt := &routes.ListenerTLS{CertFile: f.cert, KeyFile: f.key}
	spec := &routes.Spec{
		Listeners: []routes.Listener{
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, TLS: lt, Relay: routes.ListenerRelayMessages},
			{Name: "relay", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, TLS: lt, Relay: routes.ListenerRelayFrames},
			{Name: "http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP, TLS: lt},
			{Name: "http13", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP,
				TLS: &routes.ListenerTLS{CertFile: f.cert, KeyFile: f.key, MinVersion: routes.TLSVersion13}},
		},
		Routes: []routes.Route{
			{Name: "echo", Listener: "grpc", Upstream: "echo"},
			{Name: "echo-relay", Listener: "relay", Upstream: "echo"},
			{Name: "echo-http", Listener: "http", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
			{Name: "web", Listener: "http", Upstream: "web"},
			{Name: "web13", Listener: "http13", Upstream: "web"},
		},
		Upstreams: []routes.Upstream{
			{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{backend.addr}},
			{Name: "web", Protocol: routes.UpstreamHTTP, Endpoints: []string{hostPort(web)}},
		},
	}
	p, _ := startTLSProxy(t, spec)
	grpcAddr, httpAddr, http13Addr := p.Addr("grpc").String(), p.Addr("http").String(), p.Addr("http13").String()
	relayAddr := p.Addr("relay").String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	grpcCases := []struct {
		name    string
		addr    string
		conf    *tls.Config // nil: cleartext
		wantErr codes.Code
	}{
		{"grpc listener, gRPC over TLS", grpcAddr, f.clientTLS(t, nil), codes.OK},
		{"http listener, gRPC over TLS (h2 by ALPN)", httpAddr, f.clientTLS(t, nil), codes.OK},
		{"grpc listener refuses cleartext", grpcAddr, nil, codes.Unavailable},
		{"http listener refuses cleartext h2c", httpAddr, nil, codes.Unavailable},
		{"grpc listener, server certificate not trusted", grpcAddr, &tls.Config{}, codes.Unavailable},
		{"relay listener, gRPC over TLS", relayAddr, f.clientTLS(t, nil), codes.OK},
		{"relay listener refuses cleartext", relayAddr, nil, codes.Unavailable},
		{"relay listener, server certificate not trusted", relayAddr, &tls.Config{}, codes.Unavailable},
	}
	for _, tc := range grpcCases {
		t.Run(tc.name, func(t *testing.T) {
			got := unary(ctx, dialTLS(t, tc.addr, tc.conf), "/"+echoService+"/Unary", metadata.Pairs("x-a", "1"), []byte("hi"))
			if got.Code != tc.wantErr {
				t.Fatalf("got %v, want code %v", got, tc.wantErr)
			}
			if tc.wantErr == codes.OK && (len(got.Msgs) != 1 || first(got.Header, "echo-x-a") != "1") {
				t.Fatalf("not echoed: %v", got)
			}
		})
	}

	httpCases := []struct {
		name string
		url  string
		h2   bool
		conf *tls.Config
		want string // "" : the request must fail
	}{
		{"HTTP/1.1 over TLS", "https://" + httpAddr + "/x", false, f.clientTLS(t, nil), "200 HTTP/1.1 upstream saw HTTP/1.1 tls=false"},
		{"h2 by ALPN", "https://" + httpAddr + "/x", true, f.clientTLS(t, nil), "200 HTTP/2.0 upstream saw HTTP/1.1 tls=false"},
		{"min_version 1.3 serves TLS 1.3", "https://" + http13Addr + "/x", true, f.clientTLS(t, nil), "200 HTTP/2.0 upstream saw HTTP/1.1 tls=false"},
		{"min_version 1.3 refuses TLS 1.2", "https://" + http13Addr + "/x", false,
			&tls.Config{RootCAs: f.pool(), MaxVersion: tls.VersionTLS12}, ""},
		{"default min_version serves TLS 1.2", "https://" + httpAddr + "/x", false,
			&tls.Config{RootCAs: f.pool(), MaxVersion: tls.VersionTLS12}, "200 HTTP/1.1 upstream saw HTTP/1.1 tls=false"},
		{"TLS 1.1 refused", "https://" + httpAddr + "/x", false,
			&tls.Config{RootCAs: f.pool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, ""},
	}
	for _, tc := range httpCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := getText(tlsHTTPClient(t, tc.h2, tc.conf), tc.url)
			switch {
			case tc.want == "" && err == nil:
				t.Fatalf("request succeeded: %s", got)
			case tc.want != "" && err != nil:
				t.Fatal(err)
			case got != tc.want:
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}

	t.Run("plain HTTP/1.1 to the TLS listener is not served", func(t *testing.T) {
		got, err := getText(newHTTPClient(t, protoHTTP1), "http://"+httpAddr+"/x")
		if err == nil && !strings.HasPrefix(got, "400 ") {
			t.Fatalf("cleartext request answered: %s", got)
		}
	})
}

// TestMutualTLS: with client_ca_file a listener refuses clients without a
// certificate or with one from another CA, and caller_from: client_cert
// names the caller by the SPIFFE ID, else the common name, bounded by the
// callers list.
func TestMutualTLS(t *testing.T) {
	f := newTLSFiles(t)
	backend := startEcho(t)
	web := startHTTPUpstream(t, protoHTTP1, okHandler, nil)
	lt := &routes.ListenerTLS{CertFile: f.cert, KeyFile: f.key, ClientCAFile: f.caFile}
	spec := &routes.Spec{
		Callers: []string{"nlu", "dm"},
		Listeners: []routes.Listener{
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, TLS: lt, CallerFrom: routes.CallerFromClientCert,
				Relay: routes.ListenerRelayMessages},
			{Name: "relay", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, TLS: lt, CallerFrom: routes.CallerFromClientCert,
				Relay: routes.ListenerRelayFrames},
			{Name: "http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP, TLS: lt, CallerFrom: routes.CallerFromClientCert},
		},
		Routes: []routes.Route{
			{Name: "echo", Listener: "grpc", Upstream: "echo"},
			{Name: "echo-relay", Listener: "relay", Upstream: "echo"},
			{Name: "web", Listener: "http", Upstream: "web"},
		},
		Upstreams: []routes.Upstream{
			{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{backend.addr}},
			{Name: "web", Protocol: routes.UpstreamHTTP, Endpoints: []string{hostPort(web)}},
		},
	}
	p, reg := startTLSProxy(t, spec)
	other := testkit.NewCA(t, "another CA")
	spiffe := f.ca.Issue(t, testkit.Leaf{CommonName: "not-this", URIs: []string{"spiffe://bot.local/ns/bot/sa/nlu"}})
	cn := f.ca.Issue(t, testkit.Leaf{CommonName: "dm"})
	stranger := f.ca.Issue(t, testkit.Leaf{CommonName: "stranger"})
	foreign := other.Issue(t, testkit.Leaf{CommonName: "nlu"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	cases := []struct {
		name       string
		pair       *testkit.KeyPair
		wantCaller string // "": refused
	}{
		{"no client certificate", nil, ""},
		{"certificate from another CA", &foreign, ""},
		{"SPIFFE ID names the caller", &spiffe, "nlu"},
		{"common name names the caller", &cn, "dm"},
		{"identity not in callers is other", &stranger, routes.OtherCaller},
	}
	for _, tc := range cases {
		for _, listener := range []string{"grpc", "relay", "http"} {
			t.Run(tc.name+"/"+listener, func(t *testing.T) {
				route := map[string]string{"grpc": "echo", "relay": "echo-relay", "http": "web"}[listener]
				labels := map[string]string{"route": route, "caller": tc.wantCaller}
				before := testkit.Metric(t, reg, "hopwatch_hop_requests_total", labels)
				all := testkit.Metric(t, reg, "hopwatch_hop_requests_total", nil)
				conf := f.clientTLS(t, tc.pair)
				var err error
				if listener != "http" {
					if o := unary(ctx, dialTLS(t, p.Addr(listener).String(), conf), "/"+echoService+"/Unary", nil, []byte("x")); o.Code != codes.OK {
						err = fmt.Errorf("%v: %s", o.Code, o.Message)
					}
				} else {
					_, err = getText(tlsHTTPClient(t, true, conf), "https://"+p.Addr("http").String()+"/")
				}
				if tc.wantCaller == "" {
					if err == nil {
						t.Fatal("a client without a valid certificate was served")
					}
					if got := testkit.Metric(t, reg, "hopwatch_hop_requests_total", nil); got != all {
						t.Fatalf("a refused client was forwarded (%v hops, was %v)", got, all)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				testkit.WaitFor(t, "the hop counted with caller "+tc.wantCaller, func() bool {
					return testkit.Metric(t, reg, "hopwatch_hop_requests_total", labels) == before+1
				})
			})
		}
	}
}

// serialOf makes a new TLS handshake with addr and returns the serial of
// the certificate it is shown.
func serialOf(t *testing.T, addr string, pool *x509.CertPool) *big.Int {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

// TestCertificateRotation: replacing the certificate files while a stream
// is open serves the new certificate to new handshakes (on both listener
// kinds) and leaves the open stream working; a broken replacement keeps
// the previous certificate in service and is counted.
func TestCertificateRotation(t *testing.T) {
	f := newTLSFiles(t)
	backend := startEcho(t)
	lt := &routes.ListenerTLS{CertFile: f.cert, KeyFile: f.key}
	spec := &routes.Spec{
		Listeners: []routes.Listener{
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, TLS: lt, Relay: routes.ListenerRelayMessages},
			{Name: "http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP, TLS: lt},
		},
		Routes:    []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo"}},
		Upstreams: []routes.Upstream{{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{backend.addr}}},
	}
	p, reg := startTLSProxy(t, spec)
	addrs := []string{p.Addr("grpc").String(), p.Addr("http").String()}
	pool := f.pool()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs, err := dialTLS(t, addrs[0], f.clientTLS(t, nil)).NewStream(ctx,
		&grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/"+echoService+"/Bidi")
	if err != nil {
		t.Fatal(err)
	}
	roundTrip := func(msg string) {
		t.Helper()
		if err := cs.SendMsg(wrapperspb.Bytes([]byte(msg))); err != nil {
			t.Fatalf("open stream broken: %v", err)
		}
		out := new(wrapperspb.BytesValue)
		if err := cs.RecvMsg(out); err != nil || string(out.Value) != msg {
			t.Fatalf("open stream broken: %q, %v", out.Value, err)
		}
	}
	roundTrip("before")
	for _, a := range addrs {
		if got := serialOf(t, a, pool); got.Int64() != 10 {
			t.Fatalf("serial %v, want 10", got)
		}
	}

	stats := func() proxy.ListenerStats { return p.ListenerStats()["grpc"] }
	waitSerial := func(want int64) {
		t.Helper()
		for _, a := range addrs {
			testkit.WaitFor(t, fmt.Sprintf("serial %d at %s", want, a), func() bool { return serialOf(t, a, pool).Int64() == want })
		}
	}

	// The key first, then the certificate: a handshake in between sees
	// a pair that does not match, which must not be served either.
	next := f.ca.Issue(t, testkit.Leaf{Serial: 11, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	testkit.WriteFile(t, f.dir, "server.key", next.KeyPEM)
	testkit.WriteFile(t, f.dir, "server.crt", next.CertPEM)
	waitSerial(11)
	roundTrip("after rotation")
	if got := stats().CertReloads; got < 1 {
		t.Fatalf("reloads counted: %d", got)
	}

	broken := []struct {
		name  string
		apply func(t *testing.T)
	}{
		{"certificate file is garbage", func(t *testing.T) {
			testkit.WriteFile(t, f.dir, "server.crt", []byte("-----BEGIN CERTIFICATE-----\nnot base64\n"))
		}},
		{"certificate does not match the key", func(t *testing.T) {
			testkit.WriteFile(t, f.dir, "server.crt", f.ca.Issue(t, testkit.Leaf{Serial: 12}).CertPEM)
		}},
		{"key file is gone", func(t *testing.T) {
			testkit.WriteFile(t, f.dir, "server.crt", next.CertPEM)
			if err := os.Remove(f.key); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range broken {
		t.Run(tc.name, func(t *testing.T) {
			failed := stats().CertReloadErrors
			tc.apply(t)
			for _, a := range addrs {
				testkit.WaitFor(t, "the failed reload counted at "+a, func() bool {
					return serialOf(t, a, pool).Int64() == 11 && p.ListenerStats()[map[bool]string{true: "grpc", false: "http"}[a == addrs[0]]].CertReloadErrors > failed
				})
			}
			// Still the old certificate, and the failure is not retried
			// (nor counted) again until the files change.
			time.Sleep(5 * certRecheck)
			for _, a := range addrs {
				if got := serialOf(t, a, pool).Int64(); got != 11 {
					t.Fatalf("serial %d after a broken replacement, want 11", got)
				}
			}
			if got := stats().CertReloadErrors; got != failed+1 {
				t.Fatalf("reload errors %d, want %d", got, failed+1)
			}
			roundTrip(tc.name)
		})
	}
	if got := testkit.Metric(t, reg, "hopwatch_listener_cert_reloads_total", map[string]string{"listener": "grpc", "result": "error"}); got < 3 {
		t.Fatalf("hopwatch_listener_cert_reloads_total{result=error} = %v, want >= 3", got)
	}

	last := f.ca.Issue(t, testkit.Leaf{Serial: 13, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	testkit.WriteFile(t, f.dir, "server.key", last.KeyPEM)
	testkit.WriteFile(t, f.dir, "server.crt", last.CertPEM)
	waitSerial(13)
	roundTrip("after recovery")
	cs.CloseSend()
	if err := cs.RecvMsg(new(wrapperspb.BytesValue)); err != io.EOF {
		t.Fatalf("stream end: %v", err)
	}
}

// startTLSGRPCUpstream is a gRPC server over TLS whose Unary echoes the
// request and reports the client certificate's common name in header
// "client-cn".
func startTLSGRPCUpstream(t *testing.T, conf *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(conf)))
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: echoService,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Unary",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.BytesValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				cn := "none"
				if pr, ok := peer.FromContext(ctx); ok {
					if info, ok := pr.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
						cn = info.State.PeerCertificates[0].Subject.CommonName
					}
				}
				grpc.SetHeader(ctx, metadata.Pairs("client-cn", cn))
				return in, nil
			},
		}},
	}, struct{}{})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// startTLSHTTPUpstream is an HTTPS server for okHandler speaking h2 (and
// HTTP/1.1) or HTTP/1.1 only.
func startTLSHTTPUpstream(t *testing.T, conf *tls.Config, h2 bool) string {
	t.Helper()
	s := httptest.NewUnstartedServer(okHandler)
	s.TLS = conf.Clone()
	s.TLS.NextProtos = []string{"http/1.1"}
	if h2 {
		s.TLS.NextProtos = []string{"h2", "http/1.1"}
	}
	s.StartTLS()
	t.Cleanup(s.Close)
	return hostPort(s)
}

// TestUpstreamTLS: grpc, http (HTTP/1.1) and h2 upstreams behind TLS with
// a custom CA, the name verified (a wrong one fails with hopwatch's own
// error), insecure_skip_verify, the system roots, and a client
// certificate for upstreams that require one.
func TestUpstreamTLS(t *testing.T) {
	f := newTLSFiles(t)
	// The upstream's certificate names up.internal only, not 127.0.0.1:
	// verification must use server_name.
	upPair := f.ca.Issue(t, testkit.Leaf{CommonName: "up", DNSNames: []string{"up.internal"}})
	upCert, err := tls.X509KeyPair(upPair.CertPEM, upPair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	serverConf := &tls.Config{Certificates: []tls.Certificate{upCert}}
	mtlsConf := &tls.Config{Certificates: []tls.Certificate{upCert}, ClientCAs: f.pool(), ClientAuth: tls.RequireAndVerifyClientCert}
	clientPair := f.ca.Issue(t, testkit.Leaf{CommonName: "hopwatch-client"})
	clientCert := testkit.WriteFile(t, f.dir, "client.crt", clientPair.CertPEM)
	clientKey := testkit.WriteFile(t, f.dir, "client.key", clientPair.KeyPEM)

	grpcUp := startTLSGRPCUpstream(t, serverConf)
	grpcMTLS := startTLSGRPCUpstream(t, mtlsConf)
	// Under TLS 1.3 a client learns that its certificate was refused only
	// after its side of the handshake is done (RFC 8446 §4.4.2), and may
	// see the connection closed before the alert; under TLS 1.2 the alert
	// ends the handshake itself, so the error is deterministic.
	mtls12 := mtlsConf.Clone()
	mtls12.MaxVersion = tls.VersionTLS12
	grpcMTLS12 := startTLSGRPCUpstream(t, mtls12)
	h1Up := startTLSHTTPUpstream(t, serverConf, false)
	h2Up := startTLSHTTPUpstream(t, serverConf, true)
	h2MTLS := startTLSHTTPUpstream(t, mtlsConf, true)

	good := routes.UpstreamTLS{CAFile: f.caFile, ServerName: "up.internal"}
	withName := func(name string) *routes.UpstreamTLS { c := good; c.ServerName = name; return &c }
	withClient := func() *routes.UpstreamTLS { c := good; c.CertFile, c.KeyFile = clientCert, clientKey; return &c }
	const tlsFailed = "hopwatch: upstream TLS handshake failed"

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cases := []struct {
		name     string
		protocol string
		endpoint string
		tls      *routes.UpstreamTLS
		want     string // what the client gets: the answer, or hopwatch's error
	}{
		{"grpc, custom CA and server_name", routes.UpstreamGRPC, grpcUp, &good, "cn=none"},
		{"grpc, wrong server_name", routes.UpstreamGRPC, grpcUp, withName("other.internal"), tlsFailed},
		{"grpc, endpoint address is not in the certificate", routes.UpstreamGRPC, grpcUp, withName(""), tlsFailed},
		{"grpc, system roots do not know the test CA", routes.UpstreamGRPC, grpcUp, &routes.UpstreamTLS{ServerName: "up.internal"}, tlsFailed},
		{"grpc, insecure_skip_verify", routes.UpstreamGRPC, grpcUp, &routes.UpstreamTLS{InsecureSkipVerify: true}, "cn=none"},
		{"grpc, client certificate", routes.UpstreamGRPC, grpcMTLS, withClient(), "cn=hopwatch-client"},
		{"grpc, client certificate required but none", routes.UpstreamGRPC, grpcMTLS12, &good, tlsFailed},
		{"http, HTTP/1.1 over TLS", routes.UpstreamHTTP, h1Up, &good, "200 upstream saw HTTP/1.1 tls=true"},
		{"http, wrong server_name", routes.UpstreamHTTP, h1Up, withName("other.internal"), "502 " + tlsFailed},
		{"h2, HTTP/2 by ALPN", routes.UpstreamH2, h2Up, &good, "200 upstream saw HTTP/2.0 tls=true"},
		{"h2, to a server without h2", routes.UpstreamH2, h1Up, &good, "502 " + tlsFailed},
		{"h2, wrong server_name", routes.UpstreamH2, h2Up, withName("other.internal"), "502 " + tlsFailed},
		{"h2, insecure_skip_verify", routes.UpstreamH2, h2Up, &routes.UpstreamTLS{InsecureSkipVerify: true}, "200 upstream saw HTTP/2.0 tls=true"},
		{"h2 without a tls block uses the system roots", routes.UpstreamH2, h2Up, nil, "502 " + tlsFailed},
		{"h2, client certificate", routes.UpstreamH2, h2MTLS, withClient(), "200 upstream saw HTTP/2.0 tls=true cn=hopwatch-client"},
	}
	for _, tc := range cases {
		kinds := []string{routes.ListenerHTTP}
		if tc.protocol == routes.UpstreamGRPC {
			kinds = []string{routes.ListenerGRPC, "relay"} // grpc-go and the frame relay
		}
		for _, kind := range kinds {
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				listener := routes.ListenerHTTP
				if tc.protocol == routes.UpstreamGRPC {
					listener = routes.ListenerGRPC
				}
				spec := &routes.Spec{
					Listeners: []routes.Listener{inListener("in", kind)},
					Routes:    []routes.Route{{Name: "r", Listener: "in", Upstream: "up"}},
					Upstreams: []routes.Upstream{{Name: "up", Protocol: tc.protocol, Endpoints: []string{tc.endpoint}, TLS: tc.tls}},
				}
				if errs := routes.Validate(spec); errs != nil {
					t.Fatalf("invalid spec: %v", errs)
				}
				p, _ := startTLSProxy(t, spec)
				addr := p.Addr("in").String()
				var got string
				if listener == routes.ListenerGRPC {
					o := unary(ctx, dial(t, addr), "/"+echoService+"/Unary", nil, []byte("x"))
					if o.Code != codes.OK {
						got = o.Message
						if o.Code != codes.Unavailable {
							t.Errorf("code %v, want Unavailable", o.Code)
						}
					} else {
						got = "cn=" + first(o.Header, "client-cn")
					}
				} else {
					var err error
					if got, err = getText(newHTTPClient(t, protoHTTP1), "http://"+addr+"/"); err != nil {
						t.Fatal(err)
					}
					got = strings.Replace(got, " HTTP/1.1 ", " ", 1) // the client's own protocol
				}
				if got != tc.want {
					t.Fatalf("got %q, want %q", got, tc.want)
				}
			})
		}
	}

	t.Run("http listener to a grpc upstream over TLS", func(t *testing.T) {
		spec := &routes.Spec{
			Listeners: []routes.Listener{{Name: "in", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP}},
			Routes:    []routes.Route{{Name: "r", Listener: "in", Upstream: "up"}},
			Upstreams: []routes.Upstream{{Name: "up", Protocol: routes.UpstreamGRPC, Endpoints: []string{grpcMTLS}, TLS: withClient()}},
		}
		p, _ := startTLSProxy(t, spec)
		o := unary(ctx, dial(t, p.Addr("in").String()), "/"+echoService+"/Unary", nil, []byte("x"))
		if o.Code != codes.OK || first(o.Header, "client-cn") != "hopwatch-client" {
			t.Fatalf("got %v", o)
		}
	})
}

// TestUpstreamClientCertRotation: the client certificate presented to an
// upstream is reloaded like a listener's: once its files change, new
// connections to the upstream present the new one.
func TestUpstreamClientCertRotation(t *testing.T) {
	f := newTLSFiles(t)
	upPair := f.ca.Issue(t, testkit.Leaf{CommonName: "up", DNSNames: []string{"up.internal"}})
	upCert, err := tls.X509KeyPair(upPair.CertPEM, upPair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewUnstartedServer(okHandler)
	s.TLS = &tls.Config{Certificates: []tls.Certificate{upCert}, ClientCAs: f.pool(),
		ClientAuth: tls.RequireAndVerifyClientCert, NextProtos: []string{"h2"}}
	s.StartTLS()
	t.Cleanup(s.Close)

	first := f.ca.Issue(t, testkit.Leaf{CommonName: "client-1"})
	crt := testkit.WriteFile(t, f.dir, "client.crt", first.CertPEM)
	key := testkit.WriteFile(t, f.dir, "client.key", first.KeyPEM)
	spec := &routes.Spec{
		Listeners: []routes.Listener{{Name: "in", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP}},
		Routes:    []routes.Route{{Name: "r", Listener: "in", Upstream: "up"}},
		Upstreams: []routes.Upstream{{Name: "up", Protocol: routes.UpstreamH2, Endpoints: []string{hostPort(s)},
			TLS: &routes.UpstreamTLS{CAFile: f.caFile, ServerName: "up.internal", CertFile: crt, KeyFile: key}}},
	}
	p, _ := startTLSProxy(t, spec)
	client := newHTTPClient(t, protoHTTP1)
	url := "http://" + p.Addr("in").String() + "/"
	want := func(cn string) {
		t.Helper()
		testkit.WaitFor(t, "the upstream to see "+cn, func() bool {
			s.CloseClientConnections() // the next request makes a new handshake
			got, err := getText(client, url)
			return err == nil && strings.HasSuffix(got, "cn="+cn)
		})
	}
	want("client-1")
	second := f.ca.Issue(t, testkit.Leaf{CommonName: "client-2"})
	testkit.WriteFile(t, f.dir, "client.key", second.KeyPEM)
	testkit.WriteFile(t, f.dir, "client.crt", second.CertPEM)
	want("client-2")
	// A broken replacement keeps the last good certificate.
	testkit.WriteFile(t, f.dir, "client.crt", []byte("garbage"))
	time.Sleep(3 * certRecheck)
	for range 3 {
		s.CloseClientConnections()
		// The first request may meet the connection just closed; the
		// answers that come must all show the last good certificate.
		testkit.WaitFor(t, "an answer on a new connection", func() bool {
			got, err := getText(client, url)
			if err != nil || !strings.HasPrefix(got, "200 ") {
				return false
			}
			if !strings.HasSuffix(got, "cn=client-2") {
				t.Fatalf("after a broken replacement: %q", got)
			}
			return true
		})
	}
}
