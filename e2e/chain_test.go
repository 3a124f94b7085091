package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/hopwatch/hopwatch/admin"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// The chain's hops, named as routes (and upstreams: route → upstream).
// One client turn makes all three, in one trace:
//
//	client  ─► hopwatch http  ─ chat ─►  gateway
//	gateway ─► hopwatch grpc  ─ nlu  ─►  nlu (grpc.health.v1.Health/Check)
//	gateway ─► hopwatch http  ─ kb   ─►  kb  (POST /kb/search)
var chainHops = []struct{ route, upstream, caller string }{
	{"chat", "gateway", "client"},
	{"nlu", "nlu", "gateway"},
	{"kb", "kb", "gateway"},
}

const callerHeader = "x-hop-caller"

// traceHeaders are what the gateway copies from its request onto its
// outgoing calls: W3C trace context and baggage, by hand, as a service
// without an OpenTelemetry SDK would.
var traceHeaders = []string{"traceparent", "tracestate", "baggage"}

// chain is hopwatch wired as cmd/proxy wires it (registry with the Go and
// process collectors, telemetry, proxy, admin with /metrics) in front of
// three real services.
type chain struct {
	tel      *telemetry.Telemetry
	reg      *prometheus.Registry
	adminURL string // http://host:port
	chatURL  string // the entry route, on hopwatch's HTTP listener
	client   *http.Client
}

func startChain(t testing.TB, cfg telemetry.Config) *chain {
	t.Helper()
	log := testkit.Logger(t)

	// Upstreams. Cleanups run last-registered-first, so these stop after
	// hopwatch, which is registered below.
	nluLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nlu := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(nlu, hs)
	served := make(chan struct{})
	go func() { defer close(served); nlu.Serve(nluLn) }()
	t.Cleanup(func() { hs.Shutdown(); nlu.Stop(); <-served })

	kb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"results":[{"id":"kb-1"}]}`)
	}))
	t.Cleanup(kb.Close)
	gw := &gateway{}
	gwSrv := httptest.NewServer(gw)
	t.Cleanup(gwSrv.Close)

	// hopwatch.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	tel, err := telemetry.New(telemetry.Options{Config: cfg, Registry: reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tel.Shutdown(ctx) // an unreachable collector makes this fail; that is not this test's business
	})
	adm := admin.New(admin.Options{Logger: log, Traces: tel.Store, Hops: tel.Stats})
	adm.Handle("GET /metrics", tel.MetricsHandler())
	if err := adm.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		adm.Shutdown(ctx)
	})
	p := proxy.New(proxy.Options{Logger: log, Telemetry: tel})
	spec := &routes.Spec{
		Callers: []string{"client", "gateway"},
		Listeners: []routes.Listener{
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, CallerHeader: callerHeader},
			{Name: "http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP, CallerHeader: callerHeader},
		},
		Routes: []routes.Route{
			{Name: "chat", Listener: "http", Match: routes.Match{PathPrefix: "/chat", Method: http.MethodPost}, Upstream: "gateway", Timeout: 10 * time.Second},
			{Name: "kb", Listener: "http", Match: routes.Match{PathPrefix: "/kb/", Method: http.MethodPost}, Upstream: "kb", Timeout: 10 * time.Second},
			{Name: "nlu", Listener: "grpc", Match: routes.Match{GRPCService: "grpc.health.v1.Health"}, Upstream: "nlu", Timeout: 10 * time.Second},
		},
		Upstreams: []routes.Upstream{
			{Name: "gateway", Protocol: routes.UpstreamHTTP, Endpoints: []string{gwSrv.Listener.Addr().String()}},
			{Name: "kb", Protocol: routes.UpstreamHTTP, Endpoints: []string{kb.Listener.Addr().String()}},
			{Name: "nlu", Protocol: routes.UpstreamGRPC, Endpoints: []string{nluLn.Addr().String()}},
		},
	}
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("proxy shutdown: %v", err)
		}
	})
	httpAddr, grpcAddr := p.Addr("http").String(), p.Addr("grpc").String()

	// The gateway calls back through hopwatch. Its connections close
	// before hopwatch drains (registered last, so they run first).
	cc, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	gwTransport := &http.Transport{}
	gw.nlu = healthpb.NewHealthClient(cc)
	gw.kbURL = "http://" + httpAddr + "/kb/search"
	gw.http = &http.Client{Transport: gwTransport}
	clientTransport := &http.Transport{}
	t.Cleanup(func() {
		clientTransport.CloseIdleConnections()
		gwTransport.CloseIdleConnections()
		cc.Close()
	})
	return &chain{
		tel:      tel,
		reg:      reg,
		adminURL: "http://" + adm.Addr().String(),
		chatURL:  "http://" + httpAddr + "/chat/turn",
		client:   &http.Client{Transport: clientTransport},
	}
}

// gateway is the bot's front service: for each turn it asks the NLU
// service (gRPC) and the knowledge base (HTTP), both through hopwatch,
// carrying the trace context it was given.
type gateway struct {
	nlu   healthpb.HealthClient
	kbURL string
	http  *http.Client
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	ctx := r.Context()

	md := metadata.Pairs(callerHeader, "gateway")
	for _, k := range traceHeaders {
		if v := r.Header.Get(k); v != "" {
			md.Set(k, v)
		}
	}
	res, err := g.nlu.Check(metadata.NewOutgoingContext(ctx, md), &healthpb.HealthCheckRequest{})
	if err != nil {
		http.Error(w, "nlu: "+err.Error(), http.StatusBadGateway)
		return
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.kbURL, strings.NewReader(`{"q":"opening hours"}`))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(callerHeader, "gateway")
	for _, k := range traceHeaders {
		if v := r.Header.Get(k); v != "" {
			req.Header.Set(k, v)
		}
	}
	kbRes, err := g.http.Do(req)
	if err != nil {
		http.Error(w, "kb: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer kbRes.Body.Close()
	kb, err := io.ReadAll(kbRes.Body)
	if err != nil || kbRes.StatusCode != http.StatusOK {
		http.Error(w, fmt.Sprintf("kb: %s %v", kbRes.Status, err), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"nlu":%q,"kb":%s}`, res.GetStatus().String(), kb)
}

// turn is one user turn: a client request to the entry route, with
// traceparent if not empty. Any answer but the gateway's 200 is an error.
func (c *chain) turn(ctx context.Context, traceparent string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.chatURL, strings.NewReader(`{"text":"when are you open?"}`))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(callerHeader, "client")
	if traceparent != "" {
		req.Header.Set("traceparent", traceparent)
	}
	res, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), `"nlu":"SERVING"`) {
		return fmt.Errorf("turn: %s: %.300s", res.Status, body)
	}
	return nil
}

// traffic runs turns back to back until stopped, so that Prometheus sees
// counters move between scrapes.
type traffic struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	lastErr    error
	stop       chan struct{}
	done       chan struct{}
}

// drive starts traffic; it stops when the test ends, which then fails if
// any turn failed.
func (c *chain) drive(t testing.TB, pause time.Duration) *traffic {
	tr := &traffic{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		for {
			select {
			case <-tr.stop:
				return
			case <-time.After(pause):
			}
			if err := c.turn(context.Background(), ""); err != nil {
				tr.failed.Add(1)
				tr.mu.Lock()
				tr.lastErr = err
				tr.mu.Unlock()
				continue
			}
			tr.ok.Add(1)
		}
	}()
	t.Cleanup(func() {
		close(tr.stop)
		<-tr.done
		tr.mu.Lock()
		defer tr.mu.Unlock()
		t.Logf("traffic: %d turns ok, %d failed", tr.ok.Load(), tr.failed.Load())
		if tr.failed.Load() > 0 {
			t.Errorf("%d turns failed; last: %v", tr.failed.Load(), tr.lastErr)
		}
	})
	return tr
}

// counter reads a counter of hopwatch's registry (0 if it has no sample).
func (c *chain) counter(t testing.TB, name string) float64 {
	t.Helper()
	return testkit.Metric(t, c.reg, name, nil)
}
