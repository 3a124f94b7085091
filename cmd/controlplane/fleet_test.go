package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	xdsresolver "google.golang.org/grpc/xds"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/xds"
)

// startBackend is a gRPC health server that names itself in the x-backend
// response header.
func startBackend(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		grpc.SetHeader(ctx, metadata.Pairs("x-backend", name))
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

const fleetTemplate = `
callers: [client]
listeners:
  - {name: bot, address: 127.0.0.1:0, protocol: grpc, caller_header: x-hop-caller}
routes:
  - name: health
    listener: bot
    match: {grpc_service: grpc.health.v1.Health}
    upstream: %s
    timeout: 5s
upstreams:
  - {name: a, protocol: grpc, endpoints: [%s], balance: round_robin}
  - {name: b, protocol: grpc, endpoints: [%s], balance: round_robin}
`

// writeFile replaces path at once, as editors and Kubernetes do.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// replica is one hopwatch: a proxy fed by an xDS client.
type replica struct {
	p   *proxy.Proxy
	c   *xds.Client
	reg *prometheus.Registry
}

func startReplica(t *testing.T, server, id, protocol string) *replica {
	t.Helper()
	r := &replica{p: proxy.New(proxy.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}), reg: prometheus.NewRegistry()}
	c, err := xds.New(xds.Options{Config: config.XDS{Server: server, NodeID: id, Protocol: protocol}, Apply: r.p.Apply, Registerer: r.reg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	r.c = c
	t.Cleanup(func() {
		if t.Failed() {
			st := c.Status()
			t.Logf("%s status: %+v nack %+v", id, st, st.LastNACK)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		r.p.Shutdown(sctx)
	})
	return r
}

// caller calls Health/Check in a loop over cc and records which backend
// answered and every failure.
type caller struct {
	name    string
	backend atomic.Value // string
	calls   atomic.Int64
	failed  atomic.Int64
	lastErr atomic.Value
}

func (c *caller) run(ctx context.Context, wg *sync.WaitGroup, cc *grpc.ClientConn) {
	defer wg.Done()
	hc := healthpb.NewHealthClient(cc)
	for ctx.Err() == nil {
		var hdr metadata.MD
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := hc.Check(cctx, &healthpb.HealthCheckRequest{}, grpc.Header(&hdr))
		cancel()
		if ctx.Err() != nil {
			return
		}
		c.calls.Add(1)
		if err != nil {
			c.failed.Add(1)
			c.lastErr.Store(err.Error())
			continue
		}
		if v := hdr.Get("x-backend"); len(v) == 1 {
			c.backend.Store(v[0])
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (c *caller) on() string {
	s, _ := c.backend.Load().(string)
	return s
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// TestFleetFollowsControlPlane: two hopwatch replicas and a proxyless
// grpc-go client (xds:/// target) follow one control plane. A change of
// the fleet file reaches all three within the 2 s (asserted with
// slack, measured and logged) without a failed call; an invalid file is
// not published; a resource hopwatch cannot honour is NACKed by both
// replicas, with the field path, while they keep serving the last good
// configuration. The replicas speak each ADS variant in turn (the gRPC
// client speaks state of the world).
func TestFleetFollowsControlPlane(t *testing.T) {
	for _, protocol := range []string{config.XDSProtocolSotW, config.XDSProtocolDelta} {
		t.Run(protocol, func(t *testing.T) { testFleetFollowsControlPlane(t, protocol) })
	}
}

func testFleetFollowsControlPlane(t *testing.T, protocol string) {
	addrA, addrB := startBackend(t, "A"), startBackend(t, "B")
	dir := t.TempDir()
	path := filepath.Join(dir, "fleet.yaml")
	writeFile(t, path, fmt.Sprintf(fleetTemplate, "a", addrA, addrB))

	cp, err := newControlPlane(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var nackMu sync.Mutex
	nacks := map[string]string{} // node → message
	nackCount := map[string]int{}
	cp.onNACK = func(node, _, msg string) {
		nackMu.Lock()
		nacks[node] = msg
		nackCount[node]++
		nackMu.Unlock()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cpCtx, cpStop := context.WithCancel(context.Background())
	cpDone := make(chan error, 1)
	go func() { cpDone <- cp.serve(cpCtx, ln) }()
	defer func() {
		cpStop()
		if err := <-cpDone; err != nil {
			t.Errorf("control plane: %v", err)
		}
	}()
	server := ln.Addr().String()

	replicas := []*replica{startReplica(t, server, "replica-1", protocol), startReplica(t, server, "replica-2", protocol)}
	var conns []*grpc.ClientConn
	for i, r := range replicas {
		waitUntil(t, fmt.Sprintf("replica %d's listener", i+1), 10*time.Second, func() bool { return r.p.Addr("bot") != nil })
		cc, err := grpc.NewClient(r.p.Addr("bot").String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		conns = append(conns, cc)
	}
	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "grpc-client"},
		"client_default_listener_resource_name_template": %q
	}`, server, xds.APIListenerPrefix+"%s")
	builder, err := xdsresolver.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	direct, err := grpc.NewClient("xds:///bot", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(builder))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	conns = append(conns, direct)

	callers := []*caller{{name: "replica-1"}, {name: "replica-2"}, {name: "grpc xds:/// client"}}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i, c := range callers {
		wg.Add(1)
		go c.run(ctx, &wg, conns[i])
	}
	stopped := false
	stopCallers := func() {
		if !stopped {
			stopped = true
			stop()
			wg.Wait()
		}
	}
	defer stopCallers()
	defer func() {
		if t.Failed() {
			for _, c := range callers {
				t.Logf("%s: on %q, %d calls, %d failed, last error %v", c.name, c.on(), c.calls.Load(), c.failed.Load(), c.lastErr.Load())
			}
		}
	}()
	on := func(backend string, who ...*caller) func() bool {
		return func() bool {
			for _, c := range who {
				if c.on() != backend {
					return false
				}
			}
			return true
		}
	}
	waitUntil(t, "all three on backend A", 20*time.Second, on("A", callers...))
	for _, c := range callers {
		if n := c.failed.Swap(0); n > 0 {
			t.Logf("%s: %d calls failed while starting (last: %v)", c.name, n, c.lastErr.Load())
		}
	}

	// A valid change reaches everyone.
	start := time.Now()
	writeFile(t, path, fmt.Sprintf(fleetTemplate, "b", addrA, addrB))
	var wgc sync.WaitGroup
	took := make([]time.Duration, len(callers))
	for i, c := range callers {
		wgc.Add(1)
		go func() {
			defer wgc.Done()
			for c.on() != "B" && time.Since(start) < 20*time.Second {
				time.Sleep(time.Millisecond)
			}
			took[i] = time.Since(start)
		}()
	}
	wgc.Wait()
	const slack = 3 // the 2 s, with slack for a loaded machine
	for i, c := range callers {
		t.Logf("convergence: %s on the new route %v after the file changed", c.name, took[i].Round(time.Millisecond))
		if c.on() != "B" || took[i] > slack*2*time.Second {
			t.Errorf("%s took %v to follow the change (on %q)", c.name, took[i], c.on())
		}
	}

	for _, c := range callers {
		if n := c.failed.Swap(0); n > 0 {
			t.Errorf("%s: %d calls failed while following the change (last: %v)", c.name, n, c.lastErr.Load())
		}
	}

	// An invalid file is not published: everyone stays on B.
	cp.mu.Lock()
	version := cp.version
	cp.mu.Unlock()
	writeFile(t, path, strings.Replace(fmt.Sprintf(fleetTemplate, "b", addrA, addrB), "upstream: b", "upstream: nope", 1))
	time.Sleep(500 * time.Millisecond)
	cp.mu.Lock()
	if cp.version != version {
		t.Errorf("an invalid fleet file was published as %s", cp.version)
	}
	cp.mu.Unlock()

	// A resource only hopwatch refuses (an unknown field in its metadata,
	// on a route that would move traffic to A): both replicas NACK it and
	// stay on B; the gRPC client, which ignores hopwatch metadata, moves.
	spec, err := config.Parse("fleet.yaml", []byte(fmt.Sprintf(fleetTemplate, "a", addrA, addrB)))
	if err != nil {
		t.Fatal(err)
	}
	res, err := xds.Build(&spec.Spec)
	if err != nil {
		t.Fatal(err)
	}
	bad, err := xds.MetaStruct(map[string]any{"fallbak": map[string]any{"after": "1s"}})
	if err != nil {
		t.Fatal(err)
	}
	res.Routes[0].VirtualHosts[0].Routes[0].Metadata = bad
	snap := map[resourcev3.Type][]types.Resource{}
	for _, m := range res.Listeners {
		snap[resourcev3.ListenerType] = append(snap[resourcev3.ListenerType], m)
	}
	for _, m := range res.Routes {
		snap[resourcev3.RouteType] = append(snap[resourcev3.RouteType], m)
	}
	for _, m := range res.Clusters {
		snap[resourcev3.ClusterType] = append(snap[resourcev3.ClusterType], m)
	}
	for _, m := range res.Endpoints {
		snap[resourcev3.EndpointType] = append(snap[resourcev3.EndpointType], m)
	}
	s, err := cachev3.NewSnapshot("bad-1", snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), fleetKey, s); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the gRPC client to take the update", 20*time.Second, on("A", callers[2]))
	waitUntil(t, "both replicas to NACK", 20*time.Second, func() bool {
		nackMu.Lock()
		defer nackMu.Unlock()
		return nacks["replica-1"] != "" && nacks["replica-2"] != ""
	})
	for i, r := range replicas {
		time.Sleep(100 * time.Millisecond)
		if got := callers[i].on(); got != "B" {
			t.Errorf("replica %d moved to %s on a NACKed update", i+1, got)
		}
		st := r.c.Status()
		if st.Protocol != protocol {
			t.Errorf("replica %d speaks %q, want %q", i+1, st.Protocol, protocol)
		}
		if st.LastNACK == nil || !strings.Contains(st.LastNACK.Error, `metadata.filter_metadata.hopwatch: fallbak: unknown field`) {
			t.Errorf("replica %d /config last NACK = %+v", i+1, st.LastNACK)
		}
		if n := testutil.ToFloat64(mustCounter(t, r.reg, "route", "rejected")); n < 1 {
			t.Errorf("replica %d: hopwatch_xds_updates_total{type=route,result=rejected} = %v", i+1, n)
		}
	}
	nackMu.Lock()
	t.Logf("NACK as the control plane received it: %s", nacks["replica-1"])
	t.Logf("NACKs received: %v", nackCount)
	nackMu.Unlock()

	// A fixed version after the NACKed one is taken at once.
	start = time.Now()
	writeFile(t, path, fmt.Sprintf(fleetTemplate, "a", addrA, addrB)+"\n# fixed\n")
	for _, c := range callers[:2] {
		waitUntil(t, c.name+" to take the fixed version", 20*time.Second, on("A", c))
	}
	t.Logf("after the NACK, the fixed version reached both replicas in %v", time.Since(start).Round(time.Millisecond))
	for i, r := range replicas {
		mfs, err := r.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "hopwatch_xds_connected" && mf.GetMetric()[0].GetGauge().GetValue() != 1 {
				t.Errorf("replica %d: hopwatch_xds_connected = %v", i+1, mf.GetMetric()[0].GetGauge().GetValue())
			}
		}
	}

	stopCallers()
	for _, c := range callers {
		t.Logf("%s: %d calls", c.name, c.calls.Load())
		if n := c.failed.Load(); n > 0 {
			t.Errorf("%s: %d calls failed while the update was NACKed (last: %v)", c.name, n, c.lastErr.Load())
		}
	}
}

// mustCounter finds hopwatch_xds_updates_total{type,result} in reg.
func mustCounter(t *testing.T, reg *prometheus.Registry, typ, result string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "found"})
	for _, mf := range mfs {
		if mf.GetName() != "hopwatch_xds_updates_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["type"] == typ && l["result"] == result {
				c.Add(m.GetCounter().GetValue())
			}
		}
	}
	return c
}

// TestEnvoySnapshot: Envoy gets the fleet without the API listeners of
// proxyless gRPC clients, and a snapshot whose references all resolve.
func TestEnvoySnapshot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.yaml")
	writeFile(t, path, fmt.Sprintf(fleetTemplate, "a", "127.0.0.1:7001", "127.0.0.1:7002"))
	cp, err := newControlPlane(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key                 string
		listeners, rconfigs int
	}{
		{envoyKey, 1, 1},
		{fleetKey, 2, 2},
	} {
		s, err := cp.cache.GetSnapshot(tc.key)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(s.GetResources(resourcev3.ListenerType)); n != tc.listeners {
			t.Errorf("%s: %d listeners, want %d", tc.key, n, tc.listeners)
		}
		if n := len(s.GetResources(resourcev3.RouteType)); n != tc.rconfigs {
			t.Errorf("%s: %d route configurations, want %d", tc.key, n, tc.rconfigs)
		}
	}
}
