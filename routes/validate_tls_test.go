package routes

import (
	"strings"
	"testing"
)

// TestValidateTLS: the listener and upstream tls blocks and caller_from, as
// written (the files themselves are the loader's to check).
func TestValidateTLS(t *testing.T) {
	type want struct{ path, msg string }
	mtls := func(s *Spec) {
		s.Listeners[1].Caller = ""
		s.Listeners[1].TLS = &ListenerTLS{CertFile: "s.crt", KeyFile: "s.key", ClientCAFile: "ca.crt"}
		s.Listeners[1].CallerFrom = CallerFromClientCert
	}
	for _, tc := range []struct {
		name   string
		mutate func(s *Spec)
		want   []want
	}{
		{"listener tls", func(s *Spec) {
			s.Listeners[0].TLS = &ListenerTLS{CertFile: "s.crt", KeyFile: "s.key", MinVersion: TLSVersion13}
		}, nil},
		{"listener mtls with caller from the certificate", mtls, nil},
		{"listener tls without files", func(s *Spec) { s.Listeners[0].TLS = &ListenerTLS{} }, []want{
			{"listeners[0].tls.cert_file", "cert_file is required"},
			{"listeners[0].tls.key_file", "key_file is required"}}},
		{"listener tls old version", func(s *Spec) {
			s.Listeners[0].TLS = &ListenerTLS{CertFile: "s.crt", KeyFile: "s.key", MinVersion: "1.1"}
		}, []want{{"listeners[0].tls.min_version", `unknown min_version "1.1" (want "1.2" or "1.3"`}}},
		{"caller_from unknown", func(s *Spec) { mtls(s); s.Listeners[1].CallerFrom = "header" },
			[]want{{"listeners[1].caller_from", `unknown caller_from "header" (want client_cert)`}}},
		{"caller_from without mtls", func(s *Spec) { mtls(s); s.Listeners[1].TLS.ClientCAFile = "" },
			[]want{{"listeners[1].caller_from", "needs tls.client_ca_file"}}},
		{"caller_from without tls", func(s *Spec) { mtls(s); s.Listeners[1].TLS = nil },
			[]want{{"listeners[1].caller_from", "needs tls.client_ca_file"}}},
		{"caller_from with caller_header", func(s *Spec) { mtls(s); s.Listeners[1].CallerHeader = "x-caller" },
			[]want{{"listeners[1].caller_from", "mutually exclusive"}}},
		{"upstream grpc tls", func(s *Spec) { s.Upstreams[0].TLS = &UpstreamTLS{CAFile: "ca.crt", ServerName: "nlu.internal"} }, nil},
		{"upstream http tls with client certificate", func(s *Spec) {
			s.Upstreams[2].TLS = &UpstreamTLS{CertFile: "c.crt", KeyFile: "c.key", ServerName: "10.0.0.1"}
		}, nil},
		{"upstream h2 without tls block", func(s *Spec) { s.Upstreams[1].Protocol = UpstreamH2 }, nil},
		{"upstream h2 insecure", func(s *Spec) {
			s.Upstreams[1].Protocol = UpstreamH2
			s.Upstreams[1].TLS = &UpstreamTLS{InsecureSkipVerify: true}
		}, nil},
		{"h2 upstream on a grpc listener", func(s *Spec) { s.Upstreams[0].Protocol = UpstreamH2 }, nil},
		{"h2c with tls", func(s *Spec) { s.Upstreams[1].TLS = &UpstreamTLS{} },
			[]want{{"upstreams[1].protocol", "h2c is cleartext HTTP/2; for HTTP/2 over TLS write protocol: h2"}}},
		{"client certificate without key", func(s *Spec) { s.Upstreams[0].TLS = &UpstreamTLS{CertFile: "c.crt"} },
			[]want{{"upstreams[0].tls.cert_file", "cert_file and key_file go together"}}},
		{"insecure with ca_file and server_name", func(s *Spec) {
			s.Upstreams[0].TLS = &UpstreamTLS{CAFile: "ca.crt", ServerName: "nlu", InsecureSkipVerify: true}
		}, []want{
			{"upstreams[0].tls.insecure_skip_verify", "ignores ca_file"},
			{"upstreams[0].tls.insecure_skip_verify", "ignores server_name"}}},
		{"server_name with a port", func(s *Spec) { s.Upstreams[0].TLS = &UpstreamTLS{ServerName: "nlu.internal:443"} },
			[]want{{"upstreams[0].tls.server_name", `invalid server_name "nlu.internal:443"`}}},
		{"server_name wildcard", func(s *Spec) { s.Upstreams[0].TLS = &UpstreamTLS{ServerName: "*.internal"} },
			[]want{{"upstreams[0].tls.server_name", `invalid server_name "*.internal"`}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := specForValidate()
			tc.mutate(s)
			got := Validate(s)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d: %v", len(got), len(tc.want), got)
			}
			for i, w := range tc.want {
				if got[i].Path != w.path || !strings.Contains(got[i].Msg, w.msg) {
					t.Errorf("error %d = %q, want path %q with %q", i, got[i].Error(), w.path, w.msg)
				}
			}
		})
	}
}
