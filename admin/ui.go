package admin

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

// The dashboard at /ui: hand-written HTML, CSS and JavaScript embedded in
// the binary, with no build step and nothing loaded from the network. The
// page polls the JSON APIs of this server (api.go) and draws the hop table,
// the bottleneck of slow turns, the slowest traces and a trace's waterfall.

//go:embed ui
var uiFiles embed.FS

// uiCSP allows the page to load only what this server serves. It has no
// 'unsafe-inline': the page has no inline script or style attribute, and
// sets bar positions through the CSSOM (element.style.left = ...), which
// style-src does not restrict.
const uiCSP = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"

// uiTypes are the content types of the dashboard's files, by extension, so
// the answer does not depend on the host's MIME tables.
var uiTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

type uiAsset struct {
	body  []byte
	ctype string
	etag  string
}

// uiHandler serves the embedded files; it is built once, with each file's
// content type and ETag computed up front.
type uiHandler struct {
	assets map[string]uiAsset // by name relative to ui/
}

func newUIHandler(files fs.FS) (*uiHandler, error) {
	h := &uiHandler{assets: map[string]uiAsset{}}
	err := fs.WalkDir(files, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ctype, ok := uiTypes[path.Ext(name)]
		if !ok {
			return fmt.Errorf("admin: dashboard file %s has no known content type", name)
		}
		body, err := fs.ReadFile(files, name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		h.assets[name] = uiAsset{body: body, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if _, ok := h.assets["index.html"]; !ok {
		return nil, fmt.Errorf("admin: dashboard has no index.html")
	}
	return h, nil
}

// mountUI serves the dashboard at /ui/ (and /ui, which redirects there).
func (s *Server) mountUI() {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	h, err := newUIHandler(sub)
	if err != nil {
		panic(err) // a file added to ui/ without a content type: caught by TestUI
	}
	s.mux.Handle("GET /ui", h)
	s.mux.Handle("GET /ui/", h)
}

func (h *uiHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", uiCSP)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")

	if r.URL.Path == "/ui" {
		// The page's URLs are relative (app.js, ../api/hops), so they
		// must resolve against /ui/. A relative Location keeps working
		// behind a proxy that mounts the admin server under a prefix
		// (RFC 9110, §10.2.2 allows a relative reference).
		loc := "ui/"
		if r.URL.RawQuery != "" {
			loc += "?" + r.URL.RawQuery
		}
		hdr.Set("Location", loc)
		w.WriteHeader(http.StatusMovedPermanently)
		return
	}

	name := strings.TrimPrefix(r.URL.Path, "/ui/")
	if name == "" {
		name = "index.html"
	}
	a, ok := h.assets[name]
	if !ok {
		http.Error(w, "404 page not found", http.StatusNotFound)
		return
	}
	hdr.Set("Content-Type", a.ctype)
	// The files change only with the binary, under the same names, so the
	// browser revalidates every time; the ETag makes that a 304.
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("ETag", a.etag)
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.body))
}
