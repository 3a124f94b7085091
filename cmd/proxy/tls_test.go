package main

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hopwatch/hopwatch/internal/testkit"
)

// TestCheckTLSFiles: `proxy -check` reads the certificate files a config
// names and reports a missing one at its line, with the field path.
func TestCheckTLSFiles(t *testing.T) {
	dir := t.TempDir()
	ca := testkit.NewCA(t, "test CA")
	pair := ca.Issue(t, testkit.Leaf{CommonName: "hopwatch"})
	crt := testkit.WriteFile(t, dir, "s.crt", pair.CertPEM)
	key := testkit.WriteFile(t, dir, "s.key", pair.KeyPEM)
	text := func(cert string) string {
		return fmt.Sprintf(`listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: grpc
    tls:
      cert_file: %s
      key_file: %s
routes: [{name: r, listener: in, upstream: up}]
upstreams: [{name: up, protocol: grpc, endpoints: ["127.0.0.1:9"]}]
`, cert, key)
	}
	for _, tc := range []struct {
		name     string
		cert     string
		wantCode int
		want     []string
	}{
		{"certificate present", crt, 0, []string{"ok"}},
		{"certificate missing", filepath.Join(dir, "gone.crt"), 1,
			[]string{"hopwatch.yaml:6:7: listeners[0].tls.cert_file: " + filepath.Join(dir, "gone.crt") + ": no such file or directory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "hopwatch.yaml")
			writeFile(t, path, text(tc.cert))
			var out, errOut bytes.Buffer
			if code := run([]string{"-check", "-config", path}, &out, &errOut, nil); code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.wantCode, errOut.String())
			}
			all := out.String() + errOut.String()
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
		})
	}
}
