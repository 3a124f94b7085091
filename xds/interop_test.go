package xds

import (
	"cmp"
	"context"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	testresource "github.com/envoyproxy/go-control-plane/pkg/test/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/proxy"
)

// freePort returns a loopback port nobody listens on now.
func freePort(t *testing.T) uint32 { return uint32(testkit.FreePort(t)) }

// TestInteropGoControlPlaneServer: hopwatch, as an xDS client of
// go-control-plane's own server and snapshot cache (in ADS mode, as its
// example control plane runs), serving resources built by go-control-plane's
// test resource builders, proxies traffic as they say, over each ADS
// variant (auto picks delta, which that server speaks).
func TestInteropGoControlPlaneServer(t *testing.T) {
	for _, tc := range []struct{ protocol, speaks string }{
		{config.XDSProtocolSotW, config.XDSProtocolSotW},
		{config.XDSProtocolDelta, config.XDSProtocolDelta},
		{"", config.XDSProtocolDelta},
	} {
		t.Run(cmp.Or(tc.protocol, "auto"), func(t *testing.T) { testInterop(t, tc.protocol, tc.speaks) })
	}
}

func testInterop(t *testing.T, protocol, speaks string) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "from the backend")
	}))
	defer backend.Close()
	_, bp, _ := net.SplitHostPort(backend.Listener.Addr().String())
	backendPort, _ := strconv.Atoi(bp)
	port := freePort(t)

	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	snap, err := cachev3.NewSnapshot("1", map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {testresource.MakeRouteHTTPListener(testresource.Ads, "listener_0", port, "local_route")},
		resourcev3.RouteType:    {testresource.MakeRouteConfig("local_route", "example_cluster")},
		resourcev3.ClusterType:  {testresource.MakeCluster(testresource.Ads, "example_cluster")},
		resourcev3.EndpointType: {testresource.MakeEndpoint("example_cluster", uint32(backendPort))},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Consistent(); err != nil {
		t.Fatal(err)
	}
	if err := cache.SetSnapshot(context.Background(), "hopwatch-1", snap); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(ctx, cache, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	defer gs.Stop()

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	p := proxy.New(proxy.Options{Logger: quiet})
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		p.Shutdown(sctx)
	}()
	c, err := New(Options{Config: config.XDS{Server: ln.Addr().String(), NodeID: "hopwatch-1", Protocol: protocol}, Apply: p.Apply,
		Registerer: prometheus.NewRegistry(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		c.Run(ctx)
	}()
	defer func() {
		cancel()
		<-runDone
	}()

	deadline := time.Now().Add(10 * time.Second)
	for p.Addr("listener_0") == nil {
		if time.Now().After(deadline) {
			t.Fatalf("no listener from the server; client status %+v", c.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := http.Get("http://" + p.Addr("listener_0").String() + "/anything")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(b) != "from the backend" {
		t.Errorf("through hopwatch: %d %q", resp.StatusCode, b)
	}
	// The version is recorded just after the apply that the request saw.
	all := func() bool {
		v := c.Status().Versions
		return v["listener"] == "1" && v["route"] == "1" && v["cluster"] == "1" && v["endpoint"] == "1"
	}
	for deadline := time.Now().Add(15 * time.Second); !all() && time.Now().Before(deadline); { // a bound for a loaded machine, not a speed
		time.Sleep(5 * time.Millisecond)
	}
	st := c.Status()
	if st.Protocol != speaks {
		t.Errorf("the stream speaks %q, want %q", st.Protocol, speaks)
	}
	for _, typ := range []string{"listener", "route", "cluster", "endpoint"} {
		if st.Versions[typ] != "1" {
			t.Errorf("accepted %s version = %q, want 1 (status %+v, last NACK %+v)", typ, st.Versions[typ], st, st.LastNACK)
		}
	}
}
