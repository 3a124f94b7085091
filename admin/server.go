package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/telemetry"
)

// Options are the admin server's sources. Each is read per request, so the
// server always shows the live state.
type Options struct {
	Logger *slog.Logger
	// Ready reports whether the proxy accepts new traffic (false while
	// starting and draining).
	Ready func() bool
	// Config returns the JSON-encodable document served at /config.
	Config func() any
	// Traces serves /api/traces and /api/bottlenecks, Hops /api/hops;
	// nil: 503 "telemetry disabled".
	Traces *telemetry.Store
	Hops   *telemetry.Stats
	// Sessions serves /api/sessions and /api/sli; nil: 404, as without a
	// conversation section.
	Sessions *conversation.Tracker
	// Breakers returns the /api/breakers document (circuit breakers,
	// bulkheads, fallback counts); nil: 404, as without resilience.
	Breakers func() any
	// GenAI returns the /api/genai document (LLM usage per route and
	// model); nil: 404, as without genai routes.
	GenAI func() any
	// Now is the clock of the statistics windows (default time.Now).
	Now func() time.Time
	// AllowedHosts are host names, besides loopback names and IP
	// literals, that requests may name in Host (admin.allowed_hosts).
	AllowedHosts []string
	// OTLP receives the services' OTLP trace exports
	// (telemetry.receive.otlp; nil: none). It is served on POST
	// telemetry.OTLPTracesPath (OTLP/HTTP) and telemetry.OTLPGRPCPath
	// (OTLP/gRPC), behind the same Host check as everything else, and the
	// server then also speaks HTTP/2 without TLS (h2c, prior knowledge),
	// which gRPC clients use.
	OTLP http.Handler
}

// Admin server timeouts. The admin server serves small requests, but
// /metrics on a big registry and /api/traces can take a while to write to a
// slow scraper; nothing it serves streams or long-polls (the dashboard
// polls with short requests), so a write timeout cuts nothing legitimate.
const (
	// ReadHeaderTimeout bounds a client's request headers (slowloris).
	ReadHeaderTimeout = 5 * time.Second
	// ReadTimeout bounds the whole request; admin requests have no body.
	ReadTimeout = 10 * time.Second
	// WriteTimeout bounds producing and writing one response: above
	// Prometheus' usual scrape_timeout (10s, at most the 1m interval).
	WriteTimeout = 60 * time.Second
	// IdleTimeout keeps a scraper's keep-alive connection between scrapes
	// at the usual 1m interval, and closes abandoned ones.
	IdleTimeout = 2 * time.Minute
	// MaxHeaderBytes: admin requests carry a few small headers.
	MaxHeaderBytes = 64 << 10
)

// Server is the admin HTTP server.
type Server struct {
	opts    Options
	mux     *http.ServeMux
	srv     *http.Server
	ln      net.Listener
	allowed atomic.Pointer[map[string]bool] // extra Host names, lowercase
}

// New builds the server and its routes; Start binds it.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{opts: opts, mux: http.NewServeMux()}
	s.SetAllowedHosts(opts.AllowedHosts)
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /config", s.config)
	s.mountAPI()
	s.mountSessions()
	s.mountUI()
	if opts.Breakers != nil {
		s.mux.HandleFunc("GET /api/breakers", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, opts.Breakers())
		})
	}
	if opts.GenAI != nil {
		s.mux.HandleFunc("GET /api/genai", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, opts.GenAI())
		})
	}
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.checkHost),
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	if opts.OTLP != nil {
		s.mux.Handle("POST "+telemetry.OTLPTracesPath, opts.OTLP)
		s.mux.Handle("POST "+telemetry.OTLPGRPCPath, opts.OTLP)
		s.srv.Protocols = new(http.Protocols)
		s.srv.Protocols.SetHTTP1(true)
		s.srv.Protocols.SetUnencryptedHTTP2(true)
		// The receiver decodes a few exports at once; more streams per
		// connection would only queue.
		s.srv.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 16}
	}
	return s
}

// Handle mounts another admin endpoint (metrics, APIs, dashboard).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Handler is the admin mux without the Host check, for tests and
// embedding behind a server that does its own.
func (s *Server) Handler() http.Handler { return s.mux }

// SetAllowedHosts replaces the extra Host names the server answers to (a
// reload may change them).
func (s *Server) SetAllowedHosts(hosts []string) {
	m := make(map[string]bool, len(hosts))
	for _, h := range hosts {
		m[strings.TrimSuffix(strings.ToLower(h), ".")] = true
	}
	s.allowed.Store(&m)
}

// checkHost answers only requests whose Host is a loopback name, an IP
// literal or an allowed name. DNS rebinding lets a web page whose name
// resolves to 127.0.0.1 read the admin server from the victim's browser,
// same-origin, with its own name in Host; an IP literal or "localhost"
// cannot be such a page's origin. A request without Host (HTTP/1.0) comes
// from no browser.
func (s *Server) checkHost(w http.ResponseWriter, r *http.Request) {
	if !hostAllowed(r.Host, *s.allowed.Load()) {
		http.Error(w, "hopwatch admin: Host not allowed; use an IP address or localhost, or list the name in admin.allowed_hosts", http.StatusForbidden)
		return
	}
	s.mux.ServeHTTP(w, r)
}

func hostAllowed(host string, allowed map[string]bool) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	} else {
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "" {
		return true
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	// RFC 6761 §6.3: localhost names are loopback, resolved by the
	// browser itself, and nobody can register them.
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	return allowed[host]
}

// Start binds addr and serves in the background until Shutdown.
func (s *Server) Start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	s.ln = ln
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.opts.Logger.Error("admin server stopped", "err", err)
		}
	}()
	return nil
}

// Addr is the bound address (nil before Start).
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops the server, waiting for requests in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.srv.Shutdown(ctx)
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.opts.Ready != nil && !s.opts.Ready() {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready")
		return
	}
	fmt.Fprintln(w, "ready")
}

func (s *Server) config(w http.ResponseWriter, _ *http.Request) {
	var doc any
	if s.opts.Config != nil {
		doc = s.opts.Config()
	}
	red, err := redacted(doc)
	if err != nil {
		http.Error(w, "hopwatch admin: cannot render the configuration", http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusOK, red)
}

// redactedValue replaces secrets in /config. The file on disk is untouched.
const redactedValue = "<redacted>"

// redacted is doc as JSON values with secrets replaced: every value of a
// "headers" map (route match headers are credentials as often as not:
// x-api-key, authorization; so are exporter headers) and every scalar
// under a secret-like key. It works on the JSON form so that whatever the
// document's Go types, and whatever fields are added later, nothing
// escapes it.
func redacted(doc any) (any, error) {
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	return redact(v, ""), nil
}

func redact(v any, key string) any {
	switch x := v.(type) {
	case map[string]any:
		if key == "headers" {
			for k := range x {
				x[k] = redactedValue
			}
			return x
		}
		for k, e := range x {
			x[k] = redact(e, strings.ToLower(k))
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = redact(e, key)
		}
		return x
	case nil:
		return nil
	}
	if secretKey(key) {
		return redactedValue
	}
	return v
}

// secretKey reports keys whose scalar values are secrets.
func secretKey(k string) bool {
	switch k {
	case "authorization", "proxy-authorization", "proxy_authorization", "cookie", "password", "passwd",
		"secret", "token", "api_key", "apikey", "api-key", "x-api-key", "bearer_token", "client_secret", "private_key":
		return true
	}
	for _, suffix := range []string{"_password", "_secret", "_token", "-token", "-secret"} {
		if strings.HasSuffix(k, suffix) {
			return true
		}
	}
	return false
}

// writeJSON answers with an indented JSON document (admin traffic is small
// and read by people as often as by programs).
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
