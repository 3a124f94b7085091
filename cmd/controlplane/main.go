package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/xds"
)

func main() {
	path := flag.String("config", "fleet.yaml", "fleet YAML file (listeners, routes, upstreams, callers)")
	addr := flag.String("listen", "127.0.0.1:18000", "address of the xDS (ADS) server")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Error("listen", "error", err)
		os.Exit(1)
	}
	cp, err := newControlPlane(*path, log)
	if err != nil {
		log.Error("first load", "error", err)
		os.Exit(1)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			cp.reload()
		}
	}()
	if err := cp.serve(ctx, ln); err != nil {
		log.Error("serve", "error", err)
		os.Exit(1)
	}
}

// fleetHash gives every node the same configuration, the fleet file, in
// one of two snapshots: Envoy's leaves out the API listeners of proxyless
// gRPC clients (and their route configurations), which Envoy accepts only
// in its bootstrap, never over LDS.
type fleetHash struct{}

func (fleetHash) ID(n *corev3.Node) string {
	if n.GetUserAgentName() == "envoy" {
		return envoyKey
	}
	return fleetKey
}

const (
	fleetKey = "fleet"
	envoyKey = "envoy"
)

// controlPlane is the snapshot cache fed from the fleet file.
type controlPlane struct {
	path  string
	log   *slog.Logger
	cache cachev3.SnapshotCache

	mu      sync.Mutex // serializes reloads; guards version
	version string
	// onNACK, when set (tests), sees every NACK a client sends.
	onNACK func(node, typeURL, msg string)
}

func newControlPlane(path string, log *slog.Logger) (*controlPlane, error) {
	// ads=false: in ADS mode the cache answers a request only when it
	// names every resource of the type in the snapshot, and proxyless
	// gRPC clients name only what their target uses (one API listener,
	// the clusters of its routes); they would never get an answer.
	cp := &controlPlane{path: path, log: log, cache: cachev3.NewSnapshotCache(false, fleetHash{}, nil)}
	if err := cp.load(); err != nil {
		return nil, err
	}
	return cp, nil
}

// reload publishes the file as it is now, or keeps the last good
// snapshot and logs why.
func (cp *controlPlane) reload() {
	if err := cp.load(); err != nil {
		cp.log.Error("fleet file not published; the last good version keeps serving", "file", cp.path, "error", err)
	}
}

func (cp *controlPlane) load() error {
	cfg, err := config.Load(cp.path)
	if err != nil {
		return err
	}
	if cfg.XDS != nil {
		return errors.New("a fleet file has no xds section: it is what the control plane serves")
	}
	res, err := xds.Build(&cfg.Spec)
	if err != nil {
		return err
	}
	snap := map[resourcev3.Type][]types.Resource{}
	h := sha256.New()
	add := func(typ resourcev3.Type, m types.Resource) {
		snap[typ] = append(snap[typ], m)
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		fmt.Fprintf(h, "%s %d\n", typ, len(b))
		h.Write(b)
	}
	for _, m := range res.Listeners {
		add(resourcev3.ListenerType, m)
	}
	for _, m := range res.Routes {
		add(resourcev3.RouteType, m)
	}
	for _, m := range res.Clusters {
		add(resourcev3.ClusterType, m)
	}
	for _, m := range res.Endpoints {
		add(resourcev3.EndpointType, m)
	}
	version := hex.EncodeToString(h.Sum(nil))[:12]
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if version == cp.version {
		return nil // nothing changed (an editor's save that kept the content)
	}
	s, err := cachev3.NewSnapshot(version, snap)
	if err != nil {
		return err
	}
	// No s.Consistent() here: it does not count the route configurations
	// of API listeners as referenced. Envoy's snapshot, without them, is.
	envoy := map[resourcev3.Type][]types.Resource{resourcev3.ClusterType: snap[resourcev3.ClusterType],
		resourcev3.EndpointType: snap[resourcev3.EndpointType]}
	for _, l := range res.Listeners {
		if l.GetApiListener() == nil {
			envoy[resourcev3.ListenerType] = append(envoy[resourcev3.ListenerType], l)
		}
	}
	for _, r := range res.Routes {
		if !strings.HasPrefix(r.GetName(), xds.APIListenerPrefix) {
			envoy[resourcev3.RouteType] = append(envoy[resourcev3.RouteType], r)
		}
	}
	es, err := cachev3.NewSnapshot(version, envoy)
	if err != nil {
		return err
	}
	if err := es.Consistent(); err != nil {
		return err
	}
	if err := cp.cache.SetSnapshot(context.Background(), fleetKey, s); err != nil {
		return err
	}
	if err := cp.cache.SetSnapshot(context.Background(), envoyKey, es); err != nil {
		return err
	}
	cp.version = version
	cp.log.Info("fleet published", "file", cp.path, "version", version,
		"listeners", len(res.Listeners), "routes", len(res.Routes), "clusters", len(res.Clusters))
	return nil
}

// serve runs the ADS server on ln and watches the file until ctx ends.
func (cp *controlPlane) serve(ctx context.Context, ln net.Listener) error {
	var deltaNodes struct {
		sync.Mutex
		m map[int64]string
	}
	deltaNodes.m = map[int64]string{}
	nacked := func(node, typ, msg string) {
		cp.log.Warn("update NACKed", "node", node, "type", typ, "error", msg)
		if cp.onNACK != nil {
			cp.onNACK(node, typ, msg)
		}
	}
	// go-control-plane's server speaks both ADS variants from the same
	// snapshot cache: state of the world and delta (incremental).
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
			if d := req.GetErrorDetail(); d != nil {
				nacked(req.GetNode().GetId(), req.GetTypeUrl(), d.GetMessage())
			}
			return nil
		},
		// A delta client may send its node in the stream's first request
		// only (Envoy does): remember it by stream.
		StreamDeltaRequestFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			deltaNodes.Lock()
			if n := req.GetNode().GetId(); n != "" {
				deltaNodes.m[id] = n
			}
			node := deltaNodes.m[id]
			deltaNodes.Unlock()
			if d := req.GetErrorDetail(); d != nil {
				nacked(node, req.GetTypeUrl(), d.GetMessage())
			}
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) {
			deltaNodes.Lock()
			delete(deltaNodes.m, id)
			deltaNodes.Unlock()
		},
	}
	srv := serverv3.NewServer(ctx, cp.cache, cb)
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	watchDone := make(chan error, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The watch starts here, after the first load: reading the file once
	// more once it runs publishes whatever was written in between (an
	// unchanged file is no new version).
	if w, err := config.NewWatcher(cp.path, 0); err != nil {
		cp.log.Error("fleet file not watched; publish changes with SIGHUP", "file", cp.path, "error", err)
		watchDone <- err
	} else {
		cp.reload()
		go func() { watchDone <- w.Run(wctx, cp.reload) }()
	}
	serveDone := make(chan error, 1)
	go func() { serveDone <- gs.Serve(ln) }()
	cp.log.Info("xDS server listening", "address", ln.Addr().String())
	select {
	case <-ctx.Done():
	case err := <-serveDone:
		cancel()
		<-watchDone
		return err
	}
	gs.Stop()
	<-serveDone
	cancel()
	<-watchDone
	return nil
}
