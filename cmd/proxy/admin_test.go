package main

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/internal/testkit"
)

// TestAdminThroughApp runs the real command's admin server: /config hides
// header-match values (the file keeps them), a foreign Host is refused,
// and admin.allowed_hosts is honoured and follows a reload.
func TestAdminThroughApp(t *testing.T) {
	s := startStack(t)
	p := newPorts(t)
	path := filepath.Join(t.TempDir(), "hopwatch.yaml")
	text := func(allowed string) string {
		return fmt.Sprintf(`admin: {address: "127.0.0.1:%d", allowed_hosts: [%s]}
listeners:
  - {name: http, address: "127.0.0.1:%d", protocol: http}
upstreams:
  - {name: web, protocol: http, endpoints: ["%s"]}
routes:
  - {name: web, listener: http, match: {path_prefix: /, headers: {x-api-key: sk-live-very-secret}}, upstream: web}
`, p.admin, allowed, p.http, s.web.Listener.Addr())
	}
	writeFile(t, path, text("scrape.example"))
	a, err := start(path, time.Second, testkit.Logger(t), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer a.drain(time.Second)
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	adminURL := fmt.Sprintf("http://127.0.0.1:%d/config", p.admin)
	get := func(host string) (int, string) {
		req, _ := http.NewRequest("GET", adminURL, nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	st, body := get("")
	if st != 200 || strings.Contains(body, "sk-live-very-secret") || !strings.Contains(body, "x-api-key") {
		t.Fatalf("/config: %d, secret shown or header name lost:\n%s", st, body)
	}
	for _, tc := range []struct {
		host string
		want int
	}{
		{"evil.example", http.StatusForbidden},
		{"scrape.example:9901", http.StatusOK},
		{"localhost", http.StatusOK},
	} {
		if st, body := get(tc.host); st != tc.want {
			t.Fatalf("Host %s: %d %q, want %d", tc.host, st, body, tc.want)
		}
	}
	writeFile(t, path, text("other.example"))
	a.reload("test")
	if st, _ := get("scrape.example"); st != http.StatusForbidden {
		t.Fatalf("after reload, the removed name gets %d", st)
	}
	if st, _ := get("other.example"); st != http.StatusOK {
		t.Fatalf("after reload, the added name gets %d", st)
	}
}
