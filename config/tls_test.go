package config_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/internal/testkit"
)

// TestParseTLSFiles: the files a tls block names are read at validation,
// so a missing or malformed one is an error at its own line, and a valid
// set passes.
func TestParseTLSFiles(t *testing.T) {
	dir := t.TempDir()
	ca := testkit.NewCA(t, "test CA")
	pair := ca.Issue(t, testkit.Leaf{CommonName: "hopwatch"})
	otherPair := ca.Issue(t, testkit.Leaf{CommonName: "other"})
	crt := testkit.WriteFile(t, dir, "s.crt", pair.CertPEM)
	key := testkit.WriteFile(t, dir, "s.key", pair.KeyPEM)
	otherKey := testkit.WriteFile(t, dir, "other.key", otherPair.KeyPEM)
	caFile := testkit.WriteFile(t, dir, "ca.crt", ca.PEM)
	garbage := testkit.WriteFile(t, dir, "garbage.pem", []byte("hello\n"))
	missing := filepath.Join(dir, "missing.pem")

	// Line 5 holds the listener's tls block, line 10 the upstream's.
	file := func(cert, key, clientCA, upCA, upCert, upKey string) string {
		return fmt.Sprintf(`listeners:
  - name: in
    address: 127.0.0.1:7443
    protocol: http
    tls: {cert_file: %q, key_file: %q, client_ca_file: %q}
routes: [{name: r, listener: in, upstream: up}]
upstreams:
  - name: up
    protocol: h2
    tls: {ca_file: %q, cert_file: %q, key_file: %q, server_name: up.internal}
    endpoints: [127.0.0.1:9443]
`, cert, key, clientCA, upCA, upCert, upKey)
	}
	for _, tc := range []struct {
		name string
		yaml string
		want []string // "line:col: path: text", in order
	}{
		{"valid", file(crt, key, caFile, caFile, crt, key), nil},
		{"missing certificate", file(missing, key, caFile, caFile, crt, key),
			[]string{"5:", "listeners[0].tls.cert_file: " + missing + ": no such file or directory"}},
		{"certificate file holds no certificate", file(garbage, key, caFile, caFile, crt, key),
			[]string{"5:", "listeners[0].tls.cert_file: " + garbage + ": no PEM CERTIFICATE block found"}},
		{"key of another certificate", file(crt, otherKey, caFile, caFile, crt, key),
			[]string{"5:", "listeners[0].tls.key_file: " + otherKey + ": with " + crt + ": tls: private key does not match public key"}},
		{"missing key", file(crt, missing, caFile, caFile, crt, key),
			[]string{"5:", "listeners[0].tls.key_file: " + missing + ": no such file or directory"}},
		{"client CA file without certificates", file(crt, key, garbage, caFile, crt, key),
			[]string{"5:", "listeners[0].tls.client_ca_file: " + garbage + ": no PEM CERTIFICATE block found"}},
		{"upstream CA and client certificate missing", file(crt, key, caFile, missing, missing, key), []string{
			"10:", "upstreams[0].tls.ca_file: " + missing + ": no such file or directory",
			"10:", "upstreams[0].tls.cert_file: " + missing + ": no such file or directory"}},
		{"a directory is not a certificate", file(dir, key, caFile, caFile, crt, key),
			[]string{"5:", "listeners[0].tls.cert_file: " + dir + ": not a regular file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse("hopwatch.yaml", []byte(tc.yaml))
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var errs config.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("got %v, want config.Errors", err)
			}
			if len(errs) != len(tc.want)/2 {
				t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(tc.want)/2, err)
			}
			for i, e := range errs {
				line, text := tc.want[2*i], tc.want[2*i+1]
				if s := e.Error(); !strings.HasPrefix(s, "hopwatch.yaml:"+line) || !strings.Contains(s, text) {
					t.Errorf("error %d = %q, want hopwatch.yaml:%s... %q", i, s, line, text)
				}
			}
		})
	}
}
