package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/xds"
)

// TestXDSThroughApp runs the real command with an xds section: listeners,
// routes and upstreams come from the management server, traffic flows,
// /config shows the source and the accepted versions, and a reload of the
// file (callers changed) keeps the xDS configuration serving.
func TestXDSThroughApp(t *testing.T) {
	s := startStack(t)
	p := newPorts(t)
	spec := &routes.Spec{
		Listeners: []routes.Listener{{Name: "http", Address: fmt.Sprintf("127.0.0.1:%d", p.http), Protocol: routes.ListenerHTTP}},
		Routes:    []routes.Route{{Name: "web", Listener: "http", Upstream: "web"}},
		Upstreams: []routes.Upstream{{Name: "web", Protocol: routes.UpstreamHTTP, Endpoints: []string{s.web.Listener.Addr().String()}}},
	}
	res, err := xds.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
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
	sn, err := cachev3.NewSnapshot("v1", snap)
	if err != nil {
		t.Fatal(err)
	}
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	if err := cache.SetSnapshot(context.Background(), "replica-1", sn); err != nil {
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

	path := filepath.Join(t.TempDir(), "hopwatch.yaml")
	file := func(callers string) string {
		return fmt.Sprintf("admin: {address: \"127.0.0.1:%d\"}\ncallers: [%s]\nxds: {server: %q, node_id: replica-1}\n", p.admin, callers, ln.Addr())
	}
	writeFile(t, path, file("client"))
	a, err := start(path, time.Second, testkit.Logger(t), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer a.drain(time.Second)
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	through := func() int {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", p.http))
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	deadline := time.Now().Add(10 * time.Second)
	for through() != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("no traffic through the xDS listener; status %+v", a.xds.client.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}

	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/config", p.admin))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Routing xds.Status `json:"routing"`
	}
	err = json.NewDecoder(resp.Body).Decode(&doc)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if doc.Routing.Source != "xds" || doc.Routing.Server != ln.Addr().String() || !doc.Routing.Connected ||
		doc.Routing.Versions["listener"] != "v1" || doc.Routing.LastNACK != nil {
		t.Errorf("/config routing = %+v", doc.Routing)
	}

	writeFile(t, path, file("client, gateway"))
	a.reload("test")
	if !a.last.OK {
		t.Fatalf("reload with a new callers list: %v", a.last.Errors)
	}
	if st := through(); st != http.StatusOK {
		t.Errorf("after the reload: %d", st)
	}
	writeFile(t, path, strings.Replace(file("client"), "replica-1", "replica-2", 1))
	a.reload("test")
	if a.last.OK || !strings.Contains(strings.Join(a.last.Errors, " "), "xds section changed") {
		t.Errorf("a changed xds section was applied: %+v", a.last)
	}
	if st := through(); st != http.StatusOK {
		t.Errorf("after the refused reload: %d", st)
	}
}
