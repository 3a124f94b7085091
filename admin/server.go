package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	// Traces serves /api/traces and /api/bottlenecks, Hops /api/hops (and
	// the p95 thresholds of /api/bottlenecks); nil: 503 "telemetry disabled".
	Traces *telemetry.Store
	Hops   *telemetry.Stats
	// Sessions serves /api/sessions and /api/sli; nil: 404, as without a
	// conversation section.
	Sessions *conversation.Tracker
	// Breakers returns the /api/breakers document (circuit breakers,
	// bulkheads, fallback counts); nil: 404, as without resilience.
	Breakers func() any
	// Now is the clock of the statistics windows (default time.Now).
	Now func() time.Time
}

// Server is the admin HTTP server.
type Server struct {
	opts Options
	mux  *http.ServeMux
	srv  *http.Server
	ln   net.Listener
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
	s.srv = &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	return s
}

// Handle mounts another admin endpoint (metrics, APIs, dashboard).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Handler is the admin mux, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.mux }

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
	writeJSON(w, http.StatusOK, doc)
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
