package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	botv1 "github.com/hopwatch/hopwatch/proto/bot/v1"
)

// ErrGatewayServing is returned by a second ServeGateway.
var ErrGatewayServing = errors.New("demo: gateway is already serving")

// ErrClosed is returned by ServeGateway after Close.
var ErrClosed = errors.New("demo: stack is closed")

// Stack is the running demo bot: five services, each on its own loopback
// port, as they would be separate processes in production. Upstreams in
// hopwatch are per service, so each needs its own address.
type Stack struct {
	cfg   Config
	start time.Time // for Config.DegradeAfter
	rnd   *lockedRand
	calls map[string]*atomic.Int64 // fixed keys (Services); read-only map
	lns   map[string]net.Listener

	grpcs []*grpc.Server
	kb    *http.Server
	llm   *http.Server
	// llmURL is where inference calls the model server: through hopwatch's
	// HTTP listener, known once ServeGateway is called.
	llmURL       atomic.Pointer[string]
	llmClient    *http.Client
	llmTransport *http.Transport // under llmClient's tracing, for CloseIdleConnections
	tracing      *tracing
	wg           sync.WaitGroup // serve loops

	mu     sync.Mutex // guards the fields below
	gw     *gateway
	gwSrv  *http.Server
	closed bool
}

// Start binds every service to a free loopback port and serves NLU, DM,
// inference and the knowledge base. The gateway's port is bound too, so
// that hopwatch can be configured with it, but the gateway serves only
// once ServeGateway says where hopwatch is: it calls nothing directly.
// Connections that arrive before then wait in the listen backlog.
func Start(cfg Config) (*Stack, error) {
	if cfg.Tokens <= 0 {
		cfg.Tokens = defaultTokens
	}
	tr, err := newTracing(cfg.OTLP)
	if err != nil {
		return nil, err
	}
	s := &Stack{
		cfg:     cfg,
		rnd:     newLockedRand(cfg.Seed),
		calls:   make(map[string]*atomic.Int64, len(Services)),
		lns:     make(map[string]net.Listener, len(Services)),
		start:   time.Now(),
		tracing: tr,
	}
	for _, name := range Services {
		s.calls[name] = new(atomic.Int64)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, l := range s.lns {
				l.Close()
			}
			tr.shutdown(context.Background())
			return nil, fmt.Errorf("demo: %s: %w", name, err)
		}
		s.lns[name] = ln
	}

	nluSrv := grpc.NewServer(tr.grpcServer(ServiceNLU))
	botv1.RegisterNLUServer(nluSrv, nlu{s: s})
	dmSrv := grpc.NewServer(tr.grpcServer(ServiceDM))
	botv1.RegisterDialogManagerServer(dmSrv, dialog{s: s})
	infSrv := grpc.NewServer(tr.grpcServer(ServiceInference))
	botv1.RegisterInferenceServer(infSrv, inference{s: s})
	s.grpcs = []*grpc.Server{nluSrv, dmSrv, infSrv}
	for name, srv := range map[string]*grpc.Server{ServiceNLU: nluSrv, ServiceDM: dmSrv, ServiceInference: infSrv} {
		s.goServe(func() error { return srv.Serve(s.lns[name]) })
	}

	mux := http.NewServeMux()
	mux.Handle("POST "+KBPath, kb{s: s})
	s.kb = newHTTPServer(tr.httpHandler(ServiceKB, mux))
	s.goServe(func() error { return s.kb.Serve(s.lns[ServiceKB]) })

	llmMux := http.NewServeMux()
	llmMux.Handle("POST "+LLMPath, llm{s: s})
	s.llm = newHTTPServer(tr.httpHandler(ServiceLLM, llmMux))
	s.goServe(func() error { return s.llm.Serve(s.lns[ServiceLLM]) })
	s.llmTransport = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	// inference's calls to the model server.
	s.llmClient = &http.Client{Transport: tr.httpTransport(ServiceInference, s.llmTransport)}
	return s, nil
}

func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		// The demo's services log nothing of their own; a failing
		// connection shows up where it matters, in the caller's outcome.
		ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelError),
	}
}

func (s *Stack) goServe(serve func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// Serve only returns when Close stops the server.
		serve()
	}()
}

// Endpoints returns each service's address (host:port) by service name;
// the names are the upstream names of the demo's hopwatch configuration.
func (s *Stack) Endpoints() map[string]string {
	out := make(map[string]string, len(s.lns))
	for name, ln := range s.lns {
		out[name] = ln.Addr().String()
	}
	return out
}

// ServeGateway starts the gateway, which sends every call through
// hopwatch's listeners at via.
func (s *Stack) ServeGateway(via Listeners) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrClosed
	case s.gw != nil:
		return ErrGatewayServing
	}
	gw, err := newGateway(s, via)
	if err != nil {
		return err
	}
	s.gw = gw
	llmURL := "http://" + via.HTTP + LLMPath
	s.llmURL.Store(&llmURL)
	s.gwSrv = newHTTPServer(s.tracing.httpHandler(ServiceGateway, gw.handler()))
	srv := s.gwSrv
	s.goServe(func() error { return srv.Serve(s.lns[ServiceGateway]) })
	return nil
}

// ExportSpansTo makes every service also export its spans over OTLP/gRPC
// to endpoint: hopwatch's own OTLP receiver (telemetry.receive.otlp on its
// admin address), which is known only once hopwatch runs.
func (s *Stack) ExportSpansTo(endpoint string) error {
	return s.tracing.exportTo(endpoint)
}

// Calls returns how many calls each service has received, by service name.
func (s *Stack) Calls() map[string]int64 {
	out := make(map[string]int64, len(s.calls))
	for name, n := range s.calls {
		out[name] = n.Load()
	}
	return out
}

// Close stops every service: new calls are refused at once, calls in
// flight may finish until ctx ends and are cut then. It returns ctx.Err()
// if it had to cut calls.
func (s *Stack) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	gw, gwSrv := s.gw, s.gwSrv
	s.mu.Unlock()

	// The gateway first: it is the only caller of the others, via hopwatch.
	if gwSrv != nil {
		shutdownHTTP(ctx, gwSrv)
		gw.close()
	} else {
		s.lns[ServiceGateway].Close()
	}
	var wg sync.WaitGroup
	wg.Go(func() { shutdownHTTP(ctx, s.kb) })
	wg.Go(func() { shutdownHTTP(ctx, s.llm) })
	for _, srv := range s.grpcs {
		wg.Go(func() { stopGRPC(ctx, srv) })
	}
	wg.Wait()
	s.wg.Wait()
	s.llmTransport.CloseIdleConnections()
	// Last, so the spans of the calls that just finished are exported.
	terr := s.tracing.shutdown(ctx)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("demo: close cut calls short: %w", err)
	}
	if terr != nil {
		return fmt.Errorf("demo: span export at close: %w", terr)
	}
	return nil
}

func shutdownHTTP(ctx context.Context, srv *http.Server) {
	if err := srv.Shutdown(ctx); err != nil {
		srv.Close()
	}
}

func stopGRPC(ctx context.Context, srv *grpc.Server) {
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		srv.Stop()
		<-done
	}
}

// observeHTTP counts a call and reports it to OnCall.
func (s *Stack) observeHTTP(r *http.Request, service string) {
	s.calls[service].Add(1)
	if s.cfg.OnCall != nil {
		s.cfg.OnCall(Call{
			Service:     service,
			Caller:      r.Header.Get(HeaderCaller),
			Session:     r.Header.Get(HeaderSession),
			Traceparent: r.Header.Get("traceparent"),
		})
	}
}

// observeGRPC is observeHTTP for gRPC calls.
func (s *Stack) observeGRPC(ctx context.Context, service string) {
	s.calls[service].Add(1)
	if s.cfg.OnCall != nil {
		md, _ := metadata.FromIncomingContext(ctx)
		get := func(k string) string {
			if v := md.Get(k); len(v) > 0 {
				return v[0]
			}
			return ""
		}
		s.cfg.OnCall(Call{
			Service:     service,
			Caller:      get(HeaderCaller),
			Session:     get(HeaderSession),
			Traceparent: get("traceparent"),
		})
	}
}
