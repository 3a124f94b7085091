package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestConfigRedaction: /config never shows header-match values or other
// secret-like values, whatever the document's types, while names and
// everything else stay readable.
func TestConfigRedaction(t *testing.T) {
	type match struct {
		PathPrefix string            `json:"path_prefix"`
		Headers    map[string]string `json:"headers"`
	}
	doc := map[string]any{
		"file": "/etc/hopwatch.yaml",
		"config": map[string]any{
			"routes": []any{
				map[string]any{"name": "kb", "match": match{PathPrefix: "/kb/", Headers: map[string]string{"X-Api-Key": "sk-live-123", "X-Tenant": "acme"}}},
				map[string]any{"name": "chat", "fallback": map[string]any{"cache": map[string]any{"headers": []string{"authorization"}}}},
			},
			"telemetry": map[string]any{"tracing": map[string]any{"otlp": map[string]any{
				"endpoint": "collector:4317",
				"headers":  map[string]any{"authorization": "Bearer abc"},
			}}},
			"auth": map[string]any{"client_secret": "s3cr3t", "bearer_token": "tok", "key_file": "/etc/tls/key.pem"},
		},
	}
	s := New(Options{Config: func() any { return doc }})
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/config", nil))
	body := rec.Body.String()
	for _, secret := range []string{"sk-live-123", "acme", "Bearer abc", "s3cr3t", `"tok"`} {
		if strings.Contains(body, secret) {
			t.Errorf("/config shows %q:\n%s", secret, body)
		}
	}
	for _, kept := range []string{"X-Api-Key", "X-Tenant", `"/kb/"`, `"authorization"`, "collector:4317", "/etc/tls/key.pem", "/etc/hopwatch.yaml", `\u003credacted\u003e`} {
		if !strings.Contains(body, kept) {
			t.Errorf("/config lost %q:\n%s", kept, body)
		}
	}
	var v map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("/config is not JSON: %v", err)
	}
}
