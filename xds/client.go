package xds

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/internal/tlsfile"
	"github.com/hopwatch/hopwatch/routes"
)

// Options are the client's configuration and injected dependencies.
type Options struct {
	// Config is the file's xds section.
	Config config.XDS
	// Base holds what the file keeps (callers, replay); each translated
	// spec starts from it.
	Base *routes.Spec
	// Apply applies a complete, valid spec (the proxy's Apply); an error
	// NACKs the update, so it must mean that nothing changed and the
	// previous configuration keeps serving.
	Apply func(*routes.Spec) error
	// Registerer receives the xDS metrics (required).
	Registerer prometheus.Registerer
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Retry bounds for the stream to the management server.
const (
	retryBase = 100 * time.Millisecond
	retryMax  = 10 * time.Second
)

// typeOrder is the order resources are subscribed in and depend on each
// other: listeners name route configurations, clusters name assignments.
var typeOrder = []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.RouteType, resourcev3.EndpointType}

// Client is an ADS client. Run drives it; Status reports it.
type Client struct {
	opts Options
	node *corev3.Node
	log  *slog.Logger
	m    metrics

	// applying serializes applies (xDS updates and SetBase), so that
	// neither can put back an older configuration over a newer one.
	applying sync.Mutex

	// files holds the inline certificates of TLS contexts, as files
	// (safe for concurrent use).
	files *inlineFiles

	mu     sync.Mutex // guards the fields below
	base   *routes.Spec
	status Status
	last   *routes.Spec // last spec applied
}

// Status is the client's state, for /config.
type Status struct {
	Source    string            `json:"source"` // "xds"
	Server    string            `json:"server"`
	NodeID    string            `json:"node_id"`
	Connected bool              `json:"connected"`
	Protocol  string            `json:"protocol,omitempty"` // of the last stream up: delta or sotw
	Versions  map[string]string `json:"versions"`           // accepted version by type URL
	Applied   time.Time         `json:"applied,omitzero"`
	LastNACK  *NACK             `json:"last_nack,omitempty"`
	LastError string            `json:"last_error,omitempty"` // stream errors
}

// NACK is one rejected update.
type NACK struct {
	Time    time.Time `json:"time"`
	TypeURL string    `json:"type_url"`
	Version string    `json:"version"`
	Error   string    `json:"error"`
}

type metrics struct {
	connected prometheus.Gauge
	updates   *prometheus.CounterVec
}

// New returns a client; nothing happens until Run.
func New(opts Options) (*Client, error) {
	if opts.Apply == nil || opts.Registerer == nil {
		return nil, errors.New("xds: Apply and Registerer are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Base == nil {
		opts.Base = &routes.Spec{}
	}
	m := metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_xds_connected",
			Help: "1 while the ADS stream to the xDS management server is up.",
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_xds_updates_total",
			Help: "xDS responses by resource type (listener, route, cluster, endpoint) and result (applied: ACKed, rejected: NACKed, the last good configuration kept serving).",
		}, []string{"type", "result"}),
	}
	if err := opts.Registerer.Register(m.connected); err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	if err := opts.Registerer.Register(m.updates); err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	c := &Client{opts: opts, log: opts.Logger, m: m, base: opts.Base, files: &inlineFiles{},
		node:   &corev3.Node{Id: opts.Config.NodeID, Cluster: opts.Config.Cluster, UserAgentName: "hopwatch"},
		status: Status{Source: "xds", Server: opts.Config.Server, NodeID: opts.Config.NodeID, Versions: map[string]string{}}}
	return c, nil
}

// Status returns a copy of the client's state.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Versions = make(map[string]string, len(c.status.Versions))
	for k, v := range c.status.Versions {
		s.Versions[shortType(k)] = v
	}
	if s.LastNACK != nil {
		n := *s.LastNACK
		s.LastNACK = &n
	}
	return s
}

// SetBase replaces what the file keeps (after a reload of the file) and
// applies the last xDS configuration again on top of it.
func (c *Client) SetBase(base *routes.Spec) error {
	c.applying.Lock()
	defer c.applying.Unlock()
	c.mu.Lock()
	c.base = base
	last := c.last
	c.mu.Unlock()
	if last == nil {
		return nil
	}
	spec := *last
	spec.Callers, spec.Replay = base.Callers, base.Replay
	if err := c.opts.Apply(&spec); err != nil {
		return err
	}
	c.mu.Lock()
	c.last = &spec
	c.mu.Unlock()
	return nil
}

func (c *Client) dialOptions() ([]grpc.DialOption, error) {
	t := c.opts.Config.TLS
	if t == nil {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.CAFile != "" {
		pool, err := tlsfile.CertPool("ca_file", t.CAFile)
		if err != nil {
			return nil, err
		}
		conf.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tlsfile.KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, err
		}
		conf.Certificates = []tls.Certificate{*cert}
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(conf))}, nil
}

// Run keeps an ADS stream to the server until ctx ends, reconnecting with
// backoff; the last good configuration serves meanwhile.
func (c *Client) Run(ctx context.Context) error {
	opts, err := c.dialOptions()
	if err != nil {
		return fmt.Errorf("xds: %w", err)
	}
	cc, err := grpc.NewClient(c.opts.Config.Server, opts...)
	if err != nil {
		return fmt.Errorf("xds: %w", err)
	}
	defer cc.Close()
	defer c.files.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
	mode := cmp.Or(c.opts.Config.Protocol, config.XDSProtocolAuto)
	ds := newDeltaState()
	fallback := false // auto, this attempt: the server has no delta
	wait := retryBase
	for {
		start := time.Now()
		var err error
		if mode != config.XDSProtocolSotW && !fallback {
			var connected bool
			connected, err = c.deltaSession(ctx, ads, ds)
			if mode == config.XDSProtocolAuto && !connected && ctx.Err() == nil && grpcstatus.Code(err) == codes.Unimplemented {
				c.log.Info("the xDS server does not speak delta xDS; using state of the world", "server", c.opts.Config.Server)
				fallback = true
				continue
			}
		} else {
			// The next delta stream starts over: what a state-of-the-world
			// stream accepted has no per-resource versions.
			fallback, ds = false, newDeltaState()
			err = c.session(ctx, ads)
		}
		c.setConnected(false, "")
		c.mu.Lock()
		if err != nil && ctx.Err() == nil {
			c.status.LastError = err.Error()
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		c.log.Warn("xDS stream ended; the last good configuration keeps serving", "server", c.opts.Config.Server, "error", err)
		if time.Since(start) > retryMax {
			wait = retryBase // it had been up for a while: start over
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		wait = min(2*wait, retryMax)
	}
}

// setConnected records the stream's state (and the protocol it speaks).
func (c *Client) setConnected(up bool, protocol string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.Connected = up
	if up {
		c.m.connected.Set(1)
		c.status.LastError, c.status.Protocol = "", protocol
	} else {
		c.m.connected.Set(0)
	}
}

// stream is the state of one ADS stream.
type stream struct {
	s        discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node     *corev3.Node
	version  map[string]string   // accepted version, by type
	nonce    map[string]string   // last nonce seen, by type
	names    map[string][]string // subscribed names (nil: wildcard), by type
	accepted resources
	// nacked and nackWait pace NACKs of a version already NACKed: a
	// state-of-the-world server answers a NACK (which carries the old
	// version) with the version it has, the same rejected one, and the
	// two would loop as fast as the network goes.
	nacked   map[string]string
	nackWait map[string]time.Duration
}

// Pacing of repeated NACKs of one version. The cap bounds how late a fixed
// version can arrive: the server answers only the next request.
const (
	nackWaitFirst = 50 * time.Millisecond
	nackWaitMax   = time.Second
)

func (st *stream) send(typ, version, nonce string, detail *status.Status) error {
	return st.s.Send(&discoveryv3.DiscoveryRequest{Node: st.node, TypeUrl: typ, VersionInfo: version,
		ResponseNonce: nonce, ResourceNames: st.names[typ], ErrorDetail: detail})
}

func (c *Client) session(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	st := &stream{s: s, node: c.node, version: map[string]string{}, nonce: map[string]string{},
		nacked: map[string]string{}, nackWait: map[string]time.Duration{},
		names: map[string][]string{}, accepted: resources{
			listeners: map[string]*listenerv3.Listener{}, routes: map[string]*routev3.RouteConfiguration{},
			clusters: map[string]*clusterv3.Cluster{}, endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}}
	// Listeners and clusters are wildcard subscriptions; route
	// configurations and assignments follow what they name.
	for _, typ := range []string{resourcev3.ListenerType, resourcev3.ClusterType} {
		if err := st.send(typ, "", "", nil); err != nil {
			return streamErr(err, func() error { _, err := s.Recv(); return err })
		}
	}
	connected := false
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		if !connected {
			connected = true
			c.setConnected(true, config.XDSProtocolSotW)
		}
		if err := c.handle(ctx, st, resp); err != nil {
			return streamErr(err, func() error { _, err := s.Recv(); return err })
		}
	}
}

// handle takes one state-of-the-world response: decodes it, and either
// ACKs it (applying the configuration when it is complete) or NACKs it,
// keeping the last good resources of its type.
func (c *Client) handle(ctx context.Context, st *stream, resp *discoveryv3.DiscoveryResponse) error {
	typ := resp.GetTypeUrl()
	if !slices.Contains(typeOrder, typ) {
		// Not asked for; tell the server so without dropping the stream.
		return st.send(typ, resp.GetVersionInfo(), resp.GetNonce(), nil)
	}
	st.nonce[typ] = resp.GetNonce()
	next, err := decode(st.accepted, typ, resp.GetResources())
	if err = c.judge(typ, resp.GetVersionInfo(), &next, err); err != nil {
		if st.nacked[typ] == resp.GetVersionInfo() {
			st.nackWait[typ] = min(max(2*st.nackWait[typ], nackWaitFirst), nackWaitMax)
			t := time.NewTimer(st.nackWait[typ])
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		} else {
			st.nacked[typ], st.nackWait[typ] = resp.GetVersionInfo(), 0
		}
		return st.send(typ, st.version[typ], resp.GetNonce(), nackDetail(err))
	}
	st.accepted = next
	st.version[typ] = resp.GetVersionInfo()
	delete(st.nacked, typ)
	if err := st.send(typ, resp.GetVersionInfo(), resp.GetNonce(), nil); err != nil {
		return err
	}
	// Follow what the accepted listeners and clusters name.
	for _, dep := range dependencies(&st.accepted) {
		cur, subscribed := st.names[dep.typ]
		if !subscribed && len(dep.names) == 0 || subscribed && slices.Equal(cur, dep.names) {
			continue
		}
		// An empty list is still a subscription (to nothing that
		// hopwatch uses): never nil, which would mean "all" at first.
		st.names[dep.typ] = append([]string{}, dep.names...)
		if err := st.send(dep.typ, st.version[dep.typ], st.nonce[dep.typ], nil); err != nil {
			return err
		}
	}
	return nil
}

// judge decides on one update of typ (either protocol): next is the
// resources with the update in, decodeErr what decoding it found. It
// applies next when complete and valid, counts and records the outcome,
// and returns the error to NACK with (nil: ACK).
func (c *Client) judge(typ, version string, next *resources, decodeErr error) error {
	err := decodeErr
	if err == nil {
		err = c.maybeApply(next)
	}
	if err != nil {
		c.m.updates.WithLabelValues(shortType(typ), "rejected").Inc()
		c.mu.Lock()
		repeat := c.status.LastNACK != nil && c.status.LastNACK.TypeURL == typ && c.status.LastNACK.Version == version &&
			c.status.LastNACK.Error == err.Error()
		c.status.LastNACK = &NACK{Time: time.Now(), TypeURL: typ, Version: version, Error: err.Error()}
		c.mu.Unlock()
		if !repeat {
			c.log.Error("xDS update rejected; the last good configuration keeps serving", "type", shortType(typ), "version", version, "error", err)
		}
		return err
	}
	c.m.updates.WithLabelValues(shortType(typ), "applied").Inc()
	c.mu.Lock()
	c.status.Versions[typ] = version
	c.mu.Unlock()
	return nil
}

// nackDetail is the error_detail of a NACK.
func nackDetail(err error) *status.Status {
	return &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
}

// dependency is the names of one type that accepted resources name.
type dependency struct {
	typ   string
	names []string
}

// dependencies are the route configurations the accepted listeners name
// and the assignments the accepted clusters name, which hopwatch
// subscribes to by name.
func dependencies(rs *resources) []dependency {
	return []dependency{{resourcev3.RouteType, routeNames(rs)}, {resourcev3.EndpointType, endpointNames(rs)}}
}

// maybeApply translates and applies rs when every route configuration and
// assignment it names is there; until then it only checks what it can.
func (c *Client) maybeApply(rs *resources) error {
	c.applying.Lock()
	defer c.applying.Unlock()
	c.mu.Lock()
	base := c.base
	c.mu.Unlock()
	for _, n := range routeNames(rs) {
		if rs.routes[n] == nil {
			return nil // not complete yet: the rest arrives next
		}
	}
	for _, n := range endpointNames(rs) {
		if rs.endpoints[n] == nil {
			return nil
		}
	}
	if missing := missingClusters(rs); len(missing) > 0 {
		// A route may arrive before the cluster it names (the server
		// sends types in any order): wait for it rather than reject.
		c.mu.Lock()
		c.status.LastError = fmt.Sprintf("waiting for clusters %v", missing)
		c.mu.Unlock()
		return nil
	}
	spec, _, err := translate(rs, base, c.files)
	if err != nil {
		return err
	}
	c.mu.Lock()
	last := c.last
	c.mu.Unlock()
	if last != nil && specEqual(last, spec) {
		return nil
	}
	if err := c.opts.Apply(spec); err != nil {
		return err
	}
	c.mu.Lock()
	c.last, c.status.Applied, c.status.LastError = spec, time.Now(), ""
	c.mu.Unlock()
	return nil
}

// missingClusters lists the clusters that routes of rs name and rs lacks.
func missingClusters(rs *resources) []string {
	var missing []string
	check := func(rc *routev3.RouteConfiguration) {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if n := r.GetRoute().GetCluster(); n != "" && rs.clusters[n] == nil && !slices.Contains(missing, n) {
					missing = append(missing, n)
				}
			}
		}
	}
	for _, l := range rs.listeners {
		if l.GetAddress().GetSocketAddress() == nil {
			continue
		}
		hcm, err := listenerHCM(l)
		if err != nil {
			continue
		}
		if rds := hcm.GetRds(); rds != nil {
			check(rs.routes[rds.GetRouteConfigName()])
		} else {
			check(hcm.GetRouteConfig())
		}
	}
	sort.Strings(missing)
	return missing
}

// decode returns rs with the resources of typ replaced by those of a
// state-of-the-world response.
func decode(rs resources, typ string, anys []*anypb.Any) (resources, error) {
	var errs fieldErrs
	switch typ {
	case resourcev3.ListenerType:
		rs.listeners = map[string]*listenerv3.Listener{}
		for i, a := range anys {
			m := &listenerv3.Listener{}
			if unmarshal(a, m, i, &errs) {
				rs.listeners[m.GetName()] = m
			}
		}
	case resourcev3.RouteType:
		rs.routes = map[string]*routev3.RouteConfiguration{}
		for i, a := range anys {
			m := &routev3.RouteConfiguration{}
			if unmarshal(a, m, i, &errs) {
				rs.routes[m.GetName()] = m
			}
		}
	case resourcev3.ClusterType:
		rs.clusters = map[string]*clusterv3.Cluster{}
		for i, a := range anys {
			m := &clusterv3.Cluster{}
			if unmarshal(a, m, i, &errs) {
				rs.clusters[m.GetName()] = m
			}
		}
	case resourcev3.EndpointType:
		rs.endpoints = map[string]*endpointv3.ClusterLoadAssignment{}
		for i, a := range anys {
			m := &endpointv3.ClusterLoadAssignment{}
			if unmarshal(a, m, i, &errs) {
				rs.endpoints[m.GetClusterName()] = m
			}
		}
	}
	return rs, errs.err()
}

type validator interface{ ValidateAll() error }

func unmarshal(a *anypb.Any, m proto.Message, i int, errs *fieldErrs) bool {
	return unmarshalPath(a, m, fmt.Sprintf("resources[%d]", i), errs)
}

func unmarshalPath(a *anypb.Any, m proto.Message, path string, errs *fieldErrs) bool {
	if err := a.UnmarshalTo(m); err != nil {
		errs.add(path, "%v", err)
		return false
	}
	// The protoc-gen-validate rules Envoy itself enforces.
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			errs.add(path, "%v", err)
			return false
		}
	}
	return true
}

// routeNames are the route configurations the listeners name (RDS).
func routeNames(rs *resources) []string {
	var names []string
	for _, l := range rs.listeners {
		if l.GetAddress().GetSocketAddress() == nil {
			continue
		}
		if hcm, err := listenerHCM(l); err == nil && hcm.GetRds() != nil {
			if n := hcm.GetRds().GetRouteConfigName(); !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	return names
}

// endpointNames are the assignments the EDS clusters name.
func endpointNames(rs *resources) []string {
	var names []string
	for _, cl := range rs.clusters {
		if cl.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		n := cl.GetEdsClusterConfig().GetServiceName()
		if n == "" {
			n = cl.GetName()
		}
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

func shortType(typ string) string {
	switch typ {
	case resourcev3.ListenerType:
		return "listener"
	case resourcev3.RouteType:
		return "route"
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.EndpointType:
		return "endpoint"
	}
	return "other"
}
