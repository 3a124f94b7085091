package admin

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func serveUI(t *testing.T, s *Server, method, target string, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	return rec
}

func TestUI(t *testing.T) {
	s := New(Options{})
	cases := []struct {
		name      string
		path      string
		wantCode  int
		wantType  string // Content-Type prefix
		wantBody  string // part of the body
		wantCache string
	}{
		{"index at /ui/", "/ui/", 200, "text/html; charset=utf-8", `<script src="app.js" defer></script>`, "no-cache"},
		{"index by name", "/ui/index.html", 200, "text/html; charset=utf-8", "<title>hopwatch</title>", "no-cache"},
		{"script", "/ui/app.js", 200, "text/javascript; charset=utf-8", "api/hops", "no-cache"},
		{"style sheet", "/ui/style.css", 200, "text/css; charset=utf-8", ".waterfall", "no-cache"},
		{"icon", "/ui/favicon.svg", 200, "image/svg+xml", "<svg", "no-cache"},
		{"unknown asset", "/ui/nope.js", 404, "text/plain", "404 page not found", ""},
		{"no subdirectory", "/ui/ui/app.js", 404, "text/plain", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := serveUI(t, s, http.MethodGet, tc.path, nil)
			if rec.Code != tc.wantCode {
				t.Fatalf("GET %s = %d, want %d\n%s", tc.path, rec.Code, tc.wantCode, rec.Body)
			}
			// Every answer of the dashboard, errors too, carries the policy
			// and no-sniff.
			if got := rec.Header().Get("Content-Security-Policy"); !strings.Contains(got, "default-src 'self'") {
				t.Errorf("Content-Security-Policy %q, want default-src 'self'", got)
			}
			if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q, want nosniff", got)
			}
			if got := rec.Header().Get("Content-Type"); !strings.HasPrefix(got, tc.wantType) {
				t.Errorf("Content-Type %q, want %q", got, tc.wantType)
			}
			if got := rec.Header().Get("Cache-Control"); got != tc.wantCache {
				t.Errorf("Cache-Control %q, want %q", got, tc.wantCache)
			}
			if !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Errorf("body has no %q", tc.wantBody)
			}
		})
	}
}

func TestUIPolicyIsStrict(t *testing.T) {
	rec := serveUI(t, New(Options{}), http.MethodGet, "/ui/", nil)
	csp := rec.Header().Get("Content-Security-Policy")
	for _, bad := range []string{"unsafe-inline", "unsafe-eval", "http:", "https:", "*"} {
		if strings.Contains(csp, bad) {
			t.Errorf("Content-Security-Policy %q allows %q", csp, bad)
		}
	}
}

func TestUIRedirect(t *testing.T) {
	s := New(Options{})
	rec := serveUI(t, s, http.MethodGet, "/ui", nil)
	if rec.Code != http.StatusMovedPermanently || rec.Header().Get("Location") != "ui/" {
		t.Fatalf("GET /ui = %d Location %q, want 301 to ui/", rec.Code, rec.Header().Get("Location"))
	}
	rec = serveUI(t, s, http.MethodGet, "/ui?x=1", nil)
	if got := rec.Header().Get("Location"); got != "ui/?x=1" {
		t.Fatalf("GET /ui?x=1: Location %q, want ui/?x=1", got)
	}

	// Through a real client, /ui ends at the page with its policy.
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	res, err := srv.Client().Get(srv.URL + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || res.Request.URL.Path != "/ui/" ||
		!strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(res.Header.Get("Content-Security-Policy"), "default-src 'self'") {
		t.Fatalf("GET /ui ended at %s: %d %v", res.Request.URL, res.StatusCode, res.Header)
	}
}

func TestUIRevalidation(t *testing.T) {
	s := New(Options{})
	rec := serveUI(t, s, http.MethodGet, "/ui/app.js", nil)
	etag := rec.Header().Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	rec = serveUI(t, s, http.MethodGet, "/ui/app.js", map[string]string{"If-None-Match": etag})
	if rec.Code != http.StatusNotModified || rec.Body.Len() != 0 {
		t.Fatalf("If-None-Match %s: %d with %d bytes, want 304 and none", etag, rec.Code, rec.Body.Len())
	}
	rec = serveUI(t, s, http.MethodHead, "/ui/", nil)
	if rec.Code != 200 || rec.Body.Len() != 0 || rec.Header().Get("Content-Length") == "" {
		t.Fatalf("HEAD /ui/: %d, %d bytes, Content-Length %q", rec.Code, rec.Body.Len(), rec.Header().Get("Content-Length"))
	}
	rec = serveUI(t, s, http.MethodPost, "/ui/", nil)
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST /ui/ = %d, want 405", rec.Code)
	}
}

// TestUIAssetsSelfContained: the embedded files load nothing from another
// origin. The one absolute URL allowed is the SVG namespace name, an
// identifier that is never fetched.
func TestUIAssetsSelfContained(t *testing.T) {
	const svgNS = "http://www.w3.org/2000/svg"
	n := 0
	err := fs.WalkDir(uiFiles, "ui", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		b, err := fs.ReadFile(uiFiles, name)
		if err != nil {
			return err
		}
		text := strings.ReplaceAll(string(b), svgNS, "")
		for _, bad := range []string{"http://", "https://", "//cdn", "@import", "eval(", "new Function"} {
			if strings.Contains(text, bad) {
				t.Errorf("%s contains %q", name, bad)
			}
		}
		if strings.HasSuffix(name, ".html") {
			// Under the policy the browser refuses inline scripts, style
			// attributes and inline handlers; keep the markup free of them.
			for _, bad := range []string{"<script>", "style=", "<style"} {
				if strings.Contains(text, bad) {
					t.Errorf("%s contains %q", name, bad)
				}
			}
			if m := inlineHandler.FindString(text); m != "" {
				t.Errorf("%s has an inline event handler %q", name, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 3 {
		t.Fatalf("%d embedded files, want index.html, app.js and style.css at least", n)
	}
	// Every embedded file is served (newUIHandler knows its type).
	if _, err := newUIHandler(mustSub(t)); err != nil {
		t.Fatal(err)
	}
}

var inlineHandler = regexp.MustCompile(`\son[a-z]+\s*=`)

func mustSub(t *testing.T) fs.FS {
	t.Helper()
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		t.Fatal(err)
	}
	return sub
}
