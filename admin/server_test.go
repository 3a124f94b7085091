package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestEndpoints(t *testing.T) {
	var ready atomic.Bool
	s := New(Options{
		Ready: ready.Load,
		Config: func() any {
			return map[string]any{"last_reload": map[string]any{"ok": false, "errors": []string{"x.yaml:3:1: bad"}}}
		},
	})
	cases := []struct {
		name     string
		ready    bool
		path     string
		wantCode int
		wantBody string
	}{
		{"healthz is always ok", false, "/healthz", 200, "ok"},
		{"readyz before ready", false, "/readyz", 503, "not ready"},
		{"readyz when ready", true, "/readyz", 200, "ready"},
		{"config shows the last reload error", true, "/config", 200, `"x.yaml:3:1: bad"`},
		{"unknown path", true, "/nope", 404, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ready.Store(tc.ready)
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
			if rec.Code != tc.wantCode || !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Fatalf("GET %s = %d %q, want %d containing %q", tc.path, rec.Code, rec.Body.String(), tc.wantCode, tc.wantBody)
			}
			if tc.path == "/config" {
				var doc map[string]any
				if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
					t.Fatalf("/config is not JSON: %v", err)
				}
			}
		})
	}
}

func TestBreakersEndpoint(t *testing.T) {
	cases := []struct {
		name     string
		breakers func() any
		wantCode int
		wantBody string
	}{
		{"not configured", nil, 404, ""},
		{"served as JSON", func() any {
			return map[string]any{"breakers": []map[string]any{{"upstream": "kb", "state": "open"}}}
		}, 200, `"state": "open"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Options{Breakers: tc.breakers})
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/breakers", nil))
			if rec.Code != tc.wantCode || !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Fatalf("got %d %q, want %d containing %q", rec.Code, rec.Body.String(), tc.wantCode, tc.wantBody)
			}
		})
	}
}
